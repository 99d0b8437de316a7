"""A client of tfmeta's fast-adaptation SavedModels: adapt to a support set, classify queries.

The model adapts to the support set inside the SavedModel (see :mod:`tfmeta.serving.graph`); this
module is the one place that knows its signatures (by the names in :mod:`tfmeta.base.signatures`).
:func:`classify` takes folders (read by :mod:`tfmeta.data.image_folders`), :func:`adapt_and_predict`
takes arrays, :func:`read_metadata` reads an export's metadata from its directory or from the
loaded SavedModel.

With fewer classes than the model's N ways, the unused outputs are masked out and the
probabilities renormalised over the classes present. Each query's answer depends only on the
support set and that query, so one image gets the same answer alone as among others;
``transductive=True`` asks for MAML's original protocol instead (the queries of a call are
batch-normalised together, so each answer also depends on the other queries). Labels and
``inner_steps`` are checked as Python integers before the int32 conversion, which would truncate
floats and wrap large values.

The SavedModel runs in a daemon thread while the calling thread waits for it, so that Ctrl-C
interrupts at once even during a long adaptation (a call in TensorFlow's C++ runtime would hold
it up until it ends).

Images have the model's channel count C (``channels`` in the metadata: 1 grayscale, 3 RGB; 1 for
exports that do not state it). :func:`classify` reads image files converted to C, as the
training data was; arrays given to :func:`adapt_and_predict` with another channel count are
refused before the model is called, naming both counts.

Errors a user can cause (a missing or unreadable path, a folder without images, an unreadable
image, more classes than the model's N, a directory that is not a SavedModel or a SavedModel not
exported by tfmeta, an ``inner_steps`` outside ``[0, max_inner_steps]`` of the export, images
with the wrong channel count) raise
:class:`AdaptError`, whose message names the path or value. TensorFlow is imported only when a
SavedModel is loaded or called.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from tfmeta.base import errors, signatures
from tfmeta.data import image_folders

# How often the waiting thread wakes up to let Python deliver Ctrl-C while the model runs.
POLL_SECONDS = 0.1
# The tasks whose exports classify images.
IMAGE_TASKS = ("omniglot", "images")

_T = TypeVar("_T")


class AdaptError(errors.UserError, ValueError):
    """Bad input for adaptation; the message names the offending path or value."""


@dataclasses.dataclass
class Prediction:
    """The prediction for one query image."""

    file: str
    label: str
    probability: float
    probabilities: dict[str, float]


def _first_line(text: str) -> str:
    """The first non-empty line: TensorFlow's messages go on with graph and stack details."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


@contextmanager
def _image_errors() -> Iterator[None]:
    """Re-raises a folder or image mistake of :mod:`tfmeta.data.image_folders` as an AdaptError."""
    try:
        yield
    except image_folders.ImageError as e:
        raise AdaptError(str(e)) from e


def load_saved_model(path: str) -> Any:
    """Loads a SavedModel: ``tf.saved_model.load`` with an error naming the path on failure.

    Args:
      path: the SavedModel's directory (a local path or ``gs://...``).

    Returns:
      The loaded SavedModel.

    Raises:
      AdaptError: ``path`` is not a directory or not a readable SavedModel.
    """
    import tensorflow as tf

    if not path.startswith("gs://") and not os.path.isdir(path):
        raise AdaptError(f"SavedModel directory {path!r} does not exist or is not a directory")
    try:
        return tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise AdaptError(f"{path!r} is not a readable SavedModel: {_first_line(str(e))}") from e


def read_metadata(saved_model: str | Any, name: str | None = None) -> dict[str, Any]:
    """Reads the metadata of a tfmeta export, from its directory or from the loaded SavedModel.

    Args:
      saved_model: the export's directory (a local path or ``gs://...``), whose metadata asset
        ``assets/tfmeta.json`` is read without loading any graph; or the object
        ``tf.saved_model.load`` returned, whose ``metadata`` signature is called.
      name: how to name the SavedModel in error messages; by default "the SavedModel at
        'PATH'", or "the given SavedModel" for a loaded one.

    Returns:
      The metadata (see :func:`tfmeta.serving.metadata.build`).

    Raises:
      AdaptError: the directory holds no tfmeta metadata asset, or the loaded SavedModel has no
        tfmeta ``metadata`` signature (neither was exported by tfmeta), or the metadata is not
        tfmeta's JSON.
    """
    import tensorflow as tf

    if isinstance(saved_model, str):
        name = name or f"the SavedModel at {saved_model!r}"
        asset = os.path.join(saved_model, "assets", signatures.METADATA_ASSET)
        try:
            with tf.io.gfile.GFile(asset) as f:
                return json.loads(f.read())
        except tf.errors.NotFoundError as e:
            raise AdaptError(f"{name} has no tfmeta metadata {asset!r}, so it was not exported "
                             "by tfmeta.export") from e
        except (tf.errors.OpError, ValueError) as e:
            raise AdaptError(f"cannot read the metadata {asset!r} of {name}: "
                             f"{_first_line(str(e))}") from e
    name = name or "the given SavedModel"
    found = getattr(saved_model, "signatures", {})
    if signatures.METADATA not in found:
        raise AdaptError(f"{name} has no tfmeta {signatures.METADATA!r} signature (its "
                         f"signatures: {sorted(found)}), so it was not exported by tfmeta.export")
    try:
        return json.loads(found[signatures.METADATA]()["json"].numpy().decode("utf-8"))
    except (KeyError, ValueError, AttributeError) as e:
        raise AdaptError(f"the {signatures.METADATA!r} signature of {name} does not return "
                         f"tfmeta's JSON: {_first_line(str(e))}") from e


def _classifier_metadata(saved_model: Any, name: str) -> dict[str, Any]:
    """The metadata of a loaded export, checked to be an image classifier with its signatures.

    Raises:
      AdaptError: the SavedModel was not exported by tfmeta, or is not an image classifier.
    """
    meta = read_metadata(saved_model, name)
    if (meta.get("task", "omniglot") not in IMAGE_TASKS or "ways" not in meta
            or "image_size" not in meta):
        raise AdaptError(f"{name} is not an image classifier (task {meta.get('task')!r}); "
                         f"tfmeta.adapt needs the export of an image task {list(IMAGE_TASKS)}")
    missing = [s for s in (signatures.ADAPT, signatures.ADAPT_STEPS)
               if s not in saved_model.signatures]
    if missing:
        raise AdaptError(f"{name} lacks the signatures {missing}; export it again with "
                         "tfmeta.export")
    return meta


def _run_interruptibly(fn: Callable[[], _T]) -> _T:
    """Returns ``fn()``, run in a daemon thread while this thread waits for it.

    A SavedModel call stays in TensorFlow's C++ runtime until it is done, and Python runs signal
    handlers only in the main thread, between bytecodes: a call in the main thread would hold
    up Ctrl-C for as long as it runs. Waiting with a timeout lets KeyboardInterrupt through. The
    worker cannot be cancelled; after an interrupt it runs on until it finishes (or the process
    exits).

    Raises:
      Whatever ``fn`` raised, re-raised here; KeyboardInterrupt on Ctrl-C.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e

    worker = threading.Thread(target=target, name="tfmeta-adapt", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL_SECONDS)
    if "error" in outcome:
        raise outcome.pop("error")
    return outcome["result"]


def check_labels(labels: Any, ways: int, name: str = "support_labels") -> np.ndarray:
    """Checks class labels before they are converted to the signature's int32.

    TensorFlow converts a NumPy array to an int32 input with a C-style cast, before the graph
    runs: float labels are truncated (0.7 -> 0) and integers of 2**31 and more wrap around
    (2**32 + 4 -> 4), leaving valid-looking labels the graph cannot tell from real ones. So they
    are checked here, as Python integers.

    Args:
      labels: one label per support example (a sequence or 1-D array).
      ways: the model's N; labels must be in ``[0, N)``.
      name: how to name the labels in the error.

    Returns:
      The labels as int32 ``[S]``.

    Raises:
      AdaptError: a label that is not an integer (floats and booleans included, even 1.0) or is
        outside ``[0, ways)``, naming the first such value and its index; or labels that are not
        a flat sequence.
    """
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError) as e:
        raise AdaptError(f"{name} must be a flat sequence of integers: {_first_line(str(e))}") \
            from e
    if array.ndim != 1:
        raise AdaptError(f"{name} must be a flat sequence of integers in [0, {ways}), one per "
                         f"support image; got an array of shape {list(array.shape)}")
    # .tolist() gives Python scalars: exact for any integer size, and floats stay floats.
    for i, value in enumerate(array.tolist()):
        if isinstance(value, bool) or not isinstance(value, int):
            raise AdaptError(f"{name} must be integers in [0, {ways}); got {value!r} at index {i} "
                             f"({array.dtype}); pass int32 class indices")
        if not 0 <= value < ways:
            raise AdaptError(f"{name} must be integers in [0, {ways}) (the model has {ways} "
                             f"ways); got {value} at index {i}")
    return array.astype(np.int32)


def channels_of(metadata: dict[str, Any]) -> int:
    """The channel count an export's images must have (1 for exports that do not state it)."""
    return int(metadata.get("channels", 1))


def _describe_channels(channels: int) -> str:
    kind = {1: " (grayscale)", 3: " (RGB)"}.get(channels, "")
    return f"{channels} channel{'' if channels == 1 else 's'}{kind}"


def _float_images(images: Any, name: str, channels: int) -> np.ndarray:
    """``images`` as float32 (float64 arrays are welcome), refusing non-numeric data and
    shapes other than ``[count, height, width, channels]``."""
    array = np.asarray(images)
    if array.dtype.kind not in "fiub":
        raise AdaptError(f"{name} must be float32 pixels in [0, 1]; got dtype {array.dtype}")
    if array.ndim != 4:
        raise AdaptError(f"{name} must be [count, height, width, {channels}]; got an array of "
                         f"shape {list(array.shape)}")
    if array.shape[-1] != channels:
        raise AdaptError(f"{name} has {_describe_channels(array.shape[-1])} but the model "
                         f"takes {_describe_channels(channels)}: give images of shape "
                         f"[count, height, width, {channels}]")
    return array.astype(np.float32, copy=False)


def adapt_and_predict(saved_model: Any, support_images: np.ndarray, support_labels: Sequence[int],
                      query_images: np.ndarray, inner_steps: int | None = None, *,
                      transductive: bool = False, ways: int | None = None,
                      channels: int | None = None) -> np.ndarray:
    """Calls the SavedModel: the one place that knows its signatures.

    Labels and ``inner_steps`` are checked here, in Python (see :func:`check_labels`), because
    TensorFlow's conversion to the signature's int32 would truncate or wrap them silently.

    Args:
      saved_model: a loaded tfmeta classifier export.
      support_images: float32 ``[S, H, W, C]``, ``pixels / 255``, any H and W, with the
        model's channel count C (1 grayscale, 3 RGB; ``channels`` in the metadata).
      support_labels: ``S`` integer labels in ``[0, N)``.
      query_images: float32 ``[Q, H, W, C]``, ``pixels / 255``.
      inner_steps: inner steps; the export's configured number when None.
      transductive: normalise the queries together (the export's transductive signature).
      ways: the model's N; read from the export's metadata when None.
      channels: the model's C; read from the export's metadata when None.

    Returns:
      float32 logits ``[Q, N]``.

    Raises:
      AdaptError: images that are not ``[count, height, width, C]`` (a wrong channel count is
        named with the model's), a label that is not an integer in ``[0, N)``, an
        ``inner_steps`` that is not a non-negative int32, or the SavedModel rejected the inputs
        (first line of its message).
      KeyboardInterrupt: on Ctrl-C, at once; the call itself runs on in a daemon thread.
    """
    import tensorflow as tf

    if ways is None or channels is None:
        meta = _classifier_metadata(saved_model, "the given SavedModel")
        ways = int(meta["ways"]) if ways is None else ways
        channels = channels_of(meta) if channels is None else channels
    _check_inner_steps(inner_steps)
    # Checked before the call: the signature's own refusal names neither channel count.
    inputs = {"support_images": tf.constant(_float_images(support_images, "support_images",
                                                          channels)),
              "support_labels": tf.constant(check_labels(support_labels, ways)),
              "query_images": tf.constant(_float_images(query_images, "query_images",
                                                        channels))}
    if transductive:
        if signatures.TRANSDUCTIVE not in saved_model.signatures:
            raise AdaptError("this model has no batch norm, so there is no transductive "
                             "prediction: every query is already answered on its own")
        if inner_steps is not None:
            raise AdaptError("--transductive uses the export's configured inner steps; do not "
                             "combine it with --inner_steps")
        signature = saved_model.signatures[signatures.TRANSDUCTIVE]
    elif inner_steps is None:
        signature = saved_model.signatures[signatures.ADAPT]
    else:
        signature = saved_model.signatures[signatures.ADAPT_STEPS]
        inputs["inner_steps"] = tf.constant(int(inner_steps), tf.int32)
    try:
        return _run_interruptibly(lambda: signature(**inputs)["logits"].numpy())
    except tf.errors.InvalidArgumentError as e:
        raise AdaptError(f"the SavedModel rejected the inputs: {_first_line(e.message)}") from e


def _check_inner_steps(inner_steps: Any, bound: int = signatures.MAX_INNER_STEPS) -> None:
    if inner_steps is None:
        return
    # Checked as a Python integer: the int32 conversion would truncate 2.5 and wrap 2**32 + 3.
    # Before the export's metadata is read its own bound is not known: the message says so
    # rather than quoting the int32 limit of the signature's input.
    limit = ("the export's max_inner_steps" if bound == signatures.MAX_INNER_STEPS
             else str(bound))
    if isinstance(inner_steps, (bool, np.bool_)) or not isinstance(inner_steps,
                                                                   (int, np.integer)):
        raise AdaptError(f"inner_steps must be an integer between 0 and {limit}, got "
                         f"{inner_steps!r}")
    if not 0 <= inner_steps <= bound:
        raise AdaptError(f"inner_steps must be between 0 and {limit}, got {inner_steps}")


def _open_export(saved_model: Any) -> tuple[Any, dict[str, Any]]:
    """Loads the SavedModel if given a path; returns it with its checked metadata."""
    if isinstance(saved_model, str):
        loaded = load_saved_model(saved_model)
        return loaded, _classifier_metadata(loaded, f"the SavedModel at {saved_model!r}")
    return saved_model, _classifier_metadata(saved_model, "the given SavedModel")


def _predictions(classes: list[str], files: list[str], logits: np.ndarray) -> list[Prediction]:
    # Outputs for classes without support examples are meaningless: drop them and renormalise.
    logits = logits[:, :len(classes)].astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    predictions = []
    for path, p in zip(files, probs):
        best = int(np.argmax(p))
        predictions.append(Prediction(
            file=path, label=classes[best], probability=float(p[best]),
            probabilities={name: float(v) for name, v in zip(classes, p)}))
    return predictions


def classify(saved_model: Any, support_dir: str, queries: Sequence[str], *,
             inner_steps: int | None = None,
             transductive: bool = False) -> tuple[list[str], list[Prediction]]:
    """Adapts an exported classifier to ``support_dir`` and classifies the query images.

    The SavedModel runs in a worker thread so that Ctrl-C interrupts at once (see
    :func:`adapt_and_predict`); results and exceptions come back as from a direct call. After a
    KeyboardInterrupt the call runs on in the background: a process that wants to stop should
    leave with ``os._exit``, as a normal interpreter exit under a running TensorFlow call can
    crash.

    Args:
      saved_model: a SavedModel path, or the object ``tf.saved_model.load`` returned for it.
      support_dir: one subfolder of example images per class.
      queries: query image files and/or directories (read recursively).
      inner_steps: inner steps; the export's configured number when None; at most the
        export's ``max_inner_steps``.
      transductive: normalise the queries together (MAML's original protocol) instead of
        answering each query on its own.

    Returns:
      ``(class_names, predictions)`` with one prediction per query file, in order.

    Raises:
      AdaptError: for any bad path, image, SavedModel, class count or ``inner_steps`` (the
        message names it).
    """
    from absl import logging

    _check_inner_steps(inner_steps)
    # Folder mistakes are found before the (slow) model load.
    with _image_errors():
        classes, support_files, labels = image_folders.read_support(support_dir)
        query_files = image_folders.read_queries(queries)
    saved_model, meta = _open_export(saved_model)
    _check_inner_steps(inner_steps, int(meta.get("max_inner_steps", signatures.MAX_INNER_STEPS)))
    ways, size, channels = int(meta["ways"]), int(meta["image_size"]), channels_of(meta)
    if len(classes) > ways:
        raise AdaptError(f"support directory {support_dir!r} has {len(classes)} class folders but "
                         f"the model was trained for {ways} ways; use at most {ways} classes")
    with _image_errors():
        # Converted to the model's channels, as the training data was (see image_folders).
        support_images = image_folders.read_images(support_files, size, channels)
        query_images = image_folders.read_images(query_files, size, channels)
    logging.debug("adapting to %d classes (%d images) with %s inner steps, then classifying %d "
                  "queries", len(classes), len(support_files),
                  meta.get("inner_steps") if inner_steps is None else inner_steps,
                  len(query_files))
    logits = adapt_and_predict(saved_model, support_images, labels, query_images, inner_steps,
                               transductive=transductive, ways=ways, channels=channels)
    return classes, _predictions(classes, query_files, logits)


def format_table(predictions: Sequence[Prediction]) -> str:
    """Formats predictions as a fixed-width table.

    Args:
      predictions: one per query, as :func:`classify` returns them.

    Returns:
      The table: a header row, a rule, then query file, predicted class and its probability.
    """
    rows = [("query", "class", "probability")] + [
        (p.file, p.label, f"{p.probability:.3f}") for p in predictions]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

