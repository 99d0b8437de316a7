"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVES_ENV = "TFMETA_OMNIGLOT_ARCHIVES"
OMNIGLOT_ARCHIVES = (
    "images_background.zip",
    "images_evaluation.zip",
    "images_background_small1.zip",
    "images_background_small2.zip",
)


def archives_dir() -> str:
    """The offline Omniglot archives: ``$TFMETA_OMNIGLOT_ARCHIVES``, else ``<repo>/../shared/omniglot``.

    Skips the calling test when they are absent, except under ``CI=true`` where it fails.
    """
    path = os.path.abspath(os.environ.get(ARCHIVES_ENV)
                           or os.path.join(REPO, "..", "shared", "omniglot"))
    missing = [f for f in OMNIGLOT_ARCHIVES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        message = f"Omniglot archives {missing} not found in {path!r} (set ${ARCHIVES_ENV})"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: real data is required)")
        pytest.skip(message)
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child Python processes: quiet TensorFlow, the repo importable."""
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env
