"""tfmeta.report, the binary: work directories in, plots and a table out, errors in one line.

The library, tfmeta.run.reporting, is tested in test_reporting.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types

import pytest

from tests.helpers import REPO
from tests.unit.run.test_reporting import RUN_COLOURS, _has_colour, _maml, _old, _pixels, _rows

# Importing the tfmeta package imports TensorFlow, whose C++ logging writes these lines to stderr
# even with TF_CPP_MIN_LOG_LEVEL=2; they are not the report's output.
TF_LOG_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                         r"[IWE]\d{4} [\d:.]+\s+\d+ \S+:\d+\])")


def _cli_env():
    env = dict(os.environ)
    env.update(PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _report_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip() and not TF_LOG_LINE.match(line)]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Runs the binary's cases at once: each process spends most of its time importing TF.

    Every mistake the library finds is checked in test_reporting.py; here the binary's own
    (no --output, no work directory) and one of the library's show that each ends as a single
    error line with exit code 2.
    """
    root = tmp_path_factory.mktemp("cli")
    maml, old = _maml(root / "a"), _old(root / "b")
    out, taken = str(root / "report"), root / "taken"
    taken.mkdir()
    (taken / "results.md").write_text("# My results\n")
    commands = {
        "ok": [maml, old, f"--output={out}", "--labels=MAML,old", "--title=Omniglot 5-way"],
        "no_output": [maml],
        "no_workdirs": [f"--output={root / 'unused'}"],
        "refused": [maml, f"--output={taken}", "--replace"],
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", "tfmeta.report", *args], cwd=REPO,
                                    env=_cli_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = types.SimpleNamespace(returncode=proc.returncode, stdout=stdout,
                                              stderr=stderr)
    return types.SimpleNamespace(out=out, taken=str(taken), **results)


def test_binary_writes_plots_and_table(cli):
    assert cli.ok.returncode == 0, cli.ok.stderr[-3000:]
    assert _report_lines(cli.ok.stderr) == []
    for name in ("accuracy_vs_iterations.png", "accuracy_vs_minutes.png"):
        pixels = _pixels(os.path.join(cli.out, name))
        assert _has_colour(pixels, RUN_COLOURS[0])
    with open(os.path.join(cli.out, "results.md")) as f:
        markdown = f.read()
    assert markdown == cli.ok.stdout
    assert markdown.startswith("# Omniglot 5-way\n")
    rows = _rows(markdown)
    assert [(row[0], row[4], row[8]) for row in rows] == [
        ("MAML", "transductive", "96.73 ± 0.72 %"),
        ("MAML", "non-transductive", "93.12 ± 1.01 %"),
        ("old", "?", "98.77 ± 0.35 %")]


def test_binary_user_errors_exit_2_with_one_line(cli):
    expected = {"no_output": "error: --output is required",
                "no_workdirs": "error: no work directories given; usage: python -m tfmeta.report",
                "refused": "error: " + repr(os.path.join(cli.taken, "results.md"))}
    for name, start in expected.items():
        proc = getattr(cli, name)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stdout == ""
        [line] = _report_lines(proc.stderr)
        assert line.startswith(start), line
    assert "was not written by tfmeta.report" in _report_lines(cli.refused.stderr)[0]
    assert not os.path.exists(os.path.join(cli.out, "..", "unused"))
