"""The rematerialised meta-gradient (``remat="steps"``) against the unrolled tape (float64)."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.run import config as config_lib
from tfmeta.run import experiment
from tfmeta.core import maml, models
from tfmeta.core import remat as tfm_remat

from tests.gradcheck import classification_batch, fd_errors
from tests.helpers import REPO, mlp_with_batch_norm, vector_batch


def _meta_step(cls, remat, *, tasks_in_parallel, steps=2, seed=0, compile=False, **kwargs):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=seed)
    algo = cls(model, inner_lr=0.4, inner_steps=steps, tasks_in_parallel=tasks_in_parallel,
               remat=remat, **kwargs)
    batch = classification_batch(np.random.default_rng(seed + 2), tasks=3, shots=2, queries=4,
                                 ways=3, image=8)
    batch = {k: tf.constant(v) for k, v in batch.items()}
    if compile:
        return tf.function(algo.meta_step, jit_compile=True)(batch)
    return algo.meta_step(batch)


def _assert_same(none, steps, tol=1e-12):
    # Relative to the largest gradient: biases cancelled by batch norm have gradients that are
    # zero in exact arithmetic and round-off in both, so a per-tensor scale would be meaningless.
    scale = max(float(np.max(np.abs(g))) for g in none.grads)
    for a, b in zip(none.grads, steps.grads):
        assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) <= tol * scale
    for a, b in zip(none.non_trainable, steps.non_trainable):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol)
    for k in none.metrics:
        np.testing.assert_allclose(steps.metrics[k], none.metrics[k], rtol=1e-6)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the rematerialised path, so that an equality cannot pass vacuously."""
    calls = []
    real = tfm_remat.meta_gradients

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tfm_remat, "meta_gradients", counted)
    return calls


@pytest.mark.parametrize("cls,kwargs,tasks_in_parallel", [
    (maml.MAML, {}, 1),
    (maml.MAML, {"bn_mode": "support"}, 2),  # groups of 2 over 3 tasks: an uneven last group
    (maml.MAML, {"bn_mode": "running"}, "all"),
    (maml.MAMLpp, {}, "all"),  # learned per-step rates, per-step BN, multi-step loss
    (maml.MAMLpp, {"steps": 3}, 1),
    (maml.MetaSGD, {}, "all"),
    (maml.ANIL, {}, 1),
    (maml.MAML, {"first_order": True}, "all"),
])
def test_steps_equals_unrolled_tape(float64, spy, cls, kwargs, tasks_in_parallel):
    none = _meta_step(cls, "none", tasks_in_parallel=tasks_in_parallel, **kwargs)
    assert not spy
    steps = _meta_step(cls, "steps", tasks_in_parallel=tasks_in_parallel, **kwargs)
    assert spy
    _assert_same(none, steps)


def test_steps_equals_unrolled_under_xla(float64):
    """Compiled by XLA (the loops' static trip counts and shapes), with per-step batch norm."""
    batch = vector_batch(seed=1, dtype="float64")

    def compiled_step(remat):
        algo = maml.MAMLpp(mlp_with_batch_norm(seed=0), inner_lr=0.1, inner_steps=2,
                           tasks_in_parallel="all", remat=remat)
        return tf.function(algo.meta_step, jit_compile=True)(batch)

    _assert_same(compiled_step("none"), compiled_step("steps"), tol=1e-10)


def test_steps_matches_finite_differences(float64):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel="all", remat="steps")
    batch = classification_batch(np.random.default_rng(2), tasks=2, shots=2, queries=4, ways=3,
                                 image=8)
    errors, n, _ = fd_errors(algo, batch, coords=6)
    assert n >= 6
    assert errors.max() < 1e-6, errors


def test_unknown_remat_is_refused():
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    with pytest.raises(ValueError, match="unknown remat 'blocks'; allowed: \\['none', 'steps'\\]"):
        maml.MAML(model, inner_lr=0.4, inner_steps=1, remat="blocks")


def test_config_field_reaches_the_algorithm():
    config = config_lib.base_config()
    config.algorithm = "maml"
    config.inner.remat = "steps"
    config_lib.validate(config)
    model = models.omniglot_conv4(5, filters=4, seed=0)
    algo = experiment.build_algorithm(config, model, classification=True)
    assert algo.remat == "steps"


@pytest.mark.parametrize("algorithm,remat,message", [
    ("maml", "all", "config field 'inner.remat' is 'all'"),
    ("reptile", "steps", "it is a MAML-family option"),
])
def test_config_refuses_bad_remat(algorithm, remat, message):
    config = config_lib.base_config()
    config.algorithm = algorithm
    config.inner.remat = remat
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(config)


def _memory_benchmark():
    spec = importlib.util.spec_from_file_location(
        "tfmeta_memory_benchmark", os.path.join(REPO, "benchmarks", "memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("steps", [pytest.param(30, marks=pytest.mark.slow), 12])
def test_steps_keeps_less_memory_than_the_unrolled_tape(steps):
    """What one call adds to the traced process's RSS, a fresh process per setting, conv4.

    The unrolled tape keeps every step's activations (about 30 MB a step here); "steps" keeps
    one step's (about 170 MB whatever the steps), so the call adds far less (measured: 295 vs
    170 MB at 8 steps, 578 vs 167 MB at 20).
    """
    bench = _memory_benchmark()
    added = {}
    for remat in ("none", "steps"):
        result = bench.run_setting("omniglot", steps, remat, "1", limit_gb=8.0)
        assert "peak_rss_mb" in result, result
        added[remat] = result["peak_rss_mb"] - result["base_rss_mb"]
    assert added["steps"] < 0.6 * added["none"], added
