"""End to end, as a user runs it: tfmeta.train (smoke config) -> tfmeta.evaluate, and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ARCHIVES_ENV, REPO, subprocess_env


def test_smoke_training_writes_a_complete_work_directory(smoke_workdir):
    names = set(os.listdir(smoke_workdir))
    assert {"config.json", "checkpoints", "train", "validation", "eval_test.json",
            "export"} <= names
    with open(os.path.join(smoke_workdir, "config.json")) as f:
        config = json.load(f)
    assert config["algorithm"] == "maml" and config["data"]["subset"] == "small"
    with open(os.path.join(smoke_workdir, "eval_test.json")) as f:
        result = json.load(f)
    assert result["metric"] == "accuracy" and result["episodes"] == config["eval"]["episodes"]
    assert result["step"] == config["train"]["iterations"]
    # 5-way: chance is 20%; even the short smoke run learns far beyond it.
    assert result["accuracy"] - result["ci95"] > 0.3, result


def test_evaluate_binary_reports_accuracy_with_confidence_interval(smoke_workdir):
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.evaluate", f"--workdir={smoke_workdir}",
         "--split=validation", "--episodes=30", "--inner_steps=5"],
        capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation accuracy:" in proc.stdout and "(95% CI) over 30 episodes" in proc.stdout
    with open(os.path.join(smoke_workdir, "eval_validation.json")) as f:
        result = json.load(f)
    assert result["episodes"] == 30 and result["inner_steps"] == 5
    assert result["split"] == "validation" and 0.0 <= result["accuracy"] <= 1.0
    assert result["ci95"] > 0


def test_evaluate_binary_rejects_a_directory_without_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfmeta.evaluate", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, env=subprocess_env(),
                          cwd=REPO)
    assert proc.returncode != 0
    assert "no config.json" in proc.stderr


def test_demo_main_job_runs_end_to_end(tmp_path, omniglot_archives_dir, tfds_data_dir,
                                       omniglot_small):
    """The README's main job, shortened: every stage runs and prints its result."""
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.demo", f"--workdir={tmp_path / 'demo'}",
         f"--data_dir={tfds_data_dir}", "--episodes=20",
         "--override=train.iterations=20", "--override=train.eval_every=0",
         "--override=train.eval_episodes=0", "--override=eval.episodes=20"],
        capture_output=True, text=True, timeout=900,
        env=subprocess_env(**{ARCHIVES_ENV: omniglot_archives_dir}), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "episode 0: support_x (5, 28, 28, 1)" in out
    assert "episodes/s" in out
    assert "test accuracy:" in out
    assert "unseen characters classified correctly" in out
    assert "Done." in out
    assert os.path.isdir(tmp_path / "demo" / "run" / "export")


@pytest.mark.slow
def test_maml_5way1shot_learns_on_full_omniglot(tmp_path, omniglot_archives_dir, tfds_data_dir,
                                                omniglot_full):
    """The paper configuration (64 filters, meta-batch 32, 28x28, maml split) for 300 of its
    60,000 iterations already adapts to unseen test characters far above chance (~4 minutes)."""
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.train",
         f"--config={os.path.join(REPO, 'configs', 'omniglot_maml.py')}:5way1shot",
         f"--workdir={workdir}", f"--config.data.data_dir={tfds_data_dir}",
         "--config.train.iterations=300", "--config.train.eval_every=0",
         "--config.train.eval_episodes=0", "--config.eval.episodes=200", "--noexport"],
        capture_output=True, text=True, timeout=1800,
        env=subprocess_env(**{ARCHIVES_ENV: omniglot_archives_dir}), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(workdir / "eval_test.json") as f:
        result = json.load(f)
    assert result["episodes"] == 200
    assert result["accuracy"] - result["ci95"] > 0.7, result
