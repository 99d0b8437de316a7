"""What every tfmeta binary shares: flag parsing and user errors as one line, exit status 2.

A mistake a user can make (a bad flag or config field, a missing or unwritable path, a damaged
archive or checkpoint, a work directory in use) ends with exactly one line ``error: ...`` on
stderr that names the bad value, and exit status 2; never a traceback. Failures that are not the
user's input (a bug, a diverging run) keep their traceback and exit status 1.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input", imported lazily so binaries start fast."""
    from tfmeta import config, distribute, workdir
    from tfmeta.omniglot_builder import OmniglotDownloadError, OmniglotIntegrityError

    errors: list[type[BaseException]] = [
        config.ConfigError, workdir.WorkdirError, distribute.StrategyError,
        OmniglotIntegrityError, OmniglotDownloadError, FileNotFoundError, PermissionError,
        NotADirectoryError, IsADirectoryError]
    try:
        from tfmeta.export import ExportError
        errors.append(ExportError)
    except ImportError:  # pragma: no cover - export needs only TensorFlow, always present
        pass
    return tuple(errors)


def fail(message: str) -> int:
    """Prints ``error: message`` as one line on stderr and returns exit status 2."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    return 2


def _check_config_overrides(argv: Sequence[str], flag_name: str) -> None:
    """Names an unknown ``--config.a.b=...`` field before ml_collections fails on it.

    ml_collections raises ``AttributeError: "'b'"`` for an unknown field, naming neither the full
    field nor what is allowed.
    """
    from tfmeta import config as config_lib

    schema = config_lib.flatten(config_lib.base_config().to_dict())
    groups = {k.rsplit(".", 1)[0] for k in schema if "." in k}
    prefix = f"--{flag_name}."
    for arg in argv[1:]:
        if arg == "--":
            break
        if not arg.startswith(prefix):
            continue
        field = arg[len(prefix):].split("=", 1)[0]
        if field in schema:
            continue
        group = field.rsplit(".", 1)[0] if "." in field else ""
        if group in groups:
            allowed = sorted(k.rsplit(".", 1)[1] for k in schema if k.startswith(group + "."))
            where = f"allowed fields in '{group}': {allowed}"
        else:
            top = sorted(groups | {k for k in schema if "." not in k})
            where = f"allowed groups and fields: {top}"
        raise config_lib.ConfigError(f"unknown config field '{field}' (from {arg!r}); {where}")


_HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "--helpfull", "-helpfull",
               "--helpxml", "-helpxml", "-?")


def _asks_for_help(argv: Sequence[str]) -> bool:
    return any(arg.split("=", 1)[0] in _HELP_FLAGS for arg in argv[1:])


def _first_error_line(text: str) -> str:
    """The message of an error whose text embeds a traceback: its last ``Type: message`` line.

    ml_collections puts the whole traceback of a config file's ``get_config`` into the flag error
    (``Error whilst parsing config file: Traceback ...``); the user needs only the last line.
    """
    if "Traceback (most recent call last)" not in text:
        return text
    head = text.split("Traceback (most recent call last)", 1)[0].strip().rstrip(":")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    last = errors[-1] if errors else lines[-1]
    return f"{head}: {last}" if head else last


def _config_arg(argv: Sequence[str], flag_name: str) -> str | None:
    """The value of ``--NAME=VALUE`` or ``--NAME VALUE`` in ``argv`` (the last one), or None."""
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        if arg.startswith(f"--{flag_name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{flag_name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _check_config_file(argv: Sequence[str], flag_name: str) -> None:
    """Names a config file that does not exist, before ml_collections fails on it lazily.

    ml_collections defers a missing file's error to the first use of the config, which then
    surfaces as a traceback from deep inside the binary.
    """
    from tfmeta import config as config_lib

    value = _config_arg(argv, flag_name)
    if value is None:
        return
    path = value.split(":", 1)[0]
    if not path:
        raise config_lib.ConfigError(f"--{flag_name} is empty; pass a config file such as "
                                     f"--{flag_name}=configs/omniglot_maml.py:5way1shot")
    if not os.path.isfile(path):
        where = ("" if os.path.isabs(path)
                 else f" (relative to the current directory {os.getcwd()!r})")
        raise config_lib.ConfigError(f"config file {path!r} not found{where}; "
                                     f"pass --{flag_name}=PATH_TO/configs/NAME.py[:variant]")


def _check_config_loaded(flag_name: str) -> None:
    """Raises the load error that ml_collections keeps inside an unusable config, as one line."""
    from tfmeta import config as config_lib

    error = getattr(flags.FLAGS[flag_name].value, "_error", None)
    if isinstance(error, BaseException):
        raise config_lib.ConfigError(f"--{flag_name}: {_first_error_line(str(error))}")


def run(main: Callable[[list[str]], int | None], *, config_flag: str | None = None) -> None:
    """``absl.app.run(main)`` with tfmeta's error contract.

    Args:
      main: the binary's main; its return value is the exit status.
      config_flag: name of an ``ml_collections`` config flag whose ``--NAME.field=value``
        overrides are checked against the config schema before flags are parsed.
    """

    def parse(argv: list[str]) -> list[str]:
        try:
            if config_flag:
                _check_config_file(argv, config_flag)
                _check_config_overrides(argv, config_flag)
            rest = flags.FLAGS(argv)
            if config_flag:
                _check_config_loaded(config_flag)
            return rest
        except SystemExit as e:
            # absl exits with status 1 after printing the help it was asked for.
            sys.exit(0 if _asks_for_help(argv) and e.code == 1 else e.code)
        except flags.Error as e:
            sys.exit(fail(f"{_first_error_line(str(e))}. Pass --helpshort to see the flags."))
        except user_errors() as e:
            sys.exit(fail(str(e)))
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
            # Errors raised while loading or overriding a config file.
            sys.exit(fail(f"{type(e).__name__} while parsing flags: {_first_error_line(str(e))}"))

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except app.UsageError as e:
            return fail(str(e))
        except user_errors() as e:
            return fail(str(e))

    app.run(guarded, flags_parser=parse)
