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

import os
import time
from typing import Any, Callable

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from tfmeta.base import distribute
from tfmeta.base import input_transform as input_transform_lib
from tfmeta.core.schedule import Phase, apply_meta_step, assign_state
from tfmeta.run import config as config_lib
from tfmeta.run import periodic, specs, tasks
from tfmeta.run import workdir as workdir_lib
from tfmeta.run.evaluation import evaluate, warn_if_chance
from tfmeta.run.experiment import Experiment, build_experiment, checkpoint as make_checkpoint
from tfmeta.run.workdir import CHECKPOINT_DIR, DATA_SUMMARY_FILE, write_json


class NonFiniteLossError(FloatingPointError):
    """The meta-loss became NaN or Inf; the run stops and keeps its last good checkpoint."""


def phase(config: ml_collections.ConfigDict, step: int) -> tuple[dict[str, Any], int]:
    """How meta-iteration ``step`` is computed, and the first iteration computed differently.

    Derivative-order annealing (first order before ``first_order_until``) and MAML++'s multi-step
    loss (on before ``multi_step_loss_until``) switch at fixed iterations
    (:class:`tfmeta.core.schedule.PhaseSchedule`); each phase is its own compiled loop, so a
    switch happens exactly at its iteration, also in a resumed run.

    Returns:
      ``(meta_step keyword arguments, next switch iteration or train.iterations)``.
    """
    schedule = specs.phase_schedule(config)
    return schedule.phase(step).kwargs(), schedule.next_switch(step, config.train.iterations)


def _make_train_loop(exp: Experiment, phase: Phase | dict[str, Any]) -> Callable:
    """Returns ``train_loop(iterator, num_steps) -> (mean metrics, first non-finite step)``.

    ``phase``: the :class:`Phase` the loop's meta-iterations are in (or its ``meta_step``
    keyword arguments).
    """
    if isinstance(phase, dict):
        phase = Phase(**phase)
    strategy, algorithm, optimizer = exp.strategy, exp.algorithm, exp.optimizer
    variables = algorithm.meta_variables
    state = algorithm.state_variables
    global_batch = exp.config.train.meta_batch_size

    def meta_step(batch, iteration):
        step = algorithm.meta_step(batch, global_batch_size=global_batch,
                                   **phase.kwargs(iteration))
        return step.grads, step.metrics, step.non_trainable

    if exp.config.train.jit_compile and not distribute.is_tpu(strategy):
        # XLA for the heavy part only: the optimizer's cross-replica merge stays outside it.
        meta_step = tf.function(meta_step, jit_compile=True)

    def replica_step(batch, iteration):
        grads, metrics, nt = meta_step(batch, iteration)
        apply_meta_step(grads, variables, optimizer=optimizer)
        return metrics, nt

    def one_step(iterator, iteration):
        metrics, nt = strategy.run(replica_step, args=(next(iterator), iteration))
        # Every value is a per-replica sum divided by the global batch: summing gives the mean.
        total = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa: E731
        # Batch-norm moving statistics after the support passes, averaged over all tasks: kept
        # for evaluation with bn_mode="running" and for the exported model's `predict`.
        assign_state(state, nt, strategy=strategy)
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


_append_history = periodic.append_history
steps_within_budget = periodic.steps_within_budget


def _run_locked(exp: Experiment, workdir: str, *, should_stop: Callable[[], bool],
                final_evaluation: bool,
                now: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    config, strategy = exp.config, exp.strategy
    train = config.train
    chief = distribute.is_chief(strategy)
    tf.io.gfile.makedirs(workdir)

    checkpoint = make_checkpoint(exp)
    real_dir = os.path.join(workdir, CHECKPOINT_DIR)
    # Non-chief workers save into a scratch directory (saving is collective).
    ckpt_dir = real_dir if chief else os.path.join(
        workdir, f"tmp_worker_{distribute.task_id(strategy)}")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=train.keep_checkpoints)
    restored = workdir_lib.restore_newest_readable(checkpoint, real_dir, partial=False)
    if restored:
        logging.info("Resumed from %s at iteration %d.", restored, int(exp.step.numpy()))
    writes = periodic.Writes(lambda: int(exp.step.numpy()), newest=restored)

    with writes(workdir):
        writers = {name: (tf.summary.create_file_writer(os.path.join(workdir, name)) if chief
                          else tf.summary.create_noop_writer())
                   for name in ("train", "validation")}
    total = train.iterations
    summaries = periodic.TrainSummaries(writers["train"], os.path.join(workdir, "train"), writes)
    progress = periodic.ProgressLog(train.log_every, total)
    checkpoints = periodic.Checkpoints(train.checkpoint_every, total, manager=manager,
                                       directory=ckpt_dir, real_dir=real_dir, chief=chief,
                                       writes=writes)
    validation = periodic.Validation(
        train.eval_every, total, episodes=train.eval_episodes,
        evaluate=lambda episodes: evaluate(exp, "validation", episodes=episodes),
        writer=writers["validation"], workdir=workdir,
        record=(lambda entry: _append_history(workdir, entry)) if chief else None,
        writes=writes)
    budget = periodic.TimeBudget(train.max_minutes, strategy)
    preemption = periodic.Preemption(should_stop, strategy)
    loops = periodic.Interval(train.steps_per_loop, total)
    schedule = specs.phase_schedule(config)

    start = int(exp.step.numpy())
    dataset = tasks.distributed_dataset(strategy, exp.source, "train",
                                        global_batch_size=train.meta_batch_size,
                                        seed=config.seed, start_step=start)
    iterator = iter(dataset)
    train_loops: dict[Phase, Callable] = {}
    clock = periodic.Clock(train.meta_batch_size)
    summary: dict[str, Any] = {"preempted": False, "train": {}, "validation": None, "test": None}
    wall_at_start, t_start = float(exp.wall_seconds.numpy()), now()

    def tick() -> float:
        """Updates the persistent wall clock; returns the run's wall-clock seconds."""
        exp.wall_seconds.assign(wall_at_start + now() - t_start)
        return float(exp.wall_seconds.numpy())

    step = start
    seconds_per_step: float | None = None
    out_of_time = bool(budget) and wall_at_start >= budget.seconds
    while step < total and not out_of_time:
        # A compiled call ends where an action is due or the phase changes.
        ends = [loops.next_due(step), progress.next_due(step), checkpoints.next_due(step),
                validation.next_due(step), schedule.next_switch(step, total)]
        num_steps = min(e for e in ends if e is not None) - step
        current = schedule.phase(step)
        traced = current in train_loops
        if not traced:
            if train_loops:
                logging.info("From iteration %d: %s.", step, current.describe())
            train_loops[current] = _make_train_loop(exp, current)
        if budget:
            # The count is a tensor argument: a shorter last call does not retrace the loop.
            num_steps = budget.steps(tick(), seconds_per_step if traced else None, num_steps)
        t0 = now()
        metrics, bad = train_loops[current](iterator, tf.constant(num_steps, tf.int64))
        metrics = {k: float(v) for k, v in metrics.items()}
        seconds = now() - t0
        if traced:  # a first call also traces (and compiles) the loop
            seconds_per_step = seconds / num_steps
        clock.add(num_steps, seconds)
        exp.train_seconds.assign_add(seconds)
        step = int(exp.step.numpy())
        if int(bad) >= 0:
            kept = (f"The last good checkpoint is kept: {writes.newest}" if writes.newest else
                    "No checkpoint had been saved yet (the first is written at meta-iteration "
                    f"{min(train.checkpoint_every or total, total)}), so there is none to "
                    "resume from")
            raise NonFiniteLossError(
                f"meta-loss became {metrics['loss']} at meta-iteration {int(bad)}; stopping. "
                f"{kept}.")
        wall = tick()
        out_of_time = budget.due(step, wall)
        summary["train"] = metrics
        summaries.run(step, metrics, _learning_rate(exp.optimizer), clock.tasks_per_second())
        if progress.due(step, wall, ending=out_of_time):
            progress.run(step, metrics, clock.tasks_per_second(), clock.remaining(total - step))
        stop = preemption.due(step, wall)
        if checkpoints.due(step, wall, ending=stop or out_of_time):
            checkpoints.run(step)
        if stop:
            preemption.run(step)
            summary.update(step=step, preempted=True)
            return summary
        if out_of_time:
            budget.run(step, wall)
        if validation.due(step, wall, ending=out_of_time):
            summary["validation"] = validation.run(
                step, wall_seconds=wall, train_seconds=float(exp.train_seconds.numpy()))
            tick()  # validation time counts: the budget is wall-clock time
    summary["step"] = step
    if final_evaluation:
        split = config.eval.split
        result = evaluate(exp, split, episodes=config.eval.episodes)
        result.update(wall_seconds=round(float(exp.wall_seconds.numpy()), 3),
                      train_seconds=round(float(exp.train_seconds.numpy()), 3))
        summary["test"] = result
        if chief:
            path = os.path.join(workdir, f"eval_{split}.json")
            with writes(path):
                write_json(path, result)
        logging.info("%s: %s %.4f +- %.4f over %d episodes", split, result["metric"],
                     result[result["metric"]], result["ci95"], result["episodes"])
        warn_if_chance(result, config)
    for name, writer in writers.items():
        with writes(os.path.join(workdir, name)):
            writer.flush()
    return summary


def _learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate  # Keras evaluates a schedule at the optimizer's iteration
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


