"""Which failures of a storage backend are worth another try, and which mean "denied".

Retried (*transient*): connection errors and timeouts, and HTTP 408/429/5xx, found
anywhere in the exception's cause chain; each backend adds its libraries' own types
(aiohttp, botocore, requests). Never retried, whatever their cause: not found,
permission, ``ValueError`` and the other "the request itself is wrong" errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["RETRY_STATUSES", "causes", "http_status", "is_denied", "is_transient"]

#: HTTP statuses worth another try
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: HTTP statuses that mean the credentials are missing, wrong or not allowed
DENIED_STATUSES = frozenset({401, 403})

_FINAL: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ValueError,
    NotImplementedError,
)


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its ``__cause__`` / ``__context__`` chain (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries, if any: aiohttp's ``status``, gcsfs's
    ``HttpError.code``, botocore's ``ClientError.response``."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
            return value
    return None


def is_transient(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Worth another try: a connection error, timeout or HTTP 408/429/5xx (or one of
    the ``extra`` types) anywhere in the chain, unless ``exc`` itself is final."""
    if isinstance(exc, _FINAL):
        return False
    for cause in causes(exc):
        if isinstance(cause, (ConnectionError, TimeoutError, *extra)):
            return True
        if http_status(cause) in RETRY_STATUSES:
            return True
    return False


def is_denied(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """The backend refused the credentials or the access: a ``PermissionError``, HTTP
    401/403 (or one of the ``extra`` types) anywhere in the chain."""
    for cause in causes(exc):
        if isinstance(cause, (PermissionError, *extra)):
            return True
        if http_status(cause) in DENIED_STATUSES:
            return True
    return False
