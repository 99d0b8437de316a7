r"""Classifies images with an exported model after adapting it to a folder of examples.

    python -m tfmeta.adapt --saved_model=/tmp/run/export --support=DIR --query=DIR_OR_FILES \
        [--json] [--inner_steps=N] [--transductive]

``--support`` holds one subfolder per class (the subfolder name is the class name) with a few
example images each (the formats training reads: PNG, JPEG, BMP, GIF, TIFF, WebP, PPM; any size
and depth; see :mod:`tfmeta.data.image_folders` for how they are read). ``--query`` is a directory of
images or a comma-separated list of image files and directories; directories are read
recursively, in sorted order. Whatever is skipped in a folder (hidden files, files that are not
images, ...) is named with the reason in a warning on stderr. Each query is printed with its
path and predicted class and probability, as a table or, with ``--json``, as one JSON document.
Each query's answer depends only on the support set and that query; ``--transductive`` asks for
MAML's original protocol instead (the queries are batch-normalised together); the output says
which protocol was used. The work is done by :mod:`tfmeta.serving.serving_client`.

A mistake in the input (a missing or unreadable path, a folder without images, more classes than
the model's N, a SavedModel not exported by tfmeta, ``--inner_steps`` outside ``[0,
max_inner_steps]`` of the export) is printed as one line ``error: ...`` on stderr, exit status 2.
Ctrl-C stops the command at once, even during a long adaptation: it prints ``interrupted`` on
stderr and exits with status 130. ``-v 1`` logs what is adapted, just before the SavedModel call.

Importing this module defines the binary's flags; library users import
:mod:`tfmeta.serving.serving_client` instead. ``adapt_and_predict`` and ``check_labels`` stay importable
from here for compatibility.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import NoReturn

from absl import flags

from tfmeta.run import cli
from tfmeta.serving import serving_client
from tfmeta.base import signatures
from tfmeta.serving.serving_client import adapt_and_predict, check_labels  # noqa: F401  (re-exported)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "Exported SavedModel directory.")
_SUPPORT = flags.DEFINE_string(
    "support", None, "Directory with one subfolder of example images per class.")
_QUERY = flags.DEFINE_list(
    "query", None, "Query image directory (read recursively), or comma-separated image "
    "files/directories.")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")
_INNER_STEPS = flags.DEFINE_integer(
    "inner_steps", None, "Inner steps (default: the export's configured number; at most its "
    "max_inner_steps).", lower_bound=0, upper_bound=signatures.MAX_INNER_STEPS)
_TRANSDUCTIVE = flags.DEFINE_bool(
    "transductive", False, "Normalise the queries together (MAML's original protocol: each "
    "answer then depends on the other queries). Default: each query on its own.")
flags.mark_flags_as_required(["saved_model", "support", "query"])


def _exit_interrupted() -> NoReturn:
    """Ends the process at once, with the status shells use for Ctrl-C.

    A SavedModel call still running in its worker thread cannot be stopped, and a normal
    interpreter exit would tear Python down under it (tried: it died of SIGSEGV, status 139).
    """
    # Straight to the file descriptor: the worker may hold sys.stderr's lock (a log line blocked
    # on a full pipe), and waiting for it would hold up the exit.
    os.write(2, b"interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.fail(f"unexpected arguments {argv[1:]}; pass several queries as "
                        "--query=A,B (comma-separated)")
    # Ctrl-C ends the process from the signal handler itself rather than through a
    # KeyboardInterrupt, which code between here and the waiting loop could delay or swallow.
    signal.signal(signal.SIGINT, lambda signum, frame: _exit_interrupted())
    protocol = ("transductive: queries batch-normalised together" if _TRANSDUCTIVE.value
                else "each query answered on its own")
    try:
        classes, predictions = serving_client.classify(
            _SAVED_MODEL.value, _SUPPORT.value, _QUERY.value, inner_steps=_INNER_STEPS.value,
            transductive=_TRANSDUCTIVE.value)
    except KeyboardInterrupt:
        _exit_interrupted()
    if _JSON.value:
        print(json.dumps({"saved_model": _SAVED_MODEL.value, "classes": classes,
                          "protocol": protocol,
                          "predictions": [dataclasses.asdict(p) for p in predictions]}, indent=2))
    else:
        print(serving_client.format_table(predictions))
        print(f"({protocol})")
    return 0


def run() -> None:
    """Console-script entry point."""
    cli.run(main)


if __name__ == "__main__":
    run()
