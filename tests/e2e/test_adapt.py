"""tfmeta.adapt, the binary: folders of images in, a table or JSON out.

Also: one-line errors with exit status 2, Ctrl-C during a long adaptation, and the names the
README documents still importable from tfmeta.adapt. The library is tested in
test_serving_client.py and test_image_folders.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import subprocess_env, write_image_folders
from tests.unit.serving.test_serving_client import _unseen_episodes


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
    support, query = write_image_folders(str(tmp_path))
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


def test_ctrl_c_stops_a_long_adaptation_at_once(random_export, tmp_path):
    from tfmeta.run import exporter

    support, query = write_image_folders(str(tmp_path))
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


def test_binary_prints_json_or_a_table_and_the_protocol(smoke_workdir, tmp_path):
    [(support, query, truth)] = _unseen_episodes(str(tmp_path), episodes=1)
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


def test_binary_refuses_inner_steps_above_the_exports_bound(random_export, tmp_path):
    support, query = write_image_folders(str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "tfmeta.adapt", f"--saved_model={random_export['path']}",
         f"--support={support}", f"--query={query}", "--inner_steps=1000000"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: inner_steps must be between 0 and 100, got 1000000"]


def test_documented_names_stay_importable_from_tfmeta_adapt():
    """The README names tfmeta.adapt.adapt_and_predict and check_labels.

    Checked in a child process: importing the binary defines its flags.
    """
    script = ("from tfmeta import adapt\nfrom tfmeta.serving import serving_client\n"
              "assert adapt.adapt_and_predict is serving_client.adapt_and_predict\n"
              "assert adapt.check_labels is serving_client.check_labels\n")
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
