"""End to end, as a user runs it: tfmeta.train (smoke config) -> tfmeta.evaluate, and the demo."""

from __future__ import annotations

import json
import os
import shutil
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


def _evaluate(workdir, *args):
    proc = subprocess.run([sys.executable, "-m", "tfmeta.evaluate", f"--workdir={workdir}", *args],
                          capture_output=True, text=True, timeout=600, env=subprocess_env(),
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1].removeprefix("written to ")
    with open(path) as f:
        return proc.stdout, path, json.load(f)


def test_evaluate_binary_reports_accuracy_with_its_protocol(smoke_workdir, tmp_path):
    # On a copy: the smoke run is shared by the whole test run, and evaluating writes into it.
    shutil.copytree(smoke_workdir, tmp_path / "run")
    smoke_workdir = str(tmp_path / "run")
    with open(os.path.join(smoke_workdir, "eval_test.json")) as f:
        training_result = f.read()
    out, path, result = _evaluate(smoke_workdir, "--split=test", "--episodes=30",
                                  "--inner_steps=5")
    assert "test accuracy:" in out and "(95% CI) over 30 episodes" in out
    assert "5-way 1-shot, 5 queries per class, 5 inner steps" in out
    assert "non-transductive (bn_mode=support" in out
    assert result["episodes"] == 30 and result["inner_steps"] == 5
    assert result["split"] == "test" and 0.0 <= result["accuracy"] <= 1.0
    assert result["ci95"] > 0 and result["transductive"] is False and result["queries"] == 5
    # A new file: the training run's own result is kept.
    assert os.path.basename(path) == "eval_test_support_5q_5steps_30ep.json"
    with open(os.path.join(smoke_workdir, "eval_test.json")) as f:
        assert f.read() == training_result
    _, again, _ = _evaluate(smoke_workdir, "--split=test", "--episodes=30", "--inner_steps=5")
    assert again.endswith("eval_test_support_5q_5steps_30ep-2.json")
    # The paper's protocol: transductive batch norm, here with 1 query per class.
    out, path, result = _evaluate(smoke_workdir, "--split=test", "--episodes=30",
                                  "--bn_mode=transductive", "--queries=1")
    assert result["transductive"] is True and result["queries"] == 1
    assert "transductive batch norm" in out and "1 queries per class" in out
    assert os.path.basename(path) == "eval_test_transductive_1q_3steps_30ep.json"
    # --replace writes the training run's file.
    _, path, _ = _evaluate(smoke_workdir, "--split=validation", "--episodes=10", "--replace")
    assert os.path.basename(path) == "eval_validation.json"


def test_evaluate_binary_rejects_a_directory_without_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tfmeta.evaluate", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, env=subprocess_env(),
                          cwd=REPO)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no config.json" in errors[0]


def _train(workdir, config: str, data_dir: str, archives: str, *overrides: str, timeout=900):
    """Runs the training binary as a user would; returns the finished process."""
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.train", f"--config={os.path.join(REPO, 'configs', config)}",
         f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *overrides],
        capture_output=True, text=True, timeout=timeout,
        env=subprocess_env(**{ARCHIVES_ENV: archives}), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _check_serving(export_dir) -> None:
    """The export answers a query alone as among others."""
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(str(export_dir))
    rng = np.random.default_rng(0)
    sx = rng.uniform(size=(5, 28, 28, 1)).astype("float32")
    qx = rng.uniform(size=(4, 28, 28, 1)).astype("float32")
    kw = dict(support_images=sx, support_labels=np.arange(5, dtype="int32"))
    together = loaded.signatures["adapt_and_predict"](**kw, query_images=qx)["logits"].numpy()
    alone = loaded.signatures["adapt_and_predict"](**kw, query_images=qx[:1])["logits"].numpy()
    np.testing.assert_allclose(alone[0], together[0], atol=1e-5)
    loaded.signatures["predict"](query_images=qx)


_SHORT = ["--config.train.iterations=10", "--config.train.eval_every=0",
          "--config.train.eval_episodes=0", "--config.eval.episodes=10"]


# The default mode (support) is the smoke run of conftest.py; the other two modes here. Reptile
# with inner minibatches under -m slow (its serving path is checked in-process in
# tests/unit/serving/test_export.py).
@pytest.mark.parametrize("overrides", [
    pytest.param(["--config.inner.bn_mode=transductive"], id="transductive"),
    pytest.param(["--config.inner.bn_mode=running"], id="running"),
    pytest.param(["--config.algorithm=reptile", "--config.inner.optimizer=adam",
                  "--config.inner.lr=0.001", "--config.outer.optimizer=sgd",
                  "--config.outer.lr=1.0", "--config.inner.batch_size=3"],
                 id="reptile_minibatch", marks=pytest.mark.slow),
])
def test_every_batch_norm_mode_trains_and_exports(tmp_path, omniglot_archives_dir,
                                                  tfds_data_dir, omniglot_small, overrides):
    """Training ends with a working SavedModel whose answers do not depend on other queries."""
    workdir = tmp_path / "run"
    _train(workdir, "omniglot_maml.py:smoke", tfds_data_dir, omniglot_archives_dir, *_SHORT,
           *overrides)
    _check_serving(workdir / "export")


# MAML++ (which crosses both of its switches within the run) by default; the other algorithms'
# binaries under -m slow (their cores, exports and configs are tested in-process).
@pytest.mark.parametrize("config", [
    "omniglot_mamlpp.py",
    *(pytest.param(c, marks=pytest.mark.slow) for c in (
        "omniglot_metasgd.py", "omniglot_anil.py", "omniglot_fomaml.py", "omniglot_reptile.py"))])
def test_every_algorithms_smoke_config_trains_evaluates_and_exports(
        tmp_path, omniglot_archives_dir, tfds_data_dir, omniglot_small, config):
    workdir = tmp_path / "run"
    overrides = list(_SHORT)
    if config == "omniglot_mamlpp.py":  # cross both MAML++ switches within the run
        overrides += ["--config.mamlpp.first_order_iterations=4",
                      "--config.mamlpp.iterations_per_epoch=2", "--config.mamlpp.msl_epochs=3",
                      "--config.train.steps_per_loop=5",
                      # Each phase compiles its own loop; 2 inner steps keep the three quick.
                      "--config.inner.steps=2", "--config.inner.eval_steps=2"]
    proc = _train(workdir, f"{config}:smoke", tfds_data_dir, omniglot_archives_dir, *overrides)
    if config == "omniglot_mamlpp.py":
        assert "From iteration 4: first_order=False, multi_step_loss=True" in proc.stderr
        assert "From iteration 6: first_order=False, multi_step_loss=False" in proc.stderr
    with open(workdir / "eval_test.json") as f:
        result = json.load(f)
    assert result["step"] == 10 and result["transductive"] is False
    _check_serving(workdir / "export")


@pytest.mark.slow
def test_maml_5way1shot_learns_on_full_omniglot(tmp_path, omniglot_archives_dir, tfds_data_dir,
                                                omniglot_full):
    """The paper configuration (64 filters, meta-batch 32, 28x28, maml split) for 300 of its
    60,000 iterations already adapts to unseen test characters far above chance (~4 minutes)."""
    workdir = tmp_path / "run"
    _train(workdir, "omniglot_maml.py:5way1shot", tfds_data_dir, omniglot_archives_dir,
           "--config.train.iterations=300", "--config.train.eval_every=0",
           "--config.train.eval_episodes=0", "--config.eval.episodes=200", "--noexport",
           timeout=1800)
    with open(workdir / "eval_test.json") as f:
        result = json.load(f)
    assert result["episodes"] == 200
    assert result["accuracy"] - result["ci95"] > 0.7, result
