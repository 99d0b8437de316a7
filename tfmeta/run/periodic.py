"""What the training loop does between its compiled calls, one small action each.

After every compiled call of ``train.steps_per_loop`` (or fewer) meta-iterations the trainer
(:mod:`tfmeta.run.trainer`) asks each action whether it is ``due`` at the step reached and the
run's wall-clock seconds, and runs those that are: the training summaries, the progress log line,
the checkpoint, validation with its history, the time budget and the stop request (preemption).
Each one is told the step and the time, so each can be tried alone with made-up numbers.

``ending`` (the run ends after this call: its time budget is used up, or a stop was requested)
makes the log line, the checkpoint and validation due whatever their interval, as does the last
iteration.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf
from absl import logging

from tfmeta.run import workdir as workdir_lib
from tfmeta.run.workdir import HISTORY_FILE


def any_worker(strategy: tf.distribute.Strategy | None, flag: bool) -> bool:
    """True if ``flag`` is set on any worker: every worker must stop at the same step."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        value = strategy.run(lambda x: x, args=(tf.constant(float(flag)),))
        return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy() > 0)
    return flag


class Interval:
    """Every ``every`` meta-iterations (0: never by the interval), and at the last one."""

    def __init__(self, every: int, total: int):
        self.every = every
        self.total = total

    def due(self, step: int, now: float = 0.0, *, ending: bool = False) -> bool:
        """Whether the action runs after ``step`` (``now``: not used by an interval)."""
        del now
        return ending or step == self.total or bool(self.every and step % self.every == 0)

    def next_due(self, step: int) -> int | None:
        """The next step after ``step`` on the interval (None: no interval); a compiled call
        stops there so the action runs at exactly that step."""
        return (step // self.every + 1) * self.every if self.every else None


class Writes:
    """Turns a failed write (disk full, ...) into one error naming the path and the reason.

    TensorFlow writes checkpoints to temporary files and renames them, so a failed save leaves the
    earlier checkpoints complete; the message says which one a rerun resumes from (``newest``, the
    newest complete checkpoint in the chief's checkpoint directory, kept by :class:`Checkpoints`).
    """

    def __init__(self, step: Callable[[], int], newest: str | None = None):
        self.step = step
        self.newest = newest

    @contextlib.contextmanager
    def __call__(self, path: str) -> Iterator[None]:
        try:
            yield
        except (OSError, tf.errors.OpError) as e:
            kept = (f"the newest checkpoint {self.newest} is intact and a rerun of the same "
                    "command resumes from it" if self.newest else
                    "no checkpoint had been saved yet, so a rerun starts from the beginning")
            raise workdir_lib.WorkdirWriteError(
                f"cannot write {path}: {workdir_lib.os_reason(e)}; training stopped at "
                f"meta-iteration {self.step()}; {kept}; free space (or repair the file system) "
                "first") from e


class TrainSummaries:
    """The training metrics, learning rate and throughput as summaries, after every call."""

    def __init__(self, writer: Any, path: str, writes: Writes):
        self.writer = writer
        self.path = path
        self.writes = writes

    def due(self, step: int, now: float) -> bool:
        del step, now
        return True

    def run(self, step: int, metrics: dict[str, float], learning_rate: float,
            tasks_per_second: float) -> None:
        with self.writes(self.path), self.writer.as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
            tf.summary.scalar("learning_rate", learning_rate)
            tf.summary.scalar("tasks_per_second", tasks_per_second)


class ProgressLog(Interval):
    """The log line of the run's progress, every ``train.log_every`` meta-iterations."""

    def run(self, step: int, metrics: dict[str, float], tasks_per_second: float,
            remaining: str) -> None:
        logging.info(
            "iteration %d/%d  %s  %.1f tasks/s  remaining %s", step, self.total,
            "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
            tasks_per_second, remaining)


class Checkpoints(Interval):
    """A checkpoint every ``train.checkpoint_every`` meta-iterations (and when the run ends).

    Saving is collective under ``MultiWorkerMirroredStrategy``: every worker saves, non-chief
    workers into a scratch directory (``directory``) that is removed right after.
    """

    def __init__(self, every: int, total: int, *, manager: Any, directory: str, real_dir: str,
                 chief: bool, writes: Writes):
        super().__init__(every, total)
        self.manager = manager
        self.directory = directory
        self.real_dir = real_dir
        self.chief = chief
        self.writes = writes

    def run(self, step: int) -> None:
        with self.writes(os.path.join(self.directory, f"ckpt-{step}")):
            self.manager.save(checkpoint_number=step)
            if not self.chief:
                tf.io.gfile.rmtree(self.directory)
        self.writes.newest = os.path.join(self.real_dir, f"ckpt-{step}")


def append_history(workdir: str, entry: dict[str, Any]) -> None:
    """Adds a validation point to ``history.jsonl`` (rewritten: object stores cannot append)."""
    path = os.path.join(workdir, HISTORY_FILE)
    text = ""
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text + json.dumps(entry, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


class Validation(Interval):
    """Validation every ``train.eval_every`` meta-iterations, its summary and ``history.jsonl``.

    Args:
      every: ``train.eval_every`` (0: only at the end).
      total: ``train.iterations``.
      episodes: ``train.eval_episodes`` (0: never due).
      evaluate: ``evaluate(episodes) -> result`` on the validation split.
      writer: the validation summary writer.
      workdir: the work directory (its ``validation`` summaries and ``history.jsonl``).
      record: ``record(entry)`` adds a history entry (:func:`append_history`); None on workers
        that write no history (all but the chief).
      writes: the write-error guard.
    """

    def __init__(self, every: int, total: int, *, episodes: int,
                 evaluate: Callable[[int], dict[str, Any]], writer: Any, workdir: str,
                 record: Callable[[dict[str, Any]], None] | None, writes: Writes):
        super().__init__(every, total)
        self.episodes = episodes
        self.evaluate = evaluate
        self.writer = writer
        self.workdir = workdir
        self.record = record
        self.writes = writes

    def due(self, step: int, now: float = 0.0, *, ending: bool = False) -> bool:
        return bool(self.episodes) and super().due(step, now, ending=ending)

    def run(self, step: int, wall_seconds: float, train_seconds: float) -> dict[str, Any]:
        """Validates, writes the summary and the history entry; returns the result."""
        result = self.evaluate(self.episodes)
        metric = result["metric"]
        with (self.writes(os.path.join(self.workdir, "validation")),
              self.writer.as_default(step=step)):
            tf.summary.scalar(metric, result[metric])
        logging.info("validation at %d: %s %.4f +- %.4f", step, metric, result[metric],
                     result["ci95"])
        if self.record is not None:
            with self.writes(os.path.join(self.workdir, HISTORY_FILE)):
                self.record(dict(result, wall_seconds=round(wall_seconds, 3),
                                 train_seconds=round(train_seconds, 3)))
        return result


class TimeBudget:
    """``train.max_minutes``: due once the run's wall-clock seconds reach it (0: no budget)."""

    def __init__(self, max_minutes: float, strategy: tf.distribute.Strategy | None = None):
        self.max_minutes = max_minutes
        self.seconds = max_minutes * 60.0
        self.strategy = strategy

    def __bool__(self) -> bool:
        return bool(self.seconds)

    def due(self, step: int, now: float) -> bool:
        """Whether the budget is used up at ``now`` seconds; every worker decides the same."""
        del step
        return any_worker(self.strategy, bool(self.seconds) and now >= self.seconds)

    def steps(self, now: float, seconds_per_step: float | None, planned: int) -> int:
        """Meta-iterations of the next compiled call, agreed by every worker; see
        :func:`steps_within_budget`."""
        return agree(self.strategy, steps_within_budget(self.seconds - now, seconds_per_step,
                                                        planned))

    def run(self, step: int, now: float) -> None:
        logging.info("The time budget of train.max_minutes=%g is used up at iteration %d "
                     "(%.1f minutes); finishing the run.", self.max_minutes, step, now / 60)


class Preemption:
    """A stop request (SIGTERM, ...): due when ``should_stop()`` says so on any worker."""

    def __init__(self, should_stop: Callable[[], bool],
                 strategy: tf.distribute.Strategy | None = None):
        self.should_stop = should_stop
        self.strategy = strategy

    def due(self, step: int, now: float) -> bool:
        del step, now
        return any_worker(self.strategy, self.should_stop())

    def run(self, step: int) -> None:
        logging.info("Stop requested: saved a checkpoint at iteration %d; rerun the same "
                     "command to resume.", step)


def steps_within_budget(seconds_left: float, seconds_per_step: float | None,
                        planned: int) -> int:
    """Meta-iterations of the next compiled call under a wall-clock budget.

    The compiled loop cannot look at the clock between its iterations (no host round trip inside
    it), so the host gives the last call(s) fewer iterations: as many as fit in what is left,
    from the measured time per iteration, and at least one, so a run ends within about one
    iteration of its budget rather than a whole ``train.steps_per_loop`` after it.

    Args:
      seconds_left: the budget left.
      seconds_per_step: measured seconds per meta-iteration; None before any measurement, when a
        single iteration is run (the first call also traces the loop).
      planned: the iterations the call would run without a budget.

    Returns:
      Between 1 and ``planned``.
    """
    if seconds_per_step is None:
        return 1
    fits = int(seconds_left // max(seconds_per_step, 1e-9))
    return max(1, min(planned, fits))


def agree(strategy: tf.distribute.Strategy | None, steps: int) -> int:
    """The same iteration count on every worker (their mean, rounded down): the loops are
    collective, so workers whose clocks differ slightly must still run the same calls."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        value = strategy.run(lambda x: x, args=(tf.constant(float(steps)),))
        return max(1, int(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)))
    return steps


class Clock:
    """Tasks per second and time remaining, from the meta-iterations of the recent loops."""

    def __init__(self, tasks_per_step: int):
        self.tasks_per_step = tasks_per_step
        self.steps = 0
        self.seconds = 0.0

    def add(self, steps: int, seconds: float) -> None:
        self.steps += steps
        self.seconds += seconds

    def tasks_per_second(self) -> float:
        return self.steps * self.tasks_per_step / max(self.seconds, 1e-9)

    def remaining(self, steps_left: int) -> str:
        secs = steps_left * self.seconds / max(self.steps, 1)
        return time.strftime("%H:%M:%S", time.gmtime(secs)) if secs < 86400 else f"{secs/3600:.0f}h"
