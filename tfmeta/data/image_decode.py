"""Decoding one image into uint8 pixels at a given size and channels, for the image data layer.

Every image the image data layer prepares (class folders, TFDS image datasets, benchmark pickles)
goes through :func:`decode`, so all sources agree on colour, depth, transparency, orientation and
geometry:

* an item is a file path, encoded image bytes, an already decoded ``uint8`` array, or a
  zero-argument callable returning one of these (read lazily);
* any PIL mode is accepted: grayscale, RGB, CMYK, palette, 1-bit; transparency (RGBA, LA, PA, a
  transparent palette index or grey level) is composited onto white; grayscale deeper than 8 bits
  (16-bit PNG, 32-bit integer or float TIFF) is scaled to 8 bits, never clipped at 255; 16-bit
  colour keeps PIL's high byte per channel, which scales too;
* the EXIF orientation is applied, so a photo taken sideways is decoded upright;
* ``channels=1`` converts to PIL's "L"; ``channels=3`` to RGB, grayscale replicated;
* ``resize="stretch"`` resizes to ``size x size`` ignoring the aspect ratio (how mini-ImageNet's
  84x84 images were made), ``"crop"`` scales the shorter side to ``size`` and keeps the centre;
  both with PIL's LANCZOS filter, as tfmeta's Omniglot preparation. An image already at
  ``size x size`` is not resampled, so pixels written at the target size round-trip exactly.

Special files (named pipes, sockets, devices) are never opened: opening a pipe for reading blocks
until a writer appears. PIL's decompression-bomb limit stays on, and the full-size image is
released before :func:`decode` returns, so memory is bounded by one image.

Every failure raises :class:`tfmeta.data.class_listing.DataError`, whose one-line message names the
item; an image below ``min_side`` raises its subclass :class:`TooSmallError`, which callers skip
and count.
Mistaken arguments (``channels=2``) are the caller's bug and raise a plain ``ValueError``.

:func:`open_image`, :func:`to_channels`, :func:`fit` and :func:`special_file_kind` are public for
:mod:`tfmeta.data.image_folders`, which reads the same files into float pixels. This module imports only
:mod:`tfmeta.data.class_listing` of tfmeta, NumPy and PIL (no TensorFlow), so preparation stays light.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfmeta.base.choices import CHANNELS, RESIZE  # noqa: F401  (re-exported)
from tfmeta.data.class_listing import DataError

# PIL modes with more than 8 bits per grey sample, which PIL's conversion to "L" would clip.
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Modes whose pixels carry an alpha channel; other modes may name a transparent value in `info`.
_ALPHA_MODES = ("RGBA", "LA", "PA")
# What PIL's format plugins raise for malformed data: a failure of the data, not of the program.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
               Image.DecompressionBombError)

Source = Union[str, bytes, bytearray, memoryview, np.ndarray]
Item = Union[Source, "os.PathLike[str]", Callable[[], Source]]


class TooSmallError(DataError):
    """An image whose shorter side is below the minimum; the caller skips it and counts it."""


def decode(item: Item, *, name: str, size: int, channels: int, resize: str = "stretch",
           min_side: int = 0) -> np.ndarray:
    """Decodes one image into ``uint8 [size, size, channels]`` pixels.

    Args:
      item: a file path (``str`` or ``os.PathLike``), encoded image bytes, a ``uint8`` array
        ``[H, W]`` or ``[H, W, C]`` with C in 1, 3, 4 (already decoded pixels; C = 4 is RGBA), or
        a zero-argument callable returning one of these.
      name: what messages call the item (a path, or ``"file.pkl[123]"``).
      size: the side of the output.
      channels: 1 (grayscale, PIL's "L") or 3 (RGB; grayscale replicated).
      resize: "stretch" (to ``size x size``, ignoring the aspect ratio) or "crop" (the shorter
        side to ``size``, then the centre of the longer one).
      min_side: the smallest shorter side accepted (after the EXIF orientation); 0 accepts all.

    Returns:
      ``uint8 [size, size, channels]``, a new array.

    Raises:
      TooSmallError: the image's shorter side is below ``min_side`` (the message names the item
        and both numbers).
      DataError: the item is not a readable image: a missing, special, empty, corrupt or
        truncated file, not an image, an unsupported array shape or dtype, or deep pixels out of
        range (the message names the item).
      ValueError: ``size``, ``channels``, ``resize`` or ``min_side`` is not allowed.
    """
    check_options(size, channels, resize, min_side)
    with open_image(item, name) as image:
        _check_min_side(image, name, min_side)
        pixels = to_channels(image, channels, name)
    return with_channels(_to_uint8(fit(pixels, size, resize)), channels)


def check_options(size: int, channels: int, resize: str = "stretch", min_side: int = 0) -> None:
    """Raises ValueError for a size, channels, resize mode or minimum side that is not allowed."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, not {size!r}")
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {list(CHANNELS)}, not {channels!r}")
    if resize not in RESIZE:
        raise ValueError(f"resize must be one of {list(RESIZE)}, not {resize!r}")
    if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 0:
        raise ValueError(f"min_side must be a non-negative integer, not {min_side!r}")


def _error(name: str, reason: str) -> DataError:
    return DataError(f"cannot read image {name!r}: {reason}")


def _first_line(text: str) -> str:
    """The first non-empty line of an error message (PIL's may go on with details)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


# ----------------------------------------------------------------------------- opening
@contextlib.contextmanager
def open_image(item: Item, name: str) -> Iterator[Image.Image]:
    """The item as a decoded PIL image, upright (EXIF orientation applied), closed on exit.

    Args:
      item: as :func:`decode` takes it.
      name: what messages call the item.

    Raises:
      DataError: the item cannot be read or decoded (the message names ``name``).
    """
    source = _resolve(item, name)
    if isinstance(source, np.ndarray):
        yield _array_image(source, name)
        return
    with _stream(source, name) as stream:
        image = _decoded(stream, name)
        try:
            yield image
        finally:
            image.close()  # releases the full-size pixels at once, not when garbage is collected


def _resolve(item: Item, name: str) -> Source:
    """A path, bytes or an array: the item itself, or what a lazy item returns."""
    if callable(item):
        try:
            item = item()
        except OSError as e:
            raise _error(name, f"reading it failed: {e.strerror or e}") from e
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray, memoryview, np.ndarray)):
        return item
    raise _error(name, f"unsupported item type {type(item).__name__}; expected a file path, "
                       "encoded image bytes, a uint8 array or a callable returning one")


def _array_image(array: np.ndarray, name: str) -> Image.Image:
    """Already decoded pixels as a PIL image ("L", "RGB" or "RGBA"), after checking them."""
    if array.dtype != np.uint8:
        nan = np.issubdtype(array.dtype, np.floating) and bool(np.isnan(array).any())
        raise _error(name, f"unsupported pixel array dtype {array.dtype}"
                           f"{' holding NaN pixels' if nan else ''}; expected uint8")
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[2] in (1, 3, 4)) \
            or 0 in array.shape[:2]:
        raise _error(name, f"unsupported pixel array shape {list(array.shape)}; expected "
                           "[H, W] or [H, W, C] with C in 1, 3, 4 and H, W > 0")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _stream(source: str | bytes | bytearray | memoryview, name: str) -> BinaryIO:
    """The encoded image as a binary stream: a regular file opened for reading, or the bytes."""
    if not isinstance(source, str):
        if not len(source):
            raise _error(name, "it is empty (0 bytes)")
        return io.BytesIO(source)
    try:
        file = open_regular_file(source, name)
    except OSError as e:
        raise _error(name, e.strerror or str(e)) from e
    if os.fstat(file.fileno()).st_size == 0:
        file.close()
        raise _error(name, "the file is empty (0 bytes)")
    return file


def _decoded(stream: BinaryIO, name: str) -> Image.Image:
    """The stream's image, decoded in full (so damage shows here) and turned upright."""
    image = None
    try:
        image = Image.open(stream)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except BaseException as e:
        if image is not None:
            image.close()  # what a damaged image had decoded is not kept until garbage collection
        error = _read_error(e, name)
        if error is None:
            raise
        raise error from e
    return image


def _read_error(e: BaseException, name: str) -> DataError | None:
    """The DataError for what PIL raised while decoding; None for anything else (a bug, Ctrl-C)."""
    if isinstance(e, UnidentifiedImageError):
        return _error(name, "not an image (PIL recognises no image format in it)")
    if isinstance(e, Image.DecompressionBombError):
        return _error(name, _first_line(str(e)))
    if isinstance(e, _PIL_ERRORS):
        return _error(name, f"corrupt or truncated image data ({_first_line(str(e))})")
    return None


def special_file_kind(path: str) -> str | None:
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


def open_regular_file(path: str, name: str) -> BinaryIO:
    """Opens ``path`` for binary reading, refusing anything but a regular file.

    Listings skip special files already; this also covers a path named directly or replaced
    after listing. O_NONBLOCK makes opening a named pipe return at once instead of waiting for a
    writer; it changes nothing for regular files.

    Raises:
      DataError: ``path`` is not a regular file (the message names ``name``).
      OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _error(name, f"it is {special_file_kind(path) or 'not a regular file'}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_min_side(image: Image.Image, name: str, min_side: int) -> None:
    shorter = min(image.size)
    if shorter < min_side:
        width, height = image.size
        raise TooSmallError(f"image {name!r} is too small: {width}x{height} pixels, its shorter "
                            f"side {shorter} is below the minimum of {min_side}")


# ----------------------------------------------------------------------------- pixels
def to_channels(image: Image.Image, channels: int, name: str) -> Image.Image:
    """The image's pixels as "L" (``channels=1``) or "RGB" (``channels=3``), transparency on white.

    Grayscale deeper than 8 bits becomes "F" in [0, 1] instead, whatever ``channels``, so that
    resizing keeps its precision; :func:`with_channels` replicates it after resizing.

    Args:
      image: a decoded image of any PIL mode.
      channels: 1 or 3.
      name: what messages call the image.

    Raises:
      DataError: deep pixels are out of range or not finite, or PIL cannot convert the mode.
    """
    if image.mode in HIGH_DEPTH_MODES:
        return _high_depth_gray(image, name)
    mode = "L" if channels == 1 else "RGB"
    try:
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            return _onto_white(image).convert(mode)
        return image.convert(mode)
    except ValueError as e:  # a mode PIL has no conversion for (e.g. LAB)
        raise _error(name, f"cannot convert its {image.mode} pixels: {_first_line(str(e))}") from e


def _onto_white(image: Image.Image) -> Image.Image:
    """The image composited onto a white background, as RGBA (fully opaque)."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def _high_depth_gray(image: Image.Image, name: str) -> Image.Image:
    """A grayscale image of more than 8 bits per sample as a PIL "F" image in [0, 1].

    PIL's own conversion to 8 bits ("L") clips such samples at 255 instead of scaling them, so a
    16-bit scan, whose ink is far above 255, would come out blank.
    """
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
            raise _error(name, "it holds NaN or infinite pixels")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0 or hi > white:
            raise _error(name, f"{allowed}; found values in [{lo:.6g}, {hi:.6g}]")
    gray = pixels.astype(np.float32) / np.float32(white)
    del pixels
    transparency = image.info.get("transparency")
    if isinstance(transparency, (int, float)):  # a grey level that means "transparent"
        gray[np.asarray(image) == transparency] = 1.0  # transparency is white, as for 8 bits
    return Image.fromarray(gray, "F")


def fit(image: Image.Image, size: int, resize: str = "stretch") -> Image.Image:
    """The image at ``size x size`` with PIL's LANCZOS filter; one already that size is kept as is.

    Args:
      image: any mode PIL resizes ("L", "RGB", "F", ...).
      size: the side of the result.
      resize: "stretch" ignores the aspect ratio; "crop" scales the shorter side to ``size`` and
        keeps the centre of the longer one (one resampling of the centre square, no second pass).
    """
    if image.size == (size, size):
        return image  # not resampled: exact pixels, so images prepared at this size round-trip
    if resize == "stretch":
        return image.resize((size, size), resample=Image.Resampling.LANCZOS)
    if resize == "crop":
        return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS)
    raise ValueError(f"resize must be one of {list(RESIZE)}, not {resize!r}")


def _to_uint8(image: Image.Image) -> np.ndarray:
    """8-bit pixels of an "L", "RGB" or "F" (in [0, 1], rounded to the nearest level) image."""
    if image.mode == "F":
        # Clipping only removes LANCZOS overshoot: the samples themselves are in [0, 1].
        return np.round(np.clip(np.asarray(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.array(image, np.uint8)


def with_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` pixels as ``[H, W, channels]``, grayscale replicated."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] == channels:
        return pixels
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, channels, axis=-1)
    raise ValueError(f"cannot give {list(pixels.shape)} pixels {channels} channels")
