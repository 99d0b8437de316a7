"""The rematerialised meta-gradients (``remat="steps"``, ``"blocks"``) against the unrolled tape (float64)."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmeta.run import config as config_lib
from tfmeta.run import experiment
import keras

from tfmeta.core import blocks as tfm_blocks
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


@pytest.fixture
def block_spy(monkeypatch):
    """Counts recomputed block ops (forward and backward) whose gradient was taken."""
    calls = []
    real = tfm_blocks._recomputed

    def counted(fn, inputs):
        def traced(values):
            calls.append(1)
            return fn(values)

        return real(traced, inputs)

    monkeypatch.setattr(tfm_blocks, "_recomputed", counted)
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
@pytest.mark.parametrize("remat", ["steps", "blocks"])
def test_remat_equals_unrolled_tape(float64, spy, block_spy, cls, kwargs, tasks_in_parallel,
                                    remat):
    none = _meta_step(cls, "none", tasks_in_parallel=tasks_in_parallel, **kwargs)
    assert not spy and not block_spy
    rematerialised = _meta_step(cls, remat, tasks_in_parallel=tasks_in_parallel, **kwargs)
    assert spy
    assert bool(block_spy) == (remat == "blocks")
    _assert_same(none, rematerialised)


@pytest.mark.parametrize("kwargs", [{}, {"bn_mode": "running"}])
def test_blocks_equals_unrolled_tape_for_resnet12(float64, block_spy, kwargs):
    """Residual blocks (a shortcut inside each block), tasks one at a time and together."""
    def meta_step(remat, tasks_in_parallel):
        model = models.resnet12(3, image_size=16, widths=(2, 3, 4, 5), seed=0)
        algo = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel=tasks_in_parallel,
                         remat=remat, **kwargs)
        batch = classification_batch(np.random.default_rng(3), tasks=2, shots=2, queries=2,
                                     ways=3, image=16, channels=3)
        return algo.meta_step({k: tf.constant(v) for k, v in batch.items()})

    for tasks_in_parallel in (1, "all"):
        _assert_same(meta_step("none", tasks_in_parallel), meta_step("blocks", tasks_in_parallel))
    assert block_spy


def test_blocks_of_the_networks():
    conv4 = models.conv4(5, 16, 3, 4, downsample="maxpool", head="flatten")
    assert [b.name for b in tfm_blocks.plan(conv4)] == [
        "block0", "block1", "block2", "block3", "flatten", "logits"]
    resnet = models.resnet12(5, image_size=16, widths=(2, 3, 4, 5))
    plan = tfm_blocks.plan(resnet)
    assert [b.name for b in plan] == ["block0", "block1", "block2", "block3", "spatial_mean",
                                      "logits"]
    # Each residual block owns its four convolutions and four batch norms (gamma, beta).
    assert [len(b.params) for b in plan] == [12, 12, 12, 12, 0, 2]
    assert sorted(i for b in plan for i in b.params) == list(range(len(resnet.trainable_variables)))
    sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="a"),
                                   keras.layers.ReLU(name="r"), keras.layers.Dense(2, name="b")])
    assert [b.name for b in tfm_blocks.plan(sequential)] == ["a", "r", "b"]


def test_blocks_of_a_model_that_cannot_be_cut():
    """Several paths that only meet at the output: one block, the whole model."""
    inputs = keras.Input((3,))
    merged = keras.layers.Add(name="sum")([keras.layers.Dense(2, name="p")(inputs),
                                           keras.layers.Dense(2, name="q")(inputs)])
    model = keras.Model(inputs, merged)
    assert [b.name for b in tfm_blocks.plan(model)] == ["p..sum"]
    inputs = keras.Input((3,))
    two_outputs = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(1)(inputs)])
    assert [b.nodes for b in tfm_blocks.plan(two_outputs)] == [()]


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(5, activation="tanh")
        self.out = keras.layers.Dense(3)

    def call(self, x, training=None):
        return self.out(self.hidden(x))


def test_blocks_equals_unrolled_tape_for_a_subclassed_model(float64, block_spy):
    """A model that cannot be cut is one block (the whole model), one task at a time."""
    def meta_step(remat):
        model = _Subclassed()
        model(tf.zeros([1, 6], tf.float64))
        model.set_weights([np.random.default_rng(i).normal(size=w.shape)
                           for i, w in enumerate(model.get_weights())])
        algo = maml.MAML(model, inner_lr=0.3, inner_steps=2, tasks_in_parallel="all",
                         remat=remat)
        return algo.meta_step(vector_batch(seed=4, dtype="float64"))

    assert [b.nodes for b in tfm_blocks.plan(_Subclassed())] == [()]
    _assert_same(meta_step("none"), meta_step("blocks"))
    assert block_spy


@pytest.mark.parametrize("remat", ["steps", "blocks"])
def test_remat_equals_unrolled_under_xla(float64, remat):
    """Compiled by XLA (the loops' static trip counts and shapes), with per-step batch norm."""
    batch = vector_batch(seed=1, dtype="float64")

    def compiled_step(remat):
        algo = maml.MAMLpp(mlp_with_batch_norm(seed=0), inner_lr=0.1, inner_steps=2,
                           tasks_in_parallel="all", remat=remat)
        return tf.function(algo.meta_step, jit_compile=True)(batch)

    _assert_same(compiled_step("none"), compiled_step(remat), tol=1e-10)


def test_blocks_equals_unrolled_for_conv4_under_xla(float64):
    """Conv blocks compiled by XLA, tasks together (the recomputation's data dependency)."""
    none = _meta_step(maml.MAML, "none", tasks_in_parallel="all", compile=True)
    _assert_same(none, _meta_step(maml.MAML, "blocks", tasks_in_parallel="all", compile=True),
                 tol=1e-10)


@pytest.mark.parametrize("remat", ["steps", "blocks"])
def test_remat_matches_finite_differences(float64, remat):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=2, tasks_in_parallel="all", remat=remat)
    batch = classification_batch(np.random.default_rng(2), tasks=2, shots=2, queries=4, ways=3,
                                 image=8)
    errors, n, _ = fd_errors(algo, batch, coords=6)
    assert n >= 6
    assert errors.max() < 1e-6, errors


def test_unknown_remat_is_refused():
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    with pytest.raises(ValueError,
                       match="unknown remat 'layers'; allowed: \\['none', 'steps', 'blocks'\\]"):
        maml.MAML(model, inner_lr=0.4, inner_steps=1, remat="layers")


@pytest.mark.parametrize("remat", ["steps", "blocks"])
def test_config_field_reaches_the_algorithm(remat):
    config = config_lib.base_config()
    config.algorithm = "maml"
    config.inner.remat = remat
    config_lib.validate(config)
    model = models.omniglot_conv4(5, filters=4, seed=0)
    algo = experiment.build_algorithm(config, model, classification=True)
    assert algo.remat == remat


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


def test_keras_meta_model_fits_with_blocks(float64):
    """MetaModel passes the algorithm's remat through: fit gives the weights of remat="none"."""
    from tests import keras_driver
    from tfmeta.keras import MetaModel

    weights = {}
    for remat in ("none", "blocks"):
        model = models.omniglot_conv4(keras_driver.WAYS, image_size=keras_driver.SIZE,
                                      filters=4, seed=0)
        meta = MetaModel(maml.MAML(model, inner_lr=0.4, inner_steps=2, remat=remat))
        meta.compile(optimizer=keras.optimizers.SGD(0.1))
        data = tf.data.Dataset.from_tensor_slices(keras_driver.episodes(2, seed=0,
                                                                        dtype="float64"))
        meta.fit(data, epochs=1, verbose=0)
        weights[remat] = model.get_weights()
    for a, b in zip(weights["none"], weights["blocks"]):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
