r"""Fast-adaptation SavedModels: the inner loop inside the graph.

A trained meta-learner is only useful after adaptation, so the export carries the whole inner loop:
a client sends a labelled support set and unlabelled queries and gets predictions for the queries
after the configured number of inner steps, from any TensorFlow runtime, without tfmeta installed.

    python -m tfmeta.export --workdir=DIR [--output=PATH [--replace]]   # default PATH: DIR/export

(the binary, :mod:`tfmeta.export`; this module is the library and reads no flags).

Signatures of a classification export, with N = ways the model was trained for and C = its
channel count (1 grayscale, e.g. Omniglot; 3 RGB), fixed in each signature's input shapes:

``adapt_and_predict`` (also ``serving_default``)
    inputs ``support_images`` float32 [S, H, W, C], ``support_labels`` int32 [S] in [0, N),
    ``query_images`` float32 [Q, H, W, C]; outputs ``logits`` float32 [Q, N],
    ``probabilities`` float32 [Q, N], ``predictions`` int32 [Q]. Images are what
    ``tf.image.decode_png(png, channels=C) / 255`` gives (for Omniglot, white background = 1),
    any H and W. The graph resizes each channel to the training size exactly like the training
    data was prepared (PIL LANCZOS: separable Lanczos-3, horizontal pass then vertical, each
    rounded to uint8; within one level, 1/255, of PIL), then applies the model's input transform
    (:class:`tfmeta.base.input_transform.InputTransform`: ``1 - x`` for Omniglot, per-channel
    ``(x - mean) / std`` for normalised models), then adapts with the configured evaluation
    inner steps and learning rate. **Each query's answer depends only on the
    support set and that query** (the serving batch-norm mode, ``serving_bn_mode`` in the
    metadata: the support set's statistics under the adapted weights, or the trained moving
    statistics for models trained with ``bn_mode="running"``), so one query per call and many
    queries per call give the same answers.
``adapt_and_predict_steps``
    the same plus ``inner_steps`` int32 scalar, ``0 <= inner_steps <= max_inner_steps`` (set at
    export, enforced in the graph), run as a ``tf.while_loop``.
``adapt_and_predict_batch``
    ``support_images`` [B, S, H, W, C], ``support_labels`` [B, S], ``query_images`` [B, Q, H, W, C]:
    B independent adaptations in one call (computed together when the model's layers run
    task-batched); outputs as above with a leading B.
``adapt_and_predict_transductive``
    (models with batch norm only) as ``adapt_and_predict``, but the queries of a call are
    normalised together with their own batch statistics: MAML's original protocol, in which an
    answer depends on the other queries of the call. Asked for explicitly, never the default.
``predict``
    ``query_images`` only; the meta-learned initialisation without adaptation (batch norm with the
    moving statistics recorded in training, so each query is independent too).
``metadata``
    no inputs; ``json``: a JSON string (algorithm, ways, shots, the input transform: image_size,
    channels, invert, mean, std; inner steps and learning rate, trained and serving batch-norm
    modes, max_inner_steps, versions, training step). The same JSON is the asset
    ``assets/tfmeta.json``.

Regression (sinusoid) exports use ``support_x`` / ``support_y`` / ``query_x`` float32 [*, 1] (with
a leading B for the batch signature) and return ``predictions`` float32 [Q, 1]; the ``predict``
signature takes ``query_x``.

Bad inputs (labels out of range, label and image counts that differ, an empty support set, NaN or
out-of-range pixels, ``inner_steps`` outside ``[0, max_inner_steps]``) fail inside the graph with an
``InvalidArgumentError`` naming the problem.

A plain ``tf.Module`` holding the model's variables is exported (rather than
``keras.export.ExportArchive``): the endpoints are functions of several tensors that call the
meta-learner, not the model, and a module keeps the SavedModel free of Keras objects, so
``tf.saved_model.load`` needs neither Keras nor tfmeta. Variables are saved as variables.

Nothing is deleted that tfmeta did not create. An export writes only to a path that does not
exist, or replaces a previous tfmeta SavedModel: a directory whose whole tree is exactly what an
export writes (``saved_model.pb``, ``fingerprint.pb``, ``assets/tfmeta.json``, ``variables/``'s
index and data shards; :func:`foreign_entry`): ``tfmeta.train``'s own ``WORKDIR/export`` always,
any other path with ``--replace`` (``replace=True`` from Python). Anything else (a file, a
symbolic link, a work directory, a directory holding other files at any depth, the work
directory's ancestors or its checkpoint directory) is refused with one error line naming the
output as the caller gave it (:class:`Wording`) and the first foreign file, before the checkpoint
is read. docs/export-and-serving.md states the contract.

Writing is atomic with respect to the output path: the model is written to a new sibling
``PATH.tfmeta-tmp-<12 hex digits>``, holding a marker file written first, and renamed into place
only when complete; a previous model at PATH is kept until then (moved to
``PATH.tfmeta-old-<tag>`` for the duration of the swap and deleted after). A failed export (a
full disk, an error, Ctrl-C) removes its temporary. Leftovers of an export that was killed are
removed by the next export to the same path, which touches only siblings with exactly that name
pattern whose whole tree proves them an export's (the marker and parts of a SavedModel only, or a
complete tfmeta SavedModel).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import tempfile
import time
import uuid
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from tfmeta.base import errors
from tfmeta.core import layers as tfm_layers
from tfmeta.base import signatures
from tfmeta.base.input_transform import InputTransform
from tfmeta.base.version import __version__
# One reader for an export's metadata, from its directory or its loaded SavedModel.
from tfmeta.serving.serving_client import read_metadata  # noqa: F401  (re-exported)

EXPORT_DIR = "export"
# How refusals name WORKDIR/export when the caller gave no output.
RUN_EXPORT = "the run's export directory"
DEFAULT_MAX_INNER_STEPS = 100


class ExportError(errors.UserError, ValueError):
    """The experiment cannot be exported as asked."""


# --------------------------------------------------------------------------- preprocessing
def _resize_axis(x: tf.Tensor, size: int, axis: int) -> tf.Tensor:
    """Lanczos-3 resize of one spatial axis of ``[B, H, W, C]``, rounded to uint8 levels.

    PIL's LANCZOS resamples each axis separately and stores the intermediate image as uint8
    (clipped and rounded); doing the same here keeps the graph within one grey level of it.
    """
    shape = tf.shape(x)
    current = shape[axis]

    def resize() -> tf.Tensor:
        target = tf.stack([shape[1], size] if axis == 2 else [size, shape[2]])
        y = tf.image.resize(x, target, method="lanczos3", antialias=True)
        return tf.round(tf.clip_by_value(y, 0.0, 1.0) * 255.0) / 255.0

    # Like PIL, an axis already at the target size is left untouched (exact identity).
    return tf.cond(tf.equal(current, size), lambda: x, resize)


def omniglot_transform(image_size: int) -> InputTransform:
    """The input transform of every Omniglot model: grayscale, inverted, not normalised.

    Omniglot's training pool holds strokes bright on black, so the white-background pixels of a
    PNG are inverted. An export whose metadata names no transform has this one.
    """
    return InputTransform(int(image_size), 1, invert=True)


def preprocess_images(images: tf.Tensor, transform: InputTransform | int) -> tf.Tensor:
    """Maps ``decode_png / 255`` images of any size to the model's inputs.

    Args:
      images: float32 ``[B, H, W, C]`` in [0, 1] with C = ``transform.channels``, any H and W.
      transform: the model's input transform; an int is the image size of
        :func:`omniglot_transform` (grayscale, inverted).

    Returns:
      float32 ``[B, S, S, C]`` with S = ``transform.image_size``: each channel resized as the
      training data was prepared (PIL LANCZOS: horizontal pass, then vertical, each rounded to
      uint8 levels; an axis already of size S is left as it is), then ``transform.apply``
      (inversion if set, per-channel normalisation if set). Pillow 13 starts with the vertical
      pass for some images much taller than wide (a speed rule of its own); for those the graph
      can differ from PIL by a few levels on noisy photos.
    """
    if not isinstance(transform, InputTransform):
        transform = omniglot_transform(transform)
    size = transform.image_size
    x = _resize_axis(images, size, axis=2)
    x = _resize_axis(x, size, axis=1)
    x = tf.ensure_shape(x, [None, size, size, transform.channels])
    return transform.apply(x)


def _describe_channels(channels: int) -> str:
    """``"1 channel (grayscale)"`` or ``"3 channels (RGB)"``."""
    return "1 channel (grayscale)" if channels == 1 else f"{channels} channels (RGB)"


def _check_images(images: tf.Tensor, name: str, *, channels: int,
                  allow_empty: bool) -> list[tf.Operation]:
    shape = tf.shape(images)
    checks = [
        tf.debugging.assert_equal(
            tf.rank(images), 4,
            message=f"{name} must have rank 4 [count, height, width, {channels}]"),
        tf.debugging.assert_equal(
            shape[-1], channels,
            message=f"{name} must have exactly {_describe_channels(channels)}"),
        tf.debugging.assert_positive(
            shape[1:3], message=f"{name} must have a positive height and width"),
        tf.debugging.assert_all_finite(images, message=f"{name} contains NaN or Inf pixels"),
        tf.debugging.assert_greater_equal(
            tf.reduce_min(tf.concat([tf.reshape(images, [-1]), [0.0]], 0)), 0.0,
            message=f"{name} pixel values must be in [0, 1] (decode_png / 255); found a value < 0"),
        tf.debugging.assert_less_equal(
            tf.reduce_max(tf.concat([tf.reshape(images, [-1]), [1.0]], 0)), 1.0,
            message=f"{name} pixel values must be in [0, 1] (decode_png / 255); found a value > 1 "
                    "(were the images divided by 255?)"),
    ]
    if not allow_empty:
        checks.append(tf.debugging.assert_positive(
            shape[0], message=f"{name} is empty: the support set needs at least one example"))
    return checks


def _check_support(x: tf.Tensor, y: tf.Tensor, x_name: str, y_name: str,
                   num_classes: int | None) -> list[tf.Operation]:
    checks = [
        tf.debugging.assert_positive(
            tf.shape(x)[0], message=f"{x_name} is empty: the support set needs at least one "
                                    "example"),
        tf.debugging.assert_equal(
            tf.shape(y)[0], tf.shape(x)[0],
            message=f"{y_name} and {x_name} must have the same number of examples"),
    ]
    if num_classes is not None:
        checks += [
            tf.debugging.assert_non_negative(
                y, message=f"{y_name} must be in [0, {num_classes}); found a negative label"),
            tf.debugging.assert_less(
                y, tf.constant(num_classes, y.dtype),
                message=f"{y_name} must be in [0, {num_classes}): the model was trained for "
                        f"{num_classes} ways; found a label >= {num_classes}"),
        ]
    else:
        checks.append(tf.debugging.assert_all_finite(y, message=f"{y_name} contains NaN or Inf"))
    return checks


# --------------------------------------------------------------------------- serving
def serving_bn_mode(algorithm: Any) -> str:
    """How the export normalises queries so that each answer depends on that query alone.

    A model trained with ``bn_mode="running"`` keeps using its moving statistics, as does a model
    without batch norm (then an inference-mode pass is all there is); every other model
    normalises queries with the support set's statistics under the adapted weights
    (``"support"``). Transductive normalisation (queries together) is only served on request.
    """
    if algorithm.bn_mode == "running" or not tfm_layers.has_batch_norm(algorithm.model):
        return "running"
    return "support"


def _check_steps(inner_steps: tf.Tensor, max_inner_steps: int) -> list[tf.Operation]:
    return [
        tf.debugging.assert_non_negative(inner_steps, message="inner_steps must be >= 0"),
        tf.debugging.assert_less_equal(
            inner_steps, tf.constant(max_inner_steps, inner_steps.dtype),
            message=f"inner_steps must be <= {max_inner_steps}, the max_inner_steps this model "
                    "was exported with (python -m tfmeta.export --max_inner_steps=N to change it)"),
    ]


class _Module(tf.Module):
    """What every export holds: the variables, the learner, the metadata."""

    def __init__(self, algorithm: Any, *, inner_steps: int, max_inner_steps: int,
                 metadata_json: str, asset_path: str):
        super().__init__(name="tfmeta_export")
        self.model_variables = [v.value for v in algorithm.model.variables]
        # Learned inner learning rates, per-step batch-norm weights and statistics.
        inner = algorithm.inner.variables
        self.inner_variables = [*inner.trainable, *inner.non_trainable]
        self.metadata_file = tf.saved_model.Asset(asset_path)
        self._algorithm = algorithm
        self._steps = inner_steps
        self._max_steps = max_inner_steps
        self._json = metadata_json
        self._serving = serving_bn_mode(algorithm)
        self.metadata = tf.function(lambda: {"json": tf.constant(self._json)}, input_signature=[])

    def _adapt(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, steps: Any,
               bn_mode: str) -> tf.Tensor:
        """Adapts one task (``sx [S, ...]``) and predicts ``qx [Q, ...]``."""
        return self._algorithm.adapt_and_predict(sx[None], sy[None], qx[None], steps=steps,
                                                 bn_mode=bn_mode)[0]

    def _unadapted(self, x: tf.Tensor) -> tf.Tensor:
        """The meta-learned initialisation, batch norm with the moving statistics."""
        algorithm = self._algorithm
        params = [v.value for v in algorithm.model.trainable_variables]
        return algorithm.predict(params, x, bn_mode="running", steps=0)


class _Classifier(_Module):
    """The exported module of an N-way image classifier."""

    def __init__(self, algorithm: Any, *, ways: int, transform: InputTransform, **kwargs: Any):
        super().__init__(algorithm, **kwargs)
        self._ways = ways
        self._transform = transform
        self._size = transform.image_size
        self._channels = channels = transform.channels
        # Any height and width; the channel count is part of the contract.
        images = tf.TensorSpec([None, None, None, channels], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)
        task_images = tf.TensorSpec([None, None, None, None, channels], tf.float32)
        # The Python parameter names are the signature's input names.
        self.adapt_and_predict = tf.function(self._adapt_and_predict,
                                             input_signature=[images, labels, images])
        self.adapt_and_predict_steps = tf.function(
            self._adapt_and_predict_steps,
            input_signature=[images, labels, images, tf.TensorSpec([], tf.int32)])
        self.adapt_and_predict_batch = tf.function(
            self._adapt_and_predict_batch,
            input_signature=[task_images, tf.TensorSpec([None, None], tf.int32), task_images])
        if tfm_layers.has_batch_norm(algorithm.model):
            self.adapt_and_predict_transductive = tf.function(
                self._adapt_and_predict_transductive, input_signature=[images, labels, images])
        self.predict = tf.function(self._predict, input_signature=[images])

    def _inputs(self, support_images, support_labels, query_images):
        checks = (_check_images(support_images, "support_images", channels=self._channels,
                                allow_empty=False)
                  + _check_images(query_images, "query_images", channels=self._channels,
                                  allow_empty=True)
                  + _check_support(support_images, support_labels, "support_images",
                                   "support_labels", self._ways))
        with tf.control_dependencies(checks):
            sx = preprocess_images(support_images, self._transform)
            qx = preprocess_images(query_images, self._transform)
            sy = tf.identity(support_labels)
        return sx, sy, qx

    def _outputs(self, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(logits, tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
                "predictions": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    def _serve(self, support_images, support_labels, query_images, steps, bn_mode):
        sx, sy, qx = self._inputs(support_images, support_labels, query_images)
        return self._outputs(self._adapt(sx, sy, qx, steps, bn_mode))

    def _adapt_and_predict(self, support_images, support_labels, query_images):
        return self._serve(support_images, support_labels, query_images, self._steps,
                           self._serving)

    def _adapt_and_predict_transductive(self, support_images, support_labels, query_images):
        return self._serve(support_images, support_labels, query_images, self._steps,
                           "transductive")

    def _adapt_and_predict_steps(self, support_images, support_labels, query_images,
                                 inner_steps):
        with tf.control_dependencies(_check_steps(inner_steps, self._max_steps)):
            inner_steps = tf.identity(inner_steps)
        return self._serve(support_images, support_labels, query_images, inner_steps,
                           self._serving)

    def _adapt_and_predict_batch(self, support_images, support_labels, query_images):
        shape = tf.shape(support_images)
        tasks, shots = shape[0], shape[1]
        queries = tf.shape(query_images)[1]
        flat = lambda x: tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))  # noqa: E731
        checks = [tf.debugging.assert_equal(
            tf.shape(query_images)[0], tasks,
            message="query_images and support_images must have the same number of tasks B"),
            tf.debugging.assert_equal(
            tf.shape(support_labels), shape[:2],
            message="support_labels must be [B, S], matching support_images "
                    f"[B, S, H, W, {self._channels}]")]
        with tf.control_dependencies(checks):
            sx, sy, qx = self._inputs(flat(support_images), flat(support_labels),
                                      flat(query_images))
        pixels = [self._size, self._size, self._channels]
        sx = tf.reshape(sx, tf.stack([tasks, shots, *pixels]))
        sy = tf.reshape(sy, tf.stack([tasks, shots]))
        qx = tf.reshape(qx, tf.stack([tasks, queries, *pixels]))
        # With Q = 0, TensorFlow's Conv2D returns an empty batch with the input's channel count
        # instead of the filters', so the task-batched layers (B > 1) fail on a shape mismatch.
        # One blank query stands in and its answers are dropped; queries are answered each on
        # its own in the serving modes, so it changes no other answer.
        pad = tf.cast(tf.equal(queries, 0), tf.int32)
        qx = tf.concat([qx, tf.zeros(tf.stack([tasks, pad, *pixels]), qx.dtype)], axis=1)
        logits = self._algorithm.adapt_and_predict(sx, sy, qx, steps=self._steps,
                                                   bn_mode=self._serving)
        return self._outputs(logits[:, :queries])

    def _predict(self, query_images):
        with tf.control_dependencies(_check_images(query_images, "query_images",
                                                   channels=self._channels, allow_empty=True)):
            qx = preprocess_images(query_images, self._transform)
        return self._outputs(self._unadapted(qx))


class _Regressor(_Module):
    """The exported module of a regressor on [*, 1] inputs (sinusoid)."""

    def __init__(self, algorithm: Any, **kwargs: Any):
        super().__init__(algorithm, **kwargs)
        points = tf.TensorSpec([None, 1], tf.float32)
        task_points = tf.TensorSpec([None, None, 1], tf.float32)
        self.adapt_and_predict = tf.function(self._adapt_and_predict,
                                             input_signature=[points, points, points])
        self.adapt_and_predict_steps = tf.function(
            self._adapt_and_predict_steps,
            input_signature=[points, points, points, tf.TensorSpec([], tf.int32)])
        self.adapt_and_predict_batch = tf.function(
            self._adapt_and_predict_batch, input_signature=[task_points] * 3)
        self.predict = tf.function(self._predict, input_signature=[points])

    def _checks(self, support_x, support_y, query_x):
        return _check_support(support_x, support_y, "support_x", "support_y", None) + [
            tf.debugging.assert_all_finite(support_x, message="support_x contains NaN or Inf"),
            tf.debugging.assert_all_finite(query_x, message="query_x contains NaN or Inf")]

    def _serve(self, support_x, support_y, query_x, steps):
        with tf.control_dependencies(self._checks(support_x, support_y, query_x)):
            sx, sy, qx = tf.identity(support_x), tf.identity(support_y), tf.identity(query_x)
        out = self._adapt(sx, sy, qx, steps, self._serving)
        return {"predictions": tf.cast(out, tf.float32)}

    def _adapt_and_predict(self, support_x, support_y, query_x):
        return self._serve(support_x, support_y, query_x, self._steps)

    def _adapt_and_predict_steps(self, support_x, support_y, query_x, inner_steps):
        with tf.control_dependencies(_check_steps(inner_steps, self._max_steps)):
            inner_steps = tf.identity(inner_steps)
        return self._serve(support_x, support_y, query_x, inner_steps)

    def _adapt_and_predict_batch(self, support_x, support_y, query_x):
        flat = lambda x: tf.reshape(x, [-1, 1])  # noqa: E731
        checks = self._checks(flat(support_x), flat(support_y), flat(query_x)) + [
            tf.debugging.assert_equal(tf.shape(support_y), tf.shape(support_x),
                                      message="support_y must have the shape of support_x"),
            tf.debugging.assert_equal(tf.shape(query_x)[0], tf.shape(support_x)[0],
                                      message="query_x and support_x must have the same B")]
        with tf.control_dependencies(checks):
            sx, sy, qx = tf.identity(support_x), tf.identity(support_y), tf.identity(query_x)
        out = self._algorithm.adapt_and_predict(sx, sy, qx, steps=self._steps,
                                                bn_mode=self._serving)
        return {"predictions": tf.cast(out, tf.float32)}

    def _predict(self, query_x):
        with tf.control_dependencies([tf.debugging.assert_all_finite(
                query_x, message="query_x contains NaN or Inf")]):
            qx = tf.identity(query_x)
        return {"predictions": tf.cast(self._unadapted(qx), tf.float32)}


# --------------------------------------------------------------------------- metadata
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


# The metadata fields of a classifier's input transform, at the top level of the JSON.
TRANSFORM_FIELDS = ("image_size", "channels", "invert", "mean", "std")


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

    One builder for every export path (the trainer's config, ``tfmeta.keras``), so the fields
    (:data:`TRANSFORM_FIELDS` at the top level, ``inputs`` described for that transform) are
    written the same way.

    Args:
      ways: the classifier's N.
      transform: the model's input transform.
      **counts: ``shots``, ``train_shots``, ``queries`` ... stored as ints; None ones are left out.
    """
    return {"ways": int(ways), **transform.to_dict(),
            **{k: int(v) for k, v in counts.items() if v is not None},
            "inputs": input_descriptions(int(ways), transform)}


def metadata_from_config(config: Any, *, step: int, classification: bool,
                         transform: InputTransform | None = None) -> dict[str, Any]:
    """The JSON-ready description stored with an export.

    Args:
      config: the experiment config.
      step: meta-iteration of the exported parameters.
      classification: whether the task is N-way classification.
      transform: for classification, the run's input transform (recorded with the run, see
        :func:`tfmeta.run.tasks.input_transform_of`); when None, the one the config states alone.
    """
    from tfmeta.run import config as config_lib

    meta: dict[str, Any] = {
        **versions_and_time(step),
        "task": config.task,
        "algorithm": config.algorithm,
        "inner_lr": float(config.inner.lr),
        "inner_steps": int(config.inner.eval_steps),
        "train_inner_steps": int(config.inner.steps),
        "inner_optimizer": config.inner.optimizer if config.algorithm == "reptile" else "sgd",
        "inner_batch_size": int(config.inner.batch_size) if config.algorithm == "reptile" else 0,
        # The minibatch schedule and where Adam starts: the SavedModel holds the carried state.
        "inner_shuffle_per_task": bool(config.inner.shuffle_per_task),
        "inner_carry_optimizer_state": bool(config.inner.carry_optimizer_state),
        "inner_grad_clip": float(config.inner.grad_clip),
        "bn_mode": config.inner.bn_mode,
        "max_inner_steps": int(config.export.max_inner_steps),
    }
    if classification:
        if transform is None:
            from tfmeta.run import tasks

            transform = tasks.input_transform_of(config)
        meta.update(classifier_metadata(config.data.ways, transform, shots=config.data.shots,
                                        train_shots=config_lib.train_shots(config),
                                        queries=config.data.queries),
                    split_scheme=config.data.split_scheme, subset=config.data.subset)
    else:
        meta.update(k_support=int(config.data.k_support), k_query=int(config.data.k_query),
                    inputs=input_descriptions(None))
    return meta


# --------------------------------------------------------------------------- writing
_FILE = None
# Every file and folder a tfmeta export writes, by name at its level (regular expressions; a
# folder maps to what it may hold, a file to _FILE). A directory holding anything else, at any
# depth (a user's notes in assets/, a file dropped into variables/), holds something that is not
# tfmeta's: it is never replaced and never deleted.
_EXPORT_TREE: dict[str, Any] = {
    r"saved_model\.pb": _FILE,
    r"fingerprint\.pb": _FILE,
    r"assets": {re.escape(signatures.METADATA_ASSET): _FILE},
    r"variables": {r"variables\.index": _FILE, r"variables\.data-\d{5}-of-\d{5}": _FILE},
}
# Written first into every temporary directory: the proof, for a later export's clean-up, that a
# leftover directory is a killed export's and not something of the user's.
_TEMP_MARKER = ".tfmeta-export-in-progress.json"
_PART = r"part-\d{5}-of-\d{5}(\.index|\.data-\d{5}-of-\d{5})"
# What a killed export's temporary may hold: the marker, and the parts of a SavedModel, including
# the variables' own temporary (TensorFlow writes variables/variables_temp/part-* first, or
# variables/variables.part-* on S3, then merges them).
_PARTIAL_TREE: dict[str, Any] = {
    **_EXPORT_TREE,
    re.escape(_TEMP_MARKER): _FILE,
    r"variables": {**_EXPORT_TREE[r"variables"], r"variables\." + _PART: _FILE,
                   r"variables_temp": {_PART: _FILE}},
}
_TEMP_KINDS = ("tmp", "old")
_TAG_LENGTH = 12


@dataclasses.dataclass(frozen=True)
class Wording:
    """How the caller names the output and the permission to replace it, in refusals.

    Attributes:
      output: what precedes the output path: ``"--output"`` on the command line, ``"output"``
        from Python, a description for a path the caller did not give (the run's own export).
      replace: how to ask for a replacement: ``"--replace"`` or ``"replace=True"``.
    """

    output: str = "output"
    replace: str = "replace=True"

    def the_output(self, path: str) -> str:
        """``--output 'PATH'``, ``output 'PATH'`` or ``the run's export directory 'PATH'``."""
        return f"{self.output} {path!r}"


PYTHON = Wording()
COMMAND_LINE = Wording("--output", "--replace")


def _signature_names(module: tf.Module) -> list[str]:
    names = [signatures.ADAPT, signatures.ADAPT_STEPS, signatures.ADAPT_BATCH,
             signatures.TRANSDUCTIVE, signatures.PREDICT, signatures.METADATA]
    return [name for name in names if hasattr(module, name)]


def _write_saved_model(module: tf.Module, path: str) -> None:
    functions = {name: getattr(module, name).get_concrete_function()
                 for name in _signature_names(module)}
    # The default signature is the contract, so `saved_model_cli run` without a name works too.
    functions[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY] = functions[signatures.ADAPT]
    tf.saved_model.save(module, path, signatures=functions)


def _listdir(path: str) -> list[str]:
    # Object stores list subdirectories with a trailing "/".
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def _normalise(path: str) -> str:
    """An absolute local path or a remote URL, without a trailing "/"."""
    if "://" in path:
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def _within(path: str, ancestor: str) -> bool:
    """Whether ``path`` is ``ancestor`` or lies inside it, symbolic links resolved."""
    if "://" not in path:
        path, ancestor = os.path.realpath(path), os.path.realpath(ancestor)
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _is_link(path: str) -> bool:
    return "://" not in path and os.path.islink(path)


def foreign_entry(path: str, tree: dict[str, Any] | None = None) -> str | None:
    """The first entry under the directory ``path`` that a tfmeta export does not write.

    Walks the whole tree in sorted order. An entry is foreign when its name is not one an export
    writes at its level, when it is a folder where the export writes a file (or the reverse), or
    when it is a symbolic link (whatever it points to is someone else's).

    Args:
      path: a directory (local or remote).
      tree: the allowed names (default: a complete export's, ``_EXPORT_TREE``).

    Returns:
      The foreign entry's path relative to ``path`` (e.g. ``"assets/notes.txt"``), or None when
      every file and folder is one an export writes.

    Raises:
      tf.errors.OpError: a folder cannot be listed.
    """
    tree = _EXPORT_TREE if tree is None else tree
    for name in _listdir(path):
        full = os.path.join(path, name)
        pattern = next((p for p in tree if re.fullmatch(p, name)), None)
        if pattern is None or _is_link(full):
            return name
        expected = tree[pattern]
        if (expected is not _FILE) != tf.io.gfile.isdir(full):
            return name
        if expected is not _FILE:
            inner = foreign_entry(full, expected)
            if inner is not None:
                return f"{name}/{inner}"
    return None


def is_tfmeta_export(path: str) -> bool:
    """Whether ``path`` is a directory holding a tfmeta SavedModel and nothing else.

    A tfmeta SavedModel has ``saved_model.pb`` and the metadata asset ``assets/tfmeta.json``, and
    every file and folder in it, at any depth, is one an export writes (:func:`foreign_entry`):
    anything else (a checkpoint, a config, a user's file in ``assets/`` or ``variables/``) makes
    the directory something else, which an export never replaces.
    """
    try:
        if _is_link(path) or not tf.io.gfile.isdir(path):
            return False
        return (not tf.io.gfile.isdir(os.path.join(path, "saved_model.pb"))
                and tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))
                and tf.io.gfile.exists(os.path.join(path, "assets", signatures.METADATA_ASSET))
                and foreign_entry(path) is None)
    except tf.errors.OpError:
        return False


def _describe(path: str) -> str:
    """What an existing path that is not a tfmeta SavedModel is, for the refusal message."""
    if _is_link(path):
        return f"is a symbolic link (to {os.path.realpath(path)!r})"
    if not tf.io.gfile.isdir(path):
        return "is a file"
    names = _listdir(path)
    if not names:
        return "is an empty directory"
    if "checkpoints" in names or "config.json" in names:
        return "is a training work directory"
    foreign = foreign_entry(path)
    if "saved_model.pb" in names and foreign is not None:
        return (f"holds a SavedModel together with {foreign!r}, which a tfmeta export does not "
                "write")
    if "saved_model.pb" in names:
        return "holds a SavedModel that tfmeta did not export (no assets/tfmeta.json)"
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"is a directory holding other files ({shown})"


def _repair(path: str, wording: Wording) -> str:
    """How to free ``path`` (a refused existing output), for the refusal message."""
    foreign = None
    if tf.io.gfile.isdir(path) and not _is_link(path):
        foreign = foreign_entry(path)
        if foreign is not None and "saved_model.pb" not in _listdir(path):
            foreign = None  # not a model with an extra file: all of it is someone else's
    if foreign is not None:
        move = f"move {os.path.join(path, foreign)!r} out of it to have the model replaced"
    else:
        move = "move what is there elsewhere"
    if wording.output == RUN_EXPORT:  # the caller gave no output to change
        return f"{move}; that directory holds only the run's SavedModel"
    return f"{move}, or choose a path that does not exist"


def check_output(output: str, *, replace: bool = False, workdir: str | None = None,
                 wording: Wording = PYTHON) -> str:
    """Checks that a SavedModel may be written to ``output`` without losing anything.

    The output may be a path that does not exist, or (with ``replace``) a previous tfmeta
    SavedModel (:func:`is_tfmeta_export`: nothing in its whole tree but what an export writes).
    Anything else that exists is refused: a file, a symbolic link, a work directory, a directory
    holding other files (at any depth), even an empty one.

    Args:
      output: the SavedModel directory asked for (local or remote).
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: the work directory the model comes from: ``output`` may be neither the work
        directory nor one of its ancestors, nor lie inside its checkpoint directory.
      wording: how the caller names ``output`` and ``replace`` (:data:`PYTHON`,
        :data:`COMMAND_LINE`), so that a refusal names what the caller actually gave.

    Returns:
      ``output`` normalised: absolute (local), without a trailing "/".

    Raises:
      ExportError: naming ``output``, why it cannot be written and what to do instead.
    """
    path = _normalise(output)
    parent, base = os.path.split(path)
    subject = wording.the_output(output)
    remote_root = "://" in path and "/" not in path.split("://", 1)[1]
    if base in ("", ".", "..") or not parent or remote_root:
        raise ExportError(f"{subject} is a file system or bucket root; choose a new directory "
                          "path for the SavedModel, such as DIR/export")
    if workdir is not None:
        work = _normalise(workdir)
        if _within(work, path):
            what = ("is the work directory" if _within(path, work) else
                    "contains the work directory")
            raise ExportError(f"{subject} {what} {workdir!r}; choose a path of its own for the "
                              f"SavedModel, such as {os.path.join(workdir, EXPORT_DIR)!r}")
        checkpoints = os.path.join(work, "checkpoints")
        if _within(path, checkpoints):
            raise ExportError(f"{subject} is inside the checkpoint directory {checkpoints!r}; "
                              "choose a path outside it, such as "
                              f"{os.path.join(workdir, EXPORT_DIR)!r}")
    try:
        exists = tf.io.gfile.exists(path) or _is_link(path)
        if not exists:
            return path
        if is_tfmeta_export(path):
            if replace:
                return path
            raise ExportError(f"{subject} already holds a tfmeta SavedModel; pass "
                              f"{wording.replace} to replace it, or choose a path that does not "
                              "exist")
        what, repair = _describe(path), _repair(path, wording)
    except tf.errors.OpError as e:
        raise ExportError(f"cannot write the SavedModel to {output!r}: {_reason(e)}") from e
    # The run's own export directory is replaced without asking: no option to mention.
    even = "" if wording.output == RUN_EXPORT else f" (not even with {wording.replace})"
    raise ExportError(f"{subject} {what}; an export only creates a new directory or replaces a "
                      f"tfmeta SavedModel, so nothing was written{even}: {repair}")


def _temporary_name(base: str, kind: str) -> str:
    return f"{base}.tfmeta-{kind}-{uuid.uuid4().hex[:_TAG_LENGTH]}"


def _temporary_kind(name: str, base: str) -> str | None:
    """``"tmp"`` or ``"old"`` when ``name`` is exactly an export temporary's name for ``base``."""
    for kind in _TEMP_KINDS:
        prefix = f"{base}.tfmeta-{kind}-"
        tag = name[len(prefix):] if name.startswith(prefix) else ""
        if len(tag) == _TAG_LENGTH and all(c in "0123456789abcdef" for c in tag):
            return kind
    return None


def _marker_is_live(path: str) -> bool:
    """Whether the export that wrote the marker in ``path`` is still running on this machine."""
    try:
        with tf.io.gfile.GFile(os.path.join(path, _TEMP_MARKER)) as f:
            marker = json.loads(f.read())
        pid = int(marker["pid"])
        if marker.get("host") != socket.gethostname() or pid <= 0:
            return False
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, ValueError, KeyError, TypeError, tf.errors.OpError):
        return False
    except PermissionError:  # the process exists, owned by someone else
        return True


def _is_own_temporary(path: str, kind: str) -> bool:
    """Whether a directory with a temporary's name provably is a killed export's.

    A ``tmp`` directory holds the marker an export writes first (plus whatever part of a
    SavedModel it got to write), or a complete tfmeta SavedModel (killed after removing the
    marker, before renaming); an ``old`` directory is a complete tfmeta SavedModel moved aside.
    """
    try:
        if _is_link(path) or not tf.io.gfile.isdir(path):
            return False
        if kind == "tmp" and _TEMP_MARKER in _listdir(path):
            # Only what an export writes, at any depth: a user's file inside is never deleted.
            return foreign_entry(path, _PARTIAL_TREE) is None and not _marker_is_live(path)
    except tf.errors.OpError:
        return False
    return is_tfmeta_export(path)


def _clean_stale(output: str) -> None:
    """Recovers from an export killed mid-swap and removes leftovers of killed exports.

    Only directories named exactly ``BASE.tfmeta-tmp-<tag>`` / ``BASE.tfmeta-old-<tag>`` (a
    12-digit hexadecimal tag) next to ``output`` whose content proves them an export's own
    temporaries (:func:`_is_own_temporary`) are touched; any other neighbour is left alone. If
    ``output`` is missing but a moved-aside previous model exists, the kill happened between the
    two renames of a replacement: that model is moved back.
    """
    parent, base = os.path.split(output)
    if not tf.io.gfile.isdir(parent):
        return
    for name in _listdir(parent):
        kind = _temporary_kind(name, base)
        path = os.path.join(parent, name)
        if kind is None or not _is_own_temporary(path, kind):
            continue
        if kind == "old" and not tf.io.gfile.exists(output):
            logging.warning("restoring %s from %s, left by an export killed while replacing it",
                            output, path)
            tf.io.gfile.rename(path, output)
        else:
            logging.info("removing %s, left by a killed export", path)
            tf.io.gfile.rmtree(path)


def _missing_ancestors(path: str) -> list[str]:
    """The ancestors of ``path`` that do not exist yet, deepest first."""
    missing = []
    parent = os.path.dirname(path)
    while parent and not parent.endswith("://") and not tf.io.gfile.exists(parent):
        missing.append(parent)
        if os.path.dirname(parent) == parent:
            break
        parent = os.path.dirname(parent)
    return missing


def _remove_quietly(paths: list[str]) -> None:
    """Best-effort removal of what a failed export created (directories, deepest first)."""
    for path in paths:
        try:
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
        except (tf.errors.OpError, OSError) as e:
            logging.warning("could not remove %s after a failed export: %s", path, _reason(e))


def write_atomically(module: tf.Module, output: str, *, replace: bool = False,
                     workdir: str | None = None, wording: Wording = PYTHON) -> str:
    """Saves ``module`` to ``output`` so that ``output`` is never a partial model.

    The model is written to a new sibling ``BASE.tfmeta-tmp-<tag>`` (a marker file first, so
    that a later export can tell a killed export's leftover from anything else) and renamed into
    place once complete. Only a path that does not exist or, with ``replace``, a previous tfmeta
    SavedModel is written (see :func:`check_output`); a replaced model is moved aside to
    ``BASE.tfmeta-old-<tag>`` for the duration of the swap and deleted after. Whatever happens
    (an error, a full disk, KeyboardInterrupt), the temporary and any parent directories the
    export created are removed. Not safe against concurrent exports to the same path.

    Args:
      module: the module to save.
      output: SavedModel directory (local or gs://).
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: the work directory the model comes from (protected, see :func:`check_output`).
      wording: how refusals name ``output`` and ``replace`` (see :func:`check_output`).

    Returns:
      ``output`` normalised (absolute for a local path).

    Raises:
      ExportError: ``output`` exists and may not be replaced, or cannot be written (naming it
        and the reason); nothing was changed at ``output`` then.
    """
    output = check_output(output, replace=replace, workdir=workdir, wording=wording)
    parent, base = os.path.split(output)
    created = _missing_ancestors(output)
    tmp = os.path.join(parent, _temporary_name(base, "tmp"))
    try:
        _clean_stale(output)
        # A model restored by the clean-up must be checked again.
        output = check_output(output, replace=replace, workdir=workdir, wording=wording)
        tf.io.gfile.makedirs(parent)
        # Creating the temporary directory and its marker first turns "this location cannot be
        # written" (read-only or virtual file systems, missing permissions) into one clear error.
        tf.io.gfile.mkdir(tmp)
        with tf.io.gfile.GFile(os.path.join(tmp, _TEMP_MARKER), "w") as f:
            f.write(json.dumps({"target": output, "pid": os.getpid(),
                                "host": socket.gethostname(), "tfmeta": __version__}))
        _write_saved_model(module, tmp)
        tf.io.gfile.remove(os.path.join(tmp, _TEMP_MARKER))
        if tf.io.gfile.exists(output):
            _swap(tmp, output, base)
        else:
            tf.io.gfile.rename(tmp, output, overwrite=False)
    except BaseException as e:
        _remove_quietly([tmp, *created])
        if isinstance(e, (tf.errors.OpError, OSError)):
            raise ExportError(f"cannot write the SavedModel to {output!r}: {_reason(e)}; "
                              "nothing was changed there") from e
        raise
    return output


def _swap(tmp: str, output: str, base: str) -> None:
    """Replaces the tfmeta SavedModel at ``output`` by the complete one at ``tmp``."""
    if not is_tfmeta_export(output):  # changed since it was checked
        raise ExportError(f"{output!r} changed during the export and is no longer a tfmeta "
                          "SavedModel; it was left as it is")
    old = os.path.join(os.path.dirname(output), _temporary_name(base, "old"))
    tf.io.gfile.rename(output, old)
    try:
        tf.io.gfile.rename(tmp, output)
    except BaseException:
        tf.io.gfile.rename(old, output)
        raise
    try:
        tf.io.gfile.rmtree(old)
    except (tf.errors.OpError, OSError) as e:
        # The new model is in place; the next export to this path removes the old one.
        logging.warning("could not remove the replaced model %s: %s", old, _reason(e))


def _reason(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0]


def export(model: keras.Model, algorithm: Any, output: str, *, metadata: dict[str, Any],
           classification: bool = True, max_inner_steps: int | None = None,
           replace: bool = False, workdir: str | None = None,
           wording: Wording = PYTHON) -> str:
    """Exports a meta-learner as a fast-adaptation SavedModel (see the module docstring).

    Args:
      model: the built Keras model (``algorithm.model``), with the parameters to export.
      algorithm: a meta-learner (:class:`tfmeta.core.maml.MAML` and relatives, or
        :class:`tfmeta.core.reptile.Reptile`) around ``model``.
      output: SavedModel directory (local or gs://): a path that does not exist, or a previous
        tfmeta SavedModel when ``replace`` (replaced atomically); anything else is refused.
      metadata: JSON-ready description (see :func:`metadata_from_config`); for classification it
        must hold ``ways`` and ``image_size``, and states the input transform
        (:data:`TRANSFORM_FIELDS`: ``channels``, ``invert``, ``mean``, ``std``; without
        ``channels``, Omniglot's: grayscale, inverted); ``inner_steps`` is the default
        adaptation length. The export adds ``serving_bn_mode``, ``max_inner_steps`` and
        ``signatures``, and for classification every transform field and the input
        descriptions of that transform.
      classification: N-way image classification (True) or [*, 1] regression (False).
      max_inner_steps: largest ``inner_steps`` a client may ask for (default: the metadata's, else
        :data:`DEFAULT_MAX_INNER_STEPS`); at least ``inner_steps``.
      replace: whether a previous tfmeta SavedModel at ``output`` may be replaced.
      workdir: the work directory the model comes from, which ``output`` must not overwrite
        (see :func:`check_output`).
      wording: how refusals name ``output`` and ``replace``: as Python arguments by default
        (``replace=True``); the binaries pass :data:`COMMAND_LINE` (``--replace``).

    Returns:
      ``output`` normalised (absolute for a local path).

    Raises:
      ExportError: the model's input or output shape does not fit the signature contract, the
        step bound is below the default steps, or the output exists and may not be replaced or
        cannot be written.
    """
    # Refused outputs fail before the (slow) tracing of the signatures.
    check_output(output, replace=replace, workdir=workdir, wording=wording)
    if algorithm.model is not model:
        raise ExportError("algorithm.model must be the exported model")
    steps = int(metadata["inner_steps"])
    if max_inner_steps is None:
        max_inner_steps = int(metadata.get("max_inner_steps", max(DEFAULT_MAX_INNER_STEPS, steps)))
    if max_inner_steps < steps:
        raise ExportError(f"max_inner_steps is {max_inner_steps}; it must be >= the default "
                          f"inner_steps of the export ({steps})")
    if classification:
        ways, transform = int(metadata["ways"]), transform_from_metadata(metadata)
        size, channels = transform.image_size, transform.channels
        if (tuple(model.input_shape[1:]) != (size, size, channels)
                or model.output_shape[-1] != ways):
            raise ExportError(
                f"the signature contract needs a model mapping [B, {size}, {size}, {channels}] "
                f"images to [B, {ways}] logits (the metadata's image_size {size}, "
                f"{_describe_channels(channels)}, {ways} ways); got input {model.input_shape} "
                f"and output {model.output_shape}")
        # Stated in full, so that a client knows what the graph does to the images.
        metadata = dict(metadata, **transform.to_dict(),
                        inputs=input_descriptions(ways, transform))
    elif tuple(model.input_shape[1:]) != (1,) or model.output_shape[-1] != 1:
        raise ExportError(
            "regression exports support models mapping [B, 1] to [B, 1] (sinusoid); got "
            f"input {model.input_shape} and output {model.output_shape}")
    metadata = dict(metadata, max_inner_steps=int(max_inner_steps),
                    serving_bn_mode=serving_bn_mode(algorithm))
    with tempfile.TemporaryDirectory() as scratch:
        # The asset is copied into the SavedModel's assets/ under this name.
        asset = os.path.join(scratch, signatures.METADATA_ASSET)
        common = dict(inner_steps=steps, max_inner_steps=int(max_inner_steps), asset_path=asset)
        if classification:
            module = _Classifier(algorithm, ways=ways, transform=transform, metadata_json="",
                                 **common)
        else:
            module = _Regressor(algorithm, metadata_json="", **common)
        metadata["signatures"] = _signature_names(module)
        if signatures.TRANSDUCTIVE in metadata["signatures"]:
            metadata["transductive_signature"] = signatures.TRANSDUCTIVE
        module._json = json.dumps(metadata, indent=2, sort_keys=True)
        try:
            with open(asset, "w", encoding="utf-8") as f:
                f.write(module._json + "\n")
        except OSError as e:  # the system's temporary directory is full or unwritable
            raise ExportError(f"cannot write the SavedModel's metadata to {asset!r}: "
                              f"{_reason(e)}") from e
        return write_atomically(module, output, replace=replace, workdir=workdir,
                                wording=wording)


def export_experiment(exp: Any, output: str, *, max_inner_steps: int | None = None,
                      replace: bool = False, workdir: str | None = None,
                      wording: Wording = PYTHON) -> str:
    """Exports a built :class:`tfmeta.run.experiment.Experiment` (its current parameters) to ``output``.

    ``replace``, ``workdir`` and ``wording`` are as in :func:`export`; the input transform is the
    one recorded in ``workdir`` by training (:func:`tfmeta.run.tasks.input_transform_of`), else the
    config's.
    """
    from tfmeta.run import tasks

    classification = exp.source.classification
    # The transform training recorded in the work directory (normalisation measured on the data).
    transform = tasks.input_transform_of(exp.config, workdir) if classification else None
    metadata = metadata_from_config(exp.config, step=int(exp.step.numpy()),
                                    classification=classification, transform=transform)
    return export(exp.model, exp.algorithm, output, metadata=metadata,
                  classification=classification, max_inner_steps=max_inner_steps,
                  replace=replace, workdir=workdir, wording=wording)


def check_run_export(workdir: str) -> str:
    """Checks that the run's own ``WORKDIR/export`` may be written (new, or a tfmeta export).

    ``tfmeta.train`` calls it before training, so that the export at the end is not refused
    after hours of work.

    Returns:
      The export directory (absolute for a local path).

    Raises:
      ExportError: ``WORKDIR/export`` holds something an export does not write (naming it).
    """
    return check_output(os.path.join(workdir, EXPORT_DIR), replace=True, workdir=workdir,
                        wording=Wording(RUN_EXPORT))


def export_from_workdir(workdir: str, output: str | None = None, *, replace: bool = False,
                        max_inner_steps: int | None = None, wording: Wording = PYTHON) -> str:
    """Exports the latest checkpoint of a training run.

    The default location ``WORKDIR/export`` belongs to the run: a previous tfmeta SavedModel
    there is replaced without ``replace``. An explicit ``output`` elsewhere replaces a previous
    tfmeta SavedModel only with ``replace``. Whatever ``replace`` says, an output that is not a
    tfmeta SavedModel (a file, a directory holding anything else), that is the work directory or
    one of its ancestors, or that lies inside its checkpoint directory is refused before the
    checkpoint is even read.

    Args:
      workdir: work directory of ``tfmeta.train`` (local path or gs://...).
      output: SavedModel directory; ``WORKDIR/export`` when None.
      replace: whether a previous tfmeta SavedModel at an explicit ``output`` may be replaced.
      max_inner_steps: as in :func:`export`.
      wording: how refusals name ``output`` and ``replace`` (see :func:`export`); the default
        location, which the caller did not give, is named "the run's export directory".

    Returns:
      The SavedModel path (absolute for a local path).

    Raises:
      FileNotFoundError: ``workdir`` has no config or no checkpoint.
      ExportError: ``output`` may not be written (see :func:`check_output`).
    """
    from tfmeta.run import experiment, workdir as workdir_lib

    workdir = workdir_lib.normalize(workdir)
    default = os.path.join(workdir, EXPORT_DIR)
    if output is None:
        output, replace = default, True
        wording = dataclasses.replace(wording, output=RUN_EXPORT)
    elif _normalise(output) == _normalise(default):
        replace = True
    check_output(output, replace=replace, workdir=workdir, wording=wording)
    exp = experiment.restore(workdir)
    return export_experiment(exp, output, max_inner_steps=max_inner_steps, replace=replace,
                             workdir=workdir, wording=wording)
