"""What every tfmeta binary shares: quiet start-up, flag parsing, user errors as one line.

A mistake a user can make raises a :class:`tfmeta.base.errors.UserError` (or names a missing or
unreadable path with the built-in ``OSError`` subclasses below): the binary prints exactly one line
``error: ...`` on stderr and exits with status 2; never a traceback. Failures that are not the
user's input (a bug, a diverging run) keep their traceback and exit status 1.

Start-up output: :func:`run` loads TensorFlow once the flags are parsed (so ``--help`` and flag
errors return in about a second), with its C++ log level set from ``--verbosity`` and its native
start-up lines filtered out, and lets through only tfmeta's own INFO lines (TFDS's progress bars
off); ``--verbosity=1`` brings back everything TensorFlow, TFDS and absl print. A binary's
module-level imports and its flag checks must therefore not import TensorFlow
(``tests/unit/run/test_cli.py`` checks ``--help`` of every binary).

This module imports nothing else of tfmeta, so a binary's shell never depends on the library's
layers.
"""

from __future__ import annotations

import logging as py_logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from absl import logging

from tfmeta.base import errors

# Built-in errors that a binary's input causes (a path that does not exist or cannot be read);
# everything else that is the user's is a tfmeta.base.errors.UserError.
_PATH_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "--helpfull", "-helpfull",
               "--helpxml", "-helpxml", "-?")
# absl's own --verbosity flag: 0 (the default) shows tfmeta's INFO lines and warnings and other
# libraries' errors, 1 or more everything, -1 tfmeta's warnings and errors only.
_TFMETA_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input": reported as one line with exit status 2."""
    return (errors.UserError, *_PATH_ERRORS)


def fail(message: str) -> int:
    """Prints ``error: message`` as one line on stderr and returns exit status 2."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    return 2


def _verbosity(argv: Sequence[str]) -> int:
    """The value of ``--verbosity``/``-v`` in ``argv`` (absl's flag), read before absl parses it."""
    value = "0"
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        for name in ("--verbosity", "-verbosity", "--v", "-v"):
            if arg.startswith(name + "="):
                value = arg.split("=", 1)[1]
            elif arg == name and i + 1 < len(argv):
                value = argv[i + 1]
    try:
        return int(value)
    except ValueError:
        return 0  # absl reports the bad value when it parses the flag


# TensorFlow's native start-up lines: printed while it loads, before its C++ logging reads
# TF_CPP_MIN_LOG_LEVEL, so the level cannot hide them.
_START_UP_CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ (port|cpu_feature_guard|cuda_\w+|dso_loader|gpu_device)\.cc:"
    r"|To enable the following instructions:)")


def _quiet_native_logs(argv: Sequence[str]) -> None:
    """Loads TensorFlow with its native start-up lines filtered out, at the level ``argv`` asks.

    The C++ log level is read once, when TensorFlow loads, so it is set here, before; a value the
    user exported in the environment wins. Lines that are not start-up chatter (a failed load)
    are printed as they were.
    """
    if _verbosity(argv) >= 1:
        return
    # 2: errors only. The INFO and WARNING lines TensorFlow prints at start-up on a CPU
    # (oneDNN, CUDA drivers not found, CPU instructions) are not about the user's run.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        loaded = False
        try:
            import tensorflow  # noqa: F401
            loaded = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not (loaded and _START_UP_CHATTER.match(line))]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


class _OwnLinesOnly(py_logging.Filter):
    """Lets through tfmeta's own records and other libraries' errors.

    TensorFlow's, Keras's and TFDS's INFO lines and warnings (deprecations, retracing, start-up
    notes) come back with ``--verbosity=1``.
    """

    def filter(self, record: py_logging.LogRecord) -> bool:
        return (record.levelno >= py_logging.ERROR
                or os.path.abspath(record.pathname).startswith(_TFMETA_DIR + os.sep))


def _configure_logging(argv: Sequence[str]) -> None:
    verbosity = _verbosity(argv)
    if verbosity >= 1:
        return
    own_only = _OwnLinesOnly()
    # absl's handler carries tfmeta's and TFDS's records; TensorFlow's Python logger has its own.
    logging.get_absl_handler().addFilter(own_only)
    py_logging.getLogger("tensorflow").setLevel(py_logging.ERROR)
    # Python warnings (deprecations in TensorFlow, Keras, TFDS) go through logging, filtered too.
    py_logging.captureWarnings(True)
    py_logging.getLogger("py.warnings").addFilter(own_only)
    if verbosity < 0:
        logging.set_verbosity(logging.WARNING)
    try:
        # Imported lazily: only binaries that read data have TFDS loaded by now or later.
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
    except ImportError:  # pragma: no cover - tensorflow-datasets is a dependency
        pass


def _asks_for_help(argv: Sequence[str]) -> bool:
    return any(arg.split("=", 1)[0] in _HELP_FLAGS for arg in argv[1:])


def run(main: Callable[[list[str]], int | None], *,
        before_parse: Callable[[list[str]], None] | None = None,
        after_parse: Callable[[], None] | None = None) -> None:
    """``absl.app.run(main)`` with tfmeta's error contract and quiet output.

    Args:
      main: the binary's main; its return value is the exit status.
      before_parse: checks ``argv`` before absl parses the flags (for example a config flag's
        file and ``--config.field=value`` overrides, which ml_collections reports poorly); raises
        a :class:`~tfmeta.base.errors.UserError`.
      after_parse: checks the parsed flags; raises a :class:`~tfmeta.base.errors.UserError`.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            if before_parse is not None:
                before_parse(argv)
            rest = flags.FLAGS(argv)
            if after_parse is not None:
                after_parse()
        except SystemExit as e:
            # absl exits with status 1 after printing the help it was asked for.
            sys.exit(0 if _asks_for_help(argv) and e.code == 1 else e.code)
        except flags.Error as e:
            sys.exit(fail(f"{errors.first_line(str(e))}. Pass --helpshort to see the flags."))
        except user_errors() as e:
            sys.exit(fail(str(e)))
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
            # Errors raised while loading or overriding a config file.
            sys.exit(fail(f"{type(e).__name__} while parsing flags: {errors.first_line(str(e))}"))
        # Only now: --help and bad flags are answered without loading TensorFlow (seconds).
        _quiet_native_logs(argv)
        return rest

    def guarded(argv: list[str]) -> Any:
        _configure_logging(sys.argv)
        try:
            return main(argv)
        except app.UsageError as e:
            return fail(str(e))
        except user_errors() as e:
            return fail(str(e))

    app.run(guarded, flags_parser=parse)
