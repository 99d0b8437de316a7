"""Reptile as the reference code runs it, in training processes of its own: the carried Adam state
resumes bit-exactly (deterministic ops are a process-wide switch), and two replicas of
MirroredStrategy (logical devices, set before TensorFlow starts) carry what one device carries.

The references themselves are checked in tests/unit/core/test_reptile_reference.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tests.helpers import REPO, subprocess_env


# ----------------------------------------------------------------------- resume
_SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")
_REPTILE_SINE = [
    "--config.algorithm=reptile", "--config.inner.optimizer=adam", "--config.inner.lr=0.01",
    "--config.inner.steps=3", "--config.inner.batch_size=4", "--config.inner.shuffle_per_task=True",
    "--config.inner.carry_optimizer_state=True", "--config.outer.optimizer=sgd",
    "--config.outer.lr=0.5", "--config.train.steps_per_loop=10",
    "--config.train.checkpoint_every=10", "--config.train.eval_every=0",
    "--config.train.eval_episodes=0", "--config.train.meta_batch_size=4",
]


def _run(workdir, iterations):
    cmd = [sys.executable, "-m", "tfmeta.train", f"--config={_SINE}:smoke", f"--workdir={workdir}",
           "--deterministic", "--noexport", f"--config.train.iterations={iterations}",
           *_REPTILE_SINE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env(),
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    reader = tf.train.load_checkpoint(latest)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model", "inner_loop", "step"))}


def test_resume_continues_the_carried_state_bit_exactly(tmp_path):
    straight = _run(str(tmp_path / "straight"), 40)
    _run(str(tmp_path / "parts"), 20)
    resumed = _run(str(tmp_path / "parts"), 40)
    carried = [k for k in straight if k.startswith("inner_loop") and k.endswith("VARIABLE_VALUE")]
    assert len(carried) >= 4, sorted(straight)  # the moments and powers are in the checkpoint
    assert sorted(straight) == sorted(resumed)
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)
    power = [k for k in carried if np.ndim(straight[k]) == 0]
    assert power and any(0 < straight[k] < 1 for k in power)


def test_mirrored_replicas_carry_the_same_state_as_one_device(tmp_path):
    """Under MirroredStrategy the carried state is the mean over every replica's tasks."""
    overrides = {"train.iterations": 6, "train.steps_per_loop": 3, "train.meta_batch_size": 4,
                 "train.eval_every": 0, "train.eval_episodes": 0, "train.log_every": 3,
                 "train.checkpoint_every": 6, "algorithm": "reptile", "inner.optimizer": "adam",
                 "inner.lr": 0.01, "inner.steps": 3, "inner.batch_size": 4,
                 "inner.shuffle_per_task": True, "inner.carry_optimizer_state": True,
                 "outer.optimizer": "sgd", "outer.lr": 1.0, "outer.schedule": "linear"}
    values = {}
    for strategy in ("default", "mirrored"):
        spec = {"config": f"{_SINE}:smoke", "overrides": overrides, "strategy": strategy,
                "logical_cpus": 2, "workdir": str(tmp_path / strategy)}
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "distributed_driver.py"),
                               json.dumps(spec)], capture_output=True, text=True, timeout=600,
                              env=subprocess_env(), cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["replicas"] == (
            1 if strategy == "default" else 2)
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
            str(tmp_path / strategy / "checkpoints")))
        values[strategy] = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                            if k.startswith(("model", "inner_loop"))
                            and k.endswith("VARIABLE_VALUE")}
    carried = [k for k in values["default"] if k.startswith("inner_loop")]
    assert len(carried) >= 4 and any(np.any(values["default"][k] != 0) for k in carried)
    assert sorted(values["default"]) == sorted(values["mirrored"])
    for key, value in values["default"].items():
        np.testing.assert_allclose(values["mirrored"][key], value, rtol=1e-5, atol=1e-7,
                                   err_msg=key)
