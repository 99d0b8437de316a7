"""benchmarks/episodes.py on a source: generated prepared data, both storage modes, JSON lines."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, subprocess_env

SCRIPT = os.path.join(REPO, "benchmarks", "episodes.py")
SMOKE = os.path.join(REPO, "configs", "miniimagenet_maml.py") + ":smoke"  # 32x32x3, meta-batch 4


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("tfmeta_episodes_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--source=generated:6x20", f"--prepared_dir={tmp_path}",
         f"--config={SMOKE}", "--seconds=0.3", *extra],
        env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _check_lines(lines: list[dict]) -> None:
    assert [line["storage"] for line in lines] == ["memory", "stream"]
    for line in lines:
        assert line["source"] == "generated:6x20"
        assert (line["classes"], line["images"]) == (6, 120)
        assert line["dataset_bytes"] == 120 * 32 * 32 * 3
        assert (line["ways"], line["shots"], line["queries"], line["batch_size"]) == (5, 1, 5, 4)
        assert line["episodes_per_second"] > 0 and line["peak_rss_mb"] > 0
        assert line["ratio"] == pytest.approx(
            line["episodes_per_second"] / line["training_tasks_per_second"], rel=0.01)
        assert line["meets_required_ratio"] == (line["ratio"] >= line["required_ratio"])
        assert len(line["load_average"]) == line["rounds"] == 1


def test_the_benchmark_measures_both_storage_modes_of_a_generated_source(tmp_path):
    lines = _run(tmp_path, "--training_tasks_per_second=2")
    _check_lines(lines)
    assert all(line["training_tasks_per_second"] == 2 for line in lines)
    assert os.path.isfile(os.path.join(lines[0]["prepared_dir"], "spec.json"))


@pytest.mark.slow
def test_the_benchmark_measures_training_of_the_config(tmp_path):
    lines = _run(tmp_path)
    _check_lines(lines)
    assert all(line["training_measured"] and line["training_tasks_per_second"] > 0
               for line in lines)


def test_generated_sources_are_reproducible_and_reused(tmp_path):
    bench = _benchmark_module()
    prepared = bench.prepare_generated("generated:3x5", str(tmp_path), image_size=8, channels=3)
    assert prepared.image_shape == (8, 8, 3)
    assert [c.count for c in prepared.classes["train"]] == [5, 5, 5]
    images = prepared.read("train", [0, 1, 2])
    expected = [bench._generated_image((0, c, i), name="", size=8, channels=3, resize="stretch",
                                       min_side=0) for c in range(3) for i in range(5)]
    np.testing.assert_array_equal(images, np.stack(expected))
    again = bench.prepare_generated("generated:3x5", str(tmp_path), image_size=8, channels=3)
    assert again.directory == prepared.directory
    np.testing.assert_array_equal(again.read("train", [0, 1, 2]), images)
    with pytest.raises(SystemExit, match="CLASSESxIMAGES"):
        bench.parse_generated("generated:100")
    small = bench.prepare_generated("generated:3x5/2", str(tmp_path), image_size=8, channels=3)
    assert small.records_per_shard == 2
    assert [len(c.shards) for c in small.classes["train"]] == [3, 3, 3]
    assert small.directory != prepared.directory
