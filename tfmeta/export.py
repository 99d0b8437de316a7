r"""Exports a trained run as a fast-adaptation SavedModel.

    python -m tfmeta.export --workdir=/tmp/run [--output=PATH [--replace]] [--max_inner_steps=N]

(``tfmeta-export`` is the same command.) The SavedModel's signatures are described in
:mod:`tfmeta.serving.graph`; :mod:`tfmeta.run.exporter` is the library that does the work
(``tfmeta.train`` exports the experiment it trained the same way).

The default output, ``WORKDIR/export``, belongs to the run: a previous export there is replaced.
``--output=PATH`` must not exist, or hold a tfmeta SavedModel (nothing else in its whole tree)
and come with ``--replace``; anything else there (a file, a work directory, other files at any
depth) is refused with one ``error:`` line naming the first foreign file (exit status 2) and left
untouched.
"""

from __future__ import annotations

import json

from absl import flags

from tfmeta.run import cli
from tfmeta.run import config as config_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a tfmeta.train run.")
_OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory (default: WORKDIR/export).")
_REPLACE = flags.DEFINE_bool(
    "replace", False, "Replace a tfmeta SavedModel already at --output (never anything else; "
    "the default WORKDIR/export is replaced without it).")
_MAX_INNER_STEPS = flags.DEFINE_integer(
    "max_inner_steps", None, "Largest inner_steps a client may ask the SavedModel for (default: "
    "the config's export.max_inner_steps).", lower_bound=1,
    upper_bound=config_lib.RANGES["export.max_inner_steps"].high)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.fail(f"unexpected arguments: {argv[1:]}")
    from tfmeta.run import exporter

    path = exporter.export_from_workdir(_WORKDIR.value, _OUTPUT.value, replace=_REPLACE.value,
                                        max_inner_steps=_MAX_INNER_STEPS.value,
                                        wording=exporter.COMMAND_LINE)
    print(f"exported to {path}")
    print(json.dumps(exporter.read_metadata(path), sort_keys=True))
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
