"""tfmeta.data.image_folders: support folders and query paths listed, images read as the model wants.

Also: hidden entries and special files (never opened), every PIL mode and depth scaled to [0, 1],
the EXIF orientation, images read one at a time (bounded memory), and three channels (RGB) read as
the training data is decoded.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from tests.helpers import subprocess_env, write_image_folders, write_images
from tfmeta.data import class_listing, image_decode, image_folders


def test_colour_jpeg_and_transparent_png_become_grayscale(tmp_path):
    rgb = Image.new("RGB", (40, 30), (255, 0, 0))
    rgb.save(tmp_path / "a.jpg")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent: white after compositing
    rgba.save(tmp_path / "b.png")
    a = image_folders.load_image(str(tmp_path / "a.jpg"), 28)
    b = image_folders.load_image(str(tmp_path / "b.png"), 28)
    assert a.shape == b.shape == (28, 28) and a.dtype == b.dtype == np.float32
    assert b.min() == 1.0
    # Every image, whatever its size, arrives at the model's size, as pixels / 255.
    pixels = image_folders.read_images([str(tmp_path / "a.jpg"), str(tmp_path / "b.png")], 28)
    assert pixels.shape == (2, 28, 28, 1) and pixels.dtype == np.float32
    assert np.all(pixels[1] == 1.0)


def test_images_are_read_with_the_models_channels(tmp_path):
    """channels=3: RGB kept, grey as three equal channels, transparency onto white, deep grey
    scaled; channels=1 (the default) as before."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(30, 40, 3)).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "grey.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(tmp_path / "deep.png")  # I;16
    paths = [str(tmp_path / n) for n in ("rgb.png", "grey.png", "clear.png", "deep.png")]
    colour = image_folders.read_images(paths, 28, channels=3)
    assert colour.shape == (4, 28, 28, 3) and colour.dtype == np.float32
    want = np.asarray(Image.fromarray(rgb, "RGB").resize((28, 28), Image.LANCZOS)) / 255
    np.testing.assert_allclose(colour[0], want, atol=1e-6)
    for i in (1, 3):  # grey (8 or 16 bits): three equal channels, equal to the 1-channel read
        np.testing.assert_array_equal(colour[i, ..., 0], colour[i, ..., 1])
        np.testing.assert_array_equal(colour[i, ..., 0], colour[i, ..., 2])
    gray = image_folders.read_images(paths, 28)
    assert gray.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(colour[1:, ..., :1], gray[1:], atol=1e-6)
    assert np.all(colour[2] == 1.0)
    with pytest.raises(ValueError, match=r"channels must be one of \[1, 3\], not 2"):
        image_folders.load_image(paths[0], 28, channels=2)


def _expected_pixels(path, size):
    """The reference: PIL's grayscale conversion (alpha onto white) and LANCZOS resize."""
    with Image.open(path) as image:
        if image.mode == "RGBA":
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
        gray = image.convert("L")
    if gray.size != (size, size):
        gray = gray.resize((size, size), resample=Image.LANCZOS)
    return np.asarray(gray, np.float32)[..., None] / 255.0


def test_images_are_resized_one_by_one_like_pil_lanczos(tmp_path):
    rng = np.random.default_rng(0)

    def strokes(h, w):
        return np.where(rng.uniform(size=(h, w)) < 0.2, 0, 255).astype(np.uint8)

    paths = []
    for name, image in [
            ("same.png", Image.fromarray(strokes(28, 28), "L")),         # not resampled
            ("omniglot.png", Image.fromarray(strokes(105, 105), "L").convert("1")),
            ("wide.jpg", Image.fromarray(np.stack([strokes(30, 61)] * 3, axis=-1), "RGB")),
            ("small.png", Image.fromarray(strokes(9, 9), "L")),          # upsampled
            ("alpha.png", Image.fromarray(
                np.dstack([strokes(50, 40)] * 3 + [strokes(50, 40)]), "RGBA"))]:
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    pixels = image_folders.read_images(paths, 28)
    assert pixels.shape == (len(paths), 28, 28, 1) and pixels.dtype == np.float32
    for path, got in zip(paths, pixels):
        np.testing.assert_array_equal(got, _expected_pixels(path, 28), err_msg=path)
    # An image already at the model's size is passed through exactly.
    np.testing.assert_array_equal(
        pixels[0, ..., 0], np.asarray(Image.open(paths[0]), np.float32) / 255.0)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from tfmeta.data import image_folders

    def status_mb(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))

    paths = sys.argv[1:]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = status_mb("VmRSS")
    pixels = image_folders.read_images(paths, 28)
    print(json.dumps({"increase_mb": status_mb("VmHWM") - before, "shape": pixels.shape,
                      "min": float(pixels.min()), "max": float(pixels.max())}))
""")


def test_reading_large_images_keeps_memory_bounded(tmp_path):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to measure peak memory")
    paths = []
    for i in range(12):
        image = Image.new("L", (3000, 3000), 255)  # mostly white: small PNG files
        ImageDraw.Draw(image).line([(300 + 150 * i, 200), (2800, 2800 - 150 * i)], fill=0, width=80)
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, *paths], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shape"] == [12, 28, 28, 1]
    assert result["min"] < 1.0 and result["max"] == 1.0  # the strokes survive the downsampling
    # One full-size image at a time needs ~10 MB; keeping all 12 at full size, as float32 arrays
    # stacked into one batch, peaked at ~940 MB (and ~430 MB even without the stacking copy).
    assert result["increase_mb"] < 200, result


def _nested_queries(root):
    """A query folder with subfolders, hidden entries and non-image files; returns the images."""
    query = os.path.join(root, "query")
    write_images(os.path.join(query, "b_sub", "deeper"), 1, seed=1)
    write_images(os.path.join(query, "a_sub"), 2, seed=2)
    write_images(query, 1, seed=3)
    write_images(os.path.join(query, ".hidden_dir"), 1, seed=4)
    Image.new("L", (28, 28)).save(os.path.join(query, "a_sub", ".hidden.png"))
    with open(os.path.join(query, "a_sub", "notes.txt"), "w") as f:
        f.write("not an image")
    os.symlink(os.path.join(query, "a_sub"), os.path.join(query, "c_link"))
    os.symlink(query, os.path.join(query, "b_sub", "loop"))  # a cycle is read once
    expected = ["0.png", "a_sub/0.png", "a_sub/1.png", "b_sub/deeper/0.png", "c_link/0.png",
                "c_link/1.png"]
    return query, [os.path.join(query, f) for f in expected]


def test_query_subfolders_are_read_in_sorted_walk_order(tmp_path, monkeypatch):
    query, expected = _nested_queries(str(tmp_path))
    single = str(tmp_path / "single.png")
    Image.new("L", (28, 28), 255).save(single)
    assert image_folders.read_queries([query, single]) == expected + [single]
    # Relative paths stay relative, as given.
    monkeypatch.chdir(tmp_path)
    assert image_folders.read_queries(["query"]) == [os.path.relpath(f, tmp_path) for f in expected]


def test_hidden_support_entries_are_ignored(tmp_path):
    support, _ = write_image_folders(str(tmp_path), classes=2)
    write_images(os.path.join(support, ".ipynb_checkpoints"), 1, seed=5)
    with open(os.path.join(support, "class_0", "._0.png"), "wb") as f:  # macOS AppleDouble file
        f.write(b"\x00\x05\x16\x07 resource fork, not an image")
    classes, files, labels = image_folders.read_support(support)
    assert classes == ["class_0", "class_1"]
    assert [os.path.relpath(f, support) for f in files] == ["class_0/0.png", "class_1/0.png"]
    assert labels == [0, 1]


@pytest.mark.parametrize("extension,fmt", [(".webp", "WEBP"), (".bmp", "BMP"), (".gif", "GIF"),
                                           (".tif", "TIFF"), (".TIFF", "TIFF"), (".ppm", "PPM")])
def test_every_format_training_reads_is_read_for_serving(tmp_path, extension, fmt):
    support, query = tmp_path / "support" / "a", tmp_path / "query"
    support.mkdir(parents=True)
    query.mkdir()
    Image.new("RGB", (28, 28), (200, 30, 30)).save(support / f"0{extension}", format=fmt)
    Image.new("RGB", (28, 28), (30, 30, 200)).save(query / f"q{extension}", format=fmt)
    assert image_folders.read_support(str(tmp_path / "support"))[1] == [str(support / f"0"
                                                                             f"{extension}")]
    assert image_folders.read_queries([str(query)]) == [str(query / f"q{extension}")]


def test_one_extension_list_for_training_and_serving():
    from tfmeta.data import benchmark_sources, image_sources

    assert image_folders.IMAGE_EXTENSIONS is class_listing.IMAGE_EXTENSIONS
    assert image_sources.IMAGE_EXTENSIONS is class_listing.IMAGE_EXTENSIONS
    assert benchmark_sources.IMAGE_EXTENSIONS is class_listing.IMAGE_EXTENSIONS


def test_skipped_entries_are_named_with_the_reason(tmp_path, caplog):
    support, _ = write_image_folders(str(tmp_path), classes=2)
    (tmp_path / "support" / ".DS_Store").write_text("finder")
    (tmp_path / "support" / "labels.csv").write_text("a,b")
    (tmp_path / "support" / "class_0" / "notes.txt").write_text("mine")
    (tmp_path / "support" / "class_0" / "more").mkdir()
    query = tmp_path / "photos"
    (query / ".thumbnails").mkdir(parents=True)
    Image.new("L", (28, 28)).save(query / ".thumbnails" / "x.png")
    Image.new("L", (28, 28)).save(query / "q.png")
    (query / "q.psd").write_text("not read")
    with caplog.at_level(logging.WARNING):
        image_folders.read_support(support)
        assert image_folders.read_queries([str(query)]) == [str(query / "q.png")]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"support directory {support!r}: skipped 4 entries"), lines[0]
    for name, reason in ((".DS_Store", "hidden"), ("labels.csv", "a file outside any class "
                                                                   "folder"),
                         ("class_0/notes.txt", "not an image file (by its extension)"),
                         ("class_0/more", "a subfolder of a class folder")):
        assert f"{os.path.join(support, name)!r} ({reason})" in lines[0], lines[0]
    assert f"{str(query / '.thumbnails')!r} (hidden folder)" in lines[1], lines[1]
    assert f"{str(query / 'q.psd')!r} (not an image file (by its extension))" in lines[1]
    assert ".webp" in lines[1]


def test_query_folder_without_any_image_is_named(tmp_path):
    query = tmp_path / "query"
    (query / "sub" / ".hidden").mkdir(parents=True)
    Image.new("L", (28, 28)).save(query / "sub" / ".hidden" / "0.png")
    Image.new("L", (28, 28)).save(query / "sub" / ".1.png")
    (query / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(image_folders.ImageError, match="holds no images") as info:
        image_folders.read_queries([str(query)])
    assert str(query) in str(info.value)


# ----------------------------------------------------------------- image modes, special files
def _png16(pixels, color_type):
    """A 16-bit PNG (grey: color_type 0, RGB: 2), written by hand: PIL cannot write 16-bit RGB."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _ink(size=56, seed=0):
    """A stroke pattern: True where there is ink."""
    rng = np.random.default_rng(seed)
    ink = np.zeros((size, size), bool)
    for _ in range(4):
        r, c = rng.integers(4, size - 12, 2)
        ink[r:r + 10, c:c + 3] = ink[r:r + 3, c:c + 10] = True
    return ink


# 16-bit ink at 8000 of 65535 (about 31 of 255) on white: the 8-bit equivalent is 31 on 255.
_INK16, _INK8 = 8000, round(8000 / 65535 * 255)


def _mode_images(folder, ink):
    """The same strokes in many PIL modes and depths; returns {name: path}."""
    white16 = np.where(ink, _INK16, 65535).astype(np.uint16)
    gray8 = np.where(ink, _INK8, 255).astype(np.uint8)
    paths = {}

    def save(name, image, **kwargs):
        paths[name] = os.path.join(folder, name)
        image.save(paths[name], **kwargs)

    save("gray16.png", Image.fromarray(white16))  # PIL mode I;16
    assert Image.open(paths["gray16.png"]).mode == "I;16"
    paths["rgb16.png"] = os.path.join(folder, "rgb16.png")
    with open(paths["rgb16.png"], "wb") as f:
        f.write(_png16(np.dstack([white16] * 3), color_type=2))
    save("int32.tif", Image.fromarray(white16.astype(np.int32), "I"))
    save("float.tif", Image.fromarray(white16.astype(np.float32) / 65535, "F"))
    save("palette.png", Image.fromarray(gray8).convert("P"))
    save("rgba.png", Image.fromarray(np.dstack([gray8] * 3 + [np.full_like(gray8, 255)]), "RGBA"))
    save("la.png", Image.fromarray(gray8).convert("LA"))
    save("cmyk.jpg", Image.fromarray(gray8).convert("CMYK"), quality=95)
    save("bilevel.png", Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1"))
    save("gray8.png", Image.fromarray(gray8))
    return paths


def test_every_mode_and_depth_is_scaled_to_0_1_not_clipped(tmp_path):
    paths = _mode_images(str(tmp_path), _ink())
    names = list(paths)
    pixels = dict(zip(names, image_folders.read_images([paths[n] for n in names], 28)[..., 0]))
    reference = pixels["gray8.png"]
    assert reference.min() < 0.3  # the strokes survive the resize
    for name, got in pixels.items():
        assert got.dtype == np.float32 and 0.0 <= got.min() and got.max() <= 1.0, name
        # The 16-bit ink read as 8000/65535, not clipped to white; JPEG and 1-bit are lossy.
        tolerance = {"cmyk.jpg": 0.1, "bilevel.png": 0.2}.get(name, 3 / 255)
        assert np.abs(got - reference).mean() < tolerance / 3, name
        assert np.abs(got - reference).max() < (0.5 if name == "bilevel.png" else 0.1), name
    assert abs(pixels["gray16.png"].min() - reference.min()) < 2 / 255


def test_out_of_range_deep_pixels_are_an_error_naming_the_file(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.full((8, 8), 200.0, np.float32), "F").save(path)
    with pytest.raises(image_folders.ImageError,
                       match=r"pixels must be in \[0, 1\]; found") as info:
        image_folders.read_images([path], 28)
    assert path in str(info.value)


def test_exif_orientation_is_applied(tmp_path):
    upright = np.full((60, 40), 255, np.uint8)
    upright[5:25, 5:20] = 0  # a dark block at the top left: where it lands shows the rotation
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    # Stored rotated a quarter turn anticlockwise; orientation 6 says "turn clockwise to view".
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        tmp_path / "sideways.jpg", quality=95, exif=exif)
    with Image.open(tmp_path / "sideways.jpg") as check:
        assert check.size == (60, 40) and ImageOps.exif_transpose(check).size == (40, 60)
    got = image_folders.load_image(str(tmp_path / "sideways.jpg"), 20)
    expected = image_folders.load_image(str(tmp_path / "upright.jpg"), 20)
    assert np.abs(got - expected).mean() < 0.02
    assert got[3:7, 4:8].mean() < 0.2 and got[-6:, -6:].mean() > 0.9


def test_uniform_image_is_read_with_a_warning_naming_it(tmp_path, caplog):
    blank = str(tmp_path / "blank.png")
    Image.new("L", (40, 40), 255).save(blank)
    same_brightness = str(tmp_path / "grey.png")  # colours that all become one grey
    Image.new("RGB", (28, 28), (128, 128, 128)).save(same_brightness)
    strokes = str(tmp_path / "strokes.png")
    Image.fromarray(np.where(_ink(28), 0, 255).astype(np.uint8)).save(strokes)
    with caplog.at_level(logging.WARNING):
        pixels = image_folders.read_images([blank, same_brightness, strokes], 28)
    assert np.all(pixels[0] == 1.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert blank in warnings[0] and "uniform" in warnings[0] and "every pixel is 1 " in warnings[0]
    assert same_brightness in warnings[1]


def _in_thread_with_timeout(fn, fifos, seconds=120):
    """Runs ``fn()``; if it is still running after ``seconds``, unblocks readers of ``fifos``."""
    outcome = {}

    def target():
        try:
            outcome["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            outcome["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    hung = worker.is_alive()
    if hung:  # a reader blocked in open(): give it a writer, then EOF, so the thread ends
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(5)
    assert not hung, f"blocked on a named pipe for {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipes_are_skipped_with_a_warning_never_opened(tmp_path, caplog):
    support, query = write_image_folders(str(tmp_path), classes=2)
    fifos = [os.path.join(query, "2_pipe.png"), os.path.join(support, "class_0", "pipe.png")]
    for fifo in fifos:
        os.mkfifo(fifo)

    def read_all():
        _, support_files, _ = image_folders.read_support(support)
        query_files = image_folders.read_queries([query])
        image_folders.read_images(support_files + query_files, 28)
        return query_files

    with caplog.at_level(logging.WARNING):
        query_files = _in_thread_with_timeout(read_all, fifos)
    assert [os.path.basename(f) for f in query_files] == ["0.png", "1.png", "2.png", "3.png"]
    for fifo in fifos:
        assert f"skipping {fifo!r}: it is a named pipe (FIFO)" in caplog.text
    # Named directly, it is an error, raised without opening it.
    with pytest.raises(image_folders.ImageError, match="is a named pipe") as info:
        _in_thread_with_timeout(lambda: image_folders.read_queries([fifos[0]]), fifos)
    assert fifos[0] in str(info.value)
    with pytest.raises(image_folders.ImageError, match="is a named pipe"):
        _in_thread_with_timeout(lambda: image_folders.read_images([fifos[0]], 28), fifos)


# ----------------------------------------------------------------------------- channels=3
def test_three_channels_read_rgb_in_0_1(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    paths = [str(tmp_path / name) for name in ("rgb.png", "gray.png", "clear.png")]
    Image.fromarray(rgb).save(paths[0])
    Image.fromarray(gray).save(paths[1])
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(paths[2])  # transparent red: white
    pixels = image_folders.read_images(paths, 28, channels=3)
    assert pixels.shape == (3, 28, 28, 3) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels[0], rgb / np.float32(255.0))
    np.testing.assert_array_equal(pixels[1], np.dstack([gray] * 3) / np.float32(255.0))
    assert np.all(pixels[2] == 1.0)
    single = image_folders.load_image(paths[0], 28, channels=3)
    assert single.shape == (28, 28, 3)
    np.testing.assert_array_equal(single, pixels[0])
    # One channel is still the default, and the same as asking for it.
    np.testing.assert_array_equal(image_folders.read_images(paths, 28),
                                  image_folders.read_images(paths, 28, channels=1))


def test_three_channels_keep_deep_grey_in_floating_point(tmp_path):
    path = str(tmp_path / "gray16.png")
    Image.fromarray(np.full((28, 28), _INK16, np.uint16)).save(path)
    got = image_folders.load_image(path, 28, channels=3)
    assert got.shape == (28, 28, 3)
    assert np.all(got == np.float32(_INK16) / np.float32(65535))  # not 31 / 255
    assert not np.any(got == np.float32(_INK8) / np.float32(255))


def test_three_channels_apply_the_exif_orientation(tmp_path):
    upright = np.full((48, 48, 3), 255, np.uint8)
    upright[:16, :16] = (255, 0, 0)  # red at the top left
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "turned.jpg")
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(path, quality=95,
                                                                       exif=exif)
    got = image_folders.load_image(path, 48, channels=3)
    assert np.abs(got - upright / 255.0).mean() < 0.02
    assert np.all(np.abs(got[2:14, 2:14] - (1.0, 0.0, 0.0)) < 0.1)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_pixels_are_those_the_training_data_is_decoded_to(tmp_path, channels):
    paths = _mode_images(str(tmp_path), _ink())
    for name, path in paths.items():
        got = image_folders.load_image(path, 28, channels=channels)
        prepared = image_decode.decode(path, name=path, size=28, channels=channels)
        np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8).reshape(prepared.shape),
                                      prepared, err_msg=name)


def test_a_colour_image_is_uniform_only_if_its_colours_are_equal(tmp_path, caplog):
    # Red and this green have the same grayscale (76): uniform in one channel, not in three.
    two_colours = np.zeros((28, 28, 3), np.uint8)
    two_colours[:, :14] = (255, 0, 0)
    two_colours[:, 14:] = (0, 130, 0)
    mixed, flat = str(tmp_path / "mixed.png"), str(tmp_path / "flat.png")
    Image.fromarray(two_colours).save(mixed)
    Image.new("RGB", (28, 28), (255, 0, 0)).save(flat)
    with caplog.at_level(logging.WARNING):
        image_folders.read_images([mixed, flat], 28, channels=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and flat in warnings[0] and "every pixel is (1, 0, 0)" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        image_folders.read_images([mixed], 28, channels=1)
    assert mixed in caplog.text and "uniform" in caplog.text


def test_channels_other_than_1_and_3_are_refused(tmp_path):
    path = str(tmp_path / "a.png")
    Image.new("L", (28, 28)).save(path)
    with pytest.raises(ValueError, match="channels must be one of"):
        image_folders.read_images([path], 28, channels=4)
