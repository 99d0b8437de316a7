"""Meta-training loop: distribution equivalence, resume after SIGTERM / kill -9, NaN, bad configs.

Distributed runs are compared against single-device runs on the same global meta-batch; resumed
runs against uninterrupted ones. Runs that need process-level TF settings (logical devices,
TF_CONFIG, determinism, signals) go through tests/distributed_driver.py or the real binaries.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO

DRIVER = os.path.join(REPO, "tests", "distributed_driver.py")
SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")
OMNIGLOT_MAML = os.path.join(REPO, "configs", "omniglot_maml.py")
OMNIGLOT_REPTILE = os.path.join(REPO, "configs", "omniglot_reptile.py")
TIMEOUT = 600


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The driver runs as a script: this checkout's tfmeta, not an installed one.
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _drive(spec: dict, **env: str) -> dict:
    proc = subprocess.run([sys.executable, DRIVER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=TIMEOUT, env=_env(**env), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_same_params(a: dict, b: dict, *, rtol: float, atol: float) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)


def _checkpoint_values(workdir: str) -> dict[str, np.ndarray]:
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest, f"no checkpoint in {workdir}"
    reader = tf.train.load_checkpoint(latest)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if "model" in k or k.startswith("step")}


# ------------------------------------------------------------------------------------ configs


def test_unknown_strategy_is_rejected():
    from tfmeta.base import distribute

    with pytest.raises(ValueError, match="unknown strategy 'gpu'.*multiworker"):
        distribute.make_strategy("gpu")


def test_binary_rejects_bad_config_before_training(tmp_path):
    cases = [
        (["--config.inner.lr=-0.1"], "inner.lr"),
        (["--config.algorithm=protonet"], "algorithm"),
        (["--config.train.meta_batch_size=0"], "train.meta_batch_size"),
        (["--config.data.nonexistent=1"], "nonexistent"),
    ]
    for overrides, fragment in cases:
        workdir = tmp_path / fragment.replace(".", "_")
        proc = subprocess.run(
            [sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
             f"--workdir={workdir}", *overrides],
            capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=REPO)
        assert proc.returncode != 0, overrides
        assert fragment in proc.stderr, proc.stderr[-2000:]
        assert not (workdir / "checkpoints").exists()


# -------------------------------------------------------------------------------- distribution

_SMALL_SINE = {"train.iterations": 6, "train.steps_per_loop": 3, "train.meta_batch_size": 4,
               "train.eval_every": 0, "train.eval_episodes": 0, "train.log_every": 3,
               "train.checkpoint_every": 6}


@pytest.mark.parametrize("case", ["maml_sine", "reptile_sine", "maml_conv4_bn",
                                  "maml_colour_streamed"])
def test_mirrored_two_devices_matches_single_device(tmp_path, case):
    """Same global meta-batch on 1 device and on 2 mirrored replicas -> same parameters."""
    if case == "maml_colour_streamed":
        # Colour images of a folder, streamed from their prepared shards by each replica's
        # input pipeline.
        from tests.unit.data.test_image_sources import write_class_folders

        folder = write_class_folders(tmp_path / "photos", [4] * 8, size=(14, 10))
        overrides = dict(_SMALL_SINE)
        overrides.update({"task": "images", "data.source": f"folder:{folder}",
                          "data.storage": "stream", "data.channels": 3, "data.image_size": 12,
                          "data.prepared_dir": str(tmp_path / "prepared"), "data.rotate": False,
                          "data.ways": 2, "data.queries": 2, "data.split_fractions": (1.0, 0, 0),
                          "model.filters": 4, "outer.optimizer": "sgd", "outer.lr": 0.1,
                          "inner.bn_mode": "transductive", "train.tasks_in_parallel": "2"})
        spec = {"config": f"{OMNIGLOT_MAML}:smoke", "overrides": overrides}
    elif case == "maml_sine":
        spec = {"config": f"{SINE}:smoke", "overrides": dict(_SMALL_SINE)}
    elif case == "reptile_sine":
        overrides = dict(_SMALL_SINE)
        overrides.update({"algorithm": "reptile", "inner.optimizer": "adam", "inner.lr": 0.01,
                          "inner.steps": 3, "outer.optimizer": "sgd", "outer.lr": 1.0,
                          "outer.schedule": "linear"})
        spec = {"config": f"{SINE}:smoke", "overrides": overrides}
    else:
        overrides = dict(_SMALL_SINE)
        # Outer SGD: a conv bias followed by batch norm has an exactly-zero true gradient, so its
        # computed gradient is rounding noise that Adam would blow up into full-size steps.
        overrides.update({"data.image_size": 12, "model.filters": 4, "data.queries": 2,
                          "outer.optimizer": "sgd", "outer.lr": 0.1,
                          # Float32 comparison of a trajectory: with bn_mode="support", queries of
                          # noise images normalised by 5 support examples make training chaotic
                          # (even a different task grouping on one device ends 3e-2 apart after 6
                          # steps). The per-step contract in support mode is checked exactly in
                          # float64 (tests/unit/core/test_batched_core.py).
                          "inner.bn_mode": "transductive",
                          # Groups of 2 tasks on one device and on each replica: the same kernels
                          # either way, so only the cross-replica sum is under test here (other
                          # groupings differ by float32 round-off, which 6 steps amplify past
                          # 1e-5; their exactness is checked in float64, with MirroredStrategy,
                          # in tests/unit/core/test_batched_core.py).
                          "train.tasks_in_parallel": "2"})
        spec = {"config": f"{OMNIGLOT_MAML}:smoke", "overrides": overrides,
                "synthetic_omniglot": {"image_size": 12}}
    results = {}
    for strategy in ("default", "mirrored"):
        run = dict(spec, strategy=strategy, logical_cpus=2, workdir=str(tmp_path / strategy),
                   dump=str(tmp_path / f"{strategy}.npz"))
        results[strategy] = _drive(run)
    assert results["default"]["replicas"] == 1 and results["mirrored"]["replicas"] == 2
    single, mirrored = _npz(str(tmp_path / "default.npz")), _npz(str(tmp_path / "mirrored.npz"))
    # Parameters moved, and identically (up to float summation order) on both set-ups.
    _assert_same_params(single, mirrored, rtol=1e-5, atol=1e-6)
    initial = _npz(str(tmp_path / "default.npz.initial.npz"))
    assert any(not np.allclose(single[k], initial[k]) for k in single)
    for key in ("loss",):
        np.testing.assert_allclose(results["default"]["summary"]["train"][key],
                                   results["mirrored"]["summary"]["train"][key], rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multiworker_two_local_workers_end_identical(tmp_path):
    """Two worker processes on localhost (TF_CONFIG) run the smoke config in lockstep."""
    workers = [f"localhost:{_free_port()}" for _ in range(2)]
    overrides = dict(_SMALL_SINE)
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index}})
        spec = {"config": f"{SINE}:smoke", "overrides": overrides, "strategy": "multiworker",
                "workdir": str(tmp_path / "run"), "dump": str(tmp_path / f"worker{index}.npz")}
        procs.append(subprocess.Popen(
            [sys.executable, DRIVER, json.dumps(spec)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=_env(TF_CONFIG=tf_config), cwd=REPO))
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [s["replicas"] for s in summaries] == [2, 2]
    w0, w1 = _npz(str(tmp_path / "worker0.npz")), _npz(str(tmp_path / "worker1.npz"))
    _assert_same_params(w0, w1, rtol=0, atol=0)
    # Only the chief wrote checkpoints; the other worker's scratch directory is gone.
    assert os.path.isdir(tmp_path / "run" / "checkpoints")
    assert not os.path.exists(tmp_path / "run" / "tmp_worker_1")


# ------------------------------------------------------------------------ faults and resume

_RESUME_OVERRIDES = ["--config.train.iterations=600", "--config.train.steps_per_loop=20",
                     "--config.train.checkpoint_every=20", "--config.train.log_every=100",
                     "--config.train.eval_every=0", "--config.train.eval_episodes=0",
                     "--config.train.keep_checkpoints=2"]


def _train_cmd(workdir) -> list[str]:
    return [sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
            f"--workdir={workdir}", "--deterministic", "--noexport", *_RESUME_OVERRIDES]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.run(_train_cmd(workdir), capture_output=True, text=True, timeout=TIMEOUT,
                          env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _checkpoint_values(str(workdir))


def _start_and_interrupt(workdir, sig: int) -> subprocess.Popen:
    """Starts a run and sends ``sig`` once it has written its first checkpoint."""
    proc = subprocess.Popen(_train_cmd(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=REPO)
    state = os.path.join(workdir, "checkpoints", "checkpoint")
    deadline = time.time() + TIMEOUT
    while not os.path.exists(state):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=TIMEOUT)
    return proc


def _latest_step(workdir) -> int:
    return int(_checkpoint_values(str(workdir))["step/.ATTRIBUTES/VARIABLE_VALUE"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_interrupted_run_resumes_to_identical_parameters(tmp_path, uninterrupted, sig):
    workdir = tmp_path / "run"
    proc = _start_and_interrupt(workdir, sig)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0  # saved and exited cleanly
    else:
        assert proc.returncode == -signal.SIGKILL
    stopped_at = _latest_step(workdir)
    assert 0 < stopped_at < 600, "the run was not interrupted mid-way"
    # The latest checkpoint is complete: every saved object restores.
    resumed = subprocess.run(_train_cmd(workdir), capture_output=True, text=True,
                             timeout=TIMEOUT, env=_env(), cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resumed from" in resumed.stderr
    final = _checkpoint_values(str(workdir))
    assert int(final["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 600
    _assert_same_params(final, uninterrupted, rtol=0, atol=0)


def test_nan_loss_stops_naming_the_step_and_keeps_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
           f"--workdir={workdir}", "--noexport", "--config.train.iterations=400",
           "--config.train.steps_per_loop=10", "--config.train.checkpoint_every=10",
           "--config.train.eval_every=0", "--config.train.eval_episodes=0",
           # A huge meta learning rate makes the parameters, then the loss, blow up.
           "--config.outer.optimizer=sgd", "--config.outer.lr=1e4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                          cwd=REPO)
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr and "meta-iteration" in proc.stderr
    bad_step = int(proc.stderr.split("at meta-iteration ")[1].split(";")[0])
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    if latest:  # a checkpoint from before the failure, with finite values, is kept
        saved_step = _latest_step(workdir)
        assert saved_step <= bad_step
        for key, value in _checkpoint_values(str(workdir)).items():
            assert np.all(np.isfinite(value)), key


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


def test_disk_full_in_the_binary_is_one_line_exit_2(tmp_path):
    workdir = tmp_path / "run"
    script = (
        "import errno, os, sys\n"
        "import tensorflow as tf\n"
        "save = tf.train.CheckpointManager.save\n"
        "def failing_save(self, checkpoint_number=None, **kwargs):\n"
        "    if checkpoint_number is not None and checkpoint_number > 3:\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return save(self, checkpoint_number=checkpoint_number, **kwargs)\n"
        "tf.train.CheckpointManager.save = failing_save\n"
        "from tfmeta import train\n"
        "train.run()\n")
    cmd = [sys.executable, "-c", script, f"--config={SINE}:smoke", f"--workdir={workdir}",
           "--noexport", "--config.train.iterations=6", "--config.train.steps_per_loop=3",
           "--config.train.checkpoint_every=3", "--config.train.eval_every=0",
           "--config.train.eval_episodes=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                          env=_env(PYTHONPATH=REPO), cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert f"{workdir}/checkpoints/ckpt-3 is intact" in errors[0]
    assert os.path.exists(workdir / "checkpoints" / "ckpt-3.index")


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


def test_multiworker_without_a_usable_tf_config_is_a_clear_error(monkeypatch, tmp_path):
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
    env = _env()
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
                           f"--workdir={tmp_path / 'run'}", "--strategy=multiworker"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TF_CONFIG" in errors[0] and '"task"' in errors[0]


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
