"""Checks of what users hand the meta-learners: batches of tasks and numeric arguments.

A batch of tasks is ``{"support_x": [B, S, ...], "support_y": [B, S, ...], "query_x": [B, Q, ...],
"query_y": [B, Q, ...]}``. Every check raises a ``ValueError`` naming the value and what is
allowed, at trace time, before anything is computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfmeta.core.grouping import static_count

BATCH_KEYS = ("support_x", "support_y", "query_x", "query_y")
Task = dict[str, tf.Tensor]
CLASS_LABEL_LOSS = "sparse_categorical_crossentropy"


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """``value`` as a float, or a ValueError naming ``name`` if it is not finite and > 0."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
            or not np.isfinite(value) or not value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_pair(x: tf.Tensor, y: tf.Tensor, x_name: str, y_name: str, axes: int) -> None:
    """Raises ValueError if the leading ``axes`` dimensions of x and y differ."""
    for axis in range(axes):
        nx, ny = static_count(x, axis), static_count(y, axis)
        if nx is not None and ny is not None and nx != ny:
            what = "tasks" if axes == 2 and axis == 0 else "examples"
            raise ValueError(
                f"{x_name} has {nx} {what} but {y_name} has {ny} "
                f"(shapes {x.shape} and {y.shape}); they must match"
            )


def check_label_shape(y: tf.Tensor, name: str, *, task_axes: int,
                      loss_name: str | None) -> tf.Tensor:
    """Integer class labels are ``[..., N]``; ``[..., N, 1]`` is squeezed (as Keras does)."""
    if loss_name != CLASS_LABEL_LOSS or y.shape.rank is None:
        return y
    if y.shape.rank == task_axes + 1 and y.shape[-1] == 1:
        return tf.squeeze(y, -1)
    if y.shape.rank != task_axes:
        expected = "[tasks, examples]" if task_axes == 2 else "[examples]"
        raise ValueError(f"{name} must hold one integer class label per example, shape "
                         f"{expected}; got shape {y.shape}")
    return y


def check_batch(batch: Mapping[str, tf.Tensor], *, loss_name: str | None) -> Task:
    """The batch as tensors, keys in :data:`BATCH_KEYS` order, class labels squeezed.

    Raises:
      ValueError: a missing key, or task or example counts that differ between entries.
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch is missing keys {missing}; expected {list(BATCH_KEYS)}")
    b = {k: tf.convert_to_tensor(batch[k]) for k in BATCH_KEYS}
    check_pair(b["support_x"], b["support_y"], "support_x", "support_y", axes=2)
    check_pair(b["query_x"], b["query_y"], "query_x", "query_y", axes=2)
    check_pair(b["support_x"], b["query_x"], "support_x", "query_x", axes=1)
    for key in ("support_y", "query_y"):
        b[key] = check_label_shape(b[key], key, task_axes=2, loss_name=loss_name)
    return b
