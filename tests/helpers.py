"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
from collections.abc import Callable

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


def shared_dir(tmp_path_factory) -> pathlib.Path:
    """A directory shared by every worker of this pytest run (the run's own tmp dir without xdist).

    Under pytest-xdist each worker's base temp dir is ``pytest-N/popen-gwK``; their parent,
    ``pytest-N``, is the run's.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "shared"
    path.mkdir(exist_ok=True)
    return path


def build_once(tmp_path_factory, name: str, build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """``shared_dir/name``, built by ``build(path)`` once per pytest run, whichever worker asks first.

    The first worker builds under an exclusive file lock and marks the result done; the others
    wait on the lock and reuse it, so nobody reads a half-built directory. A failed build is
    recorded too, so the other workers fail at once with its message instead of repeating it.
    """
    root = shared_dir(tmp_path_factory)
    path, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if failed.exists():
            raise AssertionError(f"{name}: built by another worker, which failed:\n"
                                 + failed.read_text())
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            try:
                build(path)
            except pytest.skip.Exception:
                raise  # not a failure: each worker finds the same reason to skip
            except BaseException as e:
                failed.write_text(f"{type(e).__name__}: {e}")
                raise
            done.touch()
    return path


def file_tree(root: str) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> content), to show that nothing changed."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def regression_batch(seed: int = 0, tasks: int = 3, k: int = 6, q: int = 4) -> dict:
    """A float64 batch of ``tasks`` random [*, 1] regression tasks (k support, q query points)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return {
        "support_x": tf.constant(rng.uniform(-2, 2, (tasks, k, 1))),
        "support_y": tf.constant(rng.normal(size=(tasks, k, 1))),
        "query_x": tf.constant(rng.uniform(-2, 2, (tasks, q, 1))),
        "query_y": tf.constant(rng.normal(size=(tasks, q, 1))),
    }


# Small classification tasks and models for the core tests: cheap to trace and compile.
def image_batch(seed=0, tasks=4, ways=3, shots=2, queries=4, image=8, dtype="float32"):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return {
        "support_x": tf.constant(rng.normal(size=(tasks, ways * shots, image, image, 1)), dtype),
        "support_y": tf.constant(np.tile(np.arange(ways), (tasks, shots))),
        "query_x": tf.constant(rng.normal(size=(tasks, queries, image, image, 1)), dtype),
        "query_y": tf.constant(rng.integers(0, ways, (tasks, queries))),
    }


def vector_batch(seed=0, tasks=3, ways=3, shots=2, queries=4, features=6, dtype="float32"):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return {
        "support_x": tf.constant(rng.normal(size=(tasks, ways * shots, features)), dtype),
        "support_y": tf.constant(np.tile(np.arange(ways), (tasks, shots))),
        "query_x": tf.constant(rng.normal(size=(tasks, queries, features)), dtype),
        "query_y": tf.constant(rng.integers(0, ways, (tasks, queries))),
    }


def tiny_conv4(seed=0):
    from tfmeta.core import models

    return models.omniglot_conv4(3, image_size=8, filters=4, seed=seed)


def mlp_with_batch_norm(seed=0, features=6):
    """A small Sequential classifier with tfmeta BatchNorm: cheap to trace and compile."""
    import keras

    from tfmeta.core import layers

    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(8, kernel_initializer=init(seed)),
            layers.BatchNorm(),
            keras.layers.ReLU(),
            keras.layers.Dense(3, kernel_initializer=init(seed + 1)),
        ]
    )


def write_images(folder: str, count: int, seed: int, size: int = 28, fmt: str = "png") -> None:
    """Writes ``count`` random black-on-white images ``0.png``, ``1.png``... into ``folder``."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.where(rng.uniform(size=(size, size)) < 0.1, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(os.path.join(folder, f"{i}.{fmt}"))


def write_image_folders(root: str, classes: int = 3, shots: int = 1) -> tuple[str, str]:
    """Writes ``root/support/class_<c>/`` (``shots`` images each) and ``root/query/`` (4 images).

    Returns:
      The support and query directories, as ``tfmeta.adapt`` takes them.
    """
    for c in range(classes):
        write_images(os.path.join(root, "support", f"class_{c}"), shots, seed=c)
    write_images(os.path.join(root, "query"), 4, seed=99)
    return os.path.join(root, "support"), os.path.join(root, "query")
