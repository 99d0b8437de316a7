"""MAML / first-order MAML behaviour: API contract, compilation, distribution, BN modes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import image_batch as _batch
from tests.helpers import mlp_with_batch_norm as _mlp_bn
from tests.helpers import tiny_conv4 as _conv4
from tests.helpers import vector_batch as _vec_batch
from tfmeta.core import functional as F
from tests import param_math as P
from tfmeta.core import maml, models, reptile


def _assert_lists_close(a, b, **kw):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_first_order_equals_query_gradient_at_adapted_weights(float64):
    batch = _batch(dtype="float64")
    model = _conv4()
    fo = maml.MAML(model, inner_lr=0.4, inner_steps=2, first_order=True)
    so = maml.MAML(model, inner_lr=0.4, inner_steps=2)
    g_fo, _ = fo.meta_gradients(batch)
    g_so, _ = so.meta_gradients(batch)

    expected = F.zeros_like(g_fo)
    tasks = batch["support_x"].shape[0]
    for i in range(tasks):
        fast = fo.adapt(batch["support_x"][i], batch["support_y"][i])
        with tf.GradientTape() as tape:
            tape.watch(fast)
            out = fo.predict(fast, batch["query_x"][i])
            loss = tf.reduce_mean(fo.loss_fn(batch["query_y"][i], out))
        expected = P.add(expected, F.scale(tape.gradient(loss, fast), 1.0 / tasks))
    _assert_lists_close(g_fo, expected, rtol=1e-10, atol=1e-12)
    diff = P.global_norm(P.sub(g_so, g_fo)) / P.global_norm(g_so)
    assert float(diff) > 1e-2, "second-order terms should matter"


def _meta_grads(algo, batch, mode):
    if mode == "eager":
        fn = algo.meta_gradients
    else:
        fn = tf.function(algo.meta_gradients, jit_compile=(mode == "xla"))
    return fn(batch)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: maml.MAML(m, inner_lr=0.4, inner_steps=2),
        lambda m: maml.MAML(m, inner_lr=0.4, inner_steps=2, first_order=True),
        # SGD: Adam's first steps are ~lr * sign(g), which float rounding can
        # flip for near-zero gradients; the Adam update is checked against a
        # hand-written Adam in test_core_reptile.py.
        lambda m: reptile.Reptile(m, inner_lr=0.1, inner_steps=3, inner_batch_size=4),
    ],
    ids=["maml", "fomaml", "reptile"],
)
def test_eager_function_and_xla_agree(make):
    algo = make(_mlp_bn())
    batch = _vec_batch(tasks=3)
    g_eager, m_eager = _meta_grads(algo, batch, "eager")
    for mode in ("function", "xla"):
        g, m = _meta_grads(algo, batch, mode)
        _assert_lists_close(g, g_eager, rtol=2e-4, atol=2e-6)
        for k in m_eager:
            np.testing.assert_allclose(m[k], m_eager[k], rtol=1e-4, atol=1e-6)


def test_global_batch_size_halves_sum_to_whole(float64):
    """The distribution contract: per-replica SUM / global B adds up exactly once."""
    batch = _batch(tasks=4, dtype="float64")
    algo = maml.MAML(_conv4(), inner_lr=0.4, inner_steps=1)
    whole = algo.meta_step(batch)
    halves = [
        algo.meta_step({k: v[s] for k, v in batch.items()}, global_batch_size=4)
        for s in (slice(0, 2), slice(2, 4))
    ]
    _assert_lists_close(whole.grads, P.add(halves[0].grads, halves[1].grads), rtol=1e-10)
    for k in whole.metrics:
        np.testing.assert_allclose(
            whole.metrics[k], halves[0].metrics[k] + halves[1].metrics[k], rtol=1e-6
        )
    _assert_lists_close(
        whole.non_trainable, P.add(halves[0].non_trainable, halves[1].non_trainable), rtol=1e-10
    )
    assert set(whole.metrics) == {"loss", "loss_pre", "accuracy_pre", "accuracy_post"}


def test_adapt_steps_are_sgd_on_support_loss(float64):
    model = models.sinusoid_mlp(hidden=(6,), seed=0)
    algo = maml.MAML(model, inner_lr=0.1, inner_steps=1, loss="mse")
    rng = np.random.default_rng(0)
    x, y = tf.constant(rng.normal(size=(5, 1))), tf.constant(rng.normal(size=(5, 1)))
    params = F.values(model.trainable_variables)
    expected = params
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(expected)
            loss = tf.reduce_mean(tf.square(model.stateless_call(expected, [], x)[0] - y))
        expected = P.sgd_step(expected, tape.gradient(loss, expected), 0.1)
    _assert_lists_close(algo.adapt(x, y, steps=3), expected, rtol=1e-12)


def test_inner_grad_clip_limits_the_inner_step(float64):
    model = models.sinusoid_mlp(hidden=(6,), seed=0)
    rng = np.random.default_rng(0)
    x, y = tf.constant(rng.normal(size=(5, 1))), tf.constant(10 * rng.normal(size=(5, 1)))
    algo = maml.MAML(model, inner_lr=0.1, inner_steps=1, loss="mse", inner_grad_clip=0.5)
    theta = F.values(model.trainable_variables)
    step = P.global_norm(P.sub(theta, algo.adapt(x, y)))
    np.testing.assert_allclose(step, 0.1 * 0.5, rtol=1e-10)


def test_regression_metrics_and_eval_steps_improve_fit():
    model = models.sinusoid_mlp(seed=0)
    algo = maml.MAML(model, inner_lr=0.01, inner_steps=1, loss="mse")
    from tfmeta.data import sinusoid

    batch = sinusoid.sample_tasks(4, 10, 10, seed=0)
    _, metrics = algo.meta_gradients(batch)
    assert set(metrics) == {"loss", "loss_pre"}
    many = algo.evaluate(batch, steps=20)
    assert float(tf.reduce_mean(many["loss"])) < float(tf.reduce_mean(many["loss_pre"]))


def test_mixed_bfloat16_runs_with_float32_meta_parameters():
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _mlp_bn()
    finally:
        keras.config.set_dtype_policy(old)
    assert model.layers[0].compute_dtype == "bfloat16"
    for make in (
        lambda m: maml.MAML(m, inner_lr=0.4, inner_steps=2),
        lambda m: reptile.Reptile(m, inner_lr=1e-3, inner_steps=2, inner_optimizer="adam"),
    ):
        algo = make(model)
        batch = _vec_batch(tasks=2)
        grads, metrics = algo.meta_gradients(batch)
        assert all(g.dtype == tf.float32 for g in grads)
        assert all(np.all(np.isfinite(g)) for g in grads)
        assert metrics["loss"].dtype == tf.float32 and np.isfinite(metrics["loss"])
        fast = algo.adapt(batch["support_x"][0], batch["support_y"][0])
        assert all(f.dtype == tf.float32 for f in fast)


# ----------------------------------------------------------------- BN modes
def _query_dependence(bn_mode):
    """Max change of query outputs 1.. when only query example 0 changes."""
    model = _conv4()
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=1, bn_mode=bn_mode)
    batch = _batch(queries=5)
    sx, sy, qx = batch["support_x"][0], batch["support_y"][0], batch["query_x"][0]
    fast = algo.adapt(sx, sy)
    out = algo.predict(fast, qx, support_x=sx)
    changed = tf.tensor_scatter_nd_update(qx, [[0]], 10.0 + 3.0 * qx[:1])
    out2 = algo.predict(fast, changed, support_x=sx)
    return float(tf.reduce_max(tf.abs(out2[1:] - out[1:]))), float(
        tf.reduce_max(tf.abs(out2[0] - out[0]))
    )


def test_support_mode_query_predictions_are_independent():
    others, own = _query_dependence("support")
    assert others == 0.0
    assert own > 1e-3


def test_running_mode_query_predictions_are_independent():
    others, own = _query_dependence("running")
    assert others == 0.0
    assert own > 1e-3


def test_transductive_mode_query_predictions_depend_on_each_other():
    others, _ = _query_dependence("transductive")
    assert others > 1e-3


def test_support_mode_uses_support_statistics_of_adapted_weights():
    model = _conv4()
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=1, bn_mode="support")
    batch = _batch()
    sx, sy = batch["support_x"][0], batch["support_y"][0]
    fast = algo.adapt(sx, sy)
    # Normalising the support set with its own statistics in inference mode
    # equals the training-mode (transductive) output on the support set.
    np.testing.assert_allclose(
        algo.predict(fast, sx, support_x=sx),
        model.stateless_call(fast, F.values(model.non_trainable_variables), sx, training=True)[0],
        rtol=1e-4,
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="support_x"):
        algo.predict(fast, sx)


def test_running_mode_trainer_keeps_moving_statistics():
    model = _conv4()
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=2, bn_mode="running")
    bn = [layer for layer in model.layers if layer.name == "bn0"][0]
    before = bn.moving_mean.numpy().copy()
    step = algo.meta_step(_batch())
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)  # never modified implicitly
    F.assign_floating(model.non_trainable_variables, step.non_trainable)
    after = bn.moving_mean.numpy()
    assert not np.allclose(after, before)
    # Query predictions in "running" mode use exactly the assigned statistics.
    theta = F.values(model.trainable_variables)
    x = _batch()["query_x"][0]
    np.testing.assert_allclose(
        algo.predict(theta, x), model(x, training=False), rtol=1e-5, atol=1e-6
    )


def test_support_mode_rejects_keras_batch_normalization():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.BatchNormalization()(inputs))
    with pytest.raises(ValueError, match="tfmeta.core.layers.BatchNorm"):
        maml.MAML(keras.Model(inputs, outputs), inner_lr=0.1, inner_steps=1, bn_mode="support")
