"""tfmeta.adapt: folders of images in, class names out; clear errors for bad folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

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
    a, b = adapt.load_image(str(tmp_path / "a.jpg")), adapt.load_image(str(tmp_path / "b.png"))
    assert a.mode == b.mode == "L"
    assert np.asarray(b).min() == 255
    # Mixed sizes are brought to the model's size.
    assert adapt.to_array([a, b], 28).shape == (2, 28, 28, 1)
    assert adapt.to_array([b, b], 28).shape == (2, 20, 20, 1)


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


def test_binary_exit_code_and_message(random_export, tmp_path):
    missing = str(tmp_path / "no_support")
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={random_export['path']}",
         f"--support={missing}", f"--query={tmp_path}"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert missing in proc.stderr and "does not exist" in proc.stderr


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
    assert "probability" in table.stdout and len(table.stdout.strip().splitlines()) == 2 + 25
