"""Work directories through the binaries: a second training refused while the first runs, an
unwritable or empty --workdir or a damaged work-directory file as one line, relative and ~
work directories after a cd.

The library (locks, config history, damaged checkpoints) is tested in
tests/unit/run/test_workdir.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, file_tree, subprocess_env
from tests.unit.run.test_workdir import (  # noqa: F401 (resumed_run is a fixture)
    _DAMAGE, _damage, _damaged_copy, _errors, _train_cmd, resumed_run)
from tfmeta.run import workdir


def test_second_training_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(_train_cmd(run_dir, "--config.train.iterations=1000000"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env(), cwd=REPO)
    try:
        deadline = time.time() + 300
        while not (run_dir / "checkpoints").exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        second = subprocess.run(_train_cmd(run_dir), capture_output=True, text=True,
                                env=subprocess_env(), cwd=REPO, timeout=300)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0], second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The killed run's lock is stale: the same command resumes.
    third = subprocess.run(_train_cmd(run_dir, "--config.train.iterations=1000000",
                                      "--config.train.max_minutes=0.02"),
                           capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "no longer alive" in third.stderr and "Resumed from" in third.stderr
    assert not (run_dir / workdir.LOCK_FILE).exists()


def test_unwritable_workdir_is_one_line_exit_2():
    proc = subprocess.run(_train_cmd("/proc/tfmeta-run"), capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "/proc/tfmeta-run" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_binaries_with_a_relative_workdir_after_cd(tmp_path):
    """Train (with its final export) in a relative directory, evaluate it from elsewhere via ~."""
    env = subprocess_env(HOME=str(tmp_path))
    # A cheap export: one inner step at most.
    proc = subprocess.run(_train_cmd("runs/rel1", "--export", "--config.train.iterations=4",
                                     "--config.inner.eval_steps=1",
                                     "--config.export.max_inner_steps=1"),
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "rel1"
    assert (run_dir / "export" / "saved_model.pb").exists()
    assert (run_dir / "checkpoints" / "ckpt-4.index").exists()
    (tmp_path / "elsewhere").mkdir()
    proc = subprocess.run([sys.executable, "-m", "tfmeta.evaluate", "--workdir=~/runs/rel1",
                           "--episodes=3"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path / "elsewhere"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"written to {run_dir}{os.sep}eval_test_" in proc.stdout
    # An empty --workdir would have meant the current directory: one line, nothing written.
    proc = subprocess.run(_train_cmd(""), capture_output=True, text=True, env=env,
                          cwd=str(tmp_path / "elsewhere"), timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(_errors(proc)) == 1 and "work directory path is empty" in _errors(proc)[0]
    assert os.listdir(tmp_path / "elsewhere") == []


@pytest.mark.parametrize("binary,case", [
    ("train", "truncated config.json"), ("evaluate", "random bytes in config.json"),
    ("export", "truncated config_changes.json")])
def test_damaged_workdir_json_is_one_line_exit_2_in_every_binary(tmp_path, resumed_run, binary,
                                                                 case):
    name, _, expected = _DAMAGE[case]
    run_dir = _damaged_copy(resumed_run, tmp_path, case)
    cmd = (_train_cmd(run_dir, "--config.train.iterations=9") if binary == "train" else
           [sys.executable, "-m", f"tfmeta.{binary}", f"--workdir={run_dir}"])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(_errors(proc)) == 1
    assert os.path.join(run_dir, name) in _errors(proc)[0] and expected in _errors(proc)[0]


# The binaries' one line for the refusals tests/unit/run/test_workdir.py makes in process, on
# copies of the run built once per pytest run (checkpoints 3, 6 and 9; iterations 6 -> 9).
def _copy_of(resumed_run: str, dest) -> str:
    import shutil

    run_dir = str(dest / "run")
    shutil.copytree(resumed_run, run_dir)
    return run_dir


def test_incompatible_config_is_one_line_exit_2_writing_nothing(tmp_path, resumed_run):
    run_dir = _copy_of(resumed_run, tmp_path)
    before = file_tree(run_dir)
    proc = subprocess.run(_train_cmd(run_dir, "--config.inner.lr=0.5"), capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "inner.lr: 0.01 -> 0.5" in errors[0]
    assert file_tree(run_dir) == before


def test_no_readable_checkpoint_is_one_line_naming_each_one(tmp_path, resumed_run):
    run_dir = _copy_of(resumed_run, tmp_path)
    ckpts = os.path.join(run_dir, "checkpoints")
    names = sorted(f[: -len(".index")] for f in os.listdir(ckpts) if f.endswith(".index"))
    assert len(names) >= 2, names
    for name in names:
        _damage(os.path.join(ckpts, name), "truncated")
    proc = subprocess.run([sys.executable, "-m", "tfmeta.export", f"--workdir={run_dir}"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=REPO,
                          timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(name in errors[0] for name in names), errors


def test_checkpoints_without_config_json_are_one_line_exit_2_writing_nothing(tmp_path,
                                                                           resumed_run):
    run_dir = _copy_of(resumed_run, tmp_path)
    os.remove(os.path.join(run_dir, workdir.CONFIG_FILE))
    before = file_tree(run_dir)
    proc = subprocess.run(_train_cmd(run_dir, "--config.inner.lr=0.5"), capture_output=True,
                          text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(_errors(proc)) == 1 and "no config.json" in _errors(proc)[0]
    assert file_tree(run_dir) == before
