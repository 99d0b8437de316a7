r"""Classifies images with an exported model after adapting it to a folder of examples.

    python -m tfmeta.adapt --saved_model=/tmp/run/export --support=DIR --query=DIR_OR_FILES \
        [--json] [--inner_steps=N] [--transductive]

``--support`` holds one subfolder per class (the subfolder name is the class name) with a few
example images each (PNG or JPEG, any size and depth; colour is converted to grayscale,
transparency is composited onto white, 16-bit grey is scaled rather than clipped, the EXIF
orientation is applied; see :func:`load_image`). ``--query`` is a directory of images or a
comma-separated list of image files and directories; directories are read recursively, in
sorted order. Hidden files and folders (names starting with ".") and files without an image
extension are ignored, but a directory without any image is an error. Named pipes, sockets and
devices with an image name are skipped with a warning naming them, never opened (a stray pipe
would block the read forever). An image whose grayscale is one constant value is classified
with a warning naming it. Each query is printed with its path and predicted class and
probability, as a table or, with ``--json``, as one JSON document.

The model adapts to the support set inside the SavedModel (see :mod:`tfmeta.export`). With fewer
classes than the model's N ways, the unused outputs are masked out and the probabilities
renormalised over the classes present. Each query's answer depends only on the support set and
that query, so one image gets the same answer alone as among others. ``--transductive`` asks for
MAML's original protocol instead (the queries of a call are batch-normalised together, so each
answer also depends on the other queries); the output says which protocol was used.

Images are read one at a time: each is decoded, converted to grayscale and at once resized to the
model's ``image_size`` with PIL's LANCZOS filter (the filter the training data was prepared with;
images already at that size are not resampled), so memory does not grow with the images' size.
They are sent as float32 in [0, 1] (``pixels / 255`` for 8-bit images) with white background
= 1, the SavedModel's input contract; the graph then only inverts them. Labels are checked as
Python integers before the int32 conversion, which would truncate floats and wrap large values.

Errors a user can cause (a missing or unreadable path, a class folder or query directory without
images, an unreadable image, a query path that is a named pipe or device, more classes than the
model's N, a directory that is not a SavedModel or a SavedModel not exported by tfmeta,
``--inner_steps`` outside ``[0, max_inner_steps]`` of the export) raise :class:`AdaptError`;
the command prints them as one line ``error: ...`` on stderr and exits with status 2. Ctrl-C
stops the command at once, even during a long adaptation: it prints ``interrupted`` on stderr and
exits with status 130. ``-v 1`` logs what is adapted, just before the SavedModel call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import numpy as np

from tfmeta import errors

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# PIL modes with more than 8 bits per grey sample, which PIL's conversion to "L" would clip.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
SIGNATURE_ADAPT = "adapt_and_predict"
SIGNATURE_ADAPT_STEPS = "adapt_and_predict_steps"
SIGNATURE_TRANSDUCTIVE = "adapt_and_predict_transductive"
SIGNATURE_METADATA = "metadata"
MAX_INNER_STEPS = 2**31 - 1  # the signature takes an int32
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
# How often the main thread wakes up to let Python deliver Ctrl-C while the model runs.
POLL_SECONDS = 0.1

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


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as e:
        raise AdaptError(f"cannot read directory {directory!r}: {e.strerror or e}") from e


def _special_file_kind(path: str) -> str | None:
    """What ``path`` is if it exists but is neither a regular file nor a directory, else None.

    Uses ``stat`` only: opening a named pipe for reading blocks until a writer appears (forever,
    for a stray one), and a device such as /dev/zero never ends. A path that cannot be stat-ed
    (a broken link) is left to the reader, which names it in its error.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def _regular_image_files(paths: Sequence[str]) -> list[str]:
    """``paths`` without the special files, each of which is skipped with a warning naming it."""
    from absl import logging

    kept = []
    for path in paths:
        kind = _special_file_kind(path)
        if kind is None:
            kept.append(path)
        else:
            logging.warning("skipping %r: it is %s, not an image file", path, kind)
    return kept


def _image_files(directory: str) -> list[str]:
    """The image files directly inside ``directory``, sorted; special files are skipped."""
    return _regular_image_files([
        os.path.join(directory, name) for name in _listdir(directory)
        if _is_image_name(name) and not os.path.isdir(os.path.join(directory, name))])


def _walk_image_files(directory: str) -> list[str]:
    """The image files anywhere under ``directory``, walked in sorted order.

    Symlinked folders are followed, as skipping them would drop images silently, except a link
    back to a folder the walk is already inside, which would loop forever.
    """
    def fail(error: OSError) -> NoReturn:
        raise AdaptError(f"cannot read directory {error.filename!r}: {error.strerror or error}")

    files: list[str] = []
    ancestors = {directory: frozenset[str]()}  # folder -> real paths of the folders above it
    for root, dirs, names in os.walk(directory, onerror=fail, followlinks=True):
        inside = ancestors.pop(root) | {os.path.realpath(root)}
        # os.walk descends into `dirs` as left here: sorted, without hidden folders or loops.
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d)
                         and os.path.realpath(os.path.join(root, d)) not in inside)
        ancestors.update((os.path.join(root, d), inside) for d in dirs)
        files += _regular_image_files([os.path.join(root, name) for name in sorted(names)
                                       if _is_image_name(name)])
    return files


def read_support(support_dir: str) -> tuple[list[str], list[str], list[int]]:
    """Lists a support directory.

    Args:
      support_dir: one subfolder of example images per class. Hidden files and folders are
        ignored, and so are subfolders inside a class folder. Special files with an image name
        (named pipes, sockets, devices) are skipped with a warning naming them, never opened.

    Returns:
      ``(class_names, files, labels)``: class names are the sorted subfolder names, and every image
      file in subfolder i has label i.

    Raises:
      AdaptError: missing or unreadable directory, no class subfolders, or a class folder without
        images.
    """
    if not os.path.isdir(support_dir):
        raise AdaptError(f"support directory {support_dir!r} does not exist or is not a directory")
    classes = [name for name in _listdir(support_dir)
               if not _is_hidden(name) and os.path.isdir(os.path.join(support_dir, name))]
    if not classes:
        raise AdaptError(f"support directory {support_dir!r} has no class subfolders; expected one "
                         "subfolder of example images per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(os.path.join(support_dir, name))
        if not found:
            raise AdaptError(f"class folder {os.path.join(support_dir, name)!r} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def read_queries(queries: Sequence[str]) -> list[str]:
    """Expands query directories (recursively, in sorted order) and files into image files.

    Args:
      queries: image files and/or directories. A file is used whatever its name; in a directory,
        hidden files and folders and files without an image extension are ignored, and special
        files with an image name (named pipes, sockets, devices) are skipped with a warning
        naming them, never opened.

    Returns:
      The image files, in the order given, each directory's in walk order.

    Raises:
      AdaptError: a missing or unreadable path, a directory without any image, a path given
        by name that is a special file (a named pipe, socket or device), or no paths.
    """
    files: list[str] = []
    for path in queries:
        if os.path.isdir(path):
            found = _walk_image_files(path)
            if not found:
                raise AdaptError(f"query directory {path!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}), not even in subfolders")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.exists(path):
            raise AdaptError(f"query path {path!r} is {_special_file_kind(path)}; give image "
                             "files or directories")
        else:
            raise AdaptError(f"query path {path!r} does not exist")
    if not files:
        raise AdaptError("no query images given")
    return files


def _high_depth_gray(image: Any, path: str) -> Any:
    """A grayscale image of more than 8 bits per sample as a PIL "F" image in [0, 1].

    PIL's own conversion to 8 bits ("L") clips such samples at 255 instead of scaling them, so a
    16-bit scan, whose ink is far above 255, would come out blank.
    """
    from PIL import Image

    pixels = np.asarray(image)
    if image.mode == "F":
        white, allowed = 1.0, "floating-point pixels must be in [0, 1]"
    elif image.mode == "I":
        # What PIL gives for 16-bit PNGs in some versions and for 32-bit TIFFs: read as 16 bits.
        white, allowed = 65535.0, "32-bit integer pixels are read as 16-bit samples, in [0, 65535]"
    else:  # I;16 and its byte orders
        white, allowed = 65535.0, ""
    if allowed:
        if not np.all(np.isfinite(pixels)):
            raise AdaptError(f"cannot read image {path!r}: it holds NaN or infinite pixels")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0 or hi > white:
            raise AdaptError(f"cannot read image {path!r}: {allowed}; found values in "
                             f"[{lo:.6g}, {hi:.6g}]")
    gray = pixels.astype(np.float32) / np.float32(white)
    del pixels
    transparency = image.info.get("transparency")
    if isinstance(transparency, (int, float)):  # a grey level that means "transparent"
        gray[np.asarray(image) == transparency] = 1.0  # transparency is white, as for 8 bits
    return Image.fromarray(gray, "F")


def load_image(path: str, image_size: int) -> np.ndarray:
    """Reads one image as grayscale pixels in [0, 1] (white = 1), ``image_size`` on each side.

    * 8-bit images of any PIL mode (grey, RGB, palette, CMYK, 1-bit, ...) are converted by PIL
      to 8-bit grayscale ("L"), and transparency is composited onto white.
    * Deeper grayscale (PIL modes "I;16*": 16-bit PNG or TIFF; "I": read as 16-bit samples in
      [0, 65535]; "F": float samples in [0, 1]) is scaled to [0, 1] in floating point, never
      clipped at 8 bits; other values are an error. PIL itself reduces 16-bit colour to 8 bits
      per channel by keeping the high byte, which scales too.
    * The EXIF orientation is applied (a photo taken sideways is read upright).
    * It is resized with PIL's LANCZOS filter, as the training data was prepared, unless it
      already has that size; resampling overshoot of deep images is clipped to [0, 1].

    An image whose grayscale is one constant value (blank, or colours of equal brightness) has
    nothing to classify: it is read, but a warning names it. The full-size decoded image is
    dropped on return.

    Args:
      path: a PNG or JPEG file (anything PIL reads).
      image_size: side of the model's images.

    Returns:
      float32 ``[image_size, image_size]`` in [0, 1]: ``pixels / 255`` for 8-bit images.

    Raises:
      AdaptError: the file is not a readable image, or deep pixels are out of range (the message
        names the file).
    """
    from absl import logging
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _open_regular_file(path) as file, Image.open(file) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode in _HIGH_DEPTH_MODES:
                gray = _high_depth_gray(image, path)
            elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                gray = Image.alpha_composite(white, rgba).convert("L")
            else:
                gray = image.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError) as e:
        if isinstance(e, AdaptError):
            raise
        raise AdaptError(f"cannot read image {path!r}: {_first_line(str(e))}") from e
    scale = 255.0 if gray.mode == "L" else 1.0
    lo, hi = gray.getextrema()
    if lo == hi:
        logging.warning("image %r is uniform: every pixel is %.4g (0 = black, 1 = white), so "
                        "there is nothing in it to classify and its prediction means nothing",
                        path, lo / scale)
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), resample=Image.LANCZOS)
    if gray.mode == "L":
        return np.asarray(gray, np.float32) / np.float32(255.0)
    return np.clip(np.asarray(gray, np.float32), 0.0, 1.0)


def _open_regular_file(path: str) -> Any:
    """Opens ``path`` for binary reading, refusing anything but a regular file.

    The listing already skips special files; this also covers a path named directly or replaced
    after listing. O_NONBLOCK makes opening a named pipe return at once instead of waiting for a
    writer; it changes nothing for regular files.

    Raises:
      AdaptError: ``path`` is not a regular file.
      OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdaptError(f"cannot read image {path!r}: it is "
                             f"{_special_file_kind(path) or 'not a regular file'}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_images(paths: Sequence[str], image_size: int) -> np.ndarray:
    """Reads images one at a time into the SavedModel's input format (see :func:`load_image`).

    Only one full-size image is in memory at any time, so memory is bounded by the largest
    image, not by the sum of all of them.

    Args:
      paths: image files.
      image_size: side of the model's images.

    Returns:
      float32 ``[len(paths), image_size, image_size, 1]`` in [0, 1] (white = 1): ``pixels /
      255`` for 8-bit images.

    Raises:
      AdaptError: a file is not a readable image (the message names it).
    """
    out = np.empty((len(paths), image_size, image_size, 1), np.float32)
    for i, path in enumerate(paths):
        out[i, :, :, 0] = load_image(path, image_size)
    return out


def _load_saved_model(path: str) -> Any:
    """``tf.saved_model.load``, with an :class:`AdaptError` naming the path on failure."""
    import tensorflow as tf

    if not path.startswith("gs://") and not os.path.isdir(path):
        raise AdaptError(f"SavedModel directory {path!r} does not exist or is not a directory")
    try:
        return tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
        raise AdaptError(f"{path!r} is not a readable SavedModel: {_first_line(str(e))}") from e


def read_metadata(saved_model: Any, name: str) -> dict[str, Any]:
    """Reads and checks the metadata of a loaded tfmeta image-classifier export.

    Args:
      saved_model: the object ``tf.saved_model.load`` returned.
      name: how to name the SavedModel in error messages, e.g. "the SavedModel at '/tmp/x'".

    Returns:
      The metadata, with at least ``ways`` and ``image_size``.

    Raises:
      AdaptError: the SavedModel was not exported by tfmeta, or is not an image classifier.
    """
    signatures = getattr(saved_model, "signatures", {})
    if SIGNATURE_METADATA not in signatures:
        raise AdaptError(f"{name} has no tfmeta {SIGNATURE_METADATA!r} signature (its signatures: "
                         f"{sorted(signatures)}), so it was not exported by tfmeta.export")
    try:
        meta = json.loads(signatures[SIGNATURE_METADATA]()["json"].numpy().decode("utf-8"))
    except (KeyError, ValueError, AttributeError) as e:
        raise AdaptError(f"the {SIGNATURE_METADATA!r} signature of {name} does not return "
                         f"tfmeta's JSON: {_first_line(str(e))}") from e
    if meta.get("task", "omniglot") != "omniglot" or "ways" not in meta or "image_size" not in meta:
        raise AdaptError(f"{name} is not an image classifier (task {meta.get('task')!r}); "
                         "tfmeta.adapt needs an Omniglot-style export")
    missing = [s for s in (SIGNATURE_ADAPT, SIGNATURE_ADAPT_STEPS) if s not in signatures]
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


def _float_images(images: Any, name: str) -> np.ndarray:
    """``images`` as float32 (float64 arrays are welcome), refusing non-numeric data."""
    array = np.asarray(images)
    if array.dtype.kind not in "fiub":
        raise AdaptError(f"{name} must be float32 pixels in [0, 1]; got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def adapt_and_predict(saved_model: Any, support_images: np.ndarray, support_labels: Sequence[int],
                      query_images: np.ndarray, inner_steps: int | None = None, *,
                      transductive: bool = False, ways: int | None = None) -> np.ndarray:
    """Calls the SavedModel: the one place that knows its signatures.

    Labels and ``inner_steps`` are checked here, in Python (see :func:`check_labels`), because
    TensorFlow's conversion to the signature's int32 would truncate or wrap them silently.

    Args:
      saved_model: a loaded tfmeta classifier export.
      support_images: float32 ``[S, H, W, 1]``, ``pixels / 255``.
      support_labels: ``S`` integer labels in ``[0, N)``.
      query_images: float32 ``[Q, H, W, 1]``, ``pixels / 255``.
      inner_steps: inner steps; the export's configured number when None.
      transductive: normalise the queries together (the export's transductive signature).
      ways: the model's N; read from the export's metadata when None.

    Returns:
      float32 logits ``[Q, N]``.

    Raises:
      AdaptError: a label that is not an integer in ``[0, N)``, an ``inner_steps`` that is not a
        non-negative int32, or the SavedModel rejected the inputs (first line of its message).
      KeyboardInterrupt: on Ctrl-C, at once; the call itself runs on in a daemon thread.
    """
    import tensorflow as tf

    if ways is None:
        ways = int(read_metadata(saved_model, "the given SavedModel")["ways"])
    _check_inner_steps(inner_steps)
    inputs = {"support_images": tf.constant(_float_images(support_images, "support_images")),
              "support_labels": tf.constant(check_labels(support_labels, ways)),
              "query_images": tf.constant(_float_images(query_images, "query_images"))}
    if transductive:
        if SIGNATURE_TRANSDUCTIVE not in saved_model.signatures:
            raise AdaptError("this model has no batch norm, so there is no transductive "
                             "prediction: every query is already answered on its own")
        if inner_steps is not None:
            raise AdaptError("--transductive uses the export's configured inner steps; do not "
                             "combine it with --inner_steps")
        signature = saved_model.signatures[SIGNATURE_TRANSDUCTIVE]
    elif inner_steps is None:
        signature = saved_model.signatures[SIGNATURE_ADAPT]
    else:
        signature = saved_model.signatures[SIGNATURE_ADAPT_STEPS]
        inputs["inner_steps"] = tf.constant(int(inner_steps), tf.int32)
    try:
        return _run_interruptibly(lambda: signature(**inputs)["logits"].numpy())
    except tf.errors.InvalidArgumentError as e:
        raise AdaptError(f"the SavedModel rejected the inputs: {_first_line(e.message)}") from e


def _check_inner_steps(inner_steps: Any, bound: int = MAX_INNER_STEPS) -> None:
    if inner_steps is None:
        return
    # Checked as a Python integer: the int32 conversion would truncate 2.5 and wrap 2**32 + 3.
    if isinstance(inner_steps, (bool, np.bool_)) or not isinstance(inner_steps,
                                                                   (int, np.integer)):
        raise AdaptError(f"inner_steps must be an integer between 0 and {bound}, got "
                         f"{inner_steps!r}")
    if not 0 <= inner_steps <= bound:
        raise AdaptError(f"inner_steps must be between 0 and {bound}, got {inner_steps}")


def _open_export(saved_model: Any) -> tuple[Any, dict[str, Any]]:
    """Loads the SavedModel if given a path; returns it with its checked metadata."""
    if isinstance(saved_model, str):
        loaded = _load_saved_model(saved_model)
        return loaded, read_metadata(loaded, f"the SavedModel at {saved_model!r}")
    return saved_model, read_metadata(saved_model, "the given SavedModel")


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
    classes, support_files, labels = read_support(support_dir)
    query_files = read_queries(queries)
    saved_model, meta = _open_export(saved_model)
    _check_inner_steps(inner_steps, int(meta.get("max_inner_steps", MAX_INNER_STEPS)))
    ways, size = int(meta["ways"]), int(meta["image_size"])
    if len(classes) > ways:
        raise AdaptError(f"support directory {support_dir!r} has {len(classes)} class folders but "
                         f"the model was trained for {ways} ways; use at most {ways} classes")
    support_images = read_images(support_files, size)
    query_images = read_images(query_files, size)
    logging.debug("adapting to %d classes (%d images) with %s inner steps, then classifying %d "
                  "queries", len(classes), len(support_files),
                  meta.get("inner_steps") if inner_steps is None else inner_steps,
                  len(query_files))
    logits = adapt_and_predict(saved_model, support_images, labels, query_images, inner_steps,
                               transductive=transductive, ways=ways)
    return classes, _predictions(classes, query_files, logits)


def format_table(predictions: Sequence[Prediction]) -> str:
    """A fixed-width table: query file, predicted class, probability."""
    rows = [("query", "class", "probability")] + [
        (p.file, p.label, f"{p.probability:.3f}") for p in predictions]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _define_flags() -> dict[str, Any]:
    """Defines the binary's flags (only when run as a binary, so importing defines none)."""
    from absl import flags

    holders = {
        "saved_model": flags.DEFINE_string("saved_model", None, "Exported SavedModel directory."),
        "support": flags.DEFINE_string(
            "support", None, "Directory with one subfolder of example images per class."),
        "query": flags.DEFINE_list(
            "query", None, "Query image directory (read recursively), or comma-separated image "
            "files/directories."),
        "json": flags.DEFINE_bool("json", False, "Print JSON instead of a table."),
        "inner_steps": flags.DEFINE_integer(
            "inner_steps", None, "Inner steps (default: the export's configured number; at most "
            "its max_inner_steps).", lower_bound=0, upper_bound=MAX_INNER_STEPS),
        "transductive": flags.DEFINE_bool(
            "transductive", False, "Normalise the queries together (MAML's original protocol: "
            "each answer then depends on the other queries). Default: each query on its own."),
    }
    flags.mark_flags_as_required(["saved_model", "support", "query"])
    return holders


def _exit_interrupted() -> NoReturn:
    """Ends the process at once, with the status shells use for Ctrl-C.

    A SavedModel call still running in its worker thread cannot be stopped, and a normal
    interpreter exit would tear Python down under it (tried: it died of SIGSEGV, status 139).
    """
    # Straight to the file descriptor: the worker may hold sys.stderr's lock (a log line blocked
    # on a full pipe), and waiting for it would hold up the exit.
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str], fl: dict[str, Any]) -> int:
    """Runs the binary with parsed flag holders ``fl``; returns the exit code."""
    from tfmeta import cli

    if len(argv) > 1:
        return cli.fail(f"unexpected arguments {argv[1:]}; pass several queries as "
                        "--query=A,B (comma-separated)")
    # Ctrl-C ends the process from the signal handler itself rather than through a
    # KeyboardInterrupt, which code between here and the waiting loop could delay or swallow.
    signal.signal(signal.SIGINT, lambda signum, frame: _exit_interrupted())
    transductive = fl["transductive"].value
    protocol = ("transductive: queries batch-normalised together" if transductive
                else "each query answered on its own")
    try:
        classes, predictions = classify(fl["saved_model"].value, fl["support"].value,
                                        fl["query"].value, inner_steps=fl["inner_steps"].value,
                                        transductive=transductive)
        if fl["json"].value:
            print(json.dumps({"saved_model": fl["saved_model"].value, "classes": classes,
                              "protocol": protocol,
                              "predictions": [dataclasses.asdict(p) for p in predictions]},
                             indent=2))
        else:
            print(format_table(predictions))
            print(f"({protocol})")
    except AdaptError as e:
        return cli.fail(str(e))
    except KeyboardInterrupt:
        _exit_interrupted()
    return 0


def run() -> None:
    """Console-script entry point."""
    from tfmeta import cli

    holders = _define_flags()
    cli.run(lambda argv: main(argv, holders))


if __name__ == "__main__":
    run()
