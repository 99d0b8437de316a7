"""Shared pytest fixtures.

Real Omniglot comes from the offline archives: ``$TFMETA_OMNIGLOT_ARCHIVES``,
else ``<repo>/../shared/omniglot``. Without them tests that need real data are
skipped, except under ``CI=true`` where they fail. Everything is prepared into
one temporary TFDS data dir per pytest run, never outside the pytest tmp dir.

The expensive session fixtures (prepared Omniglot, the smoke training, the random
export) are built once per run, not once per pytest-xdist worker: in a directory all
workers of the run share, by whichever worker asks first (``tests.helpers.build_once``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import ARCHIVES_ENV, REPO, archives_dir, build_once, shared_dir, subprocess_env


@pytest.fixture(scope="session")
def omniglot_archives_dir() -> str:
    """Directory holding the four Omniglot zip archives."""
    return archives_dir()


@pytest.fixture
def float64():
    """Builds layers in float64 for the duration of a test (gradient checks)."""
    import keras

    # Keras caches the global dtype policy on first use, so setting floatx
    # alone is not enough once any layer exists.
    old_floatx, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(old_floatx)
    keras.config.set_dtype_policy(old_policy)


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir shared by the whole pytest run, all its workers included.

    Preparing a dataset in it is safe from several processes: ``omniglot.load`` prepares under
    a lock of its own and a second process finds the dataset prepared.
    """
    path = shared_dir(tmp_path_factory) / "tfds_data"
    path.mkdir(exist_ok=True)
    return str(path)


@pytest.fixture(scope="session")
def omniglot_small(omniglot_archives_dir, tfds_data_dir):
    """The small subset (242 characters at 28x28), prepared once per pytest run."""
    from tfmeta.data import omniglot

    return omniglot.load(data_dir=tfds_data_dir, archives_dir=omniglot_archives_dir,
                         subset="small")


@pytest.fixture(scope="session")
def omniglot_full(omniglot_archives_dir, tfds_data_dir):
    """All 1623 characters at 28x28, prepared once per pytest run (about 10 s)."""
    from tfmeta.data import omniglot

    return omniglot.load(data_dir=tfds_data_dir, archives_dir=omniglot_archives_dir,
                         subset="full")


@pytest.fixture(scope="session")
def smoke_workdir(tmp_path_factory, omniglot_archives_dir, tfds_data_dir, omniglot_small) -> str:
    """Work directory of ``tfmeta.train`` with ``configs/omniglot_maml.py:smoke`` (with export).

    It reuses the run's TFDS data dir, where ``omniglot_small`` already prepared the dataset.
    This is also the end-to-end test of the training binary: a failure here fails every user.
    Trained once per run and shared by the workers: tests read it, or copy it to change it.
    """

    def train(root: pathlib.Path) -> None:
        root.mkdir()
        cmd = [sys.executable, "-m", "tfmeta.train",
               f"--config={os.path.join(REPO, 'configs', 'omniglot_maml.py')}:smoke",
               f"--workdir={root / 'workdir'}", f"--config.data.data_dir={tfds_data_dir}"]
        proc = subprocess.run(cmd, cwd=str(root),
                              env=subprocess_env(**{ARCHIVES_ENV: omniglot_archives_dir}),
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"smoke training failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-4000:]}")

    return str(build_once(tmp_path_factory, "smoke", train) / "workdir")


@pytest.fixture(scope="session")
def random_export(tmp_path_factory) -> dict:
    """A 5-way MAML conv4 (8 filters, random weights, 3 inner steps) exported to a SavedModel.

    Returns ``{"path", "model", "algorithm", "metadata"}``; the model and algorithm are
    in-process equals of the exported ones, to compare the SavedModel with. The SavedModel is
    written once per run and shared by the workers; each worker builds its own model, which
    the seed makes equal to the exported one.
    """
    from tfmeta.run import exporter
    from tfmeta.core import models
    from tfmeta.core.maml import MAML

    model = models.omniglot_conv4(5, filters=8, seed=0)
    algorithm = MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3)
    metadata = {"task": "omniglot", "algorithm": "maml", "ways": 5, "image_size": 28,
                "inner_steps": 3, "inner_lr": 0.4, "bn_mode": "transductive"}

    def export(root: pathlib.Path) -> None:
        root.mkdir()
        exporter.export(model, algorithm, str(root / "model"), metadata=metadata)

    path = str(build_once(tmp_path_factory, "random_export", export) / "model")
    return {"path": path, "model": model, "algorithm": algorithm, "metadata": metadata}


@pytest.fixture(scope="session")
def plain_saved_model(tmp_path_factory) -> str:
    """A SavedModel that tfmeta.export did not write (one tf.function, no metadata)."""
    import tensorflow as tf

    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2.0 * x},
                                input_signature=[tf.TensorSpec([None], tf.float32)],
                                autograph=False)
    path = str(tmp_path_factory.mktemp("plain") / "model")
    tf.saved_model.save(module, path, signatures={"double": module.double})
    return path
