"""The user-error base class: what every tfmeta binary reports as one line, exit status 2.

A mistake a user can make (a bad flag or config field, a missing or unwritable path, a damaged
archive or checkpoint, a work directory in use) raises a subclass of :class:`UserError`; the
binaries' shell (:mod:`tfmeta.run.cli`) catches this one class and prints ``error: ...``. Failures
that are not the user's input (a bug, a diverging run) keep their traceback and exit status 1.

Each module's error class also derives from the built-in type callers already catch
(``ValueError``, ``RuntimeError``, ``ConnectionError``), so ``except ValueError`` keeps working.
This module imports nothing of tfmeta, so every layer may use it.
"""

from __future__ import annotations

import re


class UserError(Exception):
    """Bad input from the user; its message names the value and what is allowed."""


def first_line(text: str) -> str:
    """The message of an error whose text embeds a traceback: its last ``Type: message`` line.

    ml_collections puts the whole traceback of a config file's ``get_config`` into the flag error
    (``Error whilst parsing config file: Traceback ...``); the user needs only the last line.
    """
    if "Traceback (most recent call last)" not in text:
        return text
    head = text.split("Traceback (most recent call last)", 1)[0].strip().rstrip(":")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    last = found[-1] if found else lines[-1]
    return f"{head}: {last}" if head else last
