"""The colour configs end to end, as users run them: train -> evaluate -> export -> adapt.

configs/images_maml.py on a folder of photos, configs/miniimagenet_maml.py on mini-ImageNet's
pickle caches (generated, in the real format, with every published class), each shortened to a
few iterations; the full smoke schedules run under -m slow.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, subprocess_env
from tests.unit.data.test_image_sources import write_class_folders
from tfmeta.data import benchmark_splits

_SHORT = ["--config.train.iterations=6", "--config.train.steps_per_loop=3",
          "--config.train.eval_every=0", "--config.train.eval_episodes=0",
          "--config.eval.episodes=10", "--config.train.checkpoint_every=6"]


def _run(*args, timeout=900):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def write_mini_imagenet_caches(root, per_class: int = 6) -> str:
    """``mini-imagenet-cache-{train,val,test}.pkl`` with every published class, random pixels."""
    mini = benchmark_splits.load("miniimagenet")
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    for split, short in (("train", "train"), ("validation", "val"), ("test", "test")):
        wnids = list(mini.splits[split])
        images = rng.integers(0, 256, (per_class * len(wnids), 84, 84, 3), dtype=np.uint8)
        class_dict = {w: list(range(per_class * i, per_class * (i + 1)))
                      for i, w in enumerate(wnids)}
        with open(os.path.join(root, f"mini-imagenet-cache-{short}.pkl"), "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    return str(root)


def test_images_smoke_config_from_a_photo_folder_to_an_exported_model(tmp_path):
    photos = write_class_folders(tmp_path / "photos", [7] * 12, size=(40, 30), ext=".jpg")
    (tmp_path / "photos" / "class00" / "notes.txt").write_text("not an image")
    workdir = tmp_path / "run"
    _run("tfmeta.train", f"--config={REPO}/configs/images_maml.py:smoke",
         f"--config.data.source=folder:{photos}", f"--workdir={workdir}",
         f"--config.data.prepared_dir={tmp_path / 'prepared'}",
         "--config.data.split_fractions=(0.5,0.25,0.25)", "--config.data.ways=3", *_SHORT)
    with open(workdir / "data_summary.json") as f:
        summary = json.load(f)
    assert summary["splits"]["train"]["classes"] == 6
    assert summary["files_skipped_while_listing"][0][1] == "not an image file (by its extension)"
    with open(workdir / "input_transform.json") as f:
        transform = json.load(f)
    assert transform["channels"] == 3 and len(transform["mean"]) == 3
    with open(workdir / "eval_test.json") as f:
        assert json.load(f)["ways"] == 3
    assert (workdir / "export" / "saved_model.pb").exists()
    # The export adapts to a folder of new colour classes (of any size) and classifies photos.
    support = write_class_folders(tmp_path / "new", [2, 2, 2], size=(50, 20), seed=5)
    queries = write_class_folders(tmp_path / "queries", [2], size=(13, 31), seed=6)
    proc = _run("tfmeta.adapt", f"--saved_model={workdir / 'export'}", f"--support={support}",
                f"--query={queries}", "--json")
    answers = json.loads(proc.stdout)
    assert len(answers["predictions"]) == 2
    assert {p["label"] for p in answers["predictions"]} <= {"class00", "class01", "class02"}


def test_miniimagenet_smoke_config_reads_the_pickle_caches(tmp_path):
    caches = write_mini_imagenet_caches(tmp_path / "mini")
    workdir = tmp_path / "run"
    _run("tfmeta.train", f"--config={REPO}/configs/miniimagenet_maml.py:smoke",
         f"--config.data.source=miniimagenet:{caches}", f"--workdir={workdir}",
         f"--config.data.prepared_dir={tmp_path / 'prepared'}",
         "--config.data.allow_partial_benchmark=True", *_SHORT)  # a few images per class
    with open(workdir / "data_summary.json") as f:
        summary = json.load(f)
    assert [summary["splits"][s]["classes"] for s in ("train", "validation", "test")] == \
        [64, 16, 20]
    assert "Ravi" in summary["split_origin"]
    assert summary["not_the_benchmark"].startswith("not mini-ImageNet: 100 image counts differ")
    [result] = workdir.glob("eval_*.json")
    assert json.loads(result.read_text())["not_the_benchmark"] == summary["not_the_benchmark"]
    assert (workdir / "export" / "saved_model.pb").exists()


@pytest.mark.slow
def test_images_smoke_schedule_learns_a_learnable_folder(tmp_path):
    """The whole smoke schedule on photos whose class is their colour: well above chance."""
    rng = np.random.default_rng(0)
    from PIL import Image

    for c in range(30):
        folder = tmp_path / "photos" / f"c{c:02d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for j in range(10):
            pixels = np.clip(colour + rng.normal(0, 40, (30, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{j}.jpg")
    workdir = tmp_path / "run"
    _run("tfmeta.train", f"--config={REPO}/configs/images_maml.py:smoke",
         f"--config.data.source=folder:{tmp_path / 'photos'}", f"--workdir={workdir}",
         f"--config.data.prepared_dir={tmp_path / 'prepared'}", timeout=1800)
    with open(workdir / "eval_test.json") as f:
        result = json.load(f)
    assert result["accuracy"] > 0.5, result


def test_miniimagenet_resnet12_variant_loads_and_validates():
    """Second-order MAML with ResNet-12: block-wise remat, 5-way 5-shot, 5 inner steps."""
    import importlib.util

    from tfmeta.run import config as config_lib

    spec = importlib.util.spec_from_file_location(
        "miniimagenet_maml_config", os.path.join(REPO, "configs", "miniimagenet_maml.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("resnet12_5way5shot")
    config_lib.validate(config)
    assert (config.model.name, config.inner.remat, config.algorithm) == (
        "resnet12", "blocks", "maml")
    assert (config.data.ways, config.data.shots, config.inner.steps) == (5, 5, 5)
    assert config.train.meta_batch_size == 2 and config.data.image_size == 84
    assert config.train.tasks_in_parallel == "1"
    with pytest.raises(ValueError, match="resnet12_5way5shot"):
        module.get_config("resnet12")
