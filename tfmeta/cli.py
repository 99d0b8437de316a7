"""What every tfmeta binary shares: flag parsing and user errors as one line, exit status 2.

A mistake a user can make (a bad flag or config field, a missing or unwritable path, a damaged
archive or checkpoint, a work directory in use) ends with exactly one line ``error: ...`` on
stderr that names the bad value, and exit status 2; never a traceback. Failures that are not the
user's input (a bug, a diverging run) keep their traceback and exit status 1.
"""

from __future__ import annotations

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
                _check_config_overrides(argv, config_flag)
            return flags.FLAGS(argv)
        except flags.Error as e:
            sys.exit(fail(f"{e}. Pass --helpshort to see the flags."))
        except user_errors() as e:
            sys.exit(fail(str(e)))
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
            # Errors raised while loading or overriding a config file.
            sys.exit(fail(f"{type(e).__name__} while parsing flags: {e}"))

    def guarded(argv: list[str]) -> Any:
        try:
            return main(argv)
        except user_errors() as e:
            return fail(str(e))

    app.run(guarded, flags_parser=parse)
