"""The SQLite store: one file, WAL mode, Alembic-migrated at open.

Transactions are ours, not the driver's: pysqlite's legacy mode (no BEGIN before a
SELECT) is switched off and SQLAlchemy emits ``BEGIN`` itself. Reads run in a deferred
transaction (a consistent snapshot under WAL); writes in ``BEGIN IMMEDIATE``, which takes
the single write lock up front, so concurrent writers queue on ``busy_timeout`` instead
of failing when a read turns into a write. That single writer is what makes the guarded
``UPDATE ... WHERE status IN (...) RETURNING`` a compare-and-set.

::

    async with await SqliteStore.open(data_dir / "melange2.db") as store:
        await store.create_build(build)
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Connection, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from melange2.errors import InvalidTransition, NotFound, StoreError
from melange2.ids import BuildId
from melange2.jobs import Attempt, Build, BuildStatus, PackageJob, PackageStatus, sources_of
from melange2.store.base import BuildPage, StoredBackend
from melange2.store.migrations import upgrade
from melange2.store.rules import (
    BUILD_FIELDS,
    PACKAGE_FIELDS,
    check_aware,
    check_fields,
    check_limit,
    decode_cursor,
    encode_cursor,
)
from melange2.store.sql import queries
from melange2.store.sql.errors import map_sql_errors

__all__ = ["SqliteStore", "sqlite_engine"]

#: how long a writer waits for the lock before failing, in milliseconds
BUSY_TIMEOUT_MS = 10_000
_BEGIN_OPTION = "melange2_begin"


def sqlite_engine(path: Path) -> AsyncEngine:
    """An async engine on ``path`` with WAL, ``busy_timeout``, foreign keys and explicit
    ``BEGIN``. Dispose it when done."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class SqliteStore:
    """A :class:`~melange2.store.base.JobStore` in one SQLite file."""

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine made by :func:`sqlite_engine` whose schema is at head; prefer
        :meth:`open`."""
        self._engine = engine
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._state = _State.OPEN

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (creating if needed) the database at ``path`` and migrate it to head."""
        engine = sqlite_engine(path)
        try:
            with map_sql_errors(f"migrating {path}"):
                writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
                async with writer.begin() as conn:
                    await conn.run_sync(upgrade)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state is _State.OPEN:
            self._state = _State.CLOSED
            await self._engine.dispose()

    # builds

    async def create_build(self, build: Build) -> None:
        async with self._write(f"creating build {build.id}") as conn:
            await queries.insert_build(conn, build)

    async def get_build(self, build_id: BuildId) -> Build:
        async with self._read(f"reading build {build_id}") as conn:
            build = await queries.fetch_build(conn, build_id)
        if build is None:
            raise NotFound(f"no build {build_id}")
        return build

    async def list_builds(
        self, *, limit: int, cursor: str | None = None, status: BuildStatus | None = None
    ) -> BuildPage:
        check_limit(limit)
        after = None if cursor is None else decode_cursor(cursor)
        async with self._read("listing builds") as conn:
            found = await queries.fetch_builds_page(
                conn, limit=limit + 1, after=after, status=status
            )
        page = found[:limit]
        more = len(found) > limit
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return BuildPage(builds=page, next_cursor=next_cursor)

    async def update_build(self, build_id: BuildId, **fields: Any) -> Build:
        check_fields(fields, BUILD_FIELDS, "build")
        async with self._write(f"updating build {build_id}") as conn:
            if not await queries.update_build(conn, build_id, fields):
                raise NotFound(f"no build {build_id}")
            build = await queries.fetch_build(conn, build_id)
        assert build is not None
        return build

    async def unfinished_builds(self) -> Sequence[Build]:
        async with self._read("listing unfinished builds") as conn:
            return await queries.fetch_unfinished_builds(conn)

    # packages

    async def transition(
        self,
        build_id: BuildId,
        name: str,
        to: PackageStatus,
        *,
        expect: frozenset[PackageStatus] | None = None,
        **fields: Any,
    ) -> PackageJob:
        check_fields(fields, PACKAGE_FIELDS, "package")
        to = PackageStatus(to)
        allowed = sources_of(to) if expect is None else sources_of(to) & expect
        async with self._write(f"moving {build_id}/{name} to {to}") as conn:
            job = await queries.transition_package(conn, build_id, name, to, allowed, fields)
            if job is not None:
                return job
            current = await queries.package_status(conn, build_id, name)
        if current is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        raise InvalidTransition(
            f"package {name!r} of build {build_id} is {current}, cannot move to {to}"
            + ("" if expect is None else f" (expected {', '.join(sorted(expect))})")
        )

    async def update_package(self, build_id: BuildId, name: str, **fields: Any) -> PackageJob:
        check_fields(fields, PACKAGE_FIELDS, "package")
        async with self._write(f"updating {build_id}/{name}") as conn:
            job = await queries.update_package_fields(conn, build_id, name, fields)
        if job is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        return job

    async def add_attempt(self, build_id: BuildId, name: str, attempt: Attempt) -> None:
        async with self._write(f"recording attempt {attempt.number} of {build_id}/{name}") as conn:
            if await queries.package_status(conn, build_id, name) is None:
                raise NotFound(f"no package {name!r} in build {build_id}")
            await queries.put_attempt(conn, build_id, name, attempt)

    # leases

    async def renew_leases(self, owner: str, expires: datetime) -> int:
        check_aware(expires, "expires")
        if not owner:
            return 0
        async with self._write(f"renewing leases of {owner}") as conn:
            return await queries.renew_leases(conn, owner, expires)

    async def expire_leases(self, now: datetime) -> Sequence[PackageJob]:
        check_aware(now, "now")
        async with self._write("expiring leases") as conn:
            return await queries.expire_leases(conn, now)

    async def durations(self, names: Sequence[str]) -> Mapping[str, float]:
        async with self._read("reading durations") as conn:
            return await queries.latest_durations(conn, names)

    # runtime backends

    async def save_backend(self, backend: StoredBackend) -> None:
        async with self._write(f"saving backend {backend.addr}") as conn:
            await queries.save_backend(conn, backend)

    async def delete_backend(self, addr: str) -> None:
        async with self._write(f"deleting backend {addr}") as conn:
            await queries.delete_backend(conn, addr)

    async def list_backends(self) -> Sequence[StoredBackend]:
        async with self._read("listing backends") as conn:
            return await queries.list_backends(conn)

    # transactions

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise StoreError("the store is closed")

    @asynccontextmanager
    async def _read(self, action: str) -> AsyncIterator[AsyncConnection]:
        """A read transaction: one consistent snapshot."""
        self._check_open()
        with map_sql_errors(action):
            async with self._engine.begin() as conn:
                yield conn

    @asynccontextmanager
    async def _write(self, action: str) -> AsyncIterator[AsyncConnection]:
        """A write transaction holding the database's write lock from its first statement."""
        self._check_open()
        with map_sql_errors(action):
            async with self._writer.begin() as conn:
                yield conn
