"""MAML++ in training processes of its own: stopped before its switch to second order and resumed
after it, a run equals the uninterrupted one bit for bit (deterministic ops are a process-wide
switch).

The schedule itself (which iteration switches what) is checked in
tests/unit/core/test_algorithms.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO

DRIVER = os.path.join(REPO, "tests", "distributed_driver.py")
SINE = os.path.join(REPO, "configs", "sinusoid_maml.py")


def _drive(spec):
    proc = subprocess.run([sys.executable, DRIVER, json.dumps(spec)], capture_output=True,
                          text=True, timeout=600, cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_resume_across_the_derivative_order_switch_is_exact(tmp_path):
    """Stopped before the switch and resumed after it == uninterrupted, bit for bit."""
    overrides = {"algorithm": "mamlpp", "mamlpp.per_step_bn": False, "inner.steps": 2,
                 "mamlpp.first_order_iterations": 4, "mamlpp.iterations_per_epoch": 2,
                 "mamlpp.msl_epochs": 3, "train.iterations": 9, "train.steps_per_loop": 3,
                 "train.meta_batch_size": 4, "train.eval_every": 0, "train.eval_episodes": 0,
                 "train.log_every": 3, "train.checkpoint_every": 3}
    base = {"config": f"{SINE}:smoke", "deterministic": True}
    log = _drive(dict(base, overrides=overrides, workdir=str(tmp_path / "whole"),
                      dump=str(tmp_path / "whole.npz")))
    assert "From iteration 4: first_order=False" in log
    assert "From iteration 6: first_order=False, multi_step_loss=False" in log
    _drive(dict(base, overrides=dict(overrides, **{"train.iterations": 3}),
                workdir=str(tmp_path / "parts")))
    log = _drive(dict(base, overrides=overrides, workdir=str(tmp_path / "parts"),
                      dump=str(tmp_path / "parts.npz")))
    assert "Resumed from" in log and "From iteration 4" in log
    whole, parts = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "parts.npz")
    assert sorted(whole.files) == sorted(parts.files)
    for key in whole.files:
        np.testing.assert_array_equal(whole[key], parts[key], err_msg=key)
