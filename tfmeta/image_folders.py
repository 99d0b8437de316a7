"""Image folders as a tfmeta classifier reads them: support classes, query paths, pixels.

A support directory holds one subfolder per class (the subfolder name is the class name) with a
few example images each; queries are image files and directories, read recursively in sorted
order. Hidden files and folders (names starting with ".") and files without an image extension
are ignored, but a class folder or query directory without any image is an error. Named pipes,
sockets and devices with an image name are skipped with a warning naming them, never opened (a
stray pipe would block the read forever); named directly, they are an error.

Images (PNG or JPEG, any size and depth) are read one at a time into the input contract of a
tfmeta SavedModel (see :func:`load_image`): float32 in [0, 1] with white = 1 (``pixels / 255``
for 8-bit images) with the model's channels (grayscale, or RGB with ``channels=3``), resized at
once to the model's ``image_size`` with PIL's LANCZOS filter (the filter the training data was
prepared with; images already at that size are not resampled), so memory does not grow with
the images' size. Every image is converted to the model's channels (colour to grayscale, grey to
three equal channels), transparency is composited onto white, 16-bit grey is scaled rather than
clipped, and the EXIF orientation is applied. An image whose grayscale (or colour) is one
constant value is read with a warning naming it.

Every mistake in the input raises :class:`ImageError` naming the path. This module imports only
:mod:`tfmeta.errors` of tfmeta, NumPy, and (when reading) PIL and absl's logging.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from tfmeta import errors

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# PIL modes with more than 8 bits per grey sample, which PIL's conversion to "L" would clip.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(errors.UserError, ValueError):
    """A folder, path or image that cannot be read as images; the message names it."""


def _first_line(text: str) -> str:
    """The first non-empty line of an error message (PIL's may go on with details)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as e:
        raise ImageError(f"cannot read directory {directory!r}: {e.strerror or e}") from e


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
        raise ImageError(f"cannot read directory {error.filename!r}: {error.strerror or error}")

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
      ImageError: missing or unreadable directory, no class subfolders, or a class folder without
        images.
    """
    if not os.path.isdir(support_dir):
        raise ImageError(f"support directory {support_dir!r} does not exist or is not a directory")
    classes = [name for name in _listdir(support_dir)
               if not _is_hidden(name) and os.path.isdir(os.path.join(support_dir, name))]
    if not classes:
        raise ImageError(f"support directory {support_dir!r} has no class subfolders; expected one "
                         "subfolder of example images per class")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _image_files(os.path.join(support_dir, name))
        if not found:
            raise ImageError(f"class folder {os.path.join(support_dir, name)!r} holds no images "
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
      ImageError: a missing or unreadable path, a directory without any image, a path given
        by name that is a special file (a named pipe, socket or device), or no paths.
    """
    files: list[str] = []
    for path in queries:
        if os.path.isdir(path):
            found = _walk_image_files(path)
            if not found:
                raise ImageError(f"query directory {path!r} holds no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)}), not even in subfolders")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        elif os.path.exists(path):
            raise ImageError(f"query path {path!r} is {_special_file_kind(path)}; give image "
                             "files or directories")
        else:
            raise ImageError(f"query path {path!r} does not exist")
    if not files:
        raise ImageError("no query images given")
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
            raise ImageError(f"cannot read image {path!r}: it holds NaN or infinite pixels")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0 or hi > white:
            raise ImageError(f"cannot read image {path!r}: {allowed}; found values in "
                             f"[{lo:.6g}, {hi:.6g}]")
    gray = pixels.astype(np.float32) / np.float32(white)
    del pixels
    transparency = image.info.get("transparency")
    if isinstance(transparency, (int, float)):  # a grey level that means "transparent"
        gray[np.asarray(image) == transparency] = 1.0  # transparency is white, as for 8 bits
    return Image.fromarray(gray, "F")


def load_image(path: str, image_size: int, channels: int = 1) -> np.ndarray:
    """Reads one image as grayscale (or RGB) pixels in [0, 1] (white = 1), ``image_size`` a side.

    * 8-bit images of any PIL mode (grey, RGB, palette, CMYK, 1-bit, ...) are converted by PIL
      to 8-bit grayscale ("L"), or with ``channels=3`` to RGB (grey images get three equal
      channels), and transparency is composited onto white.
    * Deeper grayscale (PIL modes "I;16*": 16-bit PNG or TIFF; "I": read as 16-bit samples in
      [0, 65535]; "F": float samples in [0, 1]) is scaled to [0, 1] in floating point, never
      clipped at 8 bits; other values are an error. PIL itself reduces 16-bit colour to 8 bits
      per channel by keeping the high byte, which scales too.
    * The EXIF orientation is applied (a photo taken sideways is read upright).
    * It is resized with PIL's LANCZOS filter, as the training data was prepared, unless it
      already has that size; resampling overshoot of deep images is clipped to [0, 1].

    An image whose grayscale (or RGB colour) is one constant value (blank, or colours of equal
    brightness) has nothing to classify: it is read, but a warning names it. The full-size
    decoded image is dropped on return.

    Args:
      path: a PNG or JPEG file (anything PIL reads).
      image_size: side of the model's images.
      channels: 1 (grayscale) or 3 (RGB): what the image is converted to.

    Returns:
      float32 ``[image_size, image_size]`` in [0, 1] (``[image_size, image_size, 3]`` for
      ``channels=3``): ``pixels / 255`` for 8-bit images.

    Raises:
      ImageError: the file is not a readable image, or deep pixels are out of range (the message
        names the file).
    """
    from absl import logging
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mode = "L" if channels == 1 else "RGB"  # what 8-bit images are converted to
    try:
        with _open_regular_file(path) as file, Image.open(file) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode in _HIGH_DEPTH_MODES:
                gray = _high_depth_gray(image, path)
            elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                gray = Image.alpha_composite(white, rgba).convert(mode)
            else:
                gray = image.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"cannot read image {path!r}: {_first_line(str(e))}") from e
    scale = 1.0 if gray.mode == "F" else 255.0
    extrema = gray.getextrema()
    bands = extrema if gray.mode == "RGB" else (extrema,)
    if all(lo == hi for lo, hi in bands):
        value = ", ".join(f"{lo / scale:.4g}" for lo, _ in bands)
        logging.warning("image %r is uniform: every pixel is %s (0 = black, 1 = white), so "
                        "there is nothing in it to classify and its prediction means nothing",
                        path, value)
    if gray.size != (image_size, image_size):
        gray = gray.resize((image_size, image_size), resample=Image.LANCZOS)
    if gray.mode == "F":
        pixels = np.clip(np.asarray(gray, np.float32), 0.0, 1.0)
        # Deep grey read for an RGB model: three equal channels, as PIL converts 8-bit grey.
        return pixels if channels == 1 else np.repeat(pixels[..., None], 3, axis=-1)
    return np.asarray(gray, np.float32) / np.float32(255.0)


def _open_regular_file(path: str) -> Any:
    """Opens ``path`` for binary reading, refusing anything but a regular file.

    The listing already skips special files; this also covers a path named directly or replaced
    after listing. O_NONBLOCK makes opening a named pipe return at once instead of waiting for a
    writer; it changes nothing for regular files.

    Raises:
      ImageError: ``path`` is not a regular file.
      OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"cannot read image {path!r}: it is "
                             f"{_special_file_kind(path) or 'not a regular file'}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_images(paths: Sequence[str], image_size: int, channels: int = 1) -> np.ndarray:
    """Reads images one at a time into the SavedModel's input format (see :func:`load_image`).

    Only one full-size image is in memory at any time, so memory is bounded by the largest
    image, not by the sum of all of them.

    Args:
      paths: image files.
      image_size: side of the model's images.
      channels: 1 (grayscale) or 3 (RGB): what every image is converted to.

    Returns:
      float32 ``[len(paths), image_size, image_size, channels]`` in [0, 1] (white = 1):
      ``pixels / 255`` for 8-bit images.

    Raises:
      ImageError: a file is not a readable image (the message names it).
    """
    out = np.empty((len(paths), image_size, image_size, channels), np.float32)
    for i, path in enumerate(paths):
        out[i] = load_image(path, image_size, channels).reshape(out.shape[1:])
    return out
