"""The error every export path raises for a request it cannot honour."""

from __future__ import annotations

from tfmeta.base import errors


class ExportError(errors.UserError, ValueError):
    """The model cannot be exported as asked (one line naming the problem and what to do)."""
