"""Checks of the episodes ``fit``, ``evaluate`` and ``predict`` take: structure, shapes, labels."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfmeta.keras.errors import EpisodeError, _describe

EPISODE_KEYS = ("support_x", "support_y", "query_x", "query_y")


# Written into the in-graph label check, to recognise its error when it surfaces from fit().
_LABEL_CHECK = "tfmeta episode labels out of range"


def _shape(spec: Any) -> tf.TensorShape:
    return tf.TensorShape(getattr(spec, "shape", None))


def _episode_part(data: Any, where: str) -> Any:
    """The episode dict of one dataset element or step input (``(dict,)`` tuples unpacked)."""
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data) if isinstance(data, (tuple, list)) \
        else (data, None, None)
    if y is not None:
        raise EpisodeError(
            f"{where}: labels travel inside the episodes (support_y, query_y); pass the episode "
            f"dicts alone, got a second element {_describe(y)}")
    return x


def check_episode_structure(spec: Any, *, where: str, classification: bool,
                            need_query_y: bool = True) -> None:
    """Checks the structure of an episode batch (tensors or ``tf.TensorSpec`` s) before use.

    Args:
      spec: a mapping of tensors, arrays or specs (for example ``dataset.element_spec``).
      where: what is being checked, for the message (``"fit"``, ``"validation_data"``, ...).
      classification: whether labels must be integer class labels.
      need_query_y: whether ``query_y`` is required (not for ``predict``).

    Raises:
      EpisodeError: a missing key, a count of labels that differs from the count of examples,
        a different number of tasks in two parts, or float class labels; the message names the
        value.
    """
    spec = _episode_part(spec, where)
    if not isinstance(spec, Mapping):
        raise EpisodeError(
            f"{where}: an episode batch must be a dict with keys {list(EPISODE_KEYS)}; got "
            f"{type(spec).__name__} {_describe(spec)}")
    needed = EPISODE_KEYS if need_query_y else EPISODE_KEYS[:3]
    missing = [k for k in needed if k not in spec]
    if missing:
        raise EpisodeError(f"{where}: episodes are missing {missing}; an episode batch needs "
                           f"{list(needed)}, got keys {sorted(spec)}")
    shapes = {k: _shape(spec[k]) for k in needed}
    for key, shape in shapes.items():
        if shape.rank is not None and shape.rank < 2:
            raise EpisodeError(f"{where}: {key} has shape {shape}; episodes are batched, "
                               f"[tasks, examples, ...] (batch the episode dataset)")
    pairs = [("support_x", "support_y", 2)]
    if need_query_y:
        pairs.append(("query_x", "query_y", 2))
    pairs.append(("support_x", "query_x", 1))
    for a, b, axes in pairs:
        for axis in range(axes):
            na = shapes[a][axis] if shapes[a].rank is not None else None
            nb = shapes[b][axis] if shapes[b].rank is not None else None
            if na is not None and nb is not None and na != nb:
                what = "tasks" if axis == 0 else "examples per task"
                raise EpisodeError(
                    f"{where}: {a} has {na} {what} but {b} has {nb} (shapes {shapes[a]} and "
                    f"{shapes[b]}); they must match")
    if classification:
        for key in ("support_y", "query_y")[:2 if need_query_y else 1]:
            dtype = _dtype(spec[key])
            if not dtype.is_integer:
                raise EpisodeError(f"{where}: {key} has dtype {dtype.name}; class labels must be "
                                   "integers in [0, ways)")


def _dtype(value: Any) -> tf.DType:
    return tf.as_dtype(value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype)


def check_episode_inputs(spec: Any, *, where: str, input_shape: tuple) -> None:
    """Checks that the examples of an episode batch are what the network takes, before use.

    Static checks only (dtypes and shapes of the element spec): free, and nothing runs on the
    device, so they hold on TPUs and under XLA too.

    Args:
      spec: a mapping of tensors, arrays or specs, as :func:`check_episode_structure` takes.
      where: what is being checked, for the message.
      input_shape: the network's ``input_shape`` (``(None, *example_shape)``).

    Raises:
      EpisodeError: ``support_x`` or ``query_x`` holds integers (e.g. uint8 pixels in 0..255;
        the message says how to convert), or examples of another shape than the network takes.
    """
    spec = _episode_part(spec, where)
    want = tuple(input_shape[1:])
    image = len(want) == 3
    for key in ("support_x", "query_x"):
        value = spec[key]
        dtype = _dtype(value)
        if not dtype.is_floating:
            how = ("float pixels, e.g. tf.cast(x, tf.float32) / 255 in the dataset's map for "
                   "0-255 pixels (an export is served pixels in [0, 1] and applies the input "
                   "transform it is given, see docs/keras.md)" if image else
                   "floating-point inputs (tf.cast(x, tf.float32))")
            raise EpisodeError(f"{where}: {key} has dtype {dtype.name}; the network takes {how}")
        shape = _shape(value)
        if shape.rank is None:
            continue
        got = tuple(shape.as_list()[2:])
        if len(got) != len(want) or any(g is not None and w is not None and g != w
                                        for g, w in zip(got, want)):
            what = ("[height, width, channels] " if image else "") + "examples of shape"
            raise EpisodeError(
                f"{where}: {key} holds {what} {list(got)} (batch shape {shape.as_list()}), but "
                f"the network takes {list(want)} (its input shape {tuple(input_shape)}); make "
                "the episodes at the network's image size and channels, or build the network "
                "for these")


def _label_error(e: tf.errors.InvalidArgumentError, where: str) -> EpisodeError | None:
    """The one-line error for the in-graph label check's failure, or None for another error."""
    text = getattr(e, "message", str(e))
    if _LABEL_CHECK not in text:
        return None
    found = re.search(rf"{_LABEL_CHECK}: (\w+) must be in \[0, (\d+)\)\S*\s*\[?[^\[]*\[(-?\d+)\]"
                      rf"\s*\[(-?\d+)\]", text)
    if found:
        key, ways, low, high = found.groups()
        return EpisodeError(f"{where}: {key} holds labels outside [0, {ways}) (the model's "
                            f"classes): found labels from {low} to {high}")
    line = next(line for line in text.splitlines() if _LABEL_CHECK in line)
    return EpisodeError(f"{where}: {line.strip()}")


def _empty_message(where: str) -> str:
    return (f"{where}: the dataset is empty (it gives no episode batch), so nothing was run; "
            "check its source and any filter, take or shard that leaves nothing")


class _NoData(keras.callbacks.Callback):
    """Refuses a ``fit`` whose data gives no batch at all (an empty dataset of unknown size).

    Keras only warns that the input ran out and ends the epoch; this callback, the first of the
    list, raises at the end of the first epoch if no step ran, before any other callback's
    ``on_epoch_end`` (a ``BackupAndRestore`` would record the epoch as done). The counters are
    unchanged (see :meth:`MetaModel.train_step`).
    """

    def __init__(self):
        super().__init__()
        self.batches = 0
        self._checked = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1

    def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches += 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._checked and not self.batches:
            raise EpisodeError(_empty_message("fit"))
        self._checked = True
