"""``export`` of a MetaModel or an algorithm: metadata, input transform, the serving export."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from tfmeta.base.input_transform import InputTransform
from tfmeta.core.maml import ANIL, MAML, MAMLpp, MetaSGD
from tfmeta.core.meta_learner import MetaLearner
from tfmeta.core.reptile import Reptile
from tfmeta.keras.errors import AlgorithmTypeError, _describe, _first_line
from tfmeta.serving import export as serving_export
from tfmeta.serving import metadata as metadata_lib
from tfmeta.serving.errors import ExportError


def algorithm_name(algorithm: MetaLearner) -> str:
    """The config name of an algorithm object (``"maml"``, ``"fomaml"``, ``"mamlpp"``, ...)."""
    for cls, name in ((MAMLpp, "mamlpp"), (MetaSGD, "metasgd"), (ANIL, "anil"),
                      (Reptile, "reptile")):
        if isinstance(algorithm, cls):
            return name
    if isinstance(algorithm, MAML):
        return "fomaml" if algorithm.first_order else "maml"
    return type(algorithm).__name__.lower()


# The input transforms export() knows by name (besides an InputTransform or its dict).
TRANSFORM_PRESETS = {
    "omniglot": "grayscale, inverted (1 - p), not normalised: tfmeta's Omniglot episodes",
    "pixels": "pixels / 255 as they are: not inverted, not normalised",
}


def _allowed_transforms() -> str:
    presets = " or ".join(f"{name!r} ({about})" for name, about in TRANSFORM_PRESETS.items())
    return ("a tfmeta.base.input_transform.InputTransform(image_size, channels, invert, mean, std) "
            f"as the training data was made, its dict, or {presets}")


def input_transform_for(model: keras.Model, input_transform: Any) -> InputTransform:
    """The input transform an image model is exported with, from what the caller gives.

    A model does not know what its training data were made from (Omniglot's inverted strokes,
    photos normalised with measured means, plain pixels), so the caller states it; it is checked
    against the network's input shape.

    Args:
      model: the image network (input ``[B, S, S, C]``).
      input_transform: an :class:`~tfmeta.base.input_transform.InputTransform`, its dict
        (``to_dict()``, e.g. the ``input_transform`` of a run's data summary), or a name of
        :data:`TRANSFORM_PRESETS` (the network's size and channels).

    Raises:
      tfmeta.serving.errors.ExportError: none given, an unknown name, an invalid dict, or a
        transform
        for other images than the network takes (one line each, naming what is allowed).
    """
    shape = tuple(model.input_shape)
    if input_transform is None:
        raise ExportError(
            f"export: the image model {model.name!r} (input {shape}) needs input_transform=, "
            f"how served pixels (decode_png / 255, in [0, 1]) become its inputs: "
            f"{_allowed_transforms()}")
    size, width, channels = shape[1:]
    if isinstance(input_transform, str):
        if input_transform not in TRANSFORM_PRESETS:
            raise ExportError(
                f"export: input_transform={input_transform!r} is not a known name; allowed: "
                f"{_allowed_transforms()}")
        if input_transform == "omniglot" and channels != 1:
            raise ExportError(
                f"export: input_transform='omniglot' is grayscale, but the network "
                f"{model.name!r} takes {channels} channels (input {shape}); give the transform "
                "of its training data")
        input_transform = InputTransform(int(size), int(channels),
                                         invert=input_transform == "omniglot")
    elif isinstance(input_transform, Mapping):
        try:
            input_transform = InputTransform.from_dict(dict(input_transform))
        except (ValueError, TypeError, KeyError) as e:
            raise ExportError(f"export: input_transform {_describe(input_transform)} is "
                                       f"not a valid transform ({_first_line(e)})") from None
    elif not isinstance(input_transform, InputTransform):
        raise ExportError(f"export: input_transform is {_describe(input_transform)}; "
                                   f"allowed: {_allowed_transforms()}")
    t = input_transform
    if (t.image_size, t.image_size, t.channels) != (size, width, channels):
        raise ExportError(
            f"export: input_transform is for [{t.image_size}, {t.image_size}, {t.channels}] "
            f"images, but the network {model.name!r} takes {[size, width, channels]} (input "
            f"{shape}); give the transform of the data it was trained on")
    return t


def export_metadata(algorithm: MetaLearner, *, input_transform: Any = None, step: int = 0,
                    shots: int | None = None, queries: int | None = None,
                    max_inner_steps: int | None = None, **extra: Any) -> dict[str, Any]:
    """The SavedModel's metadata, from the algorithm (as the trainer writes it from a config).

    The same builder as the trainer's export (:func:`tfmeta.serving.metadata.build`; the trainer
    feeds it from the config, :func:`tfmeta.run.exporter.metadata_from_config`), so the fields
    are the same where the algorithm knows them;
    ``shots`` / ``queries`` (data facts a model does not hold) when given.

    Args:
      algorithm: the trained meta-learner.
      input_transform: image classifiers: how served pixels become the model's inputs
        (:func:`input_transform_for`); must be None for other models.
      step: meta-iterations the parameters were trained for.
      shots: support examples per class the model was trained for (classification).
      queries: query examples per class (classification).
      max_inner_steps: bound on a client's ``inner_steps`` (default:
        :data:`tfmeta.serving.metadata.DEFAULT_MAX_INNER_STEPS`).
      **extra: more JSON-ready fields (e.g. ``split_scheme``), stored as given.

    Raises:
      tfmeta.serving.errors.ExportError: an image classifier without a valid
        ``input_transform``, or
        another model with one.
    """
    model = algorithm.model
    reptile = isinstance(algorithm, Reptile)
    classification = _is_image_classifier(algorithm)
    if not classification and input_transform is not None:
        raise ExportError(
            f"export: input_transform is for image classifiers; {model.name!r} (input "
            f"{tuple(model.input_shape)}) is exported with its inputs as they are: leave it out")
    adaptation = metadata_lib.Adaptation(
        algorithm=algorithm_name(algorithm), inner_lr=algorithm.inner_lr,
        inner_steps=algorithm.eval_inner_steps, train_inner_steps=algorithm.inner_steps,
        bn_mode=algorithm.bn_mode,
        max_inner_steps=max_inner_steps or max(metadata_lib.DEFAULT_MAX_INNER_STEPS,
                                               algorithm.eval_inner_steps),
        inner_optimizer=algorithm.inner_optimizer if reptile else "sgd",
        inner_batch_size=(algorithm.inner_batch_size or 0) if reptile else 0,
        inner_shuffle_per_task=reptile and algorithm.shuffle_per_task,
        inner_carry_optimizer_state=reptile and algorithm.carry_optimizer_state,
        inner_grad_clip=algorithm.inner_grad_clip or 0.0)
    classifier = None
    if classification:
        classifier = metadata_lib.Classifier(
            ways=int(model.output_shape[-1]), transform=input_transform_for(model, input_transform),
            shots=shots, train_shots=shots, queries=queries)
    task = (("omniglot" if input_transform == "omniglot" else "images") if classification
            else "sinusoid")
    return metadata_lib.build(step=step, task=task, adaptation=adaptation, classifier=classifier,
                              **{"trained_with": "keras_fit", **extra})


def _is_image_classifier(algorithm: MetaLearner) -> bool:
    return algorithm.accuracy_fn is not None and len(algorithm.model.input_shape) == 4


def _is_meta_model(value: Any) -> bool:
    # A MetaModel (tfmeta.keras.model imports this module, so the class is recognised by what
    # it wraps rather than imported here).
    return isinstance(value, keras.Model) and isinstance(getattr(value, "algorithm", None),
                                                          MetaLearner)


def export(model_or_algorithm: keras.Model | MetaLearner, output: str, *,
           input_transform: Any = None, shots: int | None = None, queries: int | None = None,
           max_inner_steps: int | None = None, replace: bool = False,
           step: int | None = None, **extra: Any) -> str:
    """Exports a trained model as the fast-adaptation SavedModel ``tfmeta.train`` writes.

    The same :func:`tfmeta.serving.export.export` as the trainer's export: the same signatures
    (``adapt_and_predict``, ``..._steps``, ``..._batch``, ``..._transductive``, ``predict``,
    ``metadata``), the inner loop in the graph, loadable by ``tf.saved_model.load`` without
    tfmeta or Keras; atomic, never overwriting anything but a previous tfmeta SavedModel
    (with ``replace``).

    An image classifier is served pixels (``decode_png / 255``, in [0, 1], any size) and the
    graph makes its inputs from them as the training data were made: ``input_transform`` says
    how (size, channels, inversion, normalisation), and is required, since ``fit`` cannot know
    what its episodes were made from.

    Args:
      model_or_algorithm: a :class:`MetaModel` or the tfmeta algorithm it wraps.
      output: the SavedModel directory (local or gs://); must not exist, or be a previous tfmeta
        export with ``replace=True``.
      input_transform: image classifiers only: an
        :class:`~tfmeta.base.input_transform.InputTransform`, its dict, or ``"omniglot"``
        (grayscale, inverted: tfmeta's Omniglot episodes) or ``"pixels"`` (pixels / 255 as they
        are); see :func:`input_transform_for`.
      shots: support examples per class the model was trained for (recorded in the metadata).
      queries: query examples per class (recorded in the metadata).
      max_inner_steps: the largest ``inner_steps`` a client may ask for (default 100).
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      step: the meta-iteration recorded in the metadata (default: the MetaModel's counter).
      **extra: more JSON-ready metadata fields.

    Returns:
      The SavedModel path (absolute for a local path).

    Raises:
      AlgorithmTypeError: neither a MetaModel nor a tfmeta algorithm.
      tfmeta.serving.errors.ExportError: an image classifier without a valid
        ``input_transform`` (or
        another model with one), a model that does not fit the signature contract (square
        images ``[S, S, C]`` to ``[ways]`` logits, or ``[1]`` to ``[1]`` regression), or an
        ``output`` that may not be written.
    """
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise ExportError(f"export: output is {_describe(output)}; give the path of "
                                   "the SavedModel directory to write (local or gs://)")
    output = os.fspath(output)
    for name, value, low in (("shots", shots, 1), ("queries", queries, 1),
                             ("max_inner_steps", max_inner_steps, 1), ("step", step, 0)):
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, (int, np.integer)) or value < low):
            raise ExportError(f"export: {name}={value!r}; it must be an integer >= "
                                       f"{low} (or left out)")
    if _is_meta_model(model_or_algorithm):
        algorithm = model_or_algorithm.algorithm
        step = model_or_algorithm.meta_iteration if step is None else step
    elif isinstance(model_or_algorithm, MetaLearner):
        algorithm = model_or_algorithm
    else:
        raise AlgorithmTypeError(f"export takes a MetaModel or a tfmeta algorithm; got "
                                 f"{type(model_or_algorithm).__name__} "
                                 f"{_describe(model_or_algorithm)}")
    metadata = export_metadata(algorithm, input_transform=input_transform, step=step or 0,
                               shots=shots, queries=queries, max_inner_steps=max_inner_steps,
                               **extra)
    return serving_export.export(algorithm.model, algorithm, output, metadata=metadata,
                                 classification=_is_image_classifier(algorithm),
                                 max_inner_steps=max_inner_steps, replace=replace)
