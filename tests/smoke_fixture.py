"""Shared, session-scoped fixtures: one trained smoke run and one randomly initialised export.

Import the fixtures you use into a test module::

    from tests.smoke_fixture import smoke_workdir  # noqa: F401
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVES_ENV = "TFMETA_OMNIGLOT_ARCHIVES"

# Each test module that imports a fixture gets its own copy of it, so "session" scope alone would
# train once per module; results are cached here to build each artefact once per test run.
_CACHE: dict[str, object] = {}


def archives_dir() -> str:
    """The offline Omniglot archives; skips the test when absent (fails under CI=true)."""
    path = os.environ.get(ARCHIVES_ENV) or os.path.join(REPO, "..", "shared", "omniglot")
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "images_evaluation.zip")):
        message = f"Omniglot archives not found in {path!r} (set ${ARCHIVES_ENV})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child Python processes: quiet TensorFlow, the repo importable."""
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Work directory of ``tfmeta.train`` with ``configs/omniglot_maml.py:smoke`` (with export).

    Dataset preparation happens in a temporary TFDS data dir, from the offline archives.
    """
    if "smoke_workdir" in _CACHE:
        return _CACHE["smoke_workdir"]
    archives = archives_dir()
    root = tmp_path_factory.mktemp("smoke")
    workdir = str(root / "workdir")
    cmd = [sys.executable, "-m", "tfmeta.train",
           f"--config={os.path.join(REPO, 'configs', 'omniglot_maml.py')}:smoke",
           f"--workdir={workdir}", f"--config.data.data_dir={root / 'tfds'}"]
    proc = subprocess.run(cmd, cwd=str(root), env=subprocess_env(**{ARCHIVES_ENV: archives}),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"smoke training failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    _CACHE["smoke_workdir"] = workdir
    return workdir


@pytest.fixture(scope="session")
def random_export(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 5-way MAML conv4 (8 filters, random weights, 3 inner steps) exported to a SavedModel.

    Returns ``{"path", "model", "algorithm", "metadata"}``; the model and algorithm are the
    in-process originals, to compare the SavedModel with.
    """
    if "random_export" in _CACHE:
        return _CACHE["random_export"]
    from tfmeta import export, models
    from tfmeta.maml import MAML

    model = models.omniglot_conv4(5, filters=8, seed=0)
    algorithm = MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3)
    metadata = {"task": "omniglot", "algorithm": "maml", "ways": 5, "image_size": 28,
                "inner_steps": 3, "inner_lr": 0.4, "bn_mode": "transductive"}
    path = str(tmp_path_factory.mktemp("random_export") / "model")
    export.export(model, algorithm, path, metadata=metadata)
    _CACHE["random_export"] = {"path": path, "model": model, "algorithm": algorithm,
                               "metadata": metadata}
    return _CACHE["random_export"]
