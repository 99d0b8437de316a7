"""tfmeta's BatchNorm: forward pass, statistics, exact second derivatives."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmeta.core.layers import BatchNorm


# --------------------------------------------------------------- BatchNorm
def test_batchnorm_forward_matches_keras_and_updates_statistics():
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=(16, 4, 4, 3)), tf.float32)
    ours, theirs = BatchNorm(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    ours.build(x.shape)
    theirs.build(x.shape)
    np.testing.assert_allclose(
        ours(x, training=True), theirs(x, training=True), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(ours.moving_mean, theirs.moving_mean, rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-5)
    np.testing.assert_allclose(ours.batch_mean, tf.reduce_mean(x, [0, 1, 2]), rtol=1e-5)
    np.testing.assert_allclose(
        ours(x, training=False), theirs(x, training=False), rtol=1e-4, atol=1e-5
    )
    assert len(ours.trainable_weights) == 2 and len(ours.non_trainable_weights) == 4


def test_batchnorm_has_exact_second_derivative(float64):
    """d2/dx2 of a BN output vs finite differences of the first derivative."""
    rng = np.random.default_rng(0)
    layer = BatchNorm()
    x0 = tf.constant(rng.normal(size=(5, 2)))
    layer.build(x0.shape)
    w = tf.constant(rng.normal(size=(5, 2)))
    v = tf.constant(rng.normal(size=(5, 2)))

    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(tf.sin(layer(x, training=True)) * w)
        return tape.gradient(out, x)

    with tf.GradientTape() as tape:
        tape.watch(x0)
        g = tf.reduce_sum(grad(x0) * v)
    hvp = tape.gradient(g, x0)
    h = 1e-6
    fd = (grad(x0 + h * v) - grad(x0 - h * v)) / (2 * h)
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)
