"""Learning curves and a results table for training work directories (what tfmeta.report writes).

Each work directory is read (through ``tf.io.gfile``, so ``gs://`` works too) for what the trainer
wrote:

* ``config.json``: algorithm, task, ways and shots;
* ``history.jsonl``: one validation result per line, in training order; a resumed run may repeat a
  step, and then the later line wins;
* ``eval_*.json``: final evaluations (from the trainer or ``tfmeta.evaluate``).

:func:`write_report` writes ``accuracy_vs_iterations.png`` and ``accuracy_vs_minutes.png`` (the
validation metric against meta-iterations and against wall-clock minutes, one line per run) and
``results.md`` (one row per run and evaluation file, then each run's last validation point).

A report overwrites nothing it did not write. If one of the three files already exists, nothing is
written unless ``replace`` is given, and even then only files recognisably written by a report are
replaced: a ``results.md`` holding the report's table header row, a PNG carrying the ``Software:
tfmeta.report`` text chunk the report stamps into its plots. Any other file of that name is
refused. Other files in the output directory are never touched. Every mistake in the input raises
:class:`ReportError` naming the path or value. TensorFlow and matplotlib are imported only when
used.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from tfmeta.base import errors

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.jsonl"
EVAL_PATTERN = "eval_*.json"
ITERATIONS_PLOT = "accuracy_vs_iterations.png"
MINUTES_PLOT = "accuracy_vs_minutes.png"
TABLE_FILE = "results.md"
# Stamped into every plot as a PNG text chunk: how a later report knows the file is its own.
PNG_SOFTWARE = "tfmeta.report"

_COLUMNS = ("label", "algorithm", "ways-shots", "split", "protocol", "queries/class",
            "inner steps", "episodes", "result", "iterations", "wall min", "file")
_NUMERIC_COLUMNS = {"queries/class", "inner steps", "episodes", "result", "iterations",
                    "wall min"}
# The table's header row: a results.md holding it was written by a report.
_HEADER_ROW = "| " + " | ".join(_COLUMNS) + " |"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportError(errors.UserError, ValueError):
    """A mistake in the report's input; the message names the offending path or value."""


@dataclasses.dataclass
class Run:
    """What one training work directory holds.

    Attributes:
      label: the run's name in legends and tables.
      workdir: the work directory.
      config: the experiment config; empty when there is no ``config.json``.
      history: validation points sorted by step, one per step.
      evaluations: ``(path, result)`` for each ``eval_*.json``, sorted by path.
    """

    label: str
    workdir: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    evaluations: list[tuple[str, dict[str, Any]]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_metric(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("metric"), str)
            and _is_number(record.get(record["metric"])))


def _read_text(path: str) -> str:
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (OSError, tf.errors.OpError) as e:
        raise ReportError(f"cannot read {path!r}: {e}") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path!r} is not text (not UTF-8: overwritten or corrupted?); "
                          "restore it from a backup or leave that work directory out") from None


def _read_json_object(path: str) -> dict[str, Any]:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ReportError(f"malformed JSON in {path!r}: {e}") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path!r} holds a JSON {type(value).__name__}, expected an object")
    return value


def _read_history(path: str) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"malformed JSON in {path!r} at line {number}: {e.msg}") from None
        if not (_has_metric(point) and _is_number(point.get("step"))):
            raise ReportError(f"{path!r} line {number} lacks a numeric \"step\" or a \"metric\" "
                              f"with a numeric value: {line.strip()[:100]}")
        if point.get("split", "validation") != "validation":
            continue
        # A resumed run evaluates again at steps it had already reached: the newer result stands.
        by_step[int(point["step"])] = point
    return [by_step[step] for step in sorted(by_step)]


def load_run(workdir: str, label: str | None = None) -> Run:
    """Reads a training work directory.

    Args:
      workdir: the directory ``tfmeta.train`` wrote (local path or ``gs://...``).
      label: the run's name in plots and tables; the directory's base name when None.

    Returns:
      The run; ``history`` or ``evaluations`` may be empty, but not both.

    Raises:
      ReportError: the directory is missing, holds neither ``history.jsonl`` nor ``eval_*.json``,
        or one of its files is malformed (the message names the file, and the line in
        ``history.jsonl``).
    """
    import tensorflow as tf

    from tfmeta.run.workdir import normalize
    workdir = normalize(workdir)
    if not tf.io.gfile.isdir(workdir):
        problem = "is not a directory" if tf.io.gfile.exists(workdir) else "does not exist"
        raise ReportError(f"work directory {workdir!r} {problem}")
    # Object stores list subdirectories with a trailing "/".
    names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(workdir))
    eval_paths = [os.path.join(workdir, name) for name in names
                  if fnmatch.fnmatch(name, EVAL_PATTERN)]
    if HISTORY_FILE not in names and not eval_paths:
        raise ReportError(f"work directory {workdir!r} holds neither {HISTORY_FILE} nor "
                          f"{EVAL_PATTERN}; is it a tfmeta.train work directory?")
    config = (_read_json_object(os.path.join(workdir, CONFIG_FILE))
              if CONFIG_FILE in names else {})
    history = (_read_history(os.path.join(workdir, HISTORY_FILE))
               if HISTORY_FILE in names else [])
    evaluations = []
    for path in eval_paths:
        result = _read_json_object(path)
        if not _has_metric(result):
            raise ReportError(f"{path!r} lacks a \"metric\" with a numeric value")
        evaluations.append((path, result))
    label = label or os.path.basename(workdir.rstrip("/")) or workdir
    return Run(label=label, workdir=workdir, config=config, history=history,
               evaluations=evaluations)


def _metric(runs: Sequence[Run]) -> str:
    """The one metric all runs report; accuracy when they report none."""
    users: dict[str, list[str]] = {}
    for run in runs:
        names = {p["metric"] for p in run.history} | {r["metric"] for _, r in run.evaluations}
        for name in sorted(names):
            users.setdefault(name, []).append(run.workdir)
    if len(users) > 1:
        mix = "; ".join(f"{name} in {', '.join(dirs)}" for name, dirs in sorted(users.items()))
        raise ReportError(f"the runs mix metrics ({mix}); report each metric separately")
    return next(iter(users), "accuracy")


def _minutes(point: dict[str, Any]) -> float | None:
    seconds = point.get("wall_seconds")
    return seconds / 60 if _is_number(seconds) else None


# --------------------------------------------------------------------------- owned outputs
def _png_software(data: bytes) -> str | None:
    """The ``Software`` text chunk of a PNG, or None (not a PNG, or no such chunk)."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    at = len(_PNG_SIGNATURE)
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, value = body.split(b"\0", 1)
            if key == b"Software":
                return value.decode("latin-1")
        if kind in (b"IDAT", b"IEND"):  # text chunks that matter come before the image data
            return None
        at += 12 + length
    return None


def is_own_output(path: str) -> bool:
    """Tells whether the existing file ``path`` was written by a report.

    Args:
      path: a plot or ``results.md`` path.

    Returns:
      True for a ``results.md`` holding the report's table header row or a PNG stamped
      ``Software: tfmeta.report``; False for anything else, a directory or an unreadable path.
    """
    import tensorflow as tf

    try:
        if tf.io.gfile.isdir(path):
            return False
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except (OSError, tf.errors.OpError):
        return False
    if path.endswith(".png"):
        return _png_software(data) == PNG_SOFTWARE
    return _HEADER_ROW in data.decode("utf-8", errors="replace").splitlines()


def check_outputs(paths: Sequence[str], *, replace: bool) -> None:
    """Checks that every path in ``paths`` is new, or a report's own file to be replaced.

    Args:
      paths: the files a report is about to write.
      replace: whether an earlier report's files may be replaced.

    Raises:
      ReportError: naming the first path that exists and is not the report's own (never
        overwritten), or that is the report's own while ``replace`` is False.
    """
    import tensorflow as tf

    for path in paths:
        try:
            exists = tf.io.gfile.exists(path)
        except tf.errors.OpError as e:
            raise ReportError(f"cannot check {path!r}: {e}") from e
        if not exists:
            continue
        if not is_own_output(path):
            raise ReportError(f"{path!r} exists and was not written by tfmeta.report; it is never "
                              "overwritten, even with --replace: move it away or choose another "
                              "--output")
        if not replace:
            raise ReportError(f"{path!r} holds an earlier report; pass --replace to replace it, "
                              "or choose another --output")


def _write_file(path: str, data: bytes) -> None:
    """Writes ``data`` to a new sibling of ``path`` and renames it into place.

    The temporary is removed on any failure, so ``path`` is either the old or the new file.
    """
    import uuid

    import tensorflow as tf

    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.tfmeta-tmp-{uuid.uuid4().hex[:12]}")
    try:
        # GFile cannot seek on object stores, so the content is complete in memory first.
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        try:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        except (OSError, tf.errors.OpError):
            pass
        raise


def plot_curves(runs: Sequence[Run], output_dir: str, title: str | None = None, *,
                replace: bool = False) -> list[str]:
    """Plots every run's validation metric against meta-iterations and against wall-clock minutes.

    Args:
      runs: the runs; those without history draw no line.
      output_dir: where the PNGs go (created if missing).
      title: the plots' title; none when None.
      replace: whether earlier plots of a report in ``output_dir`` may be replaced (files of the
        same name that a report did not write never are).

    Returns:
      The paths written: ``accuracy_vs_iterations.png`` and ``accuracy_vs_minutes.png``.

    Raises:
      ReportError: the runs mix metrics (e.g. accuracy and mse), or a plot's path is taken (see
        :func:`check_outputs`).
    """
    import matplotlib

    # Agg draws without a display; a process that already chose a backend for pyplot keeps it.
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    metric = _metric(runs)
    paths = [os.path.join(output_dir, name) for name in (ITERATIONS_PLOT, MINUTES_PLOT)]
    check_outputs(paths, replace=replace)
    scale, ylabel = {"accuracy": (100.0, "validation accuracy (%)"),
                     "mse": (1.0, "validation MSE")}.get(metric, (1.0, f"validation {metric}"))
    tf.io.gfile.makedirs(output_dir)
    written = []
    for name, xlabel, x_of in ((ITERATIONS_PLOT, "meta-iterations", lambda p: p["step"]),
                               (MINUTES_PLOT, "wall-clock minutes", _minutes)):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        try:
            for run in runs:
                points = [(x_of(p), scale * p[metric]) for p in run.history
                          if x_of(p) is not None]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker="o", markersize=4, label=run.label)
            if ax.lines:
                ax.legend()
            else:
                ax.text(0.5, 0.5, "no validation history", transform=ax.transAxes,
                        ha="center", va="center")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if title:
                ax.set_title(title)
            fig.tight_layout()
            png = io.BytesIO()
            fig.savefig(png, format="png", dpi=120, metadata={"Software": PNG_SOFTWARE})
        finally:
            plt.close(fig)
        path = os.path.join(output_dir, name)
        _write_file(path, png.getvalue())
        written.append(path)
    return written


def _known(value: Any) -> str:
    return "?" if value is None else str(value)


def _format_result(record: dict[str, Any]) -> str:
    metric = record["metric"]
    value, ci95 = record[metric], record.get("ci95")
    if metric == "accuracy":
        text, unit = f"{100 * value:.2f}", " %"
        ci = f"{100 * ci95:.2f}" if _is_number(ci95) else "?"
    else:
        text, unit = f"{value:.3f}", ""
        ci = f"{ci95:.3f}" if _is_number(ci95) else "?"
    note = record.get("not_the_benchmark")
    # A benchmark used with classes short of images: its number must not read as the benchmark's.
    return f"{text} ± {ci}{unit}" + (f" ({note})" if note else "")


def _format_minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if _is_number(seconds) and math.isfinite(seconds) else "?"


def _setting(run: Run, result: dict[str, Any]) -> str:
    """Ways and shots, or the support size K of a regression task."""
    data = run.config.get("data")
    data = data if isinstance(data, dict) else {}
    if result["metric"] == "mse" or run.config.get("task") == "sinusoid":
        return f"K={_known(result.get('k_support', data.get('k_support')))}"
    ways, shots = result.get("ways", data.get("ways")), result.get("shots", data.get("shots"))
    return "?" if ways is None and shots is None else f"{_known(ways)}w{_known(shots)}s"


def _protocol(result: dict[str, Any]) -> str:
    transductive = result.get("transductive")
    if transductive is None:
        return "?"
    return "transductive" if transductive else "non-transductive"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _last_validation(run: Run) -> str:
    if not run.history:
        return "no validation history"
    last = run.history[-1]
    minutes = _format_minutes(last.get("wall_seconds"))
    return (f"last validation at iteration {last['step']}: {last['metric']} "
            f"{_format_result(last)} over {_known(last.get('episodes'))} episodes, "
            f"{minutes} min")


def results_table(runs: Sequence[Run]) -> str:
    """Formats the final evaluations and the last validation points as markdown.

    The table has one row per (run, evaluation file); a line per run follows with its last
    validation point. Accuracy reads ``96.73 ± 0.72 %`` (percent, 95% confidence interval), MSE
    ``0.131 ± 0.026``. Wall minutes come from the evaluation file, else from the run's last
    validation point; anything unknown (older files lack some keys) shows as ``?``.

    Args:
      runs: the runs, in the table's order.

    Returns:
      The markdown, ending with a newline.
    """
    lines = ["| " + " | ".join(_COLUMNS) + " |",
             "|" + "|".join("---:" if c in _NUMERIC_COLUMNS else "---" for c in _COLUMNS) + "|"]
    for run in runs:
        last_seconds = run.history[-1].get("wall_seconds") if run.history else None
        for path, result in run.evaluations:
            seconds = result.get("wall_seconds")
            cells = [
                run.label,
                result.get("algorithm", run.config.get("algorithm")),
                _setting(run, result),
                result.get("split"),
                _protocol(result),
                result.get("queries"),
                result.get("inner_steps"),
                result.get("episodes"),
                _format_result(result),
                result.get("step"),
                _format_minutes(seconds if _is_number(seconds) else last_seconds),
                path,
            ]
            lines.append("| " + " | ".join(_cell(_known(c)) for c in cells) + " |")
    lines.append("")
    for run in runs:
        about = ", ".join(_known(run.config.get(key)) for key in ("algorithm", "task"))
        lines.append(f"- {run.label} ({about}, {run.workdir}): {_last_validation(run)}")
    return "\n".join(lines) + "\n"


def write_report(workdirs: Sequence[str], output_dir: str, labels: Sequence[str] | None = None,
                 title: str | None = None, *, replace: bool = False) -> str:
    """Loads the runs and writes both plots and ``results.md`` into ``output_dir``.

    All three paths are checked before anything is written: each must be new or, with
    ``replace``, a file an earlier report wrote (see :func:`check_outputs`).

    Args:
      workdirs: the training work directories, at least one.
      output_dir: where the plots and ``results.md`` go (created if missing).
      labels: one label per work directory; their base names when None.
      title: heading of ``results.md`` and title of the plots; none when None.
      replace: whether an earlier report's files in ``output_dir`` may be replaced.

    Returns:
      The markdown written to ``results.md``.

    Raises:
      ReportError: no work directories, a label count that differs from theirs, an output
        directory that cannot be written or holds files the report may not overwrite, or any
        error of :func:`load_run` and :func:`plot_curves`.
    """
    import tensorflow as tf

    if not workdirs:
        raise ReportError("no work directories given")
    if labels is not None and len(labels) != len(workdirs):
        raise ReportError(f"--labels has {len(labels)} values ({','.join(labels)}) for "
                          f"{len(workdirs)} work directories ({' '.join(workdirs)})")
    runs = [load_run(w, label) for w, label in zip(workdirs, labels or [None] * len(workdirs))]
    markdown = (f"# {title}\n\n" if title else "") + results_table(runs)
    if tf.io.gfile.exists(output_dir) and not tf.io.gfile.isdir(output_dir):
        raise ReportError(f"--output {output_dir!r} is a file, not a directory; it is never "
                          "overwritten: choose a directory")
    table = os.path.join(output_dir, TABLE_FILE)
    check_outputs([os.path.join(output_dir, name) for name in (ITERATIONS_PLOT, MINUTES_PLOT)]
                  + [table], replace=replace)
    try:
        plot_curves(runs, output_dir, title=title, replace=replace)
        _write_file(table, markdown.encode("utf-8"))
    except (OSError, tf.errors.OpError) as e:
        raise ReportError(f"cannot write the report into {output_dir!r}: {e}") from e
    return markdown
