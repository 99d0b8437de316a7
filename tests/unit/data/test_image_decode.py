"""tfmeta.data.image_decode: every item kind and PIL mode decoded to the expected uint8 pixels.

Each image is made here with PIL; the assertions are on pixel values: modes and depths,
transparency onto white, EXIF orientation, stretch vs crop geometry, exact round trips at the
target size, and one-line errors naming the item (never opening special files).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.helpers import subprocess_env
from tests.unit.data.test_image_folders import _in_thread_with_timeout, _png16
from tfmeta.run import config
from tfmeta.data import image_decode
from tfmeta.data.class_listing import DataError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _random(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(tmp_path, name, image, **kwargs):
    path = str(tmp_path / name)
    image.save(path, **kwargs)
    return path


def _decode(item, size, channels, **kwargs):
    return image_decode.decode(item, name="item", size=size, channels=channels, **kwargs)


def _columns(widths_and_colours, height):
    """An RGB array of vertical stripes, e.g. ``[(16, RED), (32, GREEN)]``."""
    return np.concatenate([np.full((height, width, 3), colour, np.uint8)
                           for width, colour in widths_and_colours], axis=1)


# ----------------------------------------------------------------------------- items
def test_an_image_at_the_target_size_round_trips_exactly(tmp_path):
    gray, rgb = _random((28, 28)), _random((28, 28, 3), seed=1)
    gray_png = _save(tmp_path, "gray.png", Image.fromarray(gray))
    rgb_png = _save(tmp_path, "rgb.png", Image.fromarray(rgb))
    got = _decode(gray_png, 28, 1)
    assert got.dtype == np.uint8 and got.shape == (28, 28, 1) and got.flags.writeable
    np.testing.assert_array_equal(got[..., 0], gray)
    np.testing.assert_array_equal(_decode(gray_png, 28, 3), np.dstack([gray] * 3))
    np.testing.assert_array_equal(_decode(rgb_png, 28, 3), rgb)
    # channels=1 is PIL's "L" conversion of the colour pixels.
    np.testing.assert_array_equal(_decode(rgb_png, 28, 1)[..., 0],
                                  np.asarray(Image.fromarray(rgb).convert("L")))


def test_paths_bytes_arrays_and_callables_decode_alike(tmp_path):
    rgb = _random((20, 20, 3), seed=2)
    path = _save(tmp_path, "a.png", Image.fromarray(rgb))
    encoded = pathlib.Path(path).read_bytes()
    items = {"str": path, "pathlike": pathlib.Path(path), "bytes": encoded,
             "bytearray": bytearray(encoded), "array": rgb,
             "lazy bytes": lambda: encoded, "lazy path": lambda: path, "lazy array": lambda: rgb}
    for kind, item in items.items():
        np.testing.assert_array_equal(_decode(item, 20, 3), rgb, err_msg=kind)
    gray = _random((20, 20), seed=3)
    for array in (gray, gray[..., None]):  # [H, W] and [H, W, 1]
        np.testing.assert_array_equal(_decode(array, 20, 1)[..., 0], gray)
        np.testing.assert_array_equal(_decode(array, 20, 3), np.dstack([gray] * 3))


def test_a_non_contiguous_array_is_read_as_its_values():
    rgb = _random((40, 40, 3), seed=4)
    view = rgb[::2, ::2, ::-1]  # strided and channel-reversed (BGR -> RGB)
    np.testing.assert_array_equal(_decode(view, 20, 3), np.ascontiguousarray(view))


def test_a_resized_image_is_pil_lanczos_of_it(tmp_path):
    rgb = _random((56, 40, 3), seed=5)
    path = _save(tmp_path, "a.png", Image.fromarray(rgb))
    expected = np.asarray(Image.fromarray(rgb).resize((28, 28), resample=Image.LANCZOS))
    np.testing.assert_array_equal(_decode(path, 28, 3), expected)
    assert not np.array_equal(
        _decode(path, 28, 3),
        np.asarray(Image.fromarray(rgb).resize((28, 28), resample=Image.BILINEAR)))


# ----------------------------------------------------------------------------- modes
def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)  # transparent black
    rgba[0, 0] = (255, 0, 0, 255)         # opaque red
    rgba[0, 1] = (0, 0, 0, 128)           # half-transparent black: mid grey
    path = _save(tmp_path, "rgba.png", Image.fromarray(rgba))
    for item in (path, rgba):
        got = _decode(item, 4, 3)
        assert tuple(got[0, 0]) == RED and tuple(got[3, 3]) == WHITE
        assert np.all(np.abs(got[0, 1].astype(int) - 127) <= 1), got[0, 1]
    la = np.dstack([np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)])
    la[1, 1, 1] = 0  # one transparent black pixel
    path = _save(tmp_path, "la.png", Image.fromarray(la, "LA"))
    got = _decode(path, 4, 1)[..., 0]
    assert got[1, 1] == 255 and got[0, 0] == 0 and np.sum(got == 255) == 1


def test_a_palette_with_a_transparent_index_is_white_there(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 1]], np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette([*RED, *GREEN, *BLUE])
    path = _save(tmp_path, "p.png", palette, transparency=1)
    with Image.open(path) as check:
        assert check.mode == "P" and check.info.get("transparency") == 1
    np.testing.assert_array_equal(
        _decode(path, 3, 3), [[RED, WHITE, BLUE], [BLUE, WHITE, RED], [WHITE] * 3])
    # Without the transparent index, the same pixels are green.
    path = _save(tmp_path, "opaque.png", palette)
    np.testing.assert_array_equal(_decode(path, 3, 3)[2], [GREEN] * 3)


def test_pa_images_are_composited_onto_white():
    image = Image.new("PA", (2, 1))
    image.putpalette([*RED, *BLUE])
    image.putpixel((0, 0), (1, 255))  # opaque blue
    image.putpixel((1, 0), (0, 0))    # transparent red
    np.testing.assert_array_equal(np.asarray(image_decode.to_channels(image, 3, "pa")),
                                  [[BLUE, WHITE]])


def test_palette_and_one_bit_images(tmp_path):
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    palette.putpalette([*RED, *BLUE])
    path = _save(tmp_path, "p.png", palette)
    np.testing.assert_array_equal(_decode(path, 2, 3), [[RED, BLUE], [BLUE, RED]])
    # Red and blue in grayscale: PIL's ITU-R 601-2 luma (76 and 29).
    np.testing.assert_array_equal(_decode(path, 2, 1)[..., 0], [[76, 29], [29, 76]])
    bits = np.array([[0, 255, 0], [255, 0, 255], [0, 0, 255]], np.uint8)
    path = _save(tmp_path, "bits.png", Image.fromarray(bits).convert("1"))
    with Image.open(path) as check:
        assert check.mode == "1"
    np.testing.assert_array_equal(_decode(path, 3, 1)[..., 0], bits)
    np.testing.assert_array_equal(_decode(path, 3, 3), np.dstack([bits] * 3))


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[0, 300, 8000], [40000, 65000, 65535]], np.uint16)
    square = np.tile(values, (3, 2))[:6, :6]
    path = _save(tmp_path, "gray16.png", Image.fromarray(square))
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")
    expected = np.round(square / 257.0).astype(np.uint8)  # 65535 -> 255
    got = _decode(path, 6, 1)[..., 0]
    np.testing.assert_array_equal(got, expected)
    assert got[1, 0] == 156 and got[0, 1] == 1  # 40000 and 300, not 255 and 255
    np.testing.assert_array_equal(_decode(path, 6, 3), np.dstack([expected] * 3))
    # Resized in floating point: a flat 40000 stays 156 at another size.
    path = _save(tmp_path, "flat16.png", Image.fromarray(np.full((40, 30), 40000, np.uint16)))
    assert np.all(_decode(path, 28, 1) == 156)


def test_16_bit_grey_level_marked_transparent_is_white(tmp_path):
    gray = np.array([[100, 40000], [40000, 100]], np.uint16)
    path = _save(tmp_path, "t16.png", Image.fromarray(gray), transparency=100)
    np.testing.assert_array_equal(_decode(path, 2, 1)[..., 0], [[255, 156], [156, 255]])


def test_32_bit_integer_and_float_tiffs_are_scaled(tmp_path):
    ints = _save(tmp_path, "i.tif", Image.fromarray(np.full((4, 4), 40000, np.int32), "I"))
    floats = _save(tmp_path, "f.tif", Image.fromarray(np.full((4, 4), 0.25, np.float32), "F"))
    assert np.all(_decode(ints, 4, 1) == 156)
    assert np.all(_decode(floats, 4, 1) == 64)  # round(0.25 * 255)


def test_16_bit_rgb_keeps_the_high_byte(tmp_path):
    channel = np.array([[8000, 40000], [65535, 0]], np.uint16)
    path = str(tmp_path / "rgb16.png")
    with open(path, "wb") as f:
        f.write(_png16(np.dstack([channel, channel // 2, np.full_like(channel, 65535)]), 2))
    got = _decode(path, 2, 3).astype(int)
    scaled = np.dstack([channel, channel // 2, np.full_like(channel, 65535)]) / 257.0
    assert np.abs(got - scaled).max() <= 1, got
    assert got[0, 1, 0] == 156 and got[1, 0, 2] == 255


def test_cmyk_jpeg_is_read_as_its_colours(tmp_path):
    rgb = _columns([(16, RED), (16, BLUE)], 32)
    path = _save(tmp_path, "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    got = _decode(path, 32, 3).astype(int)
    assert np.abs(got[:, 2:14] - RED).max() <= 12 and np.abs(got[:, 18:30] - BLUE).max() <= 12


@pytest.mark.parametrize("orientation, stored_turn", [
    (6, Image.Transpose.ROTATE_90),    # stored a quarter turn anticlockwise: view turned clockwise
    (8, Image.Transpose.ROTATE_270)])  # stored a quarter turn clockwise
def test_exif_orientation_is_applied(tmp_path, orientation, stored_turn):
    upright = np.full((48, 48, 3), 255, np.uint8)
    upright[:16, :16] = RED    # top left
    upright[:16, 32:] = BLUE   # top right
    upright[32:, :16] = GREEN  # bottom left
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, "turned.jpg", Image.fromarray(upright).transpose(stored_turn),
                 quality=95, exif=exif)
    with Image.open(path) as stored:  # the file itself is not upright
        assert np.abs(np.asarray(stored, int) - upright).mean() > 20
    got = _decode(path, 48, 3).astype(int)
    assert np.abs(got - upright).mean() < 3, np.abs(got - upright).mean()
    inner = slice(2, 14), slice(34, 46)  # each 16x16 block without its JPEG-blurred edges
    for rows, cols, colour in ((inner[0], inner[0], RED), (inner[0], inner[1], BLUE),
                               (inner[1], inner[0], GREEN)):
        assert np.abs(got[rows, cols] - colour).max() < 20, colour


# ----------------------------------------------------------------------------- geometry
def test_stretch_squeezes_the_whole_image_and_crop_keeps_the_middle(tmp_path):
    # 64 wide, 32 high: a red quarter, a green half, a blue quarter.
    wide = _columns([(16, RED), (32, GREEN), (16, BLUE)], 32)
    path = _save(tmp_path, "wide.png", Image.fromarray(wide))
    stretched = _decode(path, 16, 3).astype(int)
    cropped = _decode(path, 16, 3, resize="crop").astype(int)
    # Stretched: the three stripes at a quarter of their width (4, 8, 4 columns).
    assert np.abs(stretched[:, 1] - RED).max() < 10
    assert np.abs(stretched[:, 6:10] - GREEN).max() < 10
    assert np.abs(stretched[:, 14] - BLUE).max() < 10
    # Cropped: the middle 32x32, all green (the edge columns feel LANCZOS' tails only).
    assert np.abs(cropped[:, 1:15] - GREEN).max() < 10
    assert np.abs(cropped - GREEN).mean() < 3
    # A tall image keeps its vertical middle.
    tall = np.transpose(wide, (1, 0, 2))
    cropped = _decode(tall, 16, 3, resize="crop").astype(int)
    assert np.abs(cropped[1:15] - GREEN).max() < 10


def test_crop_of_a_square_image_is_the_stretch(tmp_path):
    rgb = _random((50, 50, 3), seed=6)
    np.testing.assert_array_equal(_decode(rgb, 20, 3, resize="crop"), _decode(rgb, 20, 3))


def test_crop_scales_the_shorter_side_to_the_size():
    # 80 wide, 40 high, with a 2-pixel black frame: the crop is the middle 40x40 scaled by 0.5,
    # so the frame's top and bottom rows survive and its sides do not.
    wide = np.full((40, 80), 255, np.uint8)
    wide[:2], wide[-2:], wide[:, :2], wide[:, -2:] = 0, 0, 0, 0
    got = _decode(wide, 20, 1, resize="crop")[..., 0].astype(int)
    assert got[0].mean() < 128 and got[-1].mean() < 128
    assert got[3:17].min() > 240


# ----------------------------------------------------------------------------- failures
def _error(item, name="bad", **kwargs) -> str:
    with pytest.raises(DataError) as info:
        image_decode.decode(item, name=name, size=8, channels=1, **kwargs)
    message = str(info.value)
    assert name in message and "\n" not in message, message
    return message


def test_unreadable_files_are_one_line_errors_naming_them(tmp_path):
    png = io.BytesIO()
    Image.fromarray(_random((64, 64), seed=7)).save(png, "PNG")
    truncated = str(tmp_path / "truncated.png")
    with open(truncated, "wb") as f:
        f.write(png.getvalue()[: len(png.getvalue()) // 2])
    assert "corrupt or truncated" in _error(truncated, truncated)
    text = str(tmp_path / "notes.jpg")
    pathlib.Path(text).write_text("not a JPEG at all\n")
    assert "not an image" in _error(text, text)
    empty = str(tmp_path / "empty.png")
    open(empty, "wb").close()
    assert "empty (0 bytes)" in _error(empty, empty)
    assert "empty (0 bytes)" in _error(b"", "cache.pkl[3]")
    missing = str(tmp_path / "missing.png")
    assert "No such file or directory" in _error(missing, missing)
    assert "not a regular file" in _error(str(tmp_path), str(tmp_path))
    assert "corrupt or truncated" in _error(png.getvalue()[:-30], "cache.pkl[4]")


def test_unsupported_arrays_and_items_are_named():
    assert "dtype float32 holding NaN pixels" in _error(np.full((4, 4), np.nan, np.float32))
    assert "dtype int64; expected uint8" in _error(np.zeros((4, 4), np.int64))
    assert "shape [4, 4, 2]" in _error(np.zeros((4, 4, 2), np.uint8))
    assert "shape [4]" in _error(np.zeros(4, np.uint8))
    assert "shape [0, 4]" in _error(np.zeros((0, 4), np.uint8))
    assert "unsupported item type int" in _error(12)
    assert "unsupported item type NoneType" in _error(lambda: None)


def test_a_lazy_item_that_fails_to_read_is_named():
    def unreadable():
        raise FileNotFoundError(2, "No such file or directory")

    assert "reading it failed: No such file or directory" in _error(unreadable, "a.zip[x.png]")


def test_bad_deep_pixels_are_named(tmp_path):
    nan = _save(tmp_path, "nan.tif", Image.fromarray(np.full((4, 4), np.nan, np.float32), "F"))
    assert "NaN or infinite pixels" in _error(nan, nan)
    high = _save(tmp_path, "high.tif", Image.fromarray(np.full((4, 4), 2.0, np.float32), "F"))
    assert "must be in [0, 1]" in _error(high, high)


def test_the_decompression_bomb_limit_stays_on(tmp_path, monkeypatch):
    path = _save(tmp_path, "big.png", Image.new("L", (30, 30)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 900 pixels: over twice the limit
    assert "decompression bomb" in _error(path, path)


def test_an_image_below_min_side_is_too_small(tmp_path):
    path = _save(tmp_path, "small.png", Image.new("L", (30, 20)))
    with pytest.raises(image_decode.TooSmallError) as info:
        image_decode.decode(path, name=path, size=8, channels=1, min_side=25)
    assert isinstance(info.value, DataError)
    assert path in str(info.value) and "30x20" in str(info.value)
    assert "shorter side 20 is below the minimum of 25" in str(info.value)
    assert _decode(path, 8, 1, min_side=20).shape == (8, 8, 1)  # exactly the minimum is enough


def test_min_side_is_measured_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30 wide, 20 high; upright 20 wide, 30 high
    path = _save(tmp_path, "turned.jpg", Image.new("L", (30, 20)), exif=exif)
    with pytest.raises(image_decode.TooSmallError, match="20x30 pixels"):
        _decode(path, 8, 1, min_side=25)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_an_error_never_opened(tmp_path):
    fifo = str(tmp_path / "pipe.png")
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a named pipe") as info:
        _in_thread_with_timeout(
            lambda: image_decode.decode(fifo, name=fifo, size=8, channels=1), [fifo])
    assert fifo in str(info.value)


def test_bad_arguments_are_value_errors_raised_before_reading():
    read = []

    def item():
        read.append(True)
        return np.zeros((8, 8), np.uint8)

    for kwargs in ({"size": 0, "channels": 1}, {"size": 8, "channels": 2},
                   {"size": 8, "channels": 1, "resize": "fit"},
                   {"size": 8, "channels": 1, "min_side": -1}, {"size": 8.0, "channels": 1}):
        with pytest.raises(ValueError) as info:
            image_decode.decode(item, name="x", **kwargs)
        assert not isinstance(info.value, DataError), kwargs
    assert not read


def test_the_option_names_are_the_configs():
    assert image_decode.RESIZE == config.RESIZE and image_decode.CHANNELS == config.CHANNELS


# ----------------------------------------------------------------------------- memory
_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from tfmeta.data import image_decode

    def status_mb(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = status_mb("VmRSS")
    out = [image_decode.decode(p, name=p, size=84, channels=3) for p in sys.argv[1:]]
    print(json.dumps({"increase_mb": status_mb("VmHWM") - before,
                      "min": int(min(o.min() for o in out))}))
""")


def test_decoding_large_images_keeps_memory_bounded(tmp_path):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to measure peak memory")
    paths = []
    for i in range(8):
        image = Image.new("RGB", (2500, 2000), WHITE)  # 15 MB decoded, a small PNG file
        image.paste(RED, (100 * i, 0, 100 * i + 400, 2000))
        paths.append(_save(tmp_path, f"{i}.png", image))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, *paths], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["min"] == 0  # the red stripes survive (no green, no blue there)
    # The 8 decoded images together hold 120 MB; one at a time (with its conversion) ~30 MB.
    assert result["increase_mb"] < 70, result
