"""Shared pytest fixtures.

Real Omniglot comes from the offline archives: ``$TFMETA_OMNIGLOT_ARCHIVES``,
else ``<repo>/../shared/omniglot``. Without them tests that need real data are
skipped, except under ``CI=true`` where they fail. Everything is prepared into
one temporary TFDS data dir per pytest run, never outside the pytest tmp dir.
"""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OMNIGLOT_ARCHIVES = (
    "images_background.zip",
    "images_evaluation.zip",
    "images_background_small1.zip",
    "images_background_small2.zip",
)


@pytest.fixture(scope="session")
def omniglot_archives_dir() -> str:
    """Directory holding the four Omniglot zip archives."""
    path = os.path.abspath(os.environ.get("TFMETA_OMNIGLOT_ARCHIVES")
                           or os.path.join(REPO, "..", "shared", "omniglot"))
    missing = [f for f in OMNIGLOT_ARCHIVES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        message = f"Omniglot archives {missing} not found in {path!r}"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: real data is required)")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir shared by the whole pytest run."""
    return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def omniglot_small(omniglot_archives_dir, tfds_data_dir):
    """The small subset (242 characters at 28x28), prepared once per pytest run."""
    from tfmeta import omniglot

    return omniglot.load(data_dir=tfds_data_dir, archives_dir=omniglot_archives_dir,
                         subset="small")


@pytest.fixture(scope="session")
def omniglot_full(omniglot_archives_dir, tfds_data_dir):
    """All 1623 characters at 28x28, prepared once per pytest run (about 10 s)."""
    from tfmeta import omniglot

    return omniglot.load(data_dir=tfds_data_dir, archives_dir=omniglot_archives_dir,
                         subset="full")
