r"""Fast-adaptation SavedModels: the inner loop inside the graph.

A trained meta-learner is only useful after adaptation, so the export carries the whole inner loop:
a client sends a labelled support set and unlabelled queries and gets predictions for the queries
after the configured number of inner steps, from any TensorFlow runtime, without tfmeta installed.

    python -m tfmeta.export --workdir=DIR [--output=PATH]      # default PATH: DIR/export

Signatures of a classification (Omniglot) export, with N = ways the model was trained for:

``adapt_and_predict``
    inputs ``support_images`` float32 [S, H, W, 1], ``support_labels`` int32 [S] in [0, N),
    ``query_images`` float32 [Q, H, W, 1]; outputs ``logits`` float32 [Q, N],
    ``probabilities`` float32 [Q, N], ``predictions`` int32 [Q]. Images are what
    ``tf.image.decode_png(png, channels=1) / 255`` gives for an Omniglot PNG (white background = 1),
    any H and W. The graph resizes them to the training size exactly like the training data was
    prepared (PIL LANCZOS: separable Lanczos-3, horizontal pass then vertical, each rounded to
    uint8; within one grey level, 1/255, of PIL) and inverts them (``1 - x``), then adapts with the
    configured evaluation inner steps and learning rate and the trained batch-norm mode.
``adapt_and_predict_steps``
    the same plus ``inner_steps`` int32 scalar (>= 0), run as a ``tf.while_loop``.
``predict``
    ``query_images`` only; the meta-learned initialisation without adaptation.
``metadata``
    no inputs; ``json``: a JSON string (algorithm, ways, shots, image size, inner steps and
    learning rate, bn_mode, versions, training step). The same JSON is the asset
    ``assets/tfmeta.json``.

Regression (sinusoid) exports use ``support_x`` / ``support_y`` / ``query_x`` float32 [*, 1] and
return ``predictions`` float32 [Q, 1]; the ``predict`` signature takes ``query_x``.

Bad inputs (labels out of range, label and image counts that differ, an empty support set, NaN or
out-of-range pixels) fail inside the graph with an ``InvalidArgumentError`` naming the problem.

A plain ``tf.Module`` holding the model's variables is exported (rather than
``keras.export.ExportArchive``): the endpoints are functions of several tensors that call the
meta-learner, not the model, and a module keeps the SavedModel free of Keras objects, so
``tf.saved_model.load`` needs neither Keras nor tfmeta. Variables are saved as variables.

Writing is atomic with respect to the output path: the model is written to a sibling
``PATH.tmp-XXXX`` and renamed into place only when complete; a previous model at PATH is kept until
then (moved to ``PATH.old-XXXX`` for the duration of the swap and deleted after).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from typing import Any

import keras
import tensorflow as tf

import tfmeta
from tfmeta import functional as F

SIGNATURE_ADAPT = "adapt_and_predict"
SIGNATURE_ADAPT_STEPS = "adapt_and_predict_steps"
SIGNATURE_PREDICT = "predict"
SIGNATURE_METADATA = "metadata"
METADATA_ASSET = "tfmeta.json"
EXPORT_DIR = "export"
FORMAT_VERSION = 1

# Seed of the in-graph support minibatch order (Reptile with inner_batch_size).
_MINIBATCH_SEED = 0


class ExportError(ValueError):
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


def preprocess_images(images: tf.Tensor, image_size: int) -> tf.Tensor:
    """Maps ``decode_png / 255`` images to the training representation.

    Args:
      images: float32 ``[B, H, W, 1]`` in [0, 1], white background = 1.
      image_size: side of the training images.

    Returns:
      float32 ``[B, image_size, image_size, 1]``: resized as :mod:`tfmeta.omniglot` prepared the
      training data (horizontal pass, then vertical) and inverted, strokes bright.
    """
    x = _resize_axis(images, image_size, axis=2)
    x = _resize_axis(x, image_size, axis=1)
    x = tf.ensure_shape(x, [None, image_size, image_size, 1])
    return 1.0 - x


def _check_images(images: tf.Tensor, name: str, *, allow_empty: bool) -> list[tf.Operation]:
    shape = tf.shape(images)
    checks = [
        tf.debugging.assert_equal(
            tf.rank(images), 4, message=f"{name} must have rank 4 [count, height, width, 1]"),
        tf.debugging.assert_equal(
            shape[-1], 1, message=f"{name} must have exactly 1 channel (grayscale)"),
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


# --------------------------------------------------------------------------- inner loop
def _minibatch(x: tf.Tensor, y: tf.Tensor, step: tf.Tensor, batch_size: int,
               seed: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Step ``step``'s minibatch: consecutive slices of per-pass shuffles of the support set.

    Same scheme as :func:`tfmeta.reptile.minibatch_indices` (without replacement, reshuffled every
    pass) but computed in the graph, because the support size is only known at run time. When
    ``batch_size >= S`` every step sees the whole support set, exactly as in tfmeta.
    """
    n = tf.shape(x)[0]
    b = tf.minimum(tf.constant(batch_size, tf.int32), n)
    positions = step * b + tf.range(b)
    passes = positions // n

    def permutation(p: tf.Tensor) -> tf.Tensor:
        keys = tf.random.stateless_uniform(tf.reshape(n, [1]), seed=tf.stack([seed, p]))
        return tf.argsort(keys)

    # A minibatch spans at most two passes.
    first, last = permutation(passes[0]), permutation(passes[-1])
    index = tf.where(tf.equal(passes, passes[0]), tf.gather(first, positions % n),
                     tf.gather(last, positions % n))
    return tf.gather(x, index), tf.gather(y, index)


def adapt_steps(algorithm: Any, support_x: tf.Tensor, support_y: tf.Tensor,
                steps: tf.Tensor) -> list[tf.Tensor]:
    """Adapts with a run-time number of inner steps, as a ``tf.while_loop``.

    The update is the algorithm's own (SGD for MAML; SGD or Adam, optionally on minibatches, for
    Reptile), with the same clipping and batch-norm handling as ``algorithm.adapt``; the loop
    carries the fast weights, the optimiser state and the non-trainable values.

    Args:
      algorithm: a :class:`tfmeta.maml.MAML` or :class:`tfmeta.reptile.Reptile`.
      support_x: support inputs (already preprocessed).
      support_y: support labels / targets.
      steps: int32 scalar >= 0.

    Returns:
      Fast parameters aligned with ``algorithm.model.trainable_variables``.
    """
    model = algorithm.model
    batch_size = getattr(algorithm, "inner_batch_size", None)
    params = F.values(model.trainable_variables)
    nt = F.values(model.non_trainable_variables)

    def body(t, fast, state, nt):
        x, y = support_x, support_y
        if batch_size is not None:
            x, y = _minibatch(support_x, support_y, t, batch_size, _MINIBATCH_SEED)
        fast, state, nt_after = algorithm.inner_step(fast, state, nt, x, y, t)
        nt_after = [tf.cast(a, b.dtype) for a, b in zip(nt_after, nt)]
        return t + 1, fast, state, nt_after

    _, fast, _, _ = tf.while_loop(
        lambda t, *_: t < steps, body,
        (tf.constant(0), params, algorithm.inner_state(params), nt))
    return fast


def _needs_loop(algorithm: Any) -> bool:
    """Whether ``algorithm.adapt`` cannot be traced for a run-time support size."""
    return getattr(algorithm, "inner_batch_size", None) is not None


# --------------------------------------------------------------------------- module
class _Classifier(tf.Module):
    """The exported module of an N-way image classifier."""

    def __init__(self, model: keras.Model, algorithm: Any, *, ways: int, image_size: int,
                 inner_steps: int, metadata_json: str, asset_path: str):
        super().__init__(name="tfmeta_export")
        self.model_variables = [v.value for v in model.variables]
        self.metadata_file = tf.saved_model.Asset(asset_path)
        self._algorithm = algorithm
        self._ways = ways
        self._size = image_size
        self._steps = inner_steps
        self._json = metadata_json
        images = tf.TensorSpec([None, None, None, 1], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)
        self.adapt_and_predict = tf.function(
            self._adapt_and_predict,
            input_signature=[images, labels, images])
        self.adapt_and_predict_steps = tf.function(
            self._adapt_and_predict_steps,
            input_signature=[images, labels, images, tf.TensorSpec([], tf.int32)])
        self.predict = tf.function(self._predict, input_signature=[images])
        self.metadata = tf.function(self._metadata, input_signature=[])

    def _inputs(self, support_images, support_labels, query_images):
        checks = (_check_images(support_images, "support_images", allow_empty=False)
                  + _check_images(query_images, "query_images", allow_empty=True)
                  + _check_support(support_images, support_labels, "support_images",
                                   "support_labels", self._ways))
        with tf.control_dependencies(checks):
            sx = preprocess_images(support_images, self._size)
            qx = preprocess_images(query_images, self._size)
            sy = tf.identity(support_labels)
        return sx, sy, qx

    def _outputs(self, logits: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(logits, tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1),
                "predictions": tf.argmax(logits, axis=-1, output_type=tf.int32)}

    def _adapt_and_predict(self, support_images, support_labels, query_images):
        sx, sy, qx = self._inputs(support_images, support_labels, query_images)
        if _needs_loop(self._algorithm):
            fast = adapt_steps(self._algorithm, sx, sy, tf.constant(self._steps))
        else:
            fast = self._algorithm.adapt(sx, sy, steps=self._steps)
        return self._outputs(self._algorithm.predict(fast, qx, support_x=sx))

    def _adapt_and_predict_steps(self, support_images, support_labels, query_images,
                                 inner_steps):
        check = tf.debugging.assert_non_negative(inner_steps, message="inner_steps must be >= 0")
        sx, sy, qx = self._inputs(support_images, support_labels, query_images)
        with tf.control_dependencies([check]):
            fast = adapt_steps(self._algorithm, sx, sy, inner_steps)
        return self._outputs(self._algorithm.predict(fast, qx, support_x=sx))

    def _predict(self, query_images):
        with tf.control_dependencies(_check_images(query_images, "query_images",
                                                   allow_empty=True)):
            qx = preprocess_images(query_images, self._size)
        return self._outputs(_predict_unadapted(self._algorithm, qx))

    def _metadata(self):
        return {"json": tf.constant(self._json)}


class _Regressor(tf.Module):
    """The exported module of a regressor on [*, 1] inputs (sinusoid)."""

    def __init__(self, model: keras.Model, algorithm: Any, *, inner_steps: int,
                 metadata_json: str, asset_path: str):
        super().__init__(name="tfmeta_export")
        self.model_variables = [v.value for v in model.variables]
        self.metadata_file = tf.saved_model.Asset(asset_path)
        self._algorithm = algorithm
        self._steps = inner_steps
        self._json = metadata_json
        points = tf.TensorSpec([None, 1], tf.float32)
        self.adapt_and_predict = tf.function(self._adapt_and_predict,
                                             input_signature=[points, points, points])
        self.adapt_and_predict_steps = tf.function(
            self._adapt_and_predict_steps,
            input_signature=[points, points, points, tf.TensorSpec([], tf.int32)])
        self.predict = tf.function(self._predict, input_signature=[points])
        self.metadata = tf.function(lambda: {"json": tf.constant(self._json)}, input_signature=[])

    def _inputs(self, support_x, support_y, query_x):
        checks = _check_support(support_x, support_y, "support_x", "support_y", None) + [
            tf.debugging.assert_all_finite(support_x, message="support_x contains NaN or Inf"),
            tf.debugging.assert_all_finite(query_x, message="query_x contains NaN or Inf")]
        with tf.control_dependencies(checks):
            return tf.identity(support_x), tf.identity(support_y), tf.identity(query_x)

    def _adapt_and_predict(self, support_x, support_y, query_x):
        sx, sy, qx = self._inputs(support_x, support_y, query_x)
        fast = self._algorithm.adapt(sx, sy, steps=self._steps)
        return {"predictions": tf.cast(self._algorithm.predict(fast, qx, support_x=sx), tf.float32)}

    def _adapt_and_predict_steps(self, support_x, support_y, query_x, inner_steps):
        check = tf.debugging.assert_non_negative(inner_steps, message="inner_steps must be >= 0")
        sx, sy, qx = self._inputs(support_x, support_y, query_x)
        with tf.control_dependencies([check]):
            fast = adapt_steps(self._algorithm, sx, sy, inner_steps)
        return {"predictions": tf.cast(self._algorithm.predict(fast, qx, support_x=sx), tf.float32)}

    def _predict(self, query_x):
        with tf.control_dependencies([tf.debugging.assert_all_finite(
                query_x, message="query_x contains NaN or Inf")]):
            qx = tf.identity(query_x)
        return {"predictions": tf.cast(_predict_unadapted(self._algorithm, qx), tf.float32)}


def _predict_unadapted(algorithm: Any, x: tf.Tensor) -> tf.Tensor:
    params = F.values(algorithm.model.trainable_variables)
    if algorithm.bn_mode == "support":
        # Without a support set there are no support statistics; the query batch's own are the
        # closest stand-in (the "transductive" behaviour).
        return algorithm.predict(params, x, training=True)
    return algorithm.predict(params, x)


# --------------------------------------------------------------------------- metadata
def metadata_from_config(config: Any, *, step: int, classification: bool) -> dict[str, Any]:
    """The JSON-ready description stored with an export.

    Args:
      config: the experiment config.
      step: meta-iteration of the exported parameters.
      classification: whether the task is N-way classification.
    """
    from tfmeta import config as config_lib

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": config.task,
        "algorithm": config.algorithm,
        "inner_lr": float(config.inner.lr),
        "inner_steps": int(config.inner.eval_steps),
        "train_inner_steps": int(config.inner.steps),
        "inner_optimizer": config.inner.optimizer if config.algorithm == "reptile" else "sgd",
        "inner_batch_size": int(config.inner.batch_size) if config.algorithm == "reptile" else 0,
        "inner_grad_clip": float(config.inner.grad_clip),
        "bn_mode": config.inner.bn_mode,
        "step": int(step),
        "tfmeta_version": tfmeta.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "signatures": [SIGNATURE_ADAPT, SIGNATURE_ADAPT_STEPS, SIGNATURE_PREDICT,
                       SIGNATURE_METADATA],
    }
    if classification:
        meta.update(ways=int(config.data.ways), shots=int(config.data.shots),
                    train_shots=int(config_lib.train_shots(config)),
                    queries=int(config.data.queries), image_size=int(config.data.image_size),
                    split_scheme=config.data.split_scheme, subset=config.data.subset,
                    inputs={"support_images": "float32 [S, H, W, 1] in [0, 1], decode_png/255",
                            "support_labels": f"int32 [S] in [0, {int(config.data.ways)})",
                            "query_images": "float32 [Q, H, W, 1]"})
    else:
        meta.update(k_support=int(config.data.k_support), k_query=int(config.data.k_query),
                    inputs={"support_x": "float32 [S, 1]", "support_y": "float32 [S, 1]",
                            "query_x": "float32 [Q, 1]"})
    return meta


# --------------------------------------------------------------------------- writing
def _write_saved_model(module: tf.Module, path: str) -> None:
    signatures = {
        SIGNATURE_ADAPT: module.adapt_and_predict.get_concrete_function(),
        SIGNATURE_ADAPT_STEPS: module.adapt_and_predict_steps.get_concrete_function(),
        SIGNATURE_PREDICT: module.predict.get_concrete_function(),
        SIGNATURE_METADATA: module.metadata.get_concrete_function(),
    }
    # The default signature is the contract, so `saved_model_cli run` without a name works too.
    signatures[tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY] = signatures[SIGNATURE_ADAPT]
    tf.saved_model.save(module, path, signatures=signatures)


def _clean_stale(output: str) -> None:
    """Recovers from an export killed mid-swap and removes leftovers of killed exports.

    If PATH is missing but a complete ``PATH.old-*`` exists, the kill happened between the two
    renames: the old model is moved back. Incomplete ``PATH.tmp-*`` directories are deleted.
    """
    parent, base = os.path.split(output.rstrip("/"))
    if not tf.io.gfile.isdir(parent or "."):
        return
    for name in sorted(tf.io.gfile.listdir(parent or ".")):
        name = name.rstrip("/")
        path = os.path.join(parent, name)
        if name.startswith(base + ".old-") and not tf.io.gfile.exists(output) and \
                tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            tf.io.gfile.rename(path, output)
        elif name.startswith(base + ".tmp-") or name.startswith(base + ".old-"):
            tf.io.gfile.rmtree(path)


def write_atomically(module: tf.Module, output: str) -> str:
    """Saves ``module`` to ``output`` so that ``output`` is never a partial model.

    Not safe against concurrent exports to the same path.
    """
    output = output.rstrip("/")
    _clean_stale(output)
    tag = uuid.uuid4().hex[:8]
    tmp, old = f"{output}.tmp-{tag}", f"{output}.old-{tag}"
    try:
        _write_saved_model(module, tmp)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    had_old = tf.io.gfile.exists(output)
    if had_old:
        tf.io.gfile.rename(output, old)
    try:
        tf.io.gfile.rename(tmp, output)
    except BaseException:
        if had_old:
            tf.io.gfile.rename(old, output)
        raise
    if had_old:
        tf.io.gfile.rmtree(old)
    return output


def export(model: keras.Model, algorithm: Any, output: str, *, metadata: dict[str, Any],
           classification: bool = True) -> str:
    """Exports a meta-learner as a fast-adaptation SavedModel (see the module docstring).

    Args:
      model: the built Keras model (``algorithm.model``), with the parameters to export.
      algorithm: a :class:`tfmeta.maml.MAML` or :class:`tfmeta.reptile.Reptile` around ``model``.
      output: SavedModel directory (local or gs://); replaced atomically if it exists.
      metadata: JSON-ready description (see :func:`metadata_from_config`); for classification it
        must hold ``ways`` and ``image_size``; ``inner_steps`` is the default adaptation length.
      classification: N-way image classification (True) or [*, 1] regression (False).

    Returns:
      ``output``.

    Raises:
      ExportError: the model's input or output shape does not fit the signature contract.
    """
    if algorithm.model is not model:
        raise ExportError("algorithm.model must be the exported model")
    text = json.dumps(metadata, indent=2, sort_keys=True)
    steps = int(metadata["inner_steps"])
    with tempfile.TemporaryDirectory() as scratch:
        # The asset is copied into the SavedModel's assets/ under this name.
        asset = os.path.join(scratch, METADATA_ASSET)
        with open(asset, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        if classification:
            ways, size = int(metadata["ways"]), int(metadata["image_size"])
            if tuple(model.input_shape[1:]) != (size, size, 1) or model.output_shape[-1] != ways:
                raise ExportError(
                    f"the signature contract needs a model mapping [B, {size}, {size}, 1] images "
                    f"to [B, {ways}] logits; got input {model.input_shape} and output "
                    f"{model.output_shape}")
            module = _Classifier(model, algorithm, ways=ways, image_size=size, inner_steps=steps,
                                 metadata_json=text, asset_path=asset)
        else:
            if tuple(model.input_shape[1:]) != (1,) or model.output_shape[-1] != 1:
                raise ExportError(
                    "regression exports support models mapping [B, 1] to [B, 1] (sinusoid); got "
                    f"input {model.input_shape} and output {model.output_shape}")
            module = _Regressor(model, algorithm, inner_steps=steps, metadata_json=text,
                                asset_path=asset)
        return write_atomically(module, output)


def export_experiment(exp: Any, output: str) -> str:
    """Exports a built :class:`tfmeta.trainer.Experiment` (its current parameters) to ``output``."""
    classification = exp.source.classification
    metadata = metadata_from_config(exp.config, step=int(exp.step.numpy()),
                                    classification=classification)
    return export(exp.model, exp.algorithm, output, metadata=metadata,
                  classification=classification)


def export_from_workdir(workdir: str, output: str | None = None) -> str:
    """Exports the latest checkpoint of a training run.

    Args:
      workdir: work directory of ``tfmeta.train`` (local path or gs://...).
      output: SavedModel directory; ``WORKDIR/export`` when None.

    Returns:
      The SavedModel path.

    Raises:
      FileNotFoundError: ``workdir`` has no config or no checkpoint.
    """
    from tfmeta import trainer

    exp = trainer.restore(workdir)
    return export_experiment(exp, output or os.path.join(workdir, EXPORT_DIR))


def read_metadata(path: str) -> dict[str, Any]:
    """Reads the ``assets/tfmeta.json`` of an export (no TensorFlow graph loading)."""
    with tf.io.gfile.GFile(os.path.join(path, "assets", METADATA_ASSET)) as f:
        return json.loads(f.read())


if __name__ == "__main__":
    # `python -m tfmeta.export`: the flags live in export_main so importing this module never
    # defines any.
    from tfmeta import export_main

    export_main.run()
