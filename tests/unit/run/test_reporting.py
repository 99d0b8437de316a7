"""tfmeta.run.reporting: learning curves and a results table from synthetic work directories.

The binary, tfmeta.report, is tested in tests/e2e/test_report.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tfmeta.run import reporting

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Matplotlib's first two line colours (tab:blue, tab:orange): markers are filled with them exactly.
RUN_COLOURS = [(31, 119, 180), (255, 127, 14)]


def _config(algorithm="maml", task="omniglot", ways=5, shots=1):
    return {"algorithm": algorithm, "task": task, "seed": 0,
            "data": {"ways": ways, "shots": shots, "queries": 1, "k_support": 10},
            "train": {"iterations": 2000}}


def _point(step, value, metric="accuracy", wall=None, **extra):
    point = {"step": step, "wall_seconds": step * 0.3 if wall is None else wall,
             "train_seconds": step * 0.28, "split": "validation", "metric": metric,
             metric: value, "ci95": 0.012, "episodes": 200, "transductive": True, "queries": 1}
    point.update(extra)
    return point


def _eval(value=0.9673, ci95=0.0072, metric="accuracy", **overrides):
    result = {"split": "test", "metric": metric, metric: value, "ci95": ci95, "episodes": 600,
              "step": 2000, "inner_steps": 3, "bn_mode": "transductive", "transductive": True,
              "queries": 1, "ways": 5, "shots": 1, "algorithm": "maml", "wall_seconds": 601.2}
    result.update(overrides)
    return {k: v for k, v in result.items() if v is not None}


def _workdir(root, name, config=None, history=None, evals=None):
    """Writes a work directory; history entries are dicts or raw lines."""
    path = os.path.join(str(root), name)
    os.makedirs(path)
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
    if history is not None:
        with open(os.path.join(path, "history.jsonl"), "w") as f:
            for entry in history:
                f.write((entry if isinstance(entry, str) else json.dumps(entry)) + "\n")
    for filename, result in (evals or {}).items():
        with open(os.path.join(path, filename), "w") as f:
            f.write(result if isinstance(result, str) else json.dumps(result))
    return path


def _maml(root):
    """5-way 1-shot accuracy run, resumed once: steps 1000 and 1500 were validated twice."""
    history = [_point(500, 0.70), _point(1000, 0.80), _point(1500, 0.85), "",
               _point(1000, 0.82, wall=330.0), _point(1500, 0.88, wall=480.0, extra_key=[1, 2]),
               _point(1500, 0.50, split="train"), "   ", _point(2000, 0.943, wall=612.0)]
    evals = {"eval_test.json": _eval(),
             "eval_test_nontransductive.json": _eval(0.9312, 0.0101, transductive=False,
                                                     bn_mode="support", queries=15)}
    return _workdir(root, "maml_5w1s", _config(), history, evals)


def _old(root):
    """Only an evaluation file from before `transductive`, `queries` and `wall_seconds` existed."""
    return _workdir(root, "old", _config("fomaml", shots=5), evals={
        "eval_test.json": _eval(0.98766, 0.00349, transductive=None, queries=None,
                                wall_seconds=None, algorithm="fomaml", shots=5, step=60000)})


def _sinusoid(root):
    history = [_point(100, 0.9, "mse"), _point(200, 0.4, "mse", wall=78.0)]
    return _workdir(root, "sine", _config(task="sinusoid"), history, {
        "eval_test.json": _eval(0.1312, 0.0261, "mse", ways=None, shots=None, k_support=10,
                                transductive=None, queries=None, wall_seconds=None)})


def _rows(markdown):
    """Table rows (header and separator excluded) as lists of cells."""
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| label | algorithm |")
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def test_history_resumed_steps_keep_the_later_line(tmp_path):
    run = reporting.load_run(_maml(tmp_path))
    assert run.label == "maml_5w1s"
    assert [p["step"] for p in run.history] == [500, 1000, 1500, 2000]
    assert [p["accuracy"] for p in run.history] == [0.70, 0.82, 0.88, 0.943]
    assert run.config["data"]["ways"] == 5
    assert [os.path.basename(p) for p, _ in run.evaluations] == [
        "eval_test.json", "eval_test_nontransductive.json"]
    assert reporting.load_run(run.workdir, "mine").label == "mine"


def test_eval_only_and_history_only_workdirs_load(tmp_path):
    old = reporting.load_run(_old(tmp_path))
    assert old.history == [] and len(old.evaluations) == 1
    only_history = reporting.load_run(_workdir(tmp_path, "h", history=[_point(10, 0.5)]))
    assert only_history.evaluations == [] and only_history.config == {}


def test_results_table_rows_and_numbers(tmp_path):
    runs = [reporting.load_run(_maml(tmp_path), "maml"), reporting.load_run(_old(tmp_path)),
            reporting.load_run(_sinusoid(tmp_path))]
    markdown = reporting.results_table(runs)
    rows = _rows(markdown)
    assert len(rows) == 4 and all(len(row) == 12 for row in rows)
    maml_dir = runs[0].workdir
    assert rows[0] == ["maml", "maml", "5w1s", "test", "transductive", "1", "3", "600",
                       "96.73 ± 0.72 %", "2000", "10.0", os.path.join(maml_dir, "eval_test.json")]
    assert rows[1][:10] == ["maml", "maml", "5w1s", "test", "non-transductive", "15", "3",
                            "600", "93.12 ± 1.01 %", "2000"]
    assert rows[1][11].endswith("eval_test_nontransductive.json")
    # Missing keys show as "?"; without history the wall time is unknown too.
    assert rows[2] == ["old", "fomaml", "5w5s", "test", "?", "?", "3", "600", "98.77 ± 0.35 %",
                       "60000", "?", os.path.join(runs[1].workdir, "eval_test.json")]
    # No wall time in the eval file: the last validation point's (78 s) is used.
    assert rows[3][:11] == ["sine", "maml", "K=10", "test", "?", "?", "3", "600",
                            "0.131 ± 0.026", "2000", "1.3"]
    notes = [line for line in markdown.splitlines() if line.startswith("- ")]
    assert len(notes) == 3
    assert notes[0].startswith("- maml (maml, omniglot, ")
    assert "iteration 2000: accuracy 94.30 ± 1.20 % over 200 episodes, 10.2 min" in notes[0]
    assert notes[1].endswith("no validation history")
    assert "iteration 200: mse 0.400 ± 0.012" in notes[2]


def test_config_without_keys_shows_question_marks(tmp_path):
    run = reporting.load_run(_workdir(tmp_path, "bare", {"seed": 1}, evals={
        "eval_test.json": {"metric": "accuracy", "accuracy": 0.5}}))
    [row] = _rows(reporting.results_table([run]))
    assert row[:11] == ["bare", "?", "?", "?", "?", "?", "?", "?", "50.00 ± ? %", "?", "?"]
    assert "- bare (?, ?, " in reporting.results_table([run])


def _pixels(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300
        return np.asarray(image.convert("RGB"))


def _has_colour(pixels, rgb):
    return bool(np.all(pixels == np.array(rgb, np.uint8), axis=-1).any())


def test_plots_draw_one_line_per_run(tmp_path):
    runs = [reporting.load_run(_maml(tmp_path), "a"),
            reporting.load_run(_workdir(tmp_path, "b",
                                        history=[_point(100, 0.5), _point(900, 0.6)]))]
    out = str(tmp_path / "out" / "nested")
    paths = reporting.plot_curves(runs, out, title="5-way 1-shot")
    assert paths == [os.path.join(out, "accuracy_vs_iterations.png"),
                     os.path.join(out, "accuracy_vs_minutes.png")]
    for path in paths:
        pixels = _pixels(path)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1
        assert all(_has_colour(pixels, rgb) for rgb in RUN_COLOURS), path
    # A run without history draws no line.
    empty = reporting.plot_curves([reporting.load_run(_old(tmp_path))], str(tmp_path / "empty"))
    pixels = _pixels(empty[0])
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1
    assert not _has_colour(pixels, RUN_COLOURS[0])


def test_reads_and_writes_through_gfile(tmp_path):
    """TensorFlow's in-memory file system stands in for gs://, which os.path cannot reach."""
    import tensorflow as tf

    root = f"ram://{tmp_path.name}"
    tf.io.gfile.makedirs(f"{root}/run")
    with tf.io.gfile.GFile(f"{root}/run/history.jsonl", "w") as f:
        f.write(json.dumps(_point(100, 0.5)) + "\n" + json.dumps(_point(200, 0.75)) + "\n")
    with tf.io.gfile.GFile(f"{root}/run/eval_test.json", "w") as f:
        f.write(json.dumps(_eval()))
    markdown = reporting.write_report([f"{root}/run"], f"{root}/out")
    assert _rows(markdown)[0][8] == "96.73 ± 0.72 %"
    assert sorted(tf.io.gfile.listdir(f"{root}/out")) == [
        "accuracy_vs_iterations.png", "accuracy_vs_minutes.png", "results.md"]
    with tf.io.gfile.GFile(f"{root}/out/accuracy_vs_minutes.png", "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with tf.io.gfile.GFile(f"{root}/out/results.md") as f:
        assert f.read() == markdown


def test_importing_defines_no_flags():
    from absl import flags

    assert "labels" not in flags.FLAGS and "title" not in flags.FLAGS


@pytest.mark.parametrize("case", ["missing", "not_a_dir", "empty", "labels", "no_workdirs",
                                  "mixed", "bad_history", "bad_eval", "eval_no_metric",
                                  "binary_config", "output_is_a_file"])
def test_mistakes_in_the_input_raise_an_error_naming_them(case, tmp_path):
    good = _maml(tmp_path)
    out = str(tmp_path / "out")
    labels = None
    if case == "missing":
        workdirs, expected = [good, str(tmp_path / "nope")], str(tmp_path / "nope")
    elif case == "not_a_dir":
        workdirs, expected = [good + "/eval_test.json"], "eval_test.json"
    elif case == "empty":
        workdirs, expected = [_workdir(tmp_path, "empty", _config())], "empty"
    elif case == "labels":
        workdirs, labels, expected = [good, _old(tmp_path)], ["x", "y", "z"], "x,y,z"
    elif case == "no_workdirs":
        workdirs, expected = [], "no work directories"
    elif case == "mixed":
        workdirs, expected = [good, _sinusoid(tmp_path)], "sine"
    elif case == "bad_history":
        workdirs = [_workdir(tmp_path, "bad", history=[_point(1, 0.5), "", '{"step": 2,'])]
        expected = "history.jsonl' at line 3"
    elif case == "bad_eval":
        workdirs = [_workdir(tmp_path, "bad", evals={"eval_test.json": "{not json"})]
        expected = "eval_test.json"
    elif case == "binary_config":
        workdirs = [_workdir(tmp_path, "bad", history=[_point(1, 0.5)])]
        with open(os.path.join(workdirs[0], "config.json"), "wb") as f:
            f.write(bytes(range(256)))
        expected = "config.json' is not text"
    elif case == "eval_no_metric":
        workdirs = [_workdir(tmp_path, "bad", evals={"eval_x.json": {"metric": "accuracy"}})]
        expected = "eval_x.json"
    else:
        out = str(tmp_path / "taken")
        open(out, "w").close()
        workdirs, expected = [good], out
    with pytest.raises(reporting.ReportError) as info:
        reporting.write_report(workdirs, out, labels=labels)
    assert expected in str(info.value), str(info.value)
    assert not os.path.exists(os.path.join(str(tmp_path / "out"), "results.md"))


def _files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                found[os.path.relpath(os.path.join(folder, name), root)] = f.read()
    return found


def test_report_replaces_only_its_own_files_and_only_with_replace(tmp_path):
    workdir = _maml(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    reporting.write_report([workdir], str(out))
    first = _files(out)
    assert sorted(first) == ["accuracy_vs_iterations.png", "accuracy_vs_minutes.png",
                             "notes.txt", "results.md"]
    assert all(reporting.is_own_output(str(out / name)) for name in first if name != "notes.txt")
    # Again without replace: refused, nothing changes.
    with pytest.raises(reporting.ReportError, match="holds an earlier report; pass --replace") \
            as info:
        reporting.write_report([workdir], str(out), title="again")
    assert str(out) in str(info.value)
    assert _files(out) == first
    # With replace the report's own files are replaced, the others kept.
    reporting.write_report([workdir], str(out), title="again", replace=True)
    second = _files(out)
    assert second["results.md"].startswith(b"# again\n") and second["notes.txt"] == b"mine"
    assert sorted(os.listdir(out)) == sorted(first), "no temporary may be left"


@pytest.mark.parametrize("name", ["results.md", "accuracy_vs_minutes.png"])
def test_report_never_overwrites_a_file_it_did_not_write(tmp_path, name):
    workdir = _maml(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    if name.endswith(".png"):  # a PNG, but not one of the report's
        Image.new("RGB", (4, 4)).save(out / name)
    else:
        (out / name).write_text("# My results\n")
    before = _files(out)
    for replace in (False, True):
        with pytest.raises(reporting.ReportError, match="was not written by tfmeta.report") \
                as info:
            reporting.write_report([workdir], str(out), replace=replace)
        assert name in str(info.value)
        assert _files(out) == before, "nothing may be written, not even the other files"
