"""Second-order MAML meta-gradients against central finite differences (float64).

Also shows the check has teeth: with Keras' own BatchNormalization (whose
moments stop a gradient) the same check fails, with tfmeta's BatchNorm it
passes.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta import functional as F
from tfmeta import maml, models

H = 1e-6  # float64 central differences: truncation ~H^2, round-off ~1e-16/H


def _classification_batch(rng, tasks, shots, queries, ways, image):
    return {
        "support_x": rng.normal(size=(tasks, shots * ways, image, image, 1)),
        "support_y": np.tile(np.arange(ways), (tasks, shots)),
        "query_x": rng.normal(size=(tasks, queries, image, image, 1)),
        "query_y": rng.integers(0, ways, (tasks, queries)),
    }


def _regression_batch(rng, tasks, k):
    return {
        "support_x": rng.uniform(-2, 2, size=(tasks, k, 1)),
        "support_y": rng.normal(size=(tasks, k, 1)),
        "query_x": rng.uniform(-2, 2, size=(tasks, k, 1)),
        "query_y": rng.normal(size=(tasks, k, 1)),
    }


def _meta_loss_fn(algo, batch):
    """Mean query loss after adaptation, as a function of the parameters.

    Built only from the public adapt/predict API, independently of
    meta_gradients.
    """
    loss_fn = algo.loss_fn

    @tf.function
    def meta_loss(params):
        total = tf.constant(0.0, tf.float64)
        for i in range(batch["support_x"].shape[0]):
            fast = algo.adapt(batch["support_x"][i], batch["support_y"][i], params=params)
            out = algo.predict(fast, batch["query_x"][i], support_x=batch["support_x"][i])
            total += tf.reduce_mean(loss_fn(batch["query_y"][i], out))
        return total / batch["support_x"].shape[0]

    return meta_loss


def _fd_errors(algo, batch, coords=24, seed=0):
    """Relative errors of (direction, coordinates) vs finite differences."""
    rng = np.random.default_rng(seed)
    theta = [t.numpy() for t in F.values(algo.model.trainable_variables)]
    assert all(t.dtype == np.float64 for t in theta), "the check needs a float64 model"
    grads, _ = algo.meta_gradients({k: tf.constant(v) for k, v in batch.items()})
    grads = [g.numpy() for g in grads]
    meta_loss = _meta_loss_fn(algo, {k: tf.constant(v) for k, v in batch.items()})

    def loss_at(delta):
        return float(meta_loss([tf.constant(t + d) for t, d in zip(theta, delta)]))

    def fd(delta):
        return (loss_at([H * d for d in delta]) - loss_at([-H * d for d in delta])) / (2 * H)

    # A random direction touches every parameter at once.
    direction = [rng.normal(size=t.shape) for t in theta]
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, direction))
    numeric = fd(direction)
    errors = [abs(analytic - numeric) / abs(numeric)]
    # Individual coordinates, drawn from every variable, weighted to those with
    # a non-negligible gradient so that the relative error is meaningful.
    flat = np.concatenate([g.ravel() for g in grads])
    offsets = np.cumsum([0] + [g.size for g in grads])
    candidates = np.flatnonzero(np.abs(flat) > 1e-3 * np.abs(flat).max())
    chosen = rng.choice(candidates, size=min(coords, candidates.size), replace=False)
    for c in chosen:
        var = int(np.searchsorted(offsets, c, side="right") - 1)
        delta = [np.zeros_like(t) for t in theta]
        delta[var].flat[c - offsets[var]] = 1.0
        errors.append(abs(flat[c] - fd(delta)) / abs(flat[c]))
    return np.array(errors), len(chosen)


@pytest.mark.parametrize("steps", [1, 3])
def test_mlp_second_order_matches_finite_differences(float64, steps):
    model = models.sinusoid_mlp(hidden=(8, 8), seed=0)
    algo = maml.MAML(model, inner_lr=0.05, inner_steps=steps, loss="mse")
    errors, n = _fd_errors(algo, _regression_batch(np.random.default_rng(1), tasks=2, k=5))
    assert n >= 20
    assert errors.max() < 1e-6, errors


def _keras_bn_conv4(ways, image, filters, seed):
    inputs = keras.Input((image, image, 1))
    x = inputs
    for i in range(4):
        x = keras.layers.Conv2D(
            filters,
            3,
            strides=2,
            padding="same",
            kernel_initializer=keras.initializers.GlorotUniform(seed + i),
        )(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        ways, kernel_initializer=keras.initializers.GlorotUniform(seed + 4)
    )(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("steps", [1, 3])
def test_conv4_batchnorm_second_order_matches_finite_differences(float64, steps):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=0)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=steps)
    batch = _classification_batch(
        np.random.default_rng(2), tasks=2, shots=2, queries=4, ways=3, image=8
    )
    errors, n = _fd_errors(algo, batch)
    assert n >= 20
    assert errors.max() < 1e-6, errors


def test_conv4_support_bn_mode_matches_finite_differences(float64):
    model = models.omniglot_conv4(3, image_size=8, filters=4, seed=3)
    algo = maml.MAML(model, inner_lr=0.4, inner_steps=2, bn_mode="support")
    batch = _classification_batch(
        np.random.default_rng(4), tasks=2, shots=2, queries=4, ways=3, image=8
    )
    errors, _ = _fd_errors(algo, batch, coords=8)
    assert errors.max() < 1e-6, errors


def test_keras_batchnorm_gives_wrong_second_order_gradient(float64):
    """The same check fails for Keras' BatchNormalization: it can detect errors."""
    batch = _classification_batch(
        np.random.default_rng(2), tasks=2, shots=2, queries=4, ways=3, image=8
    )
    keras_algo = maml.MAML(_keras_bn_conv4(3, 8, 4, seed=0), inner_lr=0.4, inner_steps=1)
    tfmeta_algo = maml.MAML(
        models.omniglot_conv4(3, image_size=8, filters=4, seed=0), inner_lr=0.4, inner_steps=1
    )
    keras_errors, _ = _fd_errors(keras_algo, batch, coords=8)
    tfmeta_errors, _ = _fd_errors(tfmeta_algo, batch, coords=8)
    assert tfmeta_errors.max() < 1e-6
    assert keras_errors.max() > 1e-4, keras_errors
