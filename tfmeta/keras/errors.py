"""What the Keras surface refuses with: one-line user errors, and how values appear in them."""

from __future__ import annotations

from typing import Any

from tfmeta.base import errors


class EpisodeError(errors.UserError, ValueError):
    """The episodes given to fit/evaluate/predict do not have the episode-batch structure."""


class AlgorithmTypeError(errors.UserError, TypeError):
    """``MetaModel`` was given something that is not a tfmeta meta-learner."""


class MetaModelError(errors.UserError, ValueError):
    """A MetaModel is used in a way it does not support (named in the message)."""


class WeightsFileError(errors.UserError, OSError):
    """A weights file or ``BackupAndRestore`` backup is missing or damaged (an ``OSError``, so
    Keras' ``BackupAndRestore(double_checkpoint=True)`` falls back to the previous backup)."""


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
