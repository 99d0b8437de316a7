"""tfmeta.run.evaluation_results: never over anything but an earlier tfmeta evaluation result.

The binary, tfmeta.evaluate, is tested in test_evaluate.py.
"""

from __future__ import annotations

import json
import os

import pytest

from tfmeta.run import evaluation_results

RESULT = {"split": "test", "metric": "accuracy", "accuracy": 0.9, "ci95": 0.01, "episodes": 30,
          "step": 7, "inner_steps": 3, "bn_mode": "support", "transductive": False}


def _write(path, value):
    with open(path, "w") as f:
        f.write(value if isinstance(value, str) else json.dumps(value))


def _read(path):
    with open(path) as f:
        return f.read()


def test_a_new_file_is_written_and_an_earlier_result_only_replaced_when_asked(tmp_path):
    path = str(tmp_path / "result.json")
    evaluation_results.write_result(path, RESULT, replace=False)
    assert json.loads(_read(path)) == RESULT and evaluation_results.is_evaluation_result(path)
    with pytest.raises(evaluation_results.OutputError, match="already holds an evaluation result; "
                                                             "pass --replace") as info:
        evaluation_results.write_result(path, dict(RESULT, step=300), replace=False)
    assert repr(path) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert json.loads(_read(path))["step"] == 7
    evaluation_results.write_result(path, dict(RESULT, step=300), replace=True)
    assert json.loads(_read(path))["step"] == 300
    assert os.listdir(tmp_path) == ["result.json"]


@pytest.mark.parametrize("content", ["notes, not JSON", {"metric": "accuracy"}, [1, 2], "dir"])
def test_anything_else_is_never_overwritten(tmp_path, content):
    path = str(tmp_path / "result.json")
    if content == "dir":
        os.makedirs(os.path.join(path, "inside"))
    else:
        _write(path, content)
    for replace in (False, True):
        with pytest.raises(evaluation_results.OutputError,
                           match="never overwritten, even with --replace"):
            evaluation_results.write_result(path, RESULT, replace=replace)
    assert os.path.isdir(path) if content == "dir" else _read(path) == (
        content if isinstance(content, str) else json.dumps(content))
    assert os.listdir(tmp_path) == ["result.json"]


def test_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    import tensorflow as tf

    path = str(tmp_path / "result.json")
    _write(path, RESULT)

    def full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.io.gfile, "rename", full)
    with pytest.raises(evaluation_results.OutputError,
                       match="cannot write the result to .*No space left"):
        evaluation_results.write_result(path, dict(RESULT, step=300), replace=True)
    assert os.listdir(tmp_path) == ["result.json"] and json.loads(_read(path)) == RESULT


def test_fixed_paths():
    fixed_path = evaluation_results.fixed_path
    assert fixed_path("/w", "test", output="/o.json", replace=True) == "/o.json"
    assert fixed_path("/w", "test", output=None, replace=True) == "/w/eval_test.json"
    assert fixed_path("/w", "test", output=None, replace=False) is None
