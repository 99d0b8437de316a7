"""Per-example losses and their registry."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmeta.core import losses


# ----------------------------------------------------- losses and helpers
def test_losses_per_example_and_registry():
    logits = tf.constant([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    y = tf.constant([0, 2])
    np.testing.assert_allclose(
        losses.get("sparse_categorical_crossentropy")(y, logits),
        keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True),
        rtol=1e-6,
    )
    np.testing.assert_allclose(losses.get("mse")(tf.ones((2, 3)), tf.zeros((2, 3))), [1.0, 1.0])
    custom = lambda a, b: tf.reduce_sum(tf.abs(a - b), -1)  # noqa: E731
    assert losses.get(custom) is custom
    with pytest.raises(ValueError, match=r"'hinge'.*binary_crossentropy.*mse.*sparse_categorical"):
        losses.get("hinge")
    # An out-of-range label poisons the loss instead of silently giving 0.
    assert np.isnan(losses.sparse_categorical_crossentropy(tf.constant([3]), logits[:1]).numpy()[0])


def test_loss_is_float32_for_bfloat16_predictions():
    out = losses.mse(tf.ones((2, 1)), tf.zeros((2, 1), tf.bfloat16))
    assert out.dtype == tf.float32
