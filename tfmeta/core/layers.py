"""Layers whose higher-order derivatives are exact.

Keras' own ``BatchNormalization`` computes batch moments with
``tf.nn.moments``, which stops the gradient through the mean inside the
variance. First derivatives are unaffected, but the second-order terms MAML
needs are dropped, so the meta-gradient is wrong. :class:`BatchNorm` writes
the moments out explicitly.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf


def batch_norm(
    x: tf.Tensor,
    gamma: tf.Tensor | None,
    beta: tf.Tensor | None,
    moving_mean: tf.Tensor,
    moving_variance: tf.Tensor,
    *,
    reduce_axes: list[int],
    training: bool,
    momentum: float,
    epsilon: float,
) -> tuple[tf.Tensor, tuple[tf.Tensor, ...] | None]:
    """Batch normalisation with exact higher derivatives; the math of :class:`BatchNorm`.

    Statistics are taken over ``reduce_axes`` and are computed in float32 (float64 for float64
    inputs). The parameters and statistics must broadcast against ``x`` once ``reduce_axes`` are
    removed from it (for one task: shape ``[C]``; for tasks batched as ``[T, N, ..., C]``:
    ``[T, C]``), which is how the task-batched forward pass (:mod:`tfmeta.core.batched`) reuses it.

    Returns:
      ``(y, stats)``: the normalised output in the statistics dtype, and in training mode the
      tuple ``(new_moving_mean, new_moving_variance, batch_mean, batch_variance)`` (None in
      inference mode).
    """
    stat_dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
    x = tf.cast(x, stat_dtype)

    def expand(t: tf.Tensor) -> tf.Tensor:
        # Statistics have the reduced axes removed; put them back as size-1 axes to broadcast.
        t = tf.cast(t, stat_dtype)
        for axis in sorted(a % len(x.shape) for a in reduce_axes):
            t = tf.expand_dims(t, axis)
        return t

    stats = None
    if training:
        mean = tf.reduce_mean(x, axis=reduce_axes)
        # Explicit (x - mean)^2 without stop_gradient: exact second derivatives.
        variance = tf.reduce_mean(tf.square(x - expand(mean)), axis=reduce_axes)
        m = momentum
        stats = (m * tf.cast(moving_mean, stat_dtype) + (1.0 - m) * mean,
                 m * tf.cast(moving_variance, stat_dtype) + (1.0 - m) * variance,
                 mean, variance)
    else:
        mean, variance = moving_mean, moving_variance
    y = (x - expand(mean)) * tf.math.rsqrt(expand(variance) + epsilon)
    if gamma is not None:
        y = y * expand(gamma)
    if beta is not None:
        y = y + expand(beta)
    return y, stats


@keras.saving.register_keras_serializable(package="tfmeta")
class BatchNorm(keras.layers.Layer):
    """Batch normalisation over all axes except the last, twice differentiable.

    In training mode the layer normalises with the statistics of the batch it
    sees, updates ``moving_mean`` / ``moving_variance`` (exponential moving
    averages with ``momentum``) and records those batch statistics in the
    non-trainable weights ``batch_mean`` / ``batch_variance``. In inference
    mode it normalises with ``moving_mean`` / ``moving_variance``.

    ``batch_mean`` / ``batch_variance`` let a meta-learner normalise a query
    set with the statistics of the support set (``bn_mode="support"``): run
    the support set in training mode, copy the recorded batch statistics into
    the moving statistics of a stateless call, then run the query set in
    inference mode. :func:`with_batch_statistics` does the copy.

    All statistics are computed in float32 (or float64 for float64 inputs),
    also under a mixed-precision policy.

    Args:
      momentum: moving-average momentum.
      epsilon: added to the variance before the square root.
      center: learn an offset ``beta``.
      scale: learn a scale ``gamma``.
      **kwargs: passed to ``keras.layers.Layer``.
    """

    def __init__(
        self,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"BatchNorm needs a known last dimension, got shape {input_shape}")
        shape = (dim,)
        self.gamma = (
            self.add_weight(shape=shape, initializer="ones", name="gamma") if self.scale else None
        )
        self.beta = (
            self.add_weight(shape=shape, initializer="zeros", name="beta") if self.center else None
        )
        self.moving_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="moving_mean"
        )
        self.moving_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="moving_variance"
        )
        self.batch_mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="batch_mean"
        )
        self.batch_variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="batch_variance"
        )

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = tf.convert_to_tensor(inputs)
        y, stats = batch_norm(
            x, self.gamma, self.beta, self.moving_mean, self.moving_variance,
            reduce_axes=list(range(len(x.shape) - 1)), training=bool(training),
            momentum=self.momentum, epsilon=self.epsilon)
        if stats is not None:
            for var, value in zip((self.moving_mean, self.moving_variance, self.batch_mean,
                                   self.batch_variance), stats):
                var.assign(tf.cast(value, var.dtype))
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            momentum=self.momentum, epsilon=self.epsilon, center=self.center, scale=self.scale
        )
        return config


def all_layers(model: keras.Layer) -> list[keras.Layer]:
    """Every layer inside ``model`` (recursively, in creation order), ``model`` included."""
    # Keras 3 has no public recursive layer iterator; `_flatten_layers` is the
    # one Keras itself uses for weight tracking.
    return list(model._flatten_layers(include_self=True, recursive=True))


def batch_norm_layers(model: keras.Layer) -> list[BatchNorm]:
    """All :class:`BatchNorm` layers inside ``model`` (recursively)."""
    return [layer for layer in all_layers(model) if isinstance(layer, BatchNorm)]


def keras_batch_norm_layers(model: keras.Layer) -> list[keras.Layer]:
    """All Keras ``BatchNormalization`` layers inside ``model`` (recursively)."""
    return [
        layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]


def has_batch_norm(model: keras.Layer) -> bool:
    """Whether ``model`` normalises with batch statistics (tfmeta's or Keras's batch norm)."""
    return bool(batch_norm_layers(model) or keras_batch_norm_layers(model))


def batch_statistics_index(model: keras.Layer) -> list[tuple[int, int]]:
    """Index pairs ``(moving, batch)`` into ``model.non_trainable_variables``.

    For every :class:`BatchNorm` layer, pairs the position of ``moving_mean``
    with that of ``batch_mean``, and ``moving_variance`` with ``batch_variance``.
    """
    position = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    pairs = []
    for layer in batch_norm_layers(model):
        pairs.append((position[id(layer.moving_mean)], position[id(layer.batch_mean)]))
        pairs.append((position[id(layer.moving_variance)], position[id(layer.batch_variance)]))
    return pairs


def with_batch_statistics(
    non_trainable: list[tf.Tensor], index: list[tuple[int, int]]
) -> list[tf.Tensor]:
    """Copies recorded batch statistics over the moving statistics.

    Args:
      non_trainable: values aligned with ``model.non_trainable_variables``,
        typically returned by a training-mode stateless call on a support set.
      index: from :func:`batch_statistics_index`.

    Returns:
      A new list in which an inference-mode call normalises with those batch
      statistics (gradients flow through them).
    """
    out = list(non_trainable)
    for moving, batch in index:
        out[moving] = non_trainable[batch]
    return out


def biases_cancelled_by_batch_norm(model: keras.Model) -> set[int]:
    """``id``s of bias variables that batch normalisation with batch statistics cancels exactly.

    A per-channel bias added right before a batch norm over the same channels (the usual
    ``Conv2D(use_bias=True) -> BatchNorm``) is subtracted again with the batch mean, so while the
    norm uses batch statistics the loss does not depend on the bias and its gradient is zero in
    exact arithmetic. Computed in floating point it is round-off (~1e-9), which an optimiser that
    normalises gradients (Adam) turns into full-size steps that differ between equivalent
    formulations. The inner loop zeroes these gradients instead.

    Only layers connected in the model's graph (functional and Sequential models) are found: the
    producer must have a ``bias`` over its last axis and no activation of its own, be followed by
    a :class:`BatchNorm` or Keras ``BatchNormalization`` over the last axis, and feed nothing
    else.
    """
    found: set[int] = set()
    for norm in all_layers(model):
        if not (isinstance(norm, BatchNorm) or (isinstance(norm, keras.layers.BatchNormalization)
                                                and _normalises_last_axis(norm))):
            continue
        for node in getattr(norm, "_inbound_nodes", []):
            parents = getattr(node, "parent_nodes", [])
            if len(parents) != 1:
                continue
            producer = parents[0].operation
            bias = getattr(producer, "bias", None)
            activation = getattr(producer, "activation", None)
            linear = activation is None or getattr(activation, "__name__", "") == "linear"
            if (bias is not None and bias.trainable and len(bias.shape) == 1 and linear
                    and len(getattr(producer, "_outbound_nodes", [])) == 1):
                found.add(id(bias))
    return found


def _normalises_last_axis(layer: keras.layers.BatchNormalization) -> bool:
    """Whether a Keras ``BatchNormalization`` normalises each channel of the last axis."""
    if layer.axis == -1:
        return True
    try:
        return layer.axis == len(layer.input.shape) - 1
    except (AttributeError, ValueError):  # not connected in a graph: cannot tell
        return False
