"""Omniglot written out as class folders of RGB PNGs trains through ``folder:`` like the native path.

benchmarks/omniglot_as_folder.py writes the characters with the native split as class lists, so
the folder source draws the native episodes (same classes, drawings and rotations), in the
archives' polarity; the smoke schedule then reaches the native path's accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, subprocess_env
from tfmeta.run import config as config_lib
from tfmeta.data import omniglot
from tfmeta.run import tasks

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import omniglot_as_folder  # noqa: E402


@pytest.fixture(scope="module")
def omniglot_folder(tmp_path_factory, omniglot_archives_dir, tfds_data_dir) -> str:
    out = str(tmp_path_factory.mktemp("omniglot_folder"))
    summary = omniglot_as_folder.write(out, subset="small", data_dir=tfds_data_dir,
                                       archives_dir=omniglot_archives_dir)
    assert sum(summary["classes"].values()) == summary["characters"]
    return out


def _folder_overrides(folder: str, prepared: str) -> dict:
    return {"task": "images", "source": f"folder:{folder}/images",
            "class_lists": f"{folder}/lists", "prepared_dir": prepared}


def test_folder_episodes_are_the_native_episodes_in_the_archives_polarity(
        omniglot_folder, omniglot_small, tmp_path):
    native = config_lib.sibling_config(os.path.join(REPO, "configs", "x"),
                                       "omniglot_maml.py").get_config("smoke")
    folder = config_lib.from_json(config_lib.to_json(native))
    folder.task = "images"
    folder.data.source = f"folder:{omniglot_folder}/images"
    folder.data.class_lists = f"{omniglot_folder}/lists"
    folder.data.prepared_dir = str(tmp_path / "prepared")
    # As --config.task=images would: the Omniglot fields the config file set are not read.
    config_lib.settle_fields(folder, ["task", "data.source", "data.class_lists",
                                      "data.prepared_dir"])
    config_lib.validate(folder)
    a = tasks.build(native, data=omniglot_small)
    b = tasks.build(folder)
    assert a.split_classes() == b.split_classes()
    for split in ("train", "test"):
        x = next(iter(a.make_dataset(split, 0, 4, 3, 10)))
        y = next(iter(b.make_dataset(split, 0, 4, 3, 10)))
        np.testing.assert_array_equal(x["support_y"].numpy(), y["support_y"].numpy())
        # Same drawings, rotated the same way; pixels inverted, within the resize's rounding.
        diff = np.abs((1.0 - x["query_x"].numpy()) - y["query_x"].numpy())
        assert diff.max() <= 2.5 / 255, diff.max()
    assert b.input_transform().invert is False  # exported folder models take images as they are


def test_folder_training_reaches_the_native_accuracy_on_the_smoke_schedule(
        omniglot_folder, smoke_workdir, omniglot_small, tmp_path):
    workdir = tmp_path / "folder_run"
    overrides = _folder_overrides(omniglot_folder, str(tmp_path / "prepared"))
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.train",
         f"--config={os.path.join(REPO, 'configs', 'omniglot_maml.py')}:smoke",
         f"--workdir={workdir}", f"--config.task={overrides['task']}",
         f"--config.data.source={overrides['source']}",
         f"--config.data.class_lists={overrides['class_lists']}",
         f"--config.data.prepared_dir={overrides['prepared_dir']}"],
        capture_output=True, text=True, timeout=900, env=subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(smoke_workdir, "eval_test.json")) as f:
        native = json.load(f)
    with open(workdir / "eval_test.json") as f:
        folder = json.load(f)
    assert folder["episodes"] == native["episodes"] and folder["ways"] == native["ways"]
    # "Reaches": not below the native accuracy by more than the two results' combined 95 %
    # uncertainty (the trajectories differ: the inputs are inverted).
    margin = float(np.hypot(native["ci95"], folder["ci95"]))
    assert folder["accuracy"] >= native["accuracy"] - margin, (folder, native)
    assert folder["accuracy"] > 1.5 / folder["ways"]  # far above chance
    with open(workdir / "data_summary.json") as f:
        summary = json.load(f)
    native_train = omniglot.split_indices(omniglot_small, "maml", "train")
    assert summary["splits"]["train"]["classes"] == len(native_train)
