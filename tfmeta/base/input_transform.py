"""How a model's input images are made from pixels: size, channels, inversion, normalisation.

Training episodes, evaluation and the exported SavedModel apply the same transform, so it is
stated once here and recorded in the work directory (``input_transform.json``) when a run starts:
the per-channel mean and standard deviation may be computed from the meta-train split, and an
export must not need the data to know them.

Pixels in [0, 1] (``uint8 / 255``) become ``x = (p - mean) / std`` per channel, after ``p = 1 - p``
when ``invert`` is set (Omniglot's convention: strokes bright on a dark background).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

FILE_NAME = "input_transform.json"


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """The input transform of a model.

    Attributes:
      image_size: side of the square images the model takes.
      channels: channels of the images the model takes (1 grayscale, 3 RGB).
      invert: whether pixels are inverted (``1 - p``) before normalisation.
      mean: per-channel mean subtracted (empty: no normalisation).
      std: per-channel standard deviation divided by (empty: no normalisation).
    """

    image_size: int
    channels: int
    invert: bool = False
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if bool(self.mean) != bool(self.std):
            raise ValueError("mean and std must both be given or both be empty")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values and len(values) != self.channels:
                raise ValueError(f"{name} has {len(values)} values; the images have "
                                 f"{self.channels} channels")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite, got {values}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def normalizes(self) -> bool:
        return bool(self.mean)

    def apply(self, pixels: Any) -> Any:
        """``[..., H, W, C]`` pixels in [0, 1] (a tf or numpy float array) -> model inputs."""
        x = 1.0 - pixels if self.invert else pixels
        if self.normalizes:
            scale = [1.0 / s for s in self.std]
            x = (x - _as(x, self.mean)) * _as(x, scale)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "channels": self.channels, "invert": self.invert,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InputTransform":
        return cls(image_size=int(d["image_size"]), channels=int(d["channels"]),
                   invert=bool(d.get("invert", False)), mean=tuple(d.get("mean", ())),
                   std=tuple(d.get("std", ())))


def _as(x: Any, values: Sequence[float]) -> Any:
    """``values`` as a constant of ``x``'s kind and dtype, broadcasting over the last axis."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return np.asarray(values, x.dtype)
    import tensorflow as tf

    return tf.constant(values, x.dtype)


def write(directory: str, transform: InputTransform) -> None:
    """Writes ``directory/input_transform.json`` atomically (any file system TF reads)."""
    import tensorflow as tf

    path = os.path.join(directory, FILE_NAME)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(transform.to_dict(), indent=1) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def read(directory: str) -> InputTransform | None:
    """Reads ``directory/input_transform.json``; None if the file does not exist."""
    import tensorflow as tf

    path = os.path.join(directory, FILE_NAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return InputTransform.from_dict(json.load(f))
