r"""Learning curves and a results table for one or more training work directories.

    python -m tfmeta.report WORKDIR [WORKDIR ...] --output=DIR [--replace] [--labels=a,b,c]
        [--title=TEXT]

Each WORKDIR is read (through ``tf.io.gfile``, so ``gs://`` works too) for what the trainer wrote:
``config.json``, ``history.jsonl`` (validation results; a step repeated by a resumed run keeps its
later line) and ``eval_*.json`` (final evaluations, from the trainer or ``tfmeta.evaluate``).

Written into DIR: ``accuracy_vs_iterations.png`` and ``accuracy_vs_minutes.png`` (the validation
metric against meta-iterations and against wall-clock minutes, one line per run) and
``results.md`` (one row per run and evaluation file, then each run's last validation point), which
is also printed. A mistake in the input ends with a single ``error: ...`` line and exit code 2.

The report overwrites nothing it did not write. If one of the three files already exists in DIR,
nothing is written unless ``--replace`` is given, and even then only files recognisably written by
``tfmeta.report`` are replaced: a ``results.md`` holding the report's table header row, a PNG
carrying the ``Software: tfmeta.report`` text chunk the report stamps into its plots. Any other
file of that name is refused (one ``error:`` line naming it). Other files in DIR are never touched.
The work is done by :mod:`tfmeta.run.reporting`.
"""

from __future__ import annotations

from absl import flags

from tfmeta.run import cli, reporting

USAGE = "usage: python -m tfmeta.report WORKDIR [WORKDIR ...] --output=DIR [--replace]"

# --output is checked in main, not marked required: absl would exit 1 with a usage dump instead of
# the single error line and exit code 2 of every other input mistake.
_OUTPUT = flags.DEFINE_string("output", None, "Directory for the plots and results.md.")
_LABELS = flags.DEFINE_list(
    "labels", None, "Comma-separated run labels, one per WORKDIR (default: base names).")
_TITLE = flags.DEFINE_string("title", None, "Title of the plots and of results.md.")
_REPLACE = flags.DEFINE_bool(
    "replace", False, "Replace the plots and results.md of an earlier report in --output (files "
    "of those names that a report did not write are never overwritten).")


def main(argv: list[str]) -> int:
    """Reports on the work directories ``argv[1:]``; a mistake is one ``error:`` line, status 2."""
    if not _OUTPUT.value:
        return cli.fail(f"--output is required (the directory to write the report into); {USAGE}")
    if len(argv) < 2:
        return cli.fail(f"no work directories given; {USAGE}")
    markdown = reporting.write_report(argv[1:], _OUTPUT.value, labels=_LABELS.value,
                                      title=_TITLE.value, replace=_REPLACE.value)
    print(markdown, end="")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
