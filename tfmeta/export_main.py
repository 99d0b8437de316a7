r"""Exports a trained run as a fast-adaptation SavedModel.

    python -m tfmeta.export --workdir=/tmp/run [--output=/tmp/run/export]

(``tfmeta-export`` is the same command.) The SavedModel's signatures are described in
:mod:`tfmeta.export`; ``tfmeta.train`` runs this automatically at the end of training.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a tfmeta.train run.")
_OUTPUT = flags.DEFINE_string("output", None, "SavedModel directory (default: WORKDIR/export).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from tfmeta import export

    try:
        path = export.export_from_workdir(_WORKDIR.value, _OUTPUT.value)
    except (FileNotFoundError, export.ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported to {path}")
    print(json.dumps(export.read_metadata(path), sort_keys=True))
    return 0


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
