"""Meta-training loop in process: NaN, a full disk, gfile work directories, XLA, bfloat16, bad
strategies and time budgets.

Runs that need process-level TF settings (logical devices, TF_CONFIG, determinism, signals) or
the tfmeta.train binary are in tests/e2e/test_training_runs.py.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tests.helpers import REPO

SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")
OMNIGLOT_MAML = os.path.join(REPO, "configs", "omniglot_maml.py")
OMNIGLOT_REPTILE = os.path.join(REPO, "configs", "omniglot_reptile.py")


# ------------------------------------------------------------------------------------ configs


def test_unknown_strategy_is_rejected():
    from tfmeta.base import distribute

    with pytest.raises(ValueError, match="unknown strategy 'gpu'.*multiworker"):
        distribute.make_strategy("gpu")


# -------------------------------------------------------------------------------- distribution

_SMALL_SINE = {"train.iterations": 6, "train.steps_per_loop": 3, "train.meta_batch_size": 4,
               "train.eval_every": 0, "train.eval_episodes": 0, "train.log_every": 3,
               "train.checkpoint_every": 6}


# ------------------------------------------------------------------------ faults and resume


def _small_sine(**overrides):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config

    config = load_config(f"{SINE}:smoke")
    config.update_from_flattened_dict(dict(_SMALL_SINE, **{"train.checkpoint_every": 3,
                                                           "eval.episodes": 5}, **overrides))
    return config


@pytest.mark.parametrize("nan_from", [0, 3])
def test_nan_message_names_the_newest_checkpoint_or_says_there_is_none(tmp_path, monkeypatch,
                                                                         nan_from):
    import tensorflow as tf

    from tfmeta.run import experiment, trainer

    exp = experiment.build_experiment(_small_sine(**{"train.iterations": 9}),
                                   tf.distribute.get_strategy())
    meta_step = exp.algorithm.meta_step

    def poisoned(*args, **kwargs):  # the loss turns NaN in the loop starting at `nan_from`
        step = meta_step(*args, **kwargs)
        factor = tf.where(exp.step >= nan_from, float("nan"), 1.0)
        return step._replace(metrics=dict(step.metrics, loss=step.metrics["loss"] * factor))

    monkeypatch.setattr(exp.algorithm, "meta_step", poisoned)
    run_dir = str(tmp_path / "run")
    with pytest.raises(trainer.NonFiniteLossError, match=f"at meta-iteration {nan_from};") as info:
        trainer.run(exp, run_dir, final_evaluation=False)
    message = str(info.value)
    assert "None" not in message
    if nan_from == 0:
        assert "No checkpoint had been saved yet" in message
        assert not os.path.exists(os.path.join(run_dir, "checkpoints", "checkpoint"))
    else:
        assert f"The last good checkpoint is kept: {run_dir}/checkpoints/ckpt-3." in message


def _no_space(error: str):
    import errno

    import tensorflow as tf

    if error == "ENOSPC":
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return tf.errors.ResourceExhaustedError(None, None, "/x/tmp-write; No space left on device")


@pytest.mark.parametrize("error", ["ENOSPC", "ResourceExhaustedError"])
def test_disk_full_while_saving_names_the_path_and_keeps_earlier_checkpoints(tmp_path,
                                                                             monkeypatch, error):
    import tensorflow as tf

    from tfmeta.run import experiment, trainer, workdir

    save = tf.train.CheckpointManager.save

    def failing_save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number is not None and checkpoint_number > 3:
            raise _no_space(error)
        return save(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", failing_save)
    run_dir = str(tmp_path / "run")
    with pytest.raises(workdir.WorkdirWriteError) as info:
        trainer.train(_small_sine(), run_dir, final_evaluation=False)
    message = str(info.value)
    ckpts = os.path.join(run_dir, "checkpoints")
    assert f"cannot write {ckpts}/ckpt-6: " in message and "No space left on device" in message
    assert f"{ckpts}/ckpt-3 is intact" in message and "\n" not in message
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(run_dir, workdir.LOCK_FILE))
    assert int(experiment.restore(run_dir).step.numpy()) == 3


@pytest.mark.parametrize("target", ["history", "summary"])
def test_disk_full_while_writing_history_or_summaries_names_the_path(tmp_path, monkeypatch,
                                                                    target):
    import tensorflow as tf

    from tfmeta.run import trainer, workdir

    def fail(*args, **kwargs):
        raise _no_space("ENOSPC" if target == "history" else "ResourceExhaustedError")

    if target == "history":
        monkeypatch.setattr(trainer, "_append_history", fail)
    else:
        monkeypatch.setattr(tf.summary, "scalar", fail)
    run_dir = str(tmp_path / "run")
    config = _small_sine(**{"train.eval_every": 3, "train.eval_episodes": 2})
    with pytest.raises(workdir.WorkdirWriteError) as info:
        trainer.train(config, run_dir, final_evaluation=False)
    path = os.path.join(run_dir, "history.jsonl" if target == "history" else "train")
    assert f"cannot write {path}: " in str(info.value)
    assert "No space left on device" in str(info.value)


# ------------------------------------------------------------------------- gs:// stand-in


def test_workdir_through_gfile_filesystem():
    """A non-local work directory (TF's in-memory ram:// filesystem stands in for gs://)."""
    import tensorflow as tf

    from tfmeta.run import experiment, trainer

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config

    config = load_config(f"{SINE}:smoke")
    config.update_from_flattened_dict(dict(_SMALL_SINE, **{"eval.episodes": 10}))
    workdir = "ram://tfmeta-test/run"
    summary = trainer.train(config, workdir)
    assert summary["step"] == 6
    assert tf.io.gfile.exists(f"{workdir}/config.json")
    assert tf.train.latest_checkpoint(f"{workdir}/checkpoints").endswith("ckpt-6")
    assert tf.io.gfile.listdir(f"{workdir}/train")  # TensorBoard event file
    result = json.loads(tf.io.gfile.GFile(f"{workdir}/eval_test.json").read())
    assert result["metric"] == "mse" and result["episodes"] == 10
    exp = experiment.restore(workdir)
    assert int(exp.step.numpy()) == 6


# ----------------------------------------------------------------------- TPU-shaped step


def _synthetic_experiment(algorithm: str, **overrides):
    import tensorflow as tf

    from tfmeta.run import experiment

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from distributed_driver import load_config, synthetic_omniglot

    config = load_config(f"{OMNIGLOT_MAML}:smoke")
    config.update_from_flattened_dict({"algorithm": algorithm, "data.image_size": 12,
                                       "model.filters": 4, "train.meta_batch_size": 4,
                                       **overrides})
    data = synthetic_omniglot(config.data.image_size, num_characters=300)
    return experiment.build_experiment(config, tf.distribute.get_strategy(), data=data)


def _replica_step(exp):
    def step(batch):
        s = exp.algorithm.meta_step(batch, global_batch_size=4)
        exp.optimizer.apply_gradients(zip(s.grads, exp.model.trainable_variables))
        return s.metrics["loss"]

    return step


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_whole_train_step_compiles_with_xla_like_on_tpu(algorithm):
    """A TPU compiles the whole replica step (meta-gradients and optimizer update) with XLA:
    static shapes, no host round trips. Compile it so on CPU and compare with graph mode."""
    import tensorflow as tf

    # SGD only: Adam's normalised first steps turn float rounding differences of near-zero
    # gradients into full-size steps (the algorithms' own tests compare Adam across modes).
    overrides = {"inner.optimizer": "sgd", "inner.lr": 0.1, "inner.batch_size": 3,
                 "outer.optimizer": "sgd", "outer.lr": 1.0} if algorithm == "reptile" else {
                     "outer.optimizer": "sgd", "outer.lr": 0.1}
    results = []
    for jit in (False, True):
        exp = _synthetic_experiment(algorithm, **overrides)
        batch = next(iter(exp.source.make_dataset("train", 0, 4, 0, 0)))

        fn = tf.function(_replica_step(exp), jit_compile=jit)
        losses = [float(fn(batch)) for _ in range(2)]
        results.append((losses, [v.numpy() for v in exp.model.trainable_variables]))
    (graph_losses, graph_params), (xla_losses, xla_params) = results
    np.testing.assert_allclose(graph_losses, xla_losses, rtol=1e-4)
    for g, x in zip(graph_params, xla_params):
        np.testing.assert_allclose(g, x, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_meta_parameters():
    """--config.dtype=bfloat16 (the TPU option): bfloat16 compute, float32 parameters and
    fast weights, finite meta-loss."""
    import tensorflow as tf

    exp = _synthetic_experiment("maml", **{"dtype": "bfloat16", "data.image_size": 28})
    assert all(v.dtype == "float32" for v in exp.model.trainable_variables)
    batch = next(iter(exp.source.make_dataset("train", 0, 4, 0, 0)))
    fast = exp.algorithm.adapt(batch["support_x"][0], batch["support_y"][0])
    assert all(f.dtype == tf.float32 for f in fast)
    step = tf.function(_replica_step(exp))
    losses = [float(step(batch)) for _ in range(3)]
    assert all(np.isfinite(losses)), losses


def test_multiworker_without_a_usable_tf_config_is_a_clear_error(monkeypatch):
    from tfmeta.run import cli
    from tfmeta.base import distribute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.ClusterConfigError, match="TF_CONFIG .*not set.*\"cluster\""):
        distribute.make_strategy("multiworker")
    for bad in ("{", "{}", '{"cluster": {}, "task": {}}', "[]"):
        monkeypatch.setenv("TF_CONFIG", bad)
        with pytest.raises(distribute.ClusterConfigError, match="TF_CONFIG"):
            distribute.make_strategy("multiworker")
    cluster = {"worker": ["localhost:12345", "localhost:12346"]}
    for bad_spec, expected in [
            ({"cluster": cluster, "task": {"type": "worker", "index": 2}},
             "task index is 2; the cluster's job 'worker' has 2 task(s), so it must be an "
             "integer from 0 to 1"),
            ({"cluster": cluster, "task": {"type": "worker", "index": -1}}, "index is -1"),
            ({"cluster": cluster, "task": {"type": "worker", "index": "0"}}, "index is '0'"),
            ({"cluster": cluster, "task": {"type": "worker"}}, "index is None"),
            ({"cluster": cluster, "task": {"type": "ps", "index": 0}},
             "task type is 'ps', which is not a job of its cluster ['worker']"),
            ({"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}},
             "cluster has the job 'ps'"),
            ({"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}},
             "job 'worker' is 'h:1'; it must be a non-empty list")]:
        monkeypatch.setenv("TF_CONFIG", json.dumps(bad_spec))
        with pytest.raises(distribute.ClusterConfigError) as info:
            distribute.make_strategy("multiworker")
        assert expected in str(info.value) and '"cluster"' in str(info.value), str(info.value)
    assert issubclass(distribute.ClusterConfigError, cli.user_errors())
    # (The binary's one line: tests/e2e/test_training_runs.py.)


def test_tpu_strategy_without_a_tpu_is_a_clear_error():
    from tfmeta.base import distribute

    with pytest.raises(distribute.TPUUnavailableError, match="--tpu=local on a TPU VM"):
        distribute.make_strategy("tpu", tpu="")


def test_time_budget_stops_within_one_iteration_of_it(tmp_path, monkeypatch):
    """A fake clock at one second per meta-iteration: a 30-second budget ends at iteration 30,
    not at the end of the 100-iteration compiled loop it falls in."""
    import tensorflow as tf

    from tests.distributed_driver import load_config
    from tfmeta.run import experiment, trainer

    config = load_config(f"{SINE}:smoke", {
        "train.iterations": 1000, "train.steps_per_loop": 100, "train.log_every": 100,
        "train.checkpoint_every": 1000, "train.eval_every": 0, "train.eval_episodes": 0,
        "train.max_minutes": 0.5})
    exp = experiment.build_experiment(config, tf.distribute.get_strategy())
    clock = [0.0]
    make_loop = trainer._make_train_loop

    def timed_loop(exp, phase_kwargs):
        loop = make_loop(exp, phase_kwargs)

        def call(iterator, num_steps):
            clock[0] += float(num_steps)  # one second per meta-iteration
            return loop(iterator, num_steps)
        return call

    monkeypatch.setattr(trainer, "_make_train_loop", timed_loop)
    summary = trainer.run(exp, str(tmp_path / "run"), final_evaluation=False,
                          now=lambda: clock[0])
    assert summary["step"] == 30 and clock[0] == 30.0
    assert trainer.steps_within_budget(10.0, None, 100) == 1  # first call: measure one
    assert trainer.steps_within_budget(0.5, 1.0, 100) == 1  # at least one
    assert trainer.steps_within_budget(1e6, 1.0, 100) == 100
