"""tfmeta.evaluate, the binary: the result file is never written over anything but an earlier
result, and that is checked before the evaluation runs.

The result-file library, tfmeta.run.evaluation_results, is tested in test_evaluation_results.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.helpers import REPO, subprocess_env
from tests.unit.run.test_evaluation_results import RESULT, _read, _write


def _fake_workdir(root) -> str:
    workdir = os.path.join(str(root), "run")
    os.makedirs(os.path.join(workdir, "checkpoints"))
    _write(os.path.join(workdir, "config.json"), "{}")
    return workdir


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tfmeta.evaluate", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=subprocess_env())


def _error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


def test_binary_refuses_an_existing_output_before_evaluating(tmp_path):
    """Refused before the run is even restored: the work directory here holds no checkpoint."""
    workdir = _fake_workdir(tmp_path)
    notes, result = str(tmp_path / "notes.json"), str(tmp_path / "result.json")
    _write(notes, "my notes")
    _write(result, RESULT)
    # --output over an earlier result without --replace; --replace over something else, with
    # --output (which it now applies to) and without (the run's own file).
    _write(os.path.join(workdir, "eval_test.json"), "not a result")
    cases = [([f"--output={result}"], result, "pass --replace"),
             ([f"--output={notes}", "--replace"], notes, "never overwritten"),
             (["--replace"], os.path.join(workdir, "eval_test.json"), "never overwritten")]
    for args, path, expected in cases:
        line = _error_line(_run(f"--workdir={workdir}", "--episodes=10", *args))
        assert repr(path) in line and expected in line, line
    assert _read(notes) == "my notes" and json.loads(_read(result)) == RESULT
    assert _read(os.path.join(workdir, "eval_test.json")) == "not a result"


def test_binary_replace_with_output_replaces_that_output(smoke_workdir, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(smoke_workdir, workdir)
    own = _read(os.path.join(workdir, "eval_test.json"))
    output = str(tmp_path / "result.json")
    _write(output, RESULT)
    proc = _run(f"--workdir={workdir}", "--episodes=10", f"--output={output}", "--replace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"written to {output}"
    result = json.loads(_read(output))
    assert result["episodes"] == 10 and result["step"] != RESULT["step"]
    # The run's own result is not the one replaced.
    assert _read(os.path.join(workdir, "eval_test.json")) == own
    assert sorted(os.listdir(tmp_path)) == ["result.json", "run"]
