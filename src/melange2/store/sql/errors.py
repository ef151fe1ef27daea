"""The one place SQLAlchemy's exceptions become :class:`~melange2.errors.StoreError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from melange2.errors import StoreError


@contextmanager
def map_sql_errors(action: str) -> Iterator[None]:
    """Translate database errors raised while doing ``action``, keeping the cause.

    The most specific match wins: a constraint violation (a duplicate build id, a
    package named twice) is a conflict; a locked or unreachable database is
    unavailable; anything else from the driver is a plain store failure.
    """
    try:
        yield
    except IntegrityError as exc:
        raise StoreError(f"{action}: conflicts with stored data ({exc.orig})") from exc
    except OperationalError as exc:
        raise StoreError(f"{action}: database unavailable ({exc.orig})") from exc
    except DBAPIError as exc:
        raise StoreError(f"{action}: database error ({exc.orig})") from exc
