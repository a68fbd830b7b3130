"""Typed errors of the serving layer, each with the HTTP status it is answered with.

Raised by the state (writes) and the handlers; one exception handler in `app.py` maps `ServingError` to
`exc.status` (no matching of message text). Every class is a FashionrecError, so Python callers can catch one type.
"""

from __future__ import annotations

from fashionrec.errors import FashionrecError


class ServingError(FashionrecError):
    """Base: `status` is the HTTP status code; the message is the answer's `detail`."""

    status = 422
    headers: dict | None = None


class InvalidInput(ServingError):
    """A request the API understands but cannot act on (unknown model, unknown ids in a history, bad fields)."""

    status = 422


class NotFound(ServingError):
    """An unknown item, customer or image."""

    status = 404


class Conflict(ServingError):
    """The id exists, is being added by another request, or was deleted in this run; or a catalog item is
    the target of a delete."""

    status = 409


class LimitReached(Conflict):
    """The arrivals' count cap is reached."""

    status = 409


class StorageFull(LimitReached):
    """The arrivals' storage cap would be exceeded by this upload."""

    status = 413


class PayloadTooLarge(ServingError):
    """A body or an image over its byte or pixel limit."""

    status = 413


class UnsupportedMediaType(ServingError):
    """An upload that is not an image."""

    status = 415


class WritesRefused(ServingError):
    """Writes are not possible on this server (several workers: a write in one would not reach the others)."""

    status = 403


class StorageError(ServingError):
    """The server could not write an arrival's files (disk full, or the workspace became read-only)."""

    status = 507
