"""Reptile: inner loop and meta-update against hand-written references (float64)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import regression_batch
from tfmeta.core import functional as F
from tests import param_math as P
from tfmeta.core import models, reptile


def _support_grad(model, params, x, y):
    with tf.GradientTape() as tape:
        tape.watch(params)
        out = model.stateless_call(params, [], x)[0]
        loss = tf.reduce_mean(tf.square(out - y))
    return tape.gradient(loss, params)


def test_one_sgd_step_pseudo_gradient_is_lr_times_support_gradient(float64):
    model = models.sinusoid_mlp(hidden=(8,), seed=0)
    algo = reptile.Reptile(model, inner_lr=0.03, inner_steps=1, loss="mse")
    batch = regression_batch(tasks=1)
    theta = F.values(model.trainable_variables)
    grads, _ = algo.meta_gradients(batch)
    expected = F.scale(
        _support_grad(model, theta, batch["support_x"][0], batch["support_y"][0]), 0.03
    )
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("eps", [1.0, 0.3])
def test_meta_update_moves_towards_mean_adapted_parameters(float64, eps):
    model = models.sinusoid_mlp(hidden=(8,), seed=0)
    algo = reptile.Reptile(model, inner_lr=0.05, inner_steps=3, outer_step_size=eps, loss="mse")
    batch = regression_batch(tasks=3)
    theta = F.values(model.trainable_variables)
    adapted = [algo.adapt(batch["support_x"][i], batch["support_y"][i]) for i in range(3)]
    mean_delta = [sum(P.sub(a, theta)[j] for a in adapted) / 3 for j in range(len(theta))]
    expected = [t + eps * d for t, d in zip(theta, mean_delta)]
    # The pseudo-gradient with plain SGD (lr eps) gives the same update.
    grads, _ = algo.meta_gradients(batch)
    for t, g, e in zip(theta, grads, expected):
        np.testing.assert_allclose(t - eps * g, e, rtol=1e-12, atol=1e-14)
    algo.meta_update(batch)
    for v, e in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-12, atol=1e-14)


def test_adam_inner_loop_matches_hand_written_adam(float64):
    model = models.sinusoid_mlp(hidden=(8,), seed=1)
    lr, b1, b2, steps = 0.01, 0.5, 0.9, 4
    algo = reptile.Reptile(
        model,
        inner_lr=lr,
        inner_steps=steps,
        inner_optimizer="adam",
        adam_beta1=b1,
        adam_beta2=b2,
        loss="mse",
    )
    batch = regression_batch(tasks=1)
    x, y = batch["support_x"][0], batch["support_y"][0]
    params = [p.numpy() for p in F.values(model.trainable_variables)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t in range(1, steps + 1):
        g = [gi.numpy() for gi in _support_grad(model, [tf.constant(p) for p in params], x, y)]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi**2 for vi, gi in zip(v, g)]
        params = [
            p - lr * (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + 1e-8)
            for p, mi, vi in zip(params, m, v)
        ]
    for a, e in zip(algo.adapt(x, y), params):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-13)


def test_paper_default_adam_has_beta1_zero():
    model = models.sinusoid_mlp(hidden=(4,), seed=0)
    algo = reptile.Reptile(model, inner_lr=1e-3, inner_steps=1, inner_optimizer="adam", loss="mse")
    assert algo.adam_beta1 == 0.0


def test_inner_minibatches_follow_the_static_schedule(float64):
    model = models.sinusoid_mlp(hidden=(8,), seed=0)
    algo = reptile.Reptile(
        model, inner_lr=0.05, inner_steps=5, inner_batch_size=4, loss="mse", seed=7
    )
    batch = regression_batch(tasks=1, k=10)
    x, y = batch["support_x"][0], batch["support_y"][0]
    schedule = np.stack([reptile.minibatch_indices(10, 4, t, seed=7).numpy() for t in range(5)])
    assert schedule.shape == (5, 4)
    # Without replacement within a pass over the support set.
    assert len(set(schedule.ravel()[:8])) == 8
    params = F.values(model.trainable_variables)
    for idx in schedule:
        params = P.sgd_step(
            params, _support_grad(model, params, tf.gather(x, idx), tf.gather(y, idx)), 0.05
        )
    for a, e in zip(algo.adapt(x, y), params):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)


def test_minibatch_schedule_covers_support_set_each_pass():
    schedule = np.stack([reptile.minibatch_indices(10, 5, t, seed=0).numpy() for t in range(4)])
    assert sorted(schedule[:2].ravel()) == list(range(10))
    assert sorted(schedule[2:].ravel()) == list(range(10))
    assert not np.array_equal(schedule[:2], schedule[2:])  # reshuffled every pass
    assert reptile.minibatch_indices(3, 10, 2, seed=0).shape == (3,)  # clipped to the support size


def test_minibatch_schedule_is_the_same_in_graphs_xla_and_for_run_time_sizes():
    """The exported model draws the same minibatches as training (run-time support size)."""
    eager = [reptile.minibatch_indices(7, 3, t, seed=5).numpy() for t in range(6)]
    graph = tf.function(lambda n, t: reptile.minibatch_indices(n, 3, t, seed=5))
    xla = tf.function(lambda t: reptile.minibatch_indices(7, 3, t, seed=5), jit_compile=True)
    for t, expected in enumerate(eager):
        np.testing.assert_array_equal(graph(tf.constant(7), tf.constant(t)), expected)
        np.testing.assert_array_equal(xla(tf.constant(t)), expected)


def test_reptile_metrics_and_evaluate():
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = reptile.Reptile(
        model,
        inner_lr=1e-3,
        inner_steps=2,
        eval_inner_steps=4,
        inner_optimizer="adam",
        inner_batch_size=4,
    )
    rng = np.random.default_rng(0)
    batch = {
        "support_x": rng.normal(size=(2, 6, 8, 8, 1)).astype("float32"),
        "support_y": np.tile(np.arange(3), (2, 2)),
        "query_x": rng.normal(size=(2, 3, 8, 8, 1)).astype("float32"),
        "query_y": rng.integers(0, 3, (2, 3)),
    }
    before = [v.numpy().copy() for v in model.variables]
    grads, metrics = algo.meta_gradients(batch)
    assert set(metrics) == {"loss", "loss_pre", "accuracy_pre", "accuracy_post"}
    assert len(grads) == len(model.trainable_variables)
    per_task = algo.evaluate(batch)
    assert all(v.shape == (2,) for v in per_task.values())
    for b, v in zip(before, model.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_reptile_rejects_bad_options():
    model = models.sinusoid_mlp(hidden=(4,), seed=0)
    with pytest.raises(ValueError, match="inner_optimizer.*'rmsprop'"):
        reptile.Reptile(model, inner_lr=0.1, inner_steps=1, inner_optimizer="rmsprop", loss="mse")
    with pytest.raises(ValueError, match="inner_batch_size.*0"):
        reptile.Reptile(model, inner_lr=0.1, inner_steps=1, inner_batch_size=0, loss="mse")
    with pytest.raises(ValueError, match="outer_step_size.*-1"):
        reptile.Reptile(model, inner_lr=0.1, inner_steps=1, outer_step_size=-1, loss="mse")
