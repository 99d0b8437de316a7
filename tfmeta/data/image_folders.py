"""Image folders as a tfmeta classifier reads them: support classes, query paths, pixels.

A support directory holds one subfolder per class (the subfolder name is the class name) with a
few example images each; queries are image files and directories, read recursively in sorted
order. Image files are those with an extension of :data:`IMAGE_EXTENSIONS`, the list the
training data is read with (:data:`tfmeta.data.class_listing.IMAGE_EXTENSIONS`: PNG, JPEG, BMP, GIF,
TIFF, WebP, PPM/PGM/PBM). Everything else in a folder is skipped, never silently: hidden files and
folders (names starting with "."), files without an image extension, subfolders of a class
folder, files beside the class folders of a support directory, and symbolic links back to a folder
above them are named, with the reason, in one warning per support or query directory. A class
folder or query directory without any image is an error. Named pipes, sockets and devices with an
image name are skipped with a warning naming them, never opened (a stray pipe would block the read
forever); named directly, they are an error.

Images (any of those formats, any size and depth) are read one at a time into the input contract
of a tfmeta SavedModel (see :func:`load_image`): float32 in [0, 1] with white = 1 (``pixels / 255`` for
8-bit images), grayscale or RGB, resized at once to the model's ``image_size`` with PIL's LANCZOS
filter (the filter the training data was prepared with; images already at that size are not
resampled), so memory does not grow with the images' size. Opening, modes, transparency (composited
onto white), 16-bit grey (scaled rather than clipped) and the EXIF orientation are
:mod:`tfmeta.data.image_decode`'s, the decoder of the training data, so a model sees its queries as it
saw its training images; this module keeps deep grey in floating point instead of 8 bits. An image
whose pixels are all one value is read with a warning naming it.

Every mistake in the input raises :class:`ImageError` naming the path. This module imports only
:mod:`tfmeta.base.errors`, :mod:`tfmeta.data.class_listing` and :mod:`tfmeta.data.image_decode` of tfmeta, NumPy,
PIL and absl's logging.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NoReturn

import numpy as np
from PIL import Image

from tfmeta.data import class_listing, image_decode
from tfmeta.base import errors

# The one list of image extensions, the training data's (re-exported for compatibility).
IMAGE_EXTENSIONS = class_listing.IMAGE_EXTENSIONS
# At most this many skipped entries are named in a warning; the rest are counted.
_SHOWN_SKIPPED = 10


class ImageError(errors.UserError, ValueError):
    """A folder, path or image that cannot be read as images; the message names it."""


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _why_not_an_image(name: str) -> str:
    """Why a file named ``name`` is not read as an image (it is hidden or not an image name)."""
    if _is_hidden(name):
        return "hidden"
    return "not an image file (by its extension)"


def _report_skipped(where: str, skipped: Sequence[tuple[str, str]]) -> None:
    """Logs one warning naming what was skipped in ``where`` and why (nothing if nothing was)."""
    from absl import logging

    if not skipped:
        return
    shown = "; ".join(f"{path!r} ({reason})" for path, reason in skipped[:_SHOWN_SKIPPED])
    more = len(skipped) - _SHOWN_SKIPPED
    logging.warning("%s: skipped %d entr%s that %s not read: %s%s (images are files ending in "
                    "%s)", where, len(skipped), "y" if len(skipped) == 1 else "ies",
                    "is" if len(skipped) == 1 else "are", shown,
                    f"; and {more} more" if more > 0 else "", " ".join(IMAGE_EXTENSIONS))


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as e:
        raise ImageError(f"cannot read directory {directory!r}: {e.strerror or e}") from e


def _regular_image_files(paths: Sequence[str]) -> list[str]:
    """``paths`` without the special files, each of which is skipped with a warning naming it."""
    from absl import logging

    kept = []
    for path in paths:
        kind = image_decode.special_file_kind(path)
        if kind is None:
            kept.append(path)
        else:
            logging.warning("skipping %r: it is %s, not an image file", path, kind)
    return kept


def _image_files(directory: str, skipped: list[tuple[str, str]]) -> list[str]:
    """The image files directly inside ``directory``, sorted; special files are skipped.

    Everything else in it (hidden entries, subfolders, other files) is added to ``skipped`` as
    ``(path, reason)``.
    """
    found = []
    for name in _listdir(directory):
        path = os.path.join(directory, name)
        if _is_hidden(name):
            skipped.append((path, "hidden"))
        elif os.path.isdir(path):
            skipped.append((path, "a subfolder of a class folder"))
        elif not _is_image_name(name):
            skipped.append((path, _why_not_an_image(name)))
        else:
            found.append(path)
    return _regular_image_files(found)


def _walk_image_files(directory: str, skipped: list[tuple[str, str]]) -> list[str]:
    """The image files anywhere under ``directory``, walked in sorted order.

    Symlinked folders are followed, as skipping them would drop images silently, except a link
    back to a folder the walk is already inside, which would loop forever. Hidden files and
    folders, other files and such links are added to ``skipped`` as ``(path, reason)``.
    """
    def fail(error: OSError) -> NoReturn:
        raise ImageError(f"cannot read directory {error.filename!r}: {error.strerror or error}")

    files: list[str] = []
    ancestors = {directory: frozenset[str]()}  # folder -> real paths of the folders above it
    for root, dirs, names in os.walk(directory, onerror=fail, followlinks=True):
        inside = ancestors.pop(root) | {os.path.realpath(root)}
        kept = []
        for d in sorted(dirs):
            path = os.path.join(root, d)
            if _is_hidden(d):
                skipped.append((path, "hidden folder"))
            elif os.path.realpath(path) in inside:
                skipped.append((path, "a link back to a folder above it"))
            else:
                kept.append(d)
        # os.walk descends into `dirs` as left here: sorted, without hidden folders or loops.
        dirs[:] = kept
        ancestors.update((os.path.join(root, d), inside) for d in dirs)
        for name in sorted(names):
            if not _is_image_name(name):
                skipped.append((os.path.join(root, name), _why_not_an_image(name)))
        files += _regular_image_files([os.path.join(root, name) for name in sorted(names)
                                       if _is_image_name(name)])
    return files


def read_support(support_dir: str) -> tuple[list[str], list[str], list[int]]:
    """Lists a support directory.

    Args:
      support_dir: one subfolder of example images per class. Hidden files and folders, files
        beside the class folders, subfolders inside a class folder and files that are not
        images (:data:`IMAGE_EXTENSIONS`) are skipped and named, with the reason, in one
        warning. Special files with an image name (named pipes, sockets, devices) are skipped
        with a warning naming them, never opened.

    Returns:
      ``(class_names, files, labels)``: class names are the sorted subfolder names, and every image
      file in subfolder i has label i.

    Raises:
      ImageError: missing or unreadable directory, no class subfolders, or a class folder without
        images.
    """
    if not os.path.isdir(support_dir):
        raise ImageError(f"support directory {support_dir!r} does not exist or is not a directory")
    classes, skipped = [], []
    for name in _listdir(support_dir):
        path = os.path.join(support_dir, name)
        if _is_hidden(name):
            skipped.append((path, "hidden"))
        elif not os.path.isdir(path):
            skipped.append((path, "a file outside any class folder"))
        else:
            classes.append(name)
    if not classes:
        raise ImageError(f"support directory {support_dir!r} has no class subfolders; expected one "
                         "subfolder of example images per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(os.path.join(support_dir, name), skipped)
        if not found:
            raise ImageError(f"class folder {os.path.join(support_dir, name)!r} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    _report_skipped(f"support directory {support_dir!r}", skipped)
    return classes, files, labels


def read_queries(queries: Sequence[str]) -> list[str]:
    """Expands query directories (recursively, in sorted order) and files into image files.

    Args:
      queries: image files and/or directories. A file is used whatever its name; in a directory,
        hidden files and folders and files without an image extension (:data:`IMAGE_EXTENSIONS`)
        are skipped and named, with the reason, in one warning per directory, and special files
        with an image name (named pipes, sockets, devices) are skipped with a warning naming
        them, never opened.

    Returns:
      The image files, in the order given, each directory's in walk order.

    Raises:
      ImageError: a missing or unreadable path, a directory without any image, a path given
        by name that is a special file (a named pipe, socket or device), or no paths.
    """
    files: list[str] = []
    for path in queries:
        if os.path.isdir(path):
            skipped: list[tuple[str, str]] = []
            found = _walk_image_files(path, skipped)
            _report_skipped(f"query directory {path!r}", skipped)
            if not found:
                raise ImageError(f"query directory {path!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}), not even in subfolders")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.exists(path):
            raise ImageError(f"query path {path!r} is {image_decode.special_file_kind(path)}; "
                             "give image files or directories")
        else:
            raise ImageError(f"query path {path!r} does not exist")
    if not files:
        raise ImageError("no query images given")
    return files


def load_image(path: str, image_size: int, channels: int = 1) -> np.ndarray:
    """Reads one image as pixels in [0, 1] (white = 1), ``image_size`` on each side.

    * 8-bit images of any PIL mode (grey, RGB, palette, CMYK, 1-bit, ...) are converted by PIL
      to 8-bit grayscale ("L") or RGB, and transparency is composited onto white.
    * Deeper grayscale (PIL modes "I;16*": 16-bit PNG or TIFF; "I": read as 16-bit samples in
      [0, 65535]; "F": float samples in [0, 1]) is scaled to [0, 1] in floating point, never
      clipped at 8 bits; other values are an error. PIL itself reduces 16-bit colour to 8 bits
      per channel by keeping the high byte, which scales too.
    * The EXIF orientation is applied (a photo taken sideways is read upright).
    * It is resized with PIL's LANCZOS filter, as the training data was prepared, unless it
      already has that size; resampling overshoot of deep images is clipped to [0, 1].
    * With ``channels=3``, grayscale images (of any depth) are replicated into R, G and B.

    An image whose pixels are all one value (blank; with ``channels=1`` also colours of equal
    brightness) has nothing to classify: it is read, but a warning names it. The full-size
    decoded image is dropped on return.

    Args:
      path: an image file (anything PIL reads).
      image_size: side of the model's images.
      channels: 1 (grayscale) or 3 (RGB), as the model takes them.

    Returns:
      float32 ``[image_size, image_size]`` (``channels=1``) or ``[image_size, image_size, 3]``
      in [0, 1]: ``pixels / 255`` for 8-bit images.

    Raises:
      ImageError: the file is not a readable image, or deep pixels are out of range (the message
        names the file).
      ValueError: ``image_size`` or ``channels`` is not allowed.
    """
    image_decode.check_options(image_size, channels)
    try:
        with image_decode.open_image(path, path) as image:
            pixels = image_decode.to_channels(image, channels, path)
    except class_listing.DataError as e:  # this module's callers catch ImageError
        raise ImageError(str(e)) from e
    _warn_if_uniform(pixels, path)
    return _as_float(image_decode.fit(pixels, image_size), channels)


def _warn_if_uniform(image: Image.Image, path: str) -> None:
    """Logs a warning naming ``path`` if every pixel of ``image`` ("L", "F" or "RGB") is equal."""
    from absl import logging

    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)  # per band for RGB
    if any(lo != hi for lo, hi in bands):
        return
    scale = 1.0 if image.mode == "F" else 255.0
    value = ", ".join(f"{lo / scale:.4g}" for lo, _ in bands)
    logging.warning("image %r is uniform: every pixel is %s (0 = black, 1 = white), so "
                    "there is nothing in it to classify and its prediction means nothing",
                    path, value if len(bands) == 1 else f"({value})")


def _as_float(image: Image.Image, channels: int) -> np.ndarray:
    """float32 pixels in [0, 1] of an "L", "RGB" or "F" image; ``[H, W]`` for one channel."""
    if image.mode == "F":
        pixels = np.clip(np.asarray(image, np.float32), 0.0, 1.0)  # LANCZOS overshoot
    else:
        pixels = np.asarray(image, np.float32) / np.float32(255.0)
    return pixels if channels == 1 else image_decode.with_channels(pixels, channels)


def read_images(paths: Sequence[str], image_size: int, channels: int = 1) -> np.ndarray:
    """Reads images one at a time into the SavedModel's input format (see :func:`load_image`).

    Only one full-size image is in memory at any time, so memory is bounded by the largest
    image, not by the sum of all of them.

    Args:
      paths: image files.
      image_size: side of the model's images.
      channels: 1 (grayscale) or 3 (RGB), as the model takes them.

    Returns:
      float32 ``[len(paths), image_size, image_size, channels]`` in [0, 1] (white = 1):
      ``pixels / 255`` for 8-bit images.

    Raises:
      ImageError: a file is not a readable image (the message names it).
      ValueError: ``image_size`` or ``channels`` is not allowed.
    """
    image_decode.check_options(image_size, channels)
    out = np.empty((len(paths), image_size, image_size, channels), np.float32)
    for i, path in enumerate(paths):
        out[i] = np.reshape(load_image(path, image_size, channels),
                            (image_size, image_size, channels))
    return out
