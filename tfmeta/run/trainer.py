"""The meta-training loop: compiled multi-step training, checkpoints, summaries, validation.

Shape (after orbit): a compiled ``train_loop(iterator, num_steps)`` runs ``num_steps``
meta-iterations inside one ``tf.function`` (one host round trip per loop, essential on TPUs); the
Python loop around it owns logging, summaries, checkpoints, validation and preemption. The only
distributed lines are ``strategy.run`` and the cross-replica sum of metrics; meta-gradients come
from the algorithm already divided by the global number of tasks, and the Keras optimizer sums them
across replicas, so they are averaged over the global task batch exactly once. What is trained is
built by :mod:`tfmeta.run.experiment`; evaluation is :mod:`tfmeta.run.evaluation`.

All file I/O goes through ``tf.io.gfile`` so a work directory can be ``gs://bucket/run``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Callable

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from tfmeta.run import config as config_lib
from tfmeta.base import distribute
from tfmeta.run import tasks
from tfmeta.base import input_transform as input_transform_lib
from tfmeta.run import workdir as workdir_lib
from tfmeta.run.evaluation import evaluate, warn_if_chance
from tfmeta.run.experiment import Experiment, build_experiment, checkpoint as make_checkpoint
from tfmeta.run.workdir import CHECKPOINT_DIR, DATA_SUMMARY_FILE, HISTORY_FILE, write_json


class NonFiniteLossError(FloatingPointError):
    """The meta-loss became NaN or Inf; the run stops and keeps its last good checkpoint."""


def phase(config: ml_collections.ConfigDict, step: int) -> tuple[dict[str, Any], int]:
    """How meta-iteration ``step`` is computed, and the first iteration computed differently.

    Derivative-order annealing (first order before ``first_order_until``) and MAML++'s multi-step
    loss (on before ``multi_step_loss_until``) switch at fixed iterations; each phase is its own
    compiled loop, so a switch happens exactly at its iteration, also in a resumed run.

    Returns:
      ``(meta_step keyword arguments, next switch iteration or train.iterations)``.
    """
    if config.algorithm not in config_lib.MAML_FAMILY:
        return {}, config.train.iterations
    first_order_until = config_lib.first_order_until(config)
    msl_until = config_lib.multi_step_loss_until(config)
    kwargs = {"first_order": step < first_order_until}
    if config.algorithm == "mamlpp":
        kwargs["multi_step_loss"] = step < msl_until
    switches = [s for s in (first_order_until, msl_until) if s > step]
    return kwargs, min(switches + [config.train.iterations])


def _make_train_loop(exp: Experiment, phase_kwargs: dict[str, Any]) -> Callable:
    """Returns ``train_loop(iterator, num_steps) -> (mean metrics, first non-finite step)``."""
    strategy, algorithm, optimizer = exp.strategy, exp.algorithm, exp.optimizer
    variables = algorithm.meta_variables
    state = algorithm.state_variables
    global_batch = exp.config.train.meta_batch_size
    uses_iteration = "multi_step_loss" in phase_kwargs

    def meta_step(batch, iteration):
        kwargs = dict(phase_kwargs, iteration=iteration) if uses_iteration else phase_kwargs
        step = algorithm.meta_step(batch, global_batch_size=global_batch, **kwargs)
        return step.grads, step.metrics, step.non_trainable

    if exp.config.train.jit_compile and not distribute.is_tpu(strategy):
        # XLA for the heavy part only: the optimizer's cross-replica merge stays outside it.
        meta_step = tf.function(meta_step, jit_compile=True)

    def replica_step(batch, iteration):
        grads, metrics, nt = meta_step(batch, iteration)
        optimizer.apply_gradients(zip(grads, variables))
        return metrics, nt

    def one_step(iterator, iteration):
        metrics, nt = strategy.run(replica_step, args=(next(iterator), iteration))
        # Every value is a per-replica sum divided by the global batch: summing gives the mean.
        total = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa: E731
        # Batch-norm moving statistics after the support passes, averaged over all tasks: kept
        # for evaluation with bn_mode="running" and for the exported model's `predict`.
        for var, value in zip(state, nt):
            if tf.as_dtype(var.dtype).is_floating:
                var.assign(total(value))
        return {k: total(v) for k, v in metrics.items()}

    @tf.function
    def train_loop(iterator, num_steps):
        first = exp.step.read_value()
        totals = {k: tf.constant(0.0) for k in algorithm.metric_names}
        bad = tf.constant(-1, tf.int64)  # first meta-iteration with a non-finite loss
        for i in tf.range(num_steps):
            metrics = one_step(iterator, first + i)
            totals = {k: totals[k] + metrics[k] for k in totals}
            is_bad = tf.logical_and(bad < 0, tf.logical_not(tf.math.is_finite(metrics["loss"])))
            bad = tf.where(is_bad, first + i, bad)
        exp.step.assign_add(num_steps)
        n = tf.cast(num_steps, tf.float32)
        return {k: v / n for k, v in totals.items()}, bad

    return train_loop


def _any_worker(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True if ``flag`` is set on any worker: every worker must stop at the same step."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        value = strategy.run(lambda x: x, args=(tf.constant(float(flag)),))
        return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy() > 0)
    return flag


class _Clock:
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


def train(config: ml_collections.ConfigDict, workdir: str, *,
          strategy: tf.distribute.Strategy | None = None, data=None,
          should_stop: Callable[[], bool] = lambda: False,
          final_evaluation: bool = True) -> dict[str, Any]:
    """Meta-trains (or resumes) the experiment in ``workdir``.

    Args:
      config: experiment config (validated here, before anything is trained).
      workdir: where config, checkpoints, summaries and results go (local path, relative to the
        current directory or with ``~``, or gs://...); see :func:`workdir_lib.normalize`.
      strategy: distribution strategy; the default (single device) strategy when None.
      data: pre-loaded Omniglot data (tests); loaded through TFDS when None.
      should_stop: polled between compiled loops; when it returns True (e.g. after SIGTERM) the run
        saves a checkpoint and returns, and the same call resumes it later.
      final_evaluation: evaluate on ``config.eval.split`` at the end and write
        ``eval_<split>.json``.

    Returns:
      ``{"step", "preempted", "train", "validation", "test"}`` summaries (JSON-ready).

    Raises:
      config_lib.ConfigError: for an invalid config, before anything is trained.
      workdir_lib.WorkdirError: the work directory path is empty, the directory is in use,
        unwritable, holds state that is not understood (checkpoints without ``config.json``, a
        damaged ``config.json``), was started with an incompatible config, or has only
        unreadable checkpoints; nothing is written to it. Also when a write fails during
        training (``WorkdirWriteError``: disk full, ...); the checkpoints saved before stay.
      NonFiniteLossError: when the meta-loss becomes NaN or Inf (naming the iteration).
    """
    exp = prepare(config, workdir, strategy=strategy, data=data)
    return run(exp, workdir, should_stop=should_stop, final_evaluation=final_evaluation)


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            strategy: tf.distribute.Strategy | None = None, data=None) -> Experiment:
    """Checks ``config`` and ``workdir`` and builds the experiment :func:`train` runs.

    ``tfmeta.train`` calls this and :func:`run` itself, so that it keeps the trained experiment
    (and exports it without rebuilding it). Raises as :func:`train` does before training.
    """
    workdir = workdir_lib.normalize(workdir)
    strategy = strategy or tf.distribute.get_strategy()
    config_lib.validate(config, num_replicas=strategy.num_replicas_in_sync)
    if distribute.is_chief(strategy):
        # Refuse a directory that is not understood, or an incompatible resume, before spending
        # time on data and model building.
        saved = workdir_lib.check_state(workdir)
        if saved is not None:
            workdir_lib.check_resumable(saved, config)
    return build_experiment(config, strategy, data=data, validated=True)


def run(exp: Experiment, workdir: str, *, should_stop: Callable[[], bool] = lambda: False,
        final_evaluation: bool = True,
        now: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Runs (or resumes) meta-training of a built experiment; see :func:`train`.

    The chief holds the work directory's lock for the whole run, so a second training on the same
    directory fails at once instead of interleaving checkpoints and configs. ``now`` is the clock
    (seconds) that measures the run's time and ``train.max_minutes``.
    """
    workdir = workdir_lib.normalize(workdir)
    if distribute.is_chief(exp.strategy):
        # Everything the directory holds, and the data's input transform against the recorded
        # one, is checked before the lock file (or anything else) is written.
        workdir_lib.check_state(workdir)
        check_data(exp, workdir)
    lock = workdir_lib.WorkdirLock(workdir) if distribute.is_chief(exp.strategy) else None
    if lock is not None:
        lock.acquire()
    try:
        if lock is not None:
            try:
                workdir_lib.record_config(workdir, exp.config)
            except (OSError, tf.errors.OpError) as e:
                raise workdir_lib.WorkdirWriteError(
                    f"cannot record the config in {workdir!r}: {workdir_lib.os_reason(e)}; "
                    "nothing was trained; free space (or repair the file system) and rerun the "
                    "same command") from e
            record_data(exp, workdir)
        return _run_locked(exp, workdir, should_stop=should_stop,
                           final_evaluation=final_evaluation, now=now)
    finally:
        if lock is not None:
            lock.release()


def check_data(exp: Experiment, workdir: str) -> None:
    """Checks that the data's input transform is the one recorded in ``workdir``, if any.

    The input transform (size, channels, normalisation measured on the meta-train split) is what
    an export needs without the data; a resumed run must find the same one, or its model would
    see other inputs than it was trained on.

    Raises:
      ConfigError: the recorded transform differs from the data's (the data changed).
      WorkdirStateError: ``input_transform.json`` is damaged.
    """
    if exp.source.input_transform is None:
        return
    transform = exp.source.input_transform()
    recorded = workdir_lib.read_input_transform(workdir, exp.config)
    if recorded is not None and recorded != transform:
        raise config_lib.ConfigError(
            f"the data's input transform {transform.to_dict()} differs from the one this run was "
            f"trained with, {recorded.to_dict()} (in {workdir}/{input_transform_lib.FILE_NAME}); "
            "the data changed: train in a new work directory")


def record_data(exp: Experiment, workdir: str) -> None:
    """Writes what the run's data is: ``input_transform.json`` and ``data_summary.json``.

    Call :func:`check_data` first, before anything is written.
    """
    source = exp.source
    if source.input_transform is None:
        return
    if workdir_lib.read_input_transform(workdir) is None:
        input_transform_lib.write(workdir, source.input_transform())
    if source.data_summary is None:
        return
    summary = source.data_summary()
    write_json(os.path.join(workdir, DATA_SUMMARY_FILE), summary)
    for split, facts in summary["splits"].items():
        logging.info("Data, %s: %d classes, %d images used; %d classes left out (fewer than %d "
                     "images), %d images skipped.", split, facts["classes"], facts["images"],
                     len(facts["classes_left_out"]), facts["images_needed_per_class"],
                     facts["images_skipped"])
    if summary["files_skipped_while_listing"]:
        logging.info("Data: %d files skipped while listing the source (non-image files, empty "
                     "class folders); see %s.", len(summary["files_skipped_while_listing"]),
                     DATA_SUMMARY_FILE)


def _append_history(workdir: str, entry: dict[str, Any]) -> None:
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


def _agree(strategy: tf.distribute.Strategy, steps: int) -> int:
    """The same iteration count on every worker (their mean, rounded down): the loops are
    collective, so workers whose clocks differ slightly must still run the same calls."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        value = strategy.run(lambda x: x, args=(tf.constant(float(steps)),))
        return max(1, int(strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)))
    return steps


def _run_locked(exp: Experiment, workdir: str, *, should_stop: Callable[[], bool],
                final_evaluation: bool,
                now: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    config, strategy = exp.config, exp.strategy
    chief = distribute.is_chief(strategy)
    tf.io.gfile.makedirs(workdir)

    checkpoint = make_checkpoint(exp)
    real_dir = os.path.join(workdir, CHECKPOINT_DIR)
    # Saving is collective under MultiWorkerMirroredStrategy: every worker saves, non-chief workers
    # into a scratch directory that is removed right after.
    ckpt_dir = real_dir if chief else os.path.join(
        workdir, f"tmp_worker_{distribute.task_id(strategy)}")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir,
                                         max_to_keep=config.train.keep_checkpoints)
    restored = workdir_lib.restore_newest_readable(checkpoint, real_dir, partial=False)
    if restored:
        logging.info("Resumed from %s at iteration %d.", restored, int(exp.step.numpy()))
    # The newest complete checkpoint in the real checkpoint directory (the chief's), for messages.
    newest = restored

    @contextlib.contextmanager
    def writing(path: str):
        """Turns a failed write (disk full, ...) into one error naming the path and the reason.

        TensorFlow writes checkpoints to temporary files and renames them, so a failed save
        leaves the earlier checkpoints complete; the message says which one a rerun resumes from.
        """
        try:
            yield
        except (OSError, tf.errors.OpError) as e:
            kept = (f"the newest checkpoint {newest} is intact and a rerun of the same command "
                    "resumes from it" if newest else
                    "no checkpoint had been saved yet, so a rerun starts from the beginning")
            raise workdir_lib.WorkdirWriteError(
                f"cannot write {path}: {workdir_lib.os_reason(e)}; training stopped at "
                f"meta-iteration {int(exp.step.numpy())}; {kept}; free space (or repair the file "
                "system) first") from e

    def save() -> None:
        nonlocal newest
        number = int(exp.step.numpy())
        with writing(os.path.join(ckpt_dir, f"ckpt-{number}")):
            manager.save(checkpoint_number=number)
            if not chief:
                tf.io.gfile.rmtree(ckpt_dir)
        newest = os.path.join(real_dir, f"ckpt-{number}")

    with writing(workdir):
        writers = {name: (tf.summary.create_file_writer(os.path.join(workdir, name)) if chief
                          else tf.summary.create_noop_writer())
                   for name in ("train", "validation")}
    total = config.train.iterations
    budget = config.train.max_minutes * 60.0
    start = int(exp.step.numpy())
    dataset = tasks.distributed_dataset(strategy, exp.source, "train",
                                        global_batch_size=config.train.meta_batch_size,
                                        seed=config.seed, start_step=start)
    iterator = iter(dataset)
    train_loops: dict[tuple, Callable] = {}
    clock = _Clock(config.train.meta_batch_size)
    summary: dict[str, Any] = {"preempted": False, "train": {}, "validation": None, "test": None}
    wall_at_start, t_start = float(exp.wall_seconds.numpy()), now()

    def tick() -> float:
        """Updates the persistent wall clock; returns the run's wall-clock seconds."""
        exp.wall_seconds.assign(wall_at_start + now() - t_start)
        return float(exp.wall_seconds.numpy())

    step = start
    seconds_per_step: float | None = None
    out_of_time = bool(budget) and wall_at_start >= budget
    while step < total and not out_of_time:
        boundaries = [total]
        for every in (config.train.steps_per_loop, config.train.log_every,
                      config.train.checkpoint_every, config.train.eval_every):
            if every:
                boundaries.append((step // every + 1) * every)
        phase_kwargs, next_switch = phase(config, step)
        boundaries.append(next_switch)
        num_steps = min(boundaries) - step
        key = tuple(sorted(phase_kwargs.items()))
        traced = key in train_loops
        if not traced:
            if train_loops:
                logging.info("From iteration %d: %s.", step,
                             ", ".join(f"{k}={v}" for k, v in key))
            train_loops[key] = _make_train_loop(exp, phase_kwargs)
        if budget:
            # The count is a tensor argument: a shorter last call does not retrace the loop.
            num_steps = _agree(strategy, steps_within_budget(
                budget - tick(), seconds_per_step if traced else None, num_steps))
        t0 = now()
        metrics, bad = train_loops[key](iterator, tf.constant(num_steps, tf.int64))
        metrics = {k: float(v) for k, v in metrics.items()}
        seconds = now() - t0
        if traced:  # a first call also traces (and compiles) the loop
            seconds_per_step = seconds / num_steps
        clock.add(num_steps, seconds)
        exp.train_seconds.assign_add(seconds)
        step = int(exp.step.numpy())
        if int(bad) >= 0:
            kept = (f"The last good checkpoint is kept: {newest}" if newest else
                    "No checkpoint had been saved yet (the first is written at meta-iteration "
                    f"{min(config.train.checkpoint_every or total, total)}), so there is none to "
                    "resume from")
            raise NonFiniteLossError(
                f"meta-loss became {metrics['loss']} at meta-iteration {int(bad)}; stopping. "
                f"{kept}.")
        wall = tick()
        # Every worker must agree to stop at the same step, so the budget decision is shared too.
        out_of_time = _any_worker(strategy, bool(budget) and wall >= budget)
        summary["train"] = metrics
        with writing(os.path.join(workdir, "train")), writers["train"].as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
            tf.summary.scalar("learning_rate", _learning_rate(exp.optimizer))
            tf.summary.scalar("tasks_per_second", clock.tasks_per_second())
        if step % config.train.log_every == 0 or step == total or out_of_time:
            logging.info(
                "iteration %d/%d  %s  %.1f tasks/s  remaining %s", step, total,
                "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
                clock.tasks_per_second(), clock.remaining(total - step))
        stop = _any_worker(strategy, should_stop())
        if step % config.train.checkpoint_every == 0 or step == total or stop or out_of_time:
            save()
        if stop:
            logging.info("Stop requested: saved a checkpoint at iteration %d; rerun the same "
                         "command to resume.", step)
            summary.update(step=step, preempted=True)
            return summary
        if out_of_time:
            logging.info("The time budget of train.max_minutes=%g is used up at iteration %d "
                         "(%.1f minutes); finishing the run.", config.train.max_minutes, step,
                         wall / 60)
        if ((config.train.eval_every and step % config.train.eval_every == 0) or step == total
                or out_of_time):
            if config.train.eval_episodes:
                result = evaluate(exp, "validation", episodes=config.train.eval_episodes)
                summary["validation"] = result
                with (writing(os.path.join(workdir, "validation")),
                      writers["validation"].as_default(step=step)):
                    tf.summary.scalar(result["metric"], result[result["metric"]])
                logging.info("validation at %d: %s %.4f +- %.4f", step, result["metric"],
                             result[result["metric"]], result["ci95"])
                if chief:
                    with writing(os.path.join(workdir, HISTORY_FILE)):
                        _append_history(workdir, dict(
                            result, wall_seconds=round(wall, 3),
                            train_seconds=round(float(exp.train_seconds.numpy()), 3)))
                # Validation time counts: the budget is wall-clock time.
                tick()
    summary["step"] = step
    if final_evaluation:
        split = config.eval.split
        result = evaluate(exp, split, episodes=config.eval.episodes)
        result.update(wall_seconds=round(float(exp.wall_seconds.numpy()), 3),
                      train_seconds=round(float(exp.train_seconds.numpy()), 3))
        summary["test"] = result
        if chief:
            path = os.path.join(workdir, f"eval_{split}.json")
            with writing(path):
                write_json(path, result)
        logging.info("%s: %s %.4f +- %.4f over %d episodes", split, result["metric"],
                     result[result["metric"]], result["ci95"], result["episodes"])
        warn_if_chance(result, config)
    for name, writer in writers.items():
        with writing(os.path.join(workdir, name)):
            writer.flush()
    return summary


def _learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate  # Keras evaluates a schedule at the optimizer's iteration
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


