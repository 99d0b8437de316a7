"""Pure helpers on parameter lists.

A "parameter list" is a Python list of tensors aligned with a Keras model's
``trainable_variables`` (or ``non_trainable_variables``). Nothing here reads or
writes a variable except :func:`assign_floating`; every other function maps
tensors to tensors, so it can be differentiated (to any order), traced by
``tf.function`` and compiled by XLA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

Params = list[tf.Tensor]


def like(value: float | tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """``value`` in the dtype of ``t``.

    A Python float goes straight to that dtype: ``tf.cast(0.1, tf.float64)``
    would round 0.1 to float32 first.
    """
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype=t.dtype)
    return tf.cast(value, t.dtype)


def check_built(model: keras.Layer) -> None:
    """Raises ValueError if ``model`` has no weights yet.

    Args:
      model: any Keras layer or model.
    """
    if not model.built or not model.weights:
        raise ValueError(
            f"model {model.name!r} is not built (built={model.built}, "
            f"{len(model.weights)} weights); call model.build(input_shape) or "
            "call the model on an input before wrapping it."
        )


def values(variables: Sequence[Any]) -> Params:
    """Returns the current values of ``variables`` as tensors."""
    return [tf.convert_to_tensor(v) for v in variables]


def forward(
    model: keras.Layer,
    params: Sequence[tf.Tensor],
    non_trainable: Sequence[tf.Tensor],
    x: Any,
    *,
    training: bool,
) -> tuple[Any, Params]:
    """Calls ``model`` with the given weights, without touching its variables.

    Args:
      model: a built Keras model.
      params: tensors aligned with ``model.trainable_variables``.
      non_trainable: tensors aligned with ``model.non_trainable_variables``.
      x: the model input.
      training: the Keras ``training`` flag (batch norm statistics, dropout).

    Returns:
      ``(outputs, new_non_trainable)``: the outputs and the non-trainable values
      after the call (for example updated batch-norm moving statistics).
    """
    outputs, new_non_trainable = model.stateless_call(
        list(params), list(non_trainable), x, training=training
    )
    return outputs, list(new_non_trainable)


def scale(a: Sequence[tf.Tensor], factor: float | tf.Tensor) -> Params:
    """Element-wise ``factor * a``."""
    return [x * like(factor, x) for x in a]


def zeros_like(a: Sequence[tf.Tensor]) -> Params:
    """Zeros shaped like every element of ``a``."""
    return [tf.zeros_like(x) for x in a]


def stop_gradient(a: Sequence[tf.Tensor]) -> Params:
    """``tf.stop_gradient`` on every element."""
    return [tf.stop_gradient(x) for x in a]


def is_floating(t: Any) -> bool:
    """Whether ``t`` (tensor or variable) has a floating-point dtype."""
    return tf.as_dtype(t.dtype).is_floating


def map_floating(fn: Callable[[tf.Tensor], tf.Tensor], a: Sequence[tf.Tensor]) -> Params:
    """Applies ``fn`` to the floating-point elements of ``a``; keeps the rest."""
    return [fn(x) if is_floating(x) else x for x in a]


def assign_floating(variables: Sequence[Any], new_values: Sequence[tf.Tensor]) -> None:
    """Assigns ``new_values`` to the floating-point ``variables`` only.

    Non-floating non-trainable variables (for example the state of a Keras
    ``SeedGenerator``) are skipped: they cannot be averaged across tasks.
    """
    if len(variables) != len(new_values):
        raise ValueError(f"got {len(new_values)} values for {len(variables)} variables")
    for v, x in zip(variables, new_values):
        if is_floating(v):
            v.assign(tf.cast(x, v.dtype))
