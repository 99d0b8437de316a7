"""The metadata of a fast-adaptation SavedModel: one builder for every export path.

The trainer's export (from a config, :mod:`tfmeta.run.exporter`) and ``tfmeta.keras.export``
(from a trained algorithm) both describe their model with :func:`build`, and :func:`for_export`
adds what the graph itself decides (the serving batch-norm mode, the step bound, the signature
names, the input transform in full), so the two paths write the same fields the same way. The
JSON is stored as the asset ``assets/tfmeta.json`` and returned by the ``metadata`` signature;
:func:`tfmeta.serving.serving_client.read_metadata` reads it back.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import keras
import tensorflow as tf

from tfmeta.base import signatures
from tfmeta.base.input_transform import InputTransform
from tfmeta.base.version import __version__
from tfmeta.serving.errors import ExportError

DEFAULT_MAX_INNER_STEPS = 100
# The metadata fields of a classifier's input transform, at the top level of the JSON.
TRANSFORM_FIELDS = ("image_size", "channels", "invert", "mean", "std")


def omniglot_transform(image_size: int) -> InputTransform:
    """The input transform of every Omniglot model: grayscale, inverted, not normalised.

    Omniglot's training pool holds strokes bright on black, so the white-background pixels of a
    PNG are inverted. An export whose metadata names no transform has this one.
    """
    return InputTransform(int(image_size), 1, invert=True)


def describe_channels(channels: int) -> str:
    """``"1 channel (grayscale)"`` or ``"3 channels (RGB)"``."""
    return "1 channel (grayscale)" if channels == 1 else f"{channels} channels (RGB)"


def versions_and_time(step: int) -> dict[str, Any]:
    """The metadata fields every export carries: format, versions, training step, export time."""
    return {
        "format_version": signatures.FORMAT_VERSION,
        "step": int(step),
        "tfmeta_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def input_descriptions(ways: int | None,
                       transform: InputTransform | None = None) -> dict[str, str]:
    """The signature inputs, described for the metadata: N-way images, or regression (None).

    Args:
      ways: the classifier's N; None for a regressor.
      transform: the classifier's input transform (default: Omniglot's, :func:`omniglot_transform`).
    """
    if ways is None:
        return {"support_x": "float32 [S, 1]", "support_y": "float32 [S, 1]",
                "query_x": "float32 [Q, 1]"}
    transform = transform or omniglot_transform(1)
    channels = transform.channels
    kind = "grayscale" if channels == 1 else "RGB"
    steps = ["resizes"] + ["inverts"] * transform.invert + ["normalises"] * transform.normalizes
    pixels = (f"in [0, 1]: {kind} pixels / 255 (decode_png(png, channels={channels}) / 255)"
              + (", white background" if transform.invert else "")
              + f", any height and width (the graph {' and '.join(steps)} them)")
    return {"support_images": f"float32 [S, H, W, {channels}] {pixels}",
            "support_labels": f"int32 [S] in [0, {int(ways)})",
            "query_images": f"float32 [Q, H, W, {channels}] {pixels}"}


def transform_from_metadata(metadata: dict[str, Any]) -> InputTransform:
    """The input transform an export's metadata states (:data:`TRANSFORM_FIELDS`).

    Metadata naming only ``image_size`` (as every export did before colour models) means the
    Omniglot transform: grayscale, inverted, not normalised.

    Raises:
      ExportError: the fields do not make a valid transform.
    """
    if "channels" not in metadata:
        return omniglot_transform(int(metadata["image_size"]))
    try:
        return InputTransform.from_dict(metadata)
    except (ValueError, TypeError, KeyError) as e:
        raise ExportError(f"the metadata's input transform is invalid: {e}") from e


def classifier_metadata(ways: int, transform: InputTransform, **counts: int | None
                        ) -> dict[str, Any]:
    """The metadata fields of an image classifier: ways, the input transform, the inputs.

    Args:
      ways: the classifier's N.
      transform: the model's input transform.
      **counts: ``shots``, ``train_shots``, ``queries`` ... stored as ints; None ones are left out.
    """
    return {"ways": int(ways), **transform.to_dict(),
            **{k: int(v) for k, v in counts.items() if v is not None},
            "inputs": input_descriptions(int(ways), transform)}


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """How the exported model adapts: the inner loop's settings, as the metadata records them.

    Attributes:
      algorithm: the algorithm's name (``"maml"``, ``"reptile"``, ...).
      inner_lr: inner learning rate.
      inner_steps: inner steps of the default signatures (the evaluation steps).
      train_inner_steps: inner steps in training.
      bn_mode: the batch-norm mode the model was trained with.
      max_inner_steps: the largest ``inner_steps`` a client may ask for.
      inner_optimizer: the inner optimizer (``"sgd"`` but for Reptile).
      inner_batch_size: Reptile's inner minibatch size (0: the whole support set, or not Reptile).
      inner_shuffle_per_task: Reptile's minibatch schedule.
      inner_carry_optimizer_state: whether Reptile's Adam starts from carried state.
      inner_grad_clip: the inner gradient clip (0: none).
    """

    algorithm: str
    inner_lr: float
    inner_steps: int
    train_inner_steps: int
    bn_mode: str
    max_inner_steps: int
    inner_optimizer: str = "sgd"
    inner_batch_size: int = 0
    inner_shuffle_per_task: bool = False
    inner_carry_optimizer_state: bool = False
    inner_grad_clip: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON fields (typed as the metadata has always stored them)."""
        return {"algorithm": self.algorithm, "inner_lr": float(self.inner_lr),
                "inner_steps": int(self.inner_steps),
                "train_inner_steps": int(self.train_inner_steps),
                "inner_optimizer": self.inner_optimizer,
                "inner_batch_size": int(self.inner_batch_size),
                # The minibatch schedule and where Adam starts: the SavedModel holds the state.
                "inner_shuffle_per_task": bool(self.inner_shuffle_per_task),
                "inner_carry_optimizer_state": bool(self.inner_carry_optimizer_state),
                "inner_grad_clip": float(self.inner_grad_clip),
                "bn_mode": self.bn_mode,
                "max_inner_steps": int(self.max_inner_steps)}


@dataclasses.dataclass(frozen=True)
class Classifier:
    """What the metadata records about an N-way image classifier.

    Attributes:
      ways: N.
      transform: how served pixels become the model's inputs.
      shots: support examples per class it was evaluated with.
      train_shots: support examples per class it was trained with.
      queries: query examples per class.
    """

    ways: int
    transform: InputTransform
    shots: int | None = None
    train_shots: int | None = None
    queries: int | None = None


def build(*, step: int, task: str, adaptation: Adaptation, classifier: Classifier | None = None,
          **extra: Any) -> dict[str, Any]:
    """The JSON-ready description of a model to export, before the export completes it.

    Args:
      step: meta-iteration of the exported parameters.
      task: ``"omniglot"``, ``"images"``, ``"sinusoid"``, ...
      adaptation: the inner loop's settings.
      classifier: for an image classifier, its ways, input transform and counts; None for a
        regressor on ``[*, 1]`` inputs.
      **extra: more JSON-ready fields, stored as given (last, so they win).
    """
    meta: dict[str, Any] = {**versions_and_time(step), "task": task, **adaptation.to_dict()}
    if classifier is not None:
        meta.update(classifier_metadata(classifier.ways, classifier.transform,
                                        shots=classifier.shots,
                                        train_shots=classifier.train_shots,
                                        queries=classifier.queries))
    else:
        meta["inputs"] = input_descriptions(None)
    meta.update(extra)
    return meta


def for_export(metadata: dict[str, Any], *, transform: InputTransform | None,
               max_inner_steps: int, serving_bn_mode: str,
               signature_names: list[str]) -> dict[str, Any]:
    """``metadata`` with what the export adds: transform in full, bound, serving mode, signatures.

    Args:
      metadata: the model's description (:func:`build`).
      transform: a classifier's input transform, stated in full (every
        :data:`TRANSFORM_FIELDS` and the inputs described for it) so that a client knows what the
        graph does to the images; None for a regressor.
      max_inner_steps: the bound the graph enforces on ``inner_steps``.
      serving_bn_mode: how the graph normalises queries (``"support"`` or ``"running"``).
      signature_names: the exported signatures (without ``serving_default``).
    """
    meta = dict(metadata)
    if transform is not None:
        meta.update(transform.to_dict(), inputs=input_descriptions(int(meta["ways"]), transform))
    meta.update(max_inner_steps=int(max_inner_steps), serving_bn_mode=serving_bn_mode,
                signatures=list(signature_names))
    if signatures.TRANSDUCTIVE in signature_names:
        meta["transductive_signature"] = signatures.TRANSDUCTIVE
    return meta
