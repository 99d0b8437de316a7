"""Per-example losses.

Each loss maps ``(y_true, y_pred)`` to a ``[batch]`` tensor; the algorithms
reduce it per task themselves. Keras ``Loss`` objects are deliberately not
used: under a distribution strategy they divide by the number of replicas,
which would silently shrink the inner learning rate.

Half-precision predictions (``mixed_bfloat16`` / ``mixed_float16``) are cast
to float32 before the loss is computed; float32 and float64 are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _at_least_float32(t: tf.Tensor) -> tf.Tensor:
    t = tf.convert_to_tensor(t)
    if t.dtype in (tf.float16, tf.bfloat16):
        return tf.cast(t, tf.float32)
    return t


def sparse_categorical_crossentropy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of integer labels ``[batch]`` against logits ``[batch, classes]``.

    Written with ``log_softmax`` so that every derivative order is exact (and
    XLA compiles it).
    """
    logits = _at_least_float32(logits)
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    classes = tf.shape(logits)[-1]
    one_hot = tf.one_hot(labels, classes, dtype=logits.dtype)
    loss = -tf.reduce_sum(one_hot * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    # An out-of-range label would give an all-zero one-hot row, i.e. a silent
    # zero loss; make it NaN instead (XLA drops the explicit assertions).
    invalid = tf.logical_or(labels < 0, labels >= classes)
    return tf.where(invalid, tf.constant(np.nan, loss.dtype), loss)


def binary_crossentropy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy on logits.

    Args:
      y_true: labels in {0, 1}, shape ``[batch]`` or ``[batch, 1]``.
      logits: shape ``[batch]`` or ``[batch, 1]`` (one logit per example).

    Returns:
      ``[batch]`` losses ``-y log(sigmoid(z)) - (1 - y) log(1 - sigmoid(z))``.
    """
    logits = tf.reshape(_at_least_float32(logits), [-1])
    labels = tf.cast(tf.reshape(y_true, [-1]), logits.dtype)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def mse(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Squared error averaged over all but the first axis: ``[batch]``."""
    y_pred = _at_least_float32(y_pred)
    y_true = tf.cast(tf.reshape(y_true, tf.shape(y_pred)), y_pred.dtype)
    err = tf.reshape(tf.square(y_pred - y_true), [tf.shape(y_pred)[0], -1])
    return tf.reduce_mean(err, axis=-1)


def sparse_categorical_accuracy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1.0 where ``argmax(logits)`` equals the integer label, else 0.0: ``[batch]``."""
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(pred, labels), tf.float32)


def binary_accuracy(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """1.0 where ``logit > 0`` matches the {0, 1} label, else 0.0: ``[batch]``."""
    labels = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
    pred = tf.cast(tf.reshape(logits, [-1]) > 0, tf.int32)
    return tf.cast(tf.equal(pred, labels), tf.float32)


_LOSSES: dict[str, LossFn] = {
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "binary_crossentropy": binary_crossentropy,
    "mse": mse,
}

_ACCURACIES: dict[str, LossFn] = {
    "sparse_categorical_crossentropy": sparse_categorical_accuracy,
    "binary_crossentropy": binary_accuracy,
}


def get(loss: str | LossFn) -> LossFn:
    """Resolves a loss name or returns a callable unchanged.

    Args:
      loss: one of ``"sparse_categorical_crossentropy"`` (integer labels,
        logits), ``"binary_crossentropy"`` (labels in {0, 1}, one logit per
        example), ``"mse"``, or any callable ``(y_true, y_pred) -> [batch]``.

    Raises:
      ValueError: for an unknown name or a non-callable.
    """
    if callable(loss):
        return loss
    if isinstance(loss, str) and loss in _LOSSES:
        return _LOSSES[loss]
    raise ValueError(
        f"unknown loss {loss!r}; allowed names: {sorted(_LOSSES)}, or a callable "
        "(y_true, y_pred) -> per-example loss of shape [batch]"
    )


def accuracy(loss: str | LossFn) -> LossFn | None:
    """The per-example accuracy matching a classification loss name, else None."""
    return _ACCURACIES.get(loss) if isinstance(loss, str) else None
