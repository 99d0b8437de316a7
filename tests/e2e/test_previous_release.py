"""Work directories and exports written by the previous release (0.3) work with this code.

0.3 (commit 3c526f0; its version string still read 0.2.0) had the flat layout (``tfmeta.exporter``, ``tfmeta.trainer``, ...). Its
training binary, taken from the repository's history, trains a tiny run and exports it; this code
then resumes that run for a few more steps, evaluates it, and serves the old export. Without the
history (a shallow clone, a source archive) the tests skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, subprocess_env

RELEASE = "3c526f0"
RELEASE_VERSION = "0.2.0"  # what 0.3 wrote into its metadata


def _release_tree(root) -> str:
    """The previous release's ``tfmeta`` and ``configs``, extracted under ``root``."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release cannot be extracted")
    probe = subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{RELEASE}^{{commit}}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"commit {RELEASE} (release {RELEASE_VERSION}) is not in this checkout's "
                    "git history (a shallow clone or a source archive)")
    tree = os.path.join(str(root), "release")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", REPO, "archive", RELEASE, "tfmeta", "configs"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def _train(code: str, config: str, workdir: str, overrides: list[str], *, env_extra=None,
           export: bool = True) -> subprocess.CompletedProcess:
    """Runs the training binary of ``code`` (a tree holding ``tfmeta`` and ``configs``)."""
    env = subprocess_env(**(env_extra or {}))
    # The code under test comes first on the path, not this checkout's.
    env["PYTHONPATH"] = code + os.pathsep + env["PYTHONPATH"]
    cmd = [sys.executable, "-m", "tfmeta.train", f"--config={os.path.join(code, config)}",
           f"--workdir={workdir}", *overrides] + ([] if export else ["--noexport"])
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


SINE = ["--config.train.iterations={n}", "--config.train.steps_per_loop=1",
        "--config.train.log_every=1", "--config.train.checkpoint_every=1",
        "--config.train.eval_every=1000", "--config.train.eval_episodes=2",
        "--config.train.meta_batch_size=2", "--config.eval.episodes=4",
        "--config.inner.eval_steps=2"]


def _sine(n: int) -> list[str]:
    return [o.format(n=n) for o in SINE]


def _assert_same_answers(old: str, new: str) -> None:
    import tensorflow as tf

    a, b = tf.saved_model.load(old), tf.saved_model.load(new)
    assert sorted(a.signatures) == sorted(b.signatures)
    rng = np.random.default_rng(1)
    x = lambda *shape: rng.uniform(-5, 5, shape).astype(np.float32)  # noqa: E731
    calls = {"adapt_and_predict": dict(support_x=x(10, 1), support_y=x(10, 1), query_x=x(7, 1)),
             "adapt_and_predict_batch": dict(support_x=x(3, 10, 1), support_y=x(3, 10, 1),
                                             query_x=x(3, 7, 1)),
             "predict": dict(query_x=x(7, 1))}
    calls["adapt_and_predict_steps"] = dict(calls["adapt_and_predict"],
                                            inner_steps=np.int32(5))
    for name, inputs in calls.items():
        np.testing.assert_array_equal(a.signatures[name](**inputs)["predictions"],
                                      b.signatures[name](**inputs)["predictions"], err_msg=name)


def test_previous_release_sinusoid_run_resumes_evaluates_and_serves(tmp_path):
    from tfmeta.run import evaluation, experiment, exporter
    from tfmeta.serving import serving_client

    release = _release_tree(tmp_path)
    workdir = str(tmp_path / "run")
    _train(release, "configs/sinusoid_maml.py:smoke", workdir, _sine(2))
    old_export = str(tmp_path / "old_export")
    shutil.copytree(os.path.join(workdir, "export"), old_export)
    old_meta = serving_client.read_metadata(old_export)
    assert old_meta["tfmeta_version"] == RELEASE_VERSION and old_meta["step"] == 2

    # The same parameters exported by this code answer as the old export, bit for bit.
    same = exporter.export_from_workdir(workdir, str(tmp_path / "same_step"))
    _assert_same_answers(old_export, same)

    # This code resumes the old run (from its step 2) and trains two more steps.
    _train(REPO, "configs/sinusoid_maml.py:smoke", workdir, _sine(4), export=False)
    exp = experiment.restore(workdir)
    assert int(exp.step.numpy()) == 4
    result = evaluation.evaluate(exp, "test", episodes=4)
    assert np.isfinite(result["mse"]) and result["episodes"] == 4 and result["step"] == 4

    # The old export serves through this code's client, and agrees with the old parameters.
    model = serving_client.load_saved_model(old_export)
    assert serving_client.read_metadata(model) == old_meta
    rng = np.random.default_rng(0)
    sx = rng.uniform(-5, 5, (10, 1)).astype(np.float32)
    sy = np.sin(sx).astype(np.float32)
    qx = rng.uniform(-5, 5, (6, 1)).astype(np.float32)
    out = model.signatures["adapt_and_predict"](support_x=sx, support_y=sy, query_x=qx)
    assert out["predictions"].shape == (6, 1) and np.isfinite(out["predictions"].numpy()).all()
    # This code's export of the resumed run has the same signatures as the old one.
    new = exporter.export_experiment(exp, str(tmp_path / "new_export"), workdir=workdir)
    assert serving_client.read_metadata(new)["signatures"] == old_meta["signatures"]


@pytest.mark.slow
def test_previous_release_omniglot_smoke_resumes_evaluates_and_classifies(
        tmp_path, omniglot_archives_dir, tfds_data_dir, omniglot_small):
    from tests.helpers import ARCHIVES_ENV
    from tfmeta.run import evaluation, experiment
    from tfmeta.serving import serving_client

    release = _release_tree(tmp_path)
    workdir = str(tmp_path / "run")
    common = [f"--config.data.data_dir={tfds_data_dir}", "--config.train.steps_per_loop=5",
              "--config.train.checkpoint_every=5", "--config.train.eval_every=1000",
              "--config.eval.episodes=10"]
    env = {ARCHIVES_ENV: omniglot_archives_dir}
    _train(release, "configs/omniglot_maml.py:smoke", workdir,
           ["--config.train.iterations=10", *common], env_extra=env)
    old_export = str(tmp_path / "old_export")
    shutil.copytree(os.path.join(workdir, "export"), old_export)
    _train(REPO, "configs/omniglot_maml.py:smoke", workdir,
           ["--config.train.iterations=20", *common], env_extra=env)
    exp = experiment.restore(workdir)
    assert int(exp.step.numpy()) == 20
    result = evaluation.evaluate(exp, "test", episodes=10)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["step"] == 20
    # The old export classifies through this code's client (as tfmeta.adapt does).
    meta = serving_client.read_metadata(old_export)
    ways, size = meta["ways"], meta["image_size"]
    rng = np.random.default_rng(0)
    support = rng.uniform(size=(ways, size + 5, size + 5, 1)).astype(np.float32)
    queries = rng.uniform(size=(3, size + 5, size + 5, 1)).astype(np.float32)
    logits = serving_client.adapt_and_predict(serving_client.load_saved_model(old_export),
                                              support, list(range(ways)), queries)
    assert np.asarray(logits).shape[0] == 3
