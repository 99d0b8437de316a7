"""Meta-training in processes of its own: MirroredStrategy on logical devices and two workers of
TF_CONFIG (set before TensorFlow starts), resume after SIGTERM / kill -9, NaN and a full disk
through the tfmeta.train binary, and its refusal of bad configs.

The training loop itself is tested in process in tests/unit/run/test_trainer.py.
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

from tests.helpers import REPO, build_once
from tests.unit.run.test_trainer import _SMALL_SINE, OMNIGLOT_MAML, SINE

DRIVER = os.path.join(REPO, "tests", "distributed_driver.py")
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


_RESUME_OVERRIDES = ["--config.train.iterations=600", "--config.train.steps_per_loop=20",
                     "--config.train.checkpoint_every=20", "--config.train.log_every=100",
                     "--config.train.eval_every=0", "--config.train.eval_episodes=0",
                     "--config.train.keep_checkpoints=2"]


def _train_cmd(workdir) -> list[str]:
    return [sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
            f"--workdir={workdir}", "--deterministic", "--noexport", *_RESUME_OVERRIDES]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run both interrupted runs must end equal to, trained once per pytest run."""
    def build(workdir):
        proc = subprocess.run(_train_cmd(workdir), capture_output=True, text=True,
                              timeout=TIMEOUT, env=_env(), cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-4000:]

    return _checkpoint_values(str(build_once(tmp_path_factory, "uninterrupted_sine_run", build)))


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


def test_multiworker_without_tf_config_is_one_line_exit_2(tmp_path):
    env = _env()
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "tfmeta.train", f"--config={SINE}:smoke",
                           f"--workdir={tmp_path / 'run'}", "--strategy=multiworker"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "TF_CONFIG" in errors[0] and '"task"' in errors[0]
