"""tfmeta.evaluate's result file: never over anything but an earlier tfmeta evaluation result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, subprocess_env


@pytest.fixture(scope="module")
def evaluate():
    """The binary's module (importing it defines its flags, so it is imported once)."""
    from tfmeta import evaluate as module

    return module


RESULT = {"split": "test", "metric": "accuracy", "accuracy": 0.9, "ci95": 0.01, "episodes": 30,
          "step": 7, "inner_steps": 3, "bn_mode": "support", "transductive": False}


def _write(path, value):
    with open(path, "w") as f:
        f.write(value if isinstance(value, str) else json.dumps(value))


def _read(path):
    with open(path) as f:
        return f.read()


def test_a_new_file_is_written_and_an_earlier_result_only_replaced_when_asked(evaluate, tmp_path):
    path = str(tmp_path / "result.json")
    evaluate.write_result(path, RESULT, replace=False)
    assert json.loads(_read(path)) == RESULT and evaluate.is_evaluation_result(path)
    with pytest.raises(evaluate.OutputError, match="already holds an evaluation result; pass "
                                                   "--replace") as info:
        evaluate.write_result(path, dict(RESULT, step=300), replace=False)
    assert repr(path) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert json.loads(_read(path))["step"] == 7
    evaluate.write_result(path, dict(RESULT, step=300), replace=True)
    assert json.loads(_read(path))["step"] == 300
    assert os.listdir(tmp_path) == ["result.json"]


@pytest.mark.parametrize("content", ["notes, not JSON", {"metric": "accuracy"}, [1, 2], "dir"])
def test_anything_else_is_never_overwritten(evaluate, tmp_path, content):
    path = str(tmp_path / "result.json")
    if content == "dir":
        os.makedirs(os.path.join(path, "inside"))
    else:
        _write(path, content)
    for replace in (False, True):
        with pytest.raises(evaluate.OutputError, match="never overwritten, even with --replace"):
            evaluate.write_result(path, RESULT, replace=replace)
    assert os.path.isdir(path) if content == "dir" else _read(path) == (
        content if isinstance(content, str) else json.dumps(content))
    assert os.listdir(tmp_path) == ["result.json"]


def test_failed_write_leaves_no_temporary(evaluate, tmp_path, monkeypatch):
    import tensorflow as tf

    path = str(tmp_path / "result.json")
    _write(path, RESULT)

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.io.gfile, "rename", full)
    with pytest.raises(evaluate.OutputError, match="cannot write the result to .*No space left"):
        evaluate.write_result(path, dict(RESULT, step=300), replace=True)
    assert os.listdir(tmp_path) == ["result.json"] and json.loads(_read(path)) == RESULT


def test_fixed_paths(evaluate):
    assert evaluate.fixed_path("/w", "test", output="/o.json", replace=True) == "/o.json"
    assert evaluate.fixed_path("/w", "test", output=None, replace=True) == "/w/eval_test.json"
    assert evaluate.fixed_path("/w", "test", output=None, replace=False) is None


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
