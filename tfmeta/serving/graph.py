r"""The fast-adaptation graph: a built meta-learner as a ``tf.Module`` with serving signatures.

A trained meta-learner is only useful after adaptation, so the export carries the whole inner loop:
a client sends a labelled support set and unlabelled queries and gets predictions for the queries
after the configured number of inner steps, from any TensorFlow runtime, without tfmeta installed.
This module builds that graph from a meta-learner and a few typed :class:`Settings`; it knows no
config and no work directory (the run tier's :mod:`tfmeta.run.exporter` does), writes nothing
(:mod:`tfmeta.serving.writer` does) and composes no metadata (:mod:`tfmeta.serving.metadata`).

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

Tracing is the slow part of an export, so what the signatures share is traced once: the inner loop
runs as one ``tf.while_loop`` over a run-time step count (the fixed-step signatures pass their
default as a constant, which computes exactly what an unrolled loop does), in one concrete function
for a single task that ``adapt_and_predict`` and ``adapt_and_predict_steps`` both call, one for
``B`` tasks (``adapt_and_predict_batch``) and one for transductive normalisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from tfmeta.base import signatures
from tfmeta.base.input_transform import InputTransform
from tfmeta.core import layers as tfm_layers
from tfmeta.serving.errors import ExportError
from tfmeta.serving.metadata import describe_channels, omniglot_transform


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


def _check_images(images: tf.Tensor, name: str, *, channels: int,
                  allow_empty: bool) -> list[tf.Operation]:
    shape = tf.shape(images)
    checks = [
        tf.debugging.assert_equal(
            tf.rank(images), 4,
            message=f"{name} must have rank 4 [count, height, width, {channels}]"),
        tf.debugging.assert_equal(
            shape[-1], channels,
            message=f"{name} must have exactly {describe_channels(channels)}"),
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



def _check_steps(inner_steps: tf.Tensor, max_inner_steps: int) -> list[tf.Operation]:
    return [
        tf.debugging.assert_non_negative(inner_steps, message="inner_steps must be >= 0"),
        tf.debugging.assert_less_equal(
            inner_steps, tf.constant(max_inner_steps, inner_steps.dtype),
            message=f"inner_steps must be <= {max_inner_steps}, the max_inner_steps this model "
                    "was exported with (python -m tfmeta.export --max_inner_steps=N to change it)"),
    ]


# --------------------------------------------------------------------------- the module
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


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the graph needs besides the meta-learner.

    Attributes:
      inner_steps: the adaptation length of the fixed-step signatures.
      max_inner_steps: the largest ``inner_steps`` a client may ask for (enforced in the graph).
      transform: an image classifier's input transform; None for a regressor on ``[*, 1]``.
      ways: an image classifier's N (its labels are in ``[0, N)``); None for a regressor.
    """

    inner_steps: int
    max_inner_steps: int
    transform: InputTransform | None = None
    ways: int | None = None

    @property
    def classification(self) -> bool:
        return self.transform is not None


def signature_names(algorithm: Any, *, classification: bool) -> list[str]:
    """The signatures an export of ``algorithm`` has (``serving_default`` aside), in order."""
    names = [signatures.ADAPT, signatures.ADAPT_STEPS, signatures.ADAPT_BATCH]
    if classification and tfm_layers.has_batch_norm(algorithm.model):
        names.append(signatures.TRANSDUCTIVE)
    return names + [signatures.PREDICT, signatures.METADATA]


def check_model(algorithm: Any, settings: Settings) -> None:
    """Checks that ``algorithm.model`` fits the signature contract of ``settings``.

    Raises:
      ExportError: naming the shapes needed and the model's.
    """
    model = algorithm.model
    if settings.max_inner_steps < settings.inner_steps:
        raise ExportError(f"max_inner_steps is {settings.max_inner_steps}; it must be >= the "
                          f"default inner_steps of the export ({settings.inner_steps})")
    if settings.classification:
        ways, size, channels = (settings.ways, settings.transform.image_size,
                                settings.transform.channels)
        if (tuple(model.input_shape[1:]) != (size, size, channels)
                or model.output_shape[-1] != ways):
            raise ExportError(
                f"the signature contract needs a model mapping [B, {size}, {size}, {channels}] "
                f"images to [B, {ways}] logits (the metadata's image_size {size}, "
                f"{describe_channels(channels)}, {ways} ways); got input {model.input_shape} "
                f"and output {model.output_shape}")
    elif tuple(model.input_shape[1:]) != (1,) or model.output_shape[-1] != 1:
        raise ExportError(
            "regression exports support models mapping [B, 1] to [B, 1] (sinusoid); got "
            f"input {model.input_shape} and output {model.output_shape}")


def _function(fn: Any, input_signature: list[tf.TensorSpec]) -> Any:
    """A ``tf.function`` of one signature, traced without AutoGraph.

    The library's graph code states its control flow with ``tf.cond`` / ``tf.while_loop`` (the
    trainer's steps run it the same way), so AutoGraph would only re-parse every function on the
    call path, which was most of an export's tracing time; a Python ``if`` on a tensor fails
    loudly at tracing instead of being converted.
    """
    return tf.function(fn, input_signature=input_signature, autograph=False)


class _InnerLoops:
    """The adaptations the signatures share, each traced once.

    A plain object, not a ``tf.Module``, so that these functions are saved only inside the
    signatures that call them, not as endpoints of their own.
    """

    def __init__(self, algorithm: Any, task_x: list[int | None], task_y: list[int | None],
                 y_dtype: tf.DType, serving: str, transductive: bool):
        def one(bn_mode: str, tasks: int | None) -> tf.types.experimental.GenericFunction:
            def adapt(sx, sy, qx, steps):
                return algorithm.adapt_and_predict(sx, sy, qx, steps=steps, bn_mode=bn_mode)

            x = tf.TensorSpec([tasks, None, *task_x], tf.float32)
            y = tf.TensorSpec([tasks, None, *task_y], y_dtype)
            return _function(adapt, [x, y, x, tf.TensorSpec([], tf.int32)])

        # One task: [1, S, ...] (the single-task signatures); B tasks: [B, S, ...] (the batch
        # signature, computed together when the model's layers run task-batched).
        self.single = one(serving, 1)
        self.batch = one(serving, None)
        self.transductive = one("transductive", 1) if transductive else None


class _Module(tf.Module):
    """What every export holds: the variables, the learner, the metadata."""

    def __init__(self, algorithm: Any, settings: Settings, *, metadata_json: str,
                 asset_path: str, loops: _InnerLoops):
        super().__init__(name="tfmeta_export")
        self.model_variables = [v.value for v in algorithm.model.variables]
        # Learned inner learning rates, per-step batch-norm weights and statistics.
        inner = algorithm.inner.variables
        self.inner_variables = [*inner.trainable, *inner.non_trainable]
        self.metadata_file = tf.saved_model.Asset(asset_path)
        self._algorithm = algorithm
        self._steps = int(settings.inner_steps)
        self._max_steps = int(settings.max_inner_steps)
        self._json = metadata_json
        self._loops = loops
        self.metadata = _function(lambda: {"json": tf.constant(self._json)}, [])

    def _default_steps(self) -> tf.Tensor:
        return tf.constant(self._steps, tf.int32)

    def _checked_steps(self, inner_steps: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies(_check_steps(inner_steps, self._max_steps)):
            return tf.identity(inner_steps)

    def _adapt(self, sx: tf.Tensor, sy: tf.Tensor, qx: tf.Tensor, steps: tf.Tensor,
               transductive: bool = False) -> tf.Tensor:
        """Adapts one task (``sx [S, ...]``) and predicts ``qx [Q, ...]``."""
        loop = self._loops.transductive if transductive else self._loops.single
        return loop(sx[None], sy[None], qx[None], steps)[0]

    def _unadapted(self, x: tf.Tensor) -> tf.Tensor:
        """The meta-learned initialisation, batch norm with the moving statistics."""
        algorithm = self._algorithm
        params = [v.value for v in algorithm.model.trainable_variables]
        return algorithm.predict(params, x, bn_mode="running", steps=0)


class _Classifier(_Module):
    """The exported module of an N-way image classifier."""

    def __init__(self, algorithm: Any, settings: Settings, **kwargs: Any):
        super().__init__(algorithm, settings, **kwargs)
        self._ways = int(settings.ways)
        self._transform = transform = settings.transform
        self._size = transform.image_size
        self._channels = channels = transform.channels
        # Any height and width; the channel count is part of the contract.
        images = tf.TensorSpec([None, None, None, channels], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)
        task_images = tf.TensorSpec([None, None, None, None, channels], tf.float32)
        # The Python parameter names are the signature's input names.
        self.adapt_and_predict = _function(self._adapt_and_predict,
                                             [images, labels, images])
        self.adapt_and_predict_steps = _function(
            self._adapt_and_predict_steps,
            [images, labels, images, tf.TensorSpec([], tf.int32)])
        self.adapt_and_predict_batch = _function(
            self._adapt_and_predict_batch,
            [task_images, tf.TensorSpec([None, None], tf.int32), task_images])
        if self._loops.transductive is not None:
            self.adapt_and_predict_transductive = _function(
                self._adapt_and_predict_transductive, [images, labels, images])
        self.predict = _function(self._predict, [images])

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

    def _serve(self, support_images, support_labels, query_images, steps, transductive=False):
        sx, sy, qx = self._inputs(support_images, support_labels, query_images)
        return self._outputs(self._adapt(sx, sy, qx, steps, transductive))

    def _adapt_and_predict(self, support_images, support_labels, query_images):
        return self._serve(support_images, support_labels, query_images, self._default_steps())

    def _adapt_and_predict_transductive(self, support_images, support_labels, query_images):
        return self._serve(support_images, support_labels, query_images, self._default_steps(),
                           transductive=True)

    def _adapt_and_predict_steps(self, support_images, support_labels, query_images,
                                 inner_steps):
        return self._serve(support_images, support_labels, query_images,
                           self._checked_steps(inner_steps))

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
        logits = self._loops.batch(sx, sy, qx, self._default_steps())
        return self._outputs(logits[:, :queries])

    def _predict(self, query_images):
        with tf.control_dependencies(_check_images(query_images, "query_images",
                                                   channels=self._channels, allow_empty=True)):
            qx = preprocess_images(query_images, self._transform)
        return self._outputs(self._unadapted(qx))


class _Regressor(_Module):
    """The exported module of a regressor on [*, 1] inputs (sinusoid)."""

    def __init__(self, algorithm: Any, settings: Settings, **kwargs: Any):
        super().__init__(algorithm, settings, **kwargs)
        points = tf.TensorSpec([None, 1], tf.float32)
        task_points = tf.TensorSpec([None, None, 1], tf.float32)
        self.adapt_and_predict = _function(self._adapt_and_predict,
                                             [points, points, points])
        self.adapt_and_predict_steps = _function(
            self._adapt_and_predict_steps,
            [points, points, points, tf.TensorSpec([], tf.int32)])
        self.adapt_and_predict_batch = _function(
            self._adapt_and_predict_batch, [task_points] * 3)
        self.predict = _function(self._predict, [points])

    def _checks(self, support_x, support_y, query_x):
        return _check_support(support_x, support_y, "support_x", "support_y", None) + [
            tf.debugging.assert_all_finite(support_x, message="support_x contains NaN or Inf"),
            tf.debugging.assert_all_finite(query_x, message="query_x contains NaN or Inf")]

    def _serve(self, support_x, support_y, query_x, steps):
        with tf.control_dependencies(self._checks(support_x, support_y, query_x)):
            sx, sy, qx = tf.identity(support_x), tf.identity(support_y), tf.identity(query_x)
        out = self._adapt(sx, sy, qx, steps)
        return {"predictions": tf.cast(out, tf.float32)}

    def _adapt_and_predict(self, support_x, support_y, query_x):
        return self._serve(support_x, support_y, query_x, self._default_steps())

    def _adapt_and_predict_steps(self, support_x, support_y, query_x, inner_steps):
        return self._serve(support_x, support_y, query_x, self._checked_steps(inner_steps))

    def _adapt_and_predict_batch(self, support_x, support_y, query_x):
        flat = lambda x: tf.reshape(x, [-1, 1])  # noqa: E731
        checks = self._checks(flat(support_x), flat(support_y), flat(query_x)) + [
            tf.debugging.assert_equal(tf.shape(support_y), tf.shape(support_x),
                                      message="support_y must have the shape of support_x"),
            tf.debugging.assert_equal(tf.shape(query_x)[0], tf.shape(support_x)[0],
                                      message="query_x and support_x must have the same B")]
        with tf.control_dependencies(checks):
            sx, sy, qx = tf.identity(support_x), tf.identity(support_y), tf.identity(query_x)
        out = self._loops.batch(sx, sy, qx, self._default_steps())
        return {"predictions": tf.cast(out, tf.float32)}

    def _predict(self, query_x):
        with tf.control_dependencies([tf.debugging.assert_all_finite(
                query_x, message="query_x contains NaN or Inf")]):
            qx = tf.identity(query_x)
        return {"predictions": tf.cast(self._unadapted(qx), tf.float32)}


def build(algorithm: Any, settings: Settings, *, metadata_json: str,
          asset_path: str) -> tf.Module:
    """The fast-adaptation module of ``algorithm`` (see the module docstring).

    Args:
      algorithm: a built meta-learner (:class:`tfmeta.core.maml.MAML` and relatives,
        :class:`tfmeta.core.reptile.Reptile`, ...) holding the parameters to export.
      settings: steps, step bound, and for a classifier its ways and input transform.
      metadata_json: what the ``metadata`` signature returns.
      asset_path: a file holding the same JSON, saved as ``assets/tfmeta.json`` (its base name
        must be :data:`tfmeta.base.signatures.METADATA_ASSET`).

    Returns:
      A ``tf.Module`` whose attributes named :func:`signature_names` are the endpoints; nothing is
      traced yet (saving traces each once, :func:`signature_functions`).

    Raises:
      ExportError: the model does not fit the signature contract (:func:`check_model`).
    """
    check_model(algorithm, settings)
    serving = serving_bn_mode(algorithm)
    if settings.classification:
        t = settings.transform
        loops = _InnerLoops(algorithm, [t.image_size, t.image_size, t.channels], [], tf.int32,
                            serving, signatures.TRANSDUCTIVE in signature_names(
                                algorithm, classification=True))
        return _Classifier(algorithm, settings, metadata_json=metadata_json,
                           asset_path=asset_path, loops=loops)
    loops = _InnerLoops(algorithm, [1], [1], tf.float32, serving, transductive=False)
    return _Regressor(algorithm, settings, metadata_json=metadata_json, asset_path=asset_path,
                      loops=loops)


def signature_functions(module: tf.Module) -> dict[str, Any]:
    """The endpoints of ``module`` by signature name, ``serving_default`` too, for saving.

    Untraced ``tf.function`` s: ``tf.saved_model.save`` traces each once, in its save context
    (a function traced before would be traced again there, its cache key holding the save's
    variable policy), and the endpoints it saves reuse those traces.
    """
    names = [name for name in (signatures.ADAPT, signatures.ADAPT_STEPS, signatures.ADAPT_BATCH,
                               signatures.TRANSDUCTIVE, signatures.PREDICT, signatures.METADATA)
             if hasattr(module, name)]
    functions = {name: getattr(module, name) for name in names}
    # The default signature is the contract, so `saved_model_cli run` without a name works too.
    functions[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY] = functions[signatures.ADAPT]
    return functions
