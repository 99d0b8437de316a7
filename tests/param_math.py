"""Arithmetic on parameter lists that only the tests use (reference computations)."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tfmeta.core.functional import like

Params = list[tf.Tensor]


def sgd_step(params: Sequence[tf.Tensor], grads: Sequence[tf.Tensor], lr: float) -> Params:
    """Returns ``params - lr * grads`` element-wise."""
    return [p - like(lr, p) * g for p, g in zip(params, grads)]


def global_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Euclidean norm of all ``tensors`` taken together.

    The squared sum is floored at a tiny value before the square root so that
    the norm stays twice differentiable at zero (``sqrt`` has an infinite
    derivative there, which would turn second-order gradients into NaN).
    """
    sq = tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])
    return tf.sqrt(tf.maximum(sq, tf.cast(1e-30, sq.dtype)))


def clip_by_global_norm(tensors: Sequence[tf.Tensor], clip_norm: float) -> Params:
    """Rescales ``tensors`` so that their global norm is at most ``clip_norm``.

    Unlike ``tf.clip_by_global_norm`` this is written with plain differentiable
    ops, so MAML can differentiate through a clipped inner step.
    """
    norm = global_norm(tensors)
    clip = like(clip_norm, norm)
    scale = clip / tf.maximum(norm, clip)
    return [t * tf.cast(scale, t.dtype) for t in tensors]


def add(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> Params:
    """Element-wise ``a + b``."""
    return [x + y for x, y in zip(a, b)]


def sub(a: Sequence[tf.Tensor], b: Sequence[tf.Tensor]) -> Params:
    """Element-wise ``a - b``."""
    return [x - y for x, y in zip(a, b)]
