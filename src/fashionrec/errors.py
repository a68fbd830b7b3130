"""Errors that name the file, row or field a user has to fix."""

from __future__ import annotations


class FashionrecError(Exception):
    """Base class for errors a user can act on; the CLI prints them without a traceback."""


class DataError(FashionrecError, ValueError):
    """Bad input data. The message names the file and, where known, the row and field."""

    def __init__(self, message: str, *, path: object = None, row: int | None = None, field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.row, self.field = path, row, field
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
