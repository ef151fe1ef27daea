"""The one place SQLAlchemy's exceptions become :class:`~melange2.errors.StoreError`.

For both dialects (the drivers' errors reach us wrapped by SQLAlchemy)::

    IntegrityError (a key or constraint)              -> StoreConflict
    OperationalError, InterfaceError, a disconnect,
      the connection pool's timeout                   -> StoreUnavailable
    any other driver error                            -> StoreError
    a value a column type refuses (a naive datetime)  -> ValueError (as the memory store)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from melange2.errors import StoreConflict, StoreError, StoreUnavailable


@contextmanager
def map_sql_errors(action: str) -> Iterator[None]:
    """Translate database errors raised while doing ``action``, keeping the cause.

    The most specific match wins: a constraint violation (a duplicate build id, a
    package named twice) is a conflict; a locked, unreachable or lost database (SQLite's
    ``database is locked``, PostgreSQL restarting, a connection cut, a serialization
    failure or deadlock, which PostgreSQL's driver reports as operational) is
    unavailable, worth retrying later; anything else from the driver is a plain store
    failure.
    """
    try:
        yield
    except IntegrityError as exc:
        raise StoreConflict(f"{action}: conflicts with stored data ({_said(exc)})") from exc
    except (OperationalError, InterfaceError) as exc:
        raise StoreUnavailable(f"{action}: database unavailable ({_said(exc)})") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"{action}: connection lost ({_said(exc)})") from exc
        raise StoreError(f"{action}: database error ({_said(exc)})") from exc
    except PoolTimeout as exc:
        raise StoreUnavailable(f"{action}: no database connection free ({exc})") from exc
    except StatementError as exc:
        if isinstance(exc.orig, ValueError):  # a bind processor refused the value
            raise ValueError(f"{action}: {exc.orig}") from exc
        raise StoreError(f"{action}: {exc.orig or exc}") from exc


def _said(exc: DBAPIError) -> str:
    """The driver's own message (PostgreSQL's DETAIL included) on one line, without
    SQLAlchemy's dump of the statement and its parameters."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc.orig).__name__
