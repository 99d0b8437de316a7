"""tfmeta.adapt: folders of images in, class names out.

Also: one-line errors with exit status 2, recursive query folders, images read one at a time
(bounded memory), and Ctrl-C during a long adaptation.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from tests.helpers import archives_dir, subprocess_env
from tfmeta import adapt


def _write_images(folder, count, seed, size=28, fmt="png"):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.where(rng.uniform(size=(size, size)) < 0.1, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(os.path.join(folder, f"{i}.{fmt}"))


def _support(root, classes=3, shots=1):
    for c in range(classes):
        _write_images(os.path.join(root, "support", f"class_{c}"), shots, seed=c)
    _write_images(os.path.join(root, "query"), 4, seed=99)
    return os.path.join(root, "support"), os.path.join(root, "query")


def test_fewer_classes_are_masked_and_renormalised(random_export, tmp_path):
    support, query = _support(str(tmp_path), classes=3)
    classes, preds = adapt.classify(random_export["path"], support, [query])
    assert classes == ["class_0", "class_1", "class_2"]
    assert [os.path.basename(p.file) for p in preds] == ["0.png", "1.png", "2.png", "3.png"]
    for p in preds:
        assert set(p.probabilities) == set(classes)
        assert abs(sum(p.probabilities.values()) - 1) < 1e-6
        assert p.label in classes and p.probability == max(p.probabilities.values())
    table = adapt.format_table(preds)
    assert "class_" in table and "probability" in table
    # An explicit number of inner steps goes through the steps signature.
    _, zero = adapt.classify(random_export["path"], support, [query], inner_steps=0)
    assert len(zero) == 4


def test_colour_jpeg_and_transparent_png_become_grayscale(tmp_path):
    rgb = Image.new("RGB", (40, 30), (255, 0, 0))
    rgb.save(tmp_path / "a.jpg")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent: white after compositing
    rgba.save(tmp_path / "b.png")
    a = adapt.load_image(str(tmp_path / "a.jpg"), 28)
    b = adapt.load_image(str(tmp_path / "b.png"), 28)
    assert a.shape == b.shape == (28, 28) and a.dtype == b.dtype == np.float32
    assert b.min() == 1.0
    # Every image, whatever its size, arrives at the model's size, as pixels / 255.
    pixels = adapt.read_images([str(tmp_path / "a.jpg"), str(tmp_path / "b.png")], 28)
    assert pixels.shape == (2, 28, 28, 1) and pixels.dtype == np.float32
    assert np.all(pixels[1] == 1.0)


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
    pixels = adapt.read_images(paths, 28)
    assert pixels.shape == (len(paths), 28, 28, 1) and pixels.dtype == np.float32
    for path, got in zip(paths, pixels):
        np.testing.assert_array_equal(got, _expected_pixels(path, 28), err_msg=path)
    # An image already at the model's size is passed through exactly.
    np.testing.assert_array_equal(
        pixels[0, ..., 0], np.asarray(Image.open(paths[0]), np.float32) / 255.0)


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    from tfmeta import adapt

    def status_mb(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key + ":"))

    paths = sys.argv[1:]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    before = status_mb("VmRSS")
    pixels = adapt.read_images(paths, 28)
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


@pytest.mark.parametrize("case,message", [
    ("too_many_classes", "6 class folders but the model was trained for 5 ways"),
    ("empty_class", "holds no images"),
    ("unreadable", "cannot read image"),
    ("missing_support", "does not exist"),
    ("missing_query", "query path"),
    ("no_class_folders", "no class subfolders"),
])
def test_bad_folders_raise_errors_naming_the_path(random_export, tmp_path, case, message):
    support, query = _support(str(tmp_path), classes=6 if case == "too_many_classes" else 2)
    queries = [query]
    bad_path = support
    if case == "empty_class":
        bad_path = os.path.join(support, "class_empty")
        os.makedirs(bad_path)
    elif case == "unreadable":
        bad_path = os.path.join(support, "class_0", "broken.png")
        with open(bad_path, "wb") as f:
            f.write(b"not an image")
    elif case == "missing_support":
        bad_path = support = str(tmp_path / "nowhere")
    elif case == "missing_query":
        bad_path = str(tmp_path / "missing.png")
        queries = [query, bad_path]
    elif case == "no_class_folders":
        bad_path = support = query
    with pytest.raises(adapt.AdaptError, match=message) as info:
        adapt.classify(random_export["path"], support, queries)
    assert bad_path in str(info.value)


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory):
    """A SavedModel that tfmeta.export did not write (one tf.function, no metadata)."""
    import tensorflow as tf

    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2.0 * x},
                                input_signature=[tf.TensorSpec([None], tf.float32)],
                                autograph=False)
    path = str(tmp_path_factory.mktemp("plain") / "model")
    tf.saved_model.save(module, path, signatures={"double": module.double})
    return path


def test_saved_model_not_made_by_tfmeta_is_named(plain_saved_model, tmp_path):
    support, query = _support(str(tmp_path))
    with pytest.raises(adapt.AdaptError, match="no tfmeta 'metadata' signature") as info:
        adapt.classify(plain_saved_model, support, [query])
    assert plain_saved_model in str(info.value) and "tfmeta.export" in str(info.value)


@pytest.mark.parametrize("case", ["empty_dir", "file", "missing"])
def test_path_that_is_not_a_saved_model_is_named(tmp_path, case):
    support, query = _support(str(tmp_path))
    path = str(tmp_path / "model")
    if case == "empty_dir":
        os.makedirs(path)
    elif case == "file":
        with open(path, "w") as f:
            f.write("not a model")
    with pytest.raises(adapt.AdaptError) as info:
        adapt.classify(path, support, [query])
    assert path in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("steps", [-1, 2**31])
def test_out_of_range_inner_steps_is_an_error(tmp_path, steps):
    support, query = _support(str(tmp_path))
    # Checked before anything is read, so the model path does not even matter.
    with pytest.raises(adapt.AdaptError, match=f"inner_steps .* got {steps}"):
        adapt.classify(str(tmp_path / "unused"), support, [query], inner_steps=steps)


def _binary(*args, **env):
    """Runs ``python -m tfmeta.adapt ARGS``."""
    # TF_ENABLE_ONEDNN_OPTS=0 only silences TensorFlow's start-up banner, which it prints on
    # import even with TF_CPP_MIN_LOG_LEVEL=2, so that stderr holds only what adapt prints.
    return subprocess.run([sys.executable, "-m", "tfmeta.adapt", *args],
                          env=subprocess_env(TF_ENABLE_ONEDNN_OPTS="0", **env),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing_support", "not_tfmeta", "negative_inner_steps",
                                  "pipe_query"])
def test_binary_reports_bad_input_in_one_line_with_exit_2(random_export, plain_saved_model,
                                                          tmp_path, case):
    support, query = _support(str(tmp_path))
    model, extra = random_export["path"], []
    if case == "missing_support":
        named = support = str(tmp_path / "no_support")
    elif case == "not_tfmeta":
        named = model = plain_saved_model
    elif case == "pipe_query":
        named = query = str(tmp_path / "pipe.png")
        os.mkfifo(query)
    else:
        named, extra = "--inner_steps=-1", ["--inner_steps=-1"]
    proc = _binary(f"--saved_model={model}", f"--support={support}", f"--query={query}", *extra)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert named in lines[0]
    if case == "pipe_query":
        assert "is a named pipe (FIFO)" in lines[0]


def _nested_queries(root):
    """A query folder with subfolders, hidden entries and non-image files; returns the images."""
    query = os.path.join(root, "query")
    _write_images(os.path.join(query, "b_sub", "deeper"), 1, seed=1)
    _write_images(os.path.join(query, "a_sub"), 2, seed=2)
    _write_images(query, 1, seed=3)
    _write_images(os.path.join(query, ".hidden_dir"), 1, seed=4)
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
    assert adapt.read_queries([query, single]) == expected + [single]
    # Relative paths stay relative, as given.
    monkeypatch.chdir(tmp_path)
    assert adapt.read_queries(["query"]) == [os.path.relpath(f, tmp_path) for f in expected]


def test_hidden_support_entries_are_ignored(tmp_path):
    support, _ = _support(str(tmp_path), classes=2)
    _write_images(os.path.join(support, ".ipynb_checkpoints"), 1, seed=5)
    with open(os.path.join(support, "class_0", "._0.png"), "wb") as f:  # macOS AppleDouble file
        f.write(b"\x00\x05\x16\x07 resource fork, not an image")
    classes, files, labels = adapt.read_support(support)
    assert classes == ["class_0", "class_1"]
    assert [os.path.relpath(f, support) for f in files] == ["class_0/0.png", "class_1/0.png"]
    assert labels == [0, 1]


def test_query_folder_without_any_image_is_named(tmp_path):
    query = tmp_path / "query"
    (query / "sub" / ".hidden").mkdir(parents=True)
    Image.new("L", (28, 28)).save(query / "sub" / ".hidden" / "0.png")
    Image.new("L", (28, 28)).save(query / "sub" / ".1.png")
    (query / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(adapt.AdaptError, match="holds no images") as info:
        adapt.read_queries([str(query)])
    assert str(query) in str(info.value)


def test_nested_queries_are_classified_and_printed(random_export, tmp_path):
    support, _ = _support(str(tmp_path))
    query, expected = _nested_queries(str(tmp_path / "nested"))
    _, preds = adapt.classify(random_export["path"], support, [query])
    assert [p.file for p in preds] == expected
    table = adapt.format_table(preds)
    assert all(f in table for f in expected)


class _FakeExport:
    """Just the signatures adapt uses, each recording the thread it runs in."""

    def __init__(self, logits=None, error=None):
        import tensorflow as tf

        self.threads = []
        self._logits, self._error = logits, error
        meta = tf.constant(json.dumps({"task": "omniglot", "ways": 5, "image_size": 28}))
        self.signatures = {"metadata": lambda: {"json": meta},
                           "adapt_and_predict": self._call,
                           "adapt_and_predict_steps": self._call}

    def _call(self, **inputs):
        import tensorflow as tf

        self.threads.append(threading.current_thread())
        if self._error is not None:
            raise self._error
        return {"logits": tf.constant(self._logits(inputs), tf.float32)}


def test_model_runs_in_a_worker_thread_and_results_come_back(tmp_path):
    support, query = _support(str(tmp_path), classes=2)
    # Logits favouring class (query index % 2), so results must come back per query, in order.
    fake = _FakeExport(logits=lambda inputs: np.eye(5)[np.arange(
        inputs["query_images"].shape[0]) % 2] * 10)
    classes, preds = adapt.classify(fake, support, [query], inner_steps=7)
    assert [p.label for p in preds] == ["class_0", "class_1", "class_0", "class_1"]
    assert len(fake.threads) == 1 and fake.threads[0] is not threading.current_thread()
    assert fake.threads[0].daemon


@pytest.mark.parametrize("error,expected", [
    (RuntimeError("boom in the worker"), RuntimeError),
    ("invalid_argument", adapt.AdaptError),
])
def test_errors_in_the_worker_are_raised_in_the_caller(tmp_path, error, expected):
    import tensorflow as tf

    if error == "invalid_argument":
        error = tf.errors.InvalidArgumentError(None, None, "inner_steps must be <= 10\n\t[[node]]")
    support, query = _support(str(tmp_path), classes=2)
    with pytest.raises(expected) as info:
        adapt.classify(_FakeExport(error=error), support, [query])
    first = str(info.value).splitlines()[0]
    assert "boom in the worker" in first or "rejected the inputs: inner_steps must be" in first


def test_ctrl_c_stops_a_long_adaptation_at_once(random_export, tmp_path):
    from tfmeta import exporter

    support, query = _support(str(tmp_path))
    # An export that allows far more inner steps than the default bound of 100.
    path = exporter.export(random_export["model"], random_export["algorithm"],
                         str(tmp_path / "unbounded"), metadata=random_export["metadata"],
                         max_inner_steps=10**6)
    # 20000 inner steps take about a minute on 2 CPU cores; `-v 1` logs "adapting to ..." right
    # before the SavedModel call, so the interrupt is known to land inside it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={path}",
         f"--support={support}", f"--query={query}", "--inner_steps=20000", "-v", "1"],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(240, proc.kill)  # in case the log line never comes
    watchdog.start()
    try:
        for line in proc.stderr:
            if "adapting to 3 classes" in line:
                break
        time.sleep(3)
        assert proc.poll() is None, "finished before it could be interrupted"
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C did not stop the adaptation within 10 s")
        elapsed = time.monotonic() - start
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert stdout == "" and stderr.splitlines()[-1] == "interrupted"
    assert elapsed < 3, elapsed


def _unseen_episodes(root, episodes=4, ways=5, queries=5):
    """Episodes of unseen characters (images_evaluation, 105x105 PNGs) written as folders."""
    with zipfile.ZipFile(os.path.join(archives_dir(), "images_evaluation.zip")) as z:
        by_char: dict[str, list[str]] = {}
        for name in sorted(n for n in z.namelist() if n.endswith(".png")):
            by_char.setdefault(os.path.dirname(name), []).append(name)
        chars = sorted(by_char)
        rng = np.random.default_rng(0)
        picked = rng.choice(len(chars), episodes * ways, replace=False).reshape(episodes, ways)
        out = []
        for e, row in enumerate(picked):
            truth = {}
            for c in row:
                name = chars[c].replace("/", "_")
                drawings = by_char[chars[c]]
                folder = os.path.join(root, f"ep{e}", "support", name)
                os.makedirs(folder)
                with open(os.path.join(folder, "0.png"), "wb") as f:
                    f.write(z.read(drawings[0]))
                for q in range(queries):
                    path = os.path.join(root, f"ep{e}", "query", f"{name}_{q}.png")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(z.read(drawings[1 + q]))
                    truth[path] = name
            out.append((os.path.join(root, f"ep{e}", "support"),
                        os.path.join(root, f"ep{e}", "query"), truth))
    return out


def test_trained_model_classifies_unseen_characters(smoke_workdir, tmp_path):
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(smoke_workdir, "export"))
    episodes = _unseen_episodes(str(tmp_path))
    correct = total = 0
    for support, query, truth in episodes:
        _, preds = adapt.classify(loaded, support, [query])
        correct += sum(p.label == truth[p.file] for p in preds)
        total += len(preds)
    # 5-way 1-shot: chance is 20%; the smoke model reaches ~60% on its own test split.
    assert correct / total >= 0.4, f"accuracy {correct}/{total}"

    support, query, truth = episodes[0]
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={smoke_workdir}/export",
         f"--support={support}", f"--query={query}", "--json"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["classes"] == sorted(set(truth.values()))
    assert {p["file"] for p in result["predictions"]} == set(truth)
    table = subprocess.run(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={smoke_workdir}/export",
         f"--support={support}", f"--query={query}", "--inner_steps=5"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.strip().splitlines()
    # Header, rule, one row per query, then the protocol the answers were computed with.
    assert "probability" in lines[0] and len(lines) == 2 + 25 + 1
    assert lines[-1] == "(each query answered on its own)"


def test_one_query_gets_the_same_answer_alone_and_among_others(random_export, tmp_path):
    support, query = _support(str(tmp_path), classes=5)
    files = sorted(os.path.join(query, f) for f in os.listdir(query))
    _, together = adapt.classify(random_export["path"], support, [query])
    for path, expected in zip(files, together):
        _, (alone,) = adapt.classify(random_export["path"], support, [path])
        assert alone.label == expected.label
        for name, p in expected.probabilities.items():
            assert abs(alone.probabilities[name] - p) < 1e-5
    # Asked for explicitly, the transductive protocol normalises the queries together.
    _, trans = adapt.classify(random_export["path"], support, [query], transductive=True)
    gap = max(abs(a.probabilities[k] - b.probabilities[k])
              for a, b in zip(trans, together) for k in a.probabilities)
    assert gap > 1e-4


def test_inner_steps_above_the_exports_bound_is_refused(random_export, tmp_path):
    support, query = _support(str(tmp_path))
    with pytest.raises(adapt.AdaptError, match="inner_steps must be between 0 and 100, got 101"):
        adapt.classify(random_export["path"], support, [query], inner_steps=101)
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={random_export['path']}",
         f"--support={support}", f"--query={query}", "--inner_steps=1000000"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: inner_steps must be between 0 and 100, got 1000000"]


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
    pixels = dict(zip(names, adapt.read_images([paths[n] for n in names], 28)[..., 0]))
    reference = pixels["gray8.png"]
    assert reference.min() < 0.3  # the strokes survive the resize
    for name, got in pixels.items():
        assert got.dtype == np.float32 and 0.0 <= got.min() and got.max() <= 1.0, name
        # The 16-bit ink read as 8000/65535, not clipped to white; JPEG and 1-bit are lossy.
        tolerance = {"cmyk.jpg": 0.1, "bilevel.png": 0.2}.get(name, 3 / 255)
        assert np.abs(got - reference).mean() < tolerance / 3, name
        assert np.abs(got - reference).max() < (0.5 if name == "bilevel.png" else 0.1), name
    assert abs(pixels["gray16.png"].min() - reference.min()) < 2 / 255


def test_faint_16_bit_ink_is_classified_like_its_8_bit_equivalent(random_export, tmp_path,
                                                                  caplog):
    support = tmp_path / "support"
    for c in range(3):
        os.makedirs(support / f"class_{c}")
        Image.fromarray(np.where(_ink(seed=c), _INK8, 255).astype(np.uint8)).save(
            support / f"class_{c}" / "0.png")
    query = tmp_path / "query"
    os.makedirs(query)
    for q in range(3):
        ink = _ink(seed=q)
        Image.fromarray(np.where(ink, _INK16, 65535).astype(np.uint16)).save(query / f"{q}_16.png")
        Image.fromarray(np.where(ink, _INK8, 255).astype(np.uint8)).save(query / f"{q}_8.png")
    with caplog.at_level(logging.WARNING):
        _, preds = adapt.classify(random_export["path"], str(support), [str(query)])
    assert "uniform" not in caplog.text  # nothing was read as blank
    by_name = {os.path.basename(p.file): p for p in preds}
    for q in range(3):
        deep, shallow = by_name[f"{q}_16.png"], by_name[f"{q}_8.png"]
        assert deep.label == shallow.label == f"class_{q}"
        for name, p in shallow.probabilities.items():
            assert abs(deep.probabilities[name] - p) < 0.02


def test_out_of_range_deep_pixels_are_an_error_naming_the_file(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.full((8, 8), 200.0, np.float32), "F").save(path)
    with pytest.raises(adapt.AdaptError, match=r"pixels must be in \[0, 1\]; found") as info:
        adapt.read_images([path], 28)
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
    got = adapt.load_image(str(tmp_path / "sideways.jpg"), 20)
    expected = adapt.load_image(str(tmp_path / "upright.jpg"), 20)
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
        pixels = adapt.read_images([blank, same_brightness, strokes], 28)
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
def test_named_pipes_are_skipped_with_a_warning_never_opened(loaded_export, tmp_path, caplog):
    support, query = _support(str(tmp_path), classes=2)
    fifos = [os.path.join(query, "2_pipe.png"), os.path.join(support, "class_0", "pipe.png")]
    for fifo in fifos:
        os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING):
        _, preds = _in_thread_with_timeout(
            lambda: adapt.classify(loaded_export, support, [query]), fifos)
    assert [os.path.basename(p.file) for p in preds] == ["0.png", "1.png", "2.png", "3.png"]
    for fifo in fifos:
        assert f"skipping {fifo!r}: it is a named pipe (FIFO)" in caplog.text
    # Named directly, it is an error, raised without opening it.
    with pytest.raises(adapt.AdaptError, match="is a named pipe") as info:
        _in_thread_with_timeout(lambda: adapt.read_queries([fifos[0]]), fifos)
    assert fifos[0] in str(info.value)
    with pytest.raises(adapt.AdaptError, match="is a named pipe"):
        _in_thread_with_timeout(lambda: adapt.read_images([fifos[0]], 28), fifos)


# ----------------------------------------------------------------- labels from Python callers
@pytest.fixture(scope="module")
def loaded_export(random_export):
    import tensorflow as tf

    return tf.saved_model.load(random_export["path"])


def _episode_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(5, 28, 28, 1)).astype(np.float32),
            rng.uniform(size=(2, 28, 28, 1)).astype(np.float32))


@pytest.mark.parametrize("labels,named", [
    (np.array([0.7, 1.2, 2.9, 3.1, 4.0]), "0.7"),            # the int32 cast would truncate
    ([0, 1, 2, 3.0, 4], "0.0"),  # NumPy makes the whole list float
    (np.array([0, 1, 2, 3, 2**32 + 4], np.int64), str(2**32 + 4)),  # would wrap around to 4
    ([0, 1, 2, 3, 2**31], str(2**31)),
    ([0, 1, 2, 3, 2**70], str(2**70)),
    ([0, 1, 2, 3, 5], "5"),
    (np.array([0, 1, -2, 3, 4], np.int32), "-2"),
    ([True, False, True, False, True], "True"),
    (np.array(["0", "1", "2", "3", "4"]), "'0'"),
])
def test_client_refuses_labels_the_int32_conversion_would_change(loaded_export, labels, named):
    sx, qx = _episode_arrays()
    with pytest.raises(adapt.AdaptError, match="support_labels must be integers in") as info:
        adapt.adapt_and_predict(loaded_export, sx, labels, qx)
    message = str(info.value)
    assert "\n" not in message and f"got {named} at index" in message
    assert "[0, 5)" in message


@pytest.mark.parametrize("steps", [2.5, np.float64(3.0), 2**32 + 3, True])
def test_client_refuses_inner_steps_the_int32_conversion_would_change(loaded_export, steps):
    sx, qx = _episode_arrays()
    with pytest.raises(adapt.AdaptError, match="inner_steps must be") as info:
        adapt.adapt_and_predict(loaded_export, sx, np.arange(5), qx, inner_steps=steps)
    assert repr(steps) in str(info.value) or str(steps) in str(info.value)


def test_client_accepts_any_integer_labels_and_float64_images(loaded_export):
    sx, qx = _episode_arrays()
    expected = adapt.adapt_and_predict(loaded_export, sx, np.arange(5, dtype=np.int32), qx)
    for labels in ([0, 1, 2, 3, 4], np.arange(5, dtype=np.int64), np.arange(5, dtype=np.uint8)):
        np.testing.assert_array_equal(
            adapt.adapt_and_predict(loaded_export, sx, labels, qx, ways=5), expected)
    np.testing.assert_allclose(adapt.adapt_and_predict(
        loaded_export, sx.astype(np.float64), np.arange(5), qx.astype(np.float64)), expected,
        atol=1e-6)
