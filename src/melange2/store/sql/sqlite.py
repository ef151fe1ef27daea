"""The SQLite store: one file, WAL mode, Alembic-migrated at open.

Every store call is one transaction run whole on the store's own thread, with the
synchronous driver: one hop from the event loop per call, not one per statement (an
async driver hops per statement, and that dominated the scheduler's cost per package).
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

import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
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
    check_new_build,
    check_text,
    decode_cursor,
    encode_cursor,
)
from melange2.store.sql import queries
from melange2.store.sql.errors import map_sql_errors

__all__ = ["SqliteStore", "sqlite_engine"]

#: how long a writer waits for the lock before failing, in milliseconds
BUSY_TIMEOUT_MS = 10_000
_BEGIN_OPTION = "melange2_begin"
_T = TypeVar("_T")


def sqlite_engine(path: Path) -> Engine:
    """An engine on ``path`` with WAL, ``busy_timeout``, foreign keys and explicit
    ``BEGIN``. Dispose it when done. Use it from one thread (the store's)."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class SqliteStore:
    """A :class:`~melange2.store.base.JobStore` in one SQLite file."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor) -> None:
        """Wrap an engine made by :func:`sqlite_engine` whose schema is at head, used only
        from ``executor``'s single thread; prefer :meth:`open`."""
        self._engine = engine
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._executor = executor
        self._state = _State.OPEN

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (creating if needed) the database at ``path`` and migrate it to head."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        engine = await loop.run_in_executor(executor, sqlite_engine, path)

        def migrate() -> None:
            with map_sql_errors(f"migrating {path}"):
                writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
                with writer.begin() as conn:
                    upgrade(conn)

        try:
            await loop.run_in_executor(executor, migrate)
        except BaseException:
            await loop.run_in_executor(executor, engine.dispose)
            executor.shutdown(wait=False)
            raise
        return cls(engine, executor)

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
            await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)
            self._executor.shutdown(wait=True)

    # builds

    async def create_build(self, build: Build) -> None:
        check_new_build(build)
        await self._write(f"creating build {build.id}", lambda c: queries.insert_build(c, build))

    async def get_build(self, build_id: BuildId) -> Build:
        build = await self._read(
            f"reading build {build_id}", lambda c: queries.fetch_build(c, build_id)
        )
        if build is None:
            raise NotFound(f"no build {build_id}")
        return build

    async def list_builds(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: BuildStatus | None = None,
        packages: bool = True,
    ) -> BuildPage:
        check_limit(limit)
        after = None if cursor is None else decode_cursor(cursor)

        def read(c: Connection) -> tuple[list[Build], dict[str, dict[PackageStatus, int]]]:
            found = queries.fetch_builds_page(
                c, limit=limit + 1, after=after, status=status, packages=packages
            )
            counts = {} if packages else queries.package_counts(c, [b.id for b in found[:limit]])
            return found, counts

        found, counts = await self._read("listing builds", read)
        page = found[:limit]
        more = len(found) > limit
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return BuildPage(builds=page, next_cursor=next_cursor, counts=counts)

    async def update_build(self, build_id: BuildId, **fields: Any) -> Build:
        check_fields(fields, BUILD_FIELDS, "build")
        check_text(fields, "build fields")

        def update(conn: Connection) -> Build:
            if not queries.update_build(conn, build_id, fields):
                raise NotFound(f"no build {build_id}")
            build = queries.fetch_build(conn, build_id)
            assert build is not None
            return build

        return await self._write(f"updating build {build_id}", update)

    async def unfinished_builds(self) -> Sequence[Build]:
        return await self._read("listing unfinished builds", queries.fetch_unfinished_builds)

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
        check_text(fields, "package fields")
        to = PackageStatus(to)
        allowed = sources_of(to) if expect is None else sources_of(to) & expect

        def move(conn: Connection) -> PackageJob | PackageStatus | None:
            job = queries.transition_package(conn, build_id, name, to, allowed, fields)
            if job is not None:
                return job
            return queries.package_status(conn, build_id, name)

        found = await self._write(f"moving {build_id}/{name} to {to}", move)
        if isinstance(found, PackageJob):
            return found
        if found is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        raise InvalidTransition(
            f"package {name!r} of build {build_id} is {found}, cannot move to {to}"
            + ("" if expect is None else f" (expected {', '.join(sorted(expect))})")
        )

    async def update_package(self, build_id: BuildId, name: str, **fields: Any) -> PackageJob:
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        job = await self._write(
            f"updating {build_id}/{name}",
            lambda c: queries.update_package_fields(c, build_id, name, fields),
        )
        if job is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        return job

    async def add_attempt(self, build_id: BuildId, name: str, attempt: Attempt) -> None:
        check_text(attempt, "attempt")

        def add(conn: Connection) -> None:
            if queries.package_status(conn, build_id, name) is None:
                raise NotFound(f"no package {name!r} in build {build_id}")
            queries.put_attempt(conn, build_id, name, attempt)

        await self._write(f"recording attempt {attempt.number} of {build_id}/{name}", add)

    # leases

    async def renew_leases(self, owner: str, expires: datetime) -> int:
        check_aware(expires, "expires")
        if not owner:
            return 0
        return await self._write(
            f"renewing leases of {owner}", lambda c: queries.renew_leases(c, owner, expires)
        )

    async def expire_leases(self, now: datetime) -> Sequence[PackageJob]:
        check_aware(now, "now")
        return await self._write("expiring leases", lambda c: queries.expire_leases(c, now))

    async def durations(self, names: Sequence[str]) -> Mapping[str, float]:
        return await self._read("reading durations", lambda c: queries.latest_durations(c, names))

    # runtime backends

    async def save_backend(self, backend: StoredBackend) -> None:
        check_text(backend, "backend")
        await self._write(
            f"saving backend {backend.addr}", lambda c: queries.save_backend(c, backend)
        )

    async def delete_backend(self, addr: str) -> None:
        await self._write(f"deleting backend {addr}", lambda c: queries.delete_backend(c, addr))

    async def list_backends(self) -> Sequence[StoredBackend]:
        return await self._read("listing backends", queries.list_backends)

    # transactions

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise StoreError("the store is closed")

    async def _read(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in a read transaction: one consistent snapshot."""
        return await self._run(self._engine, action, work)

    async def _write(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in a write transaction holding the database's write lock from its
        first statement; committed when it returns, rolled back when it raises."""
        return await self._run(self._writer, action, work)

    async def _run(self, engine: Engine, action: str, work: Callable[[Connection], _T]) -> _T:
        self._check_open()

        def transaction() -> _T:
            with map_sql_errors(action), engine.begin() as conn:
                return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, transaction)
