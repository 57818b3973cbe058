"""Errors that reach users: one clear message naming the file, column and rows."""

from __future__ import annotations

from collections.abc import Sequence


class InputError(ValueError):
    """A file or frame that cannot be used as given. The CLI prints it and exits with status 2."""


def describe_rows(rows: Sequence[object], limit: int = 5) -> str:
    """'rows 3, 7, 9 (+12 more)': a short, readable list of offending rows or ids."""
    rows = list(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{shown}{more}"
