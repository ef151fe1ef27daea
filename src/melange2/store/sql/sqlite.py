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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from melange2.store.migrations import upgrade
from melange2.store.sql.errors import map_sql_errors
from melange2.store.sql.store import SqlStore

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


class SqliteStore(SqlStore):
    """A :class:`~melange2.store.base.JobStore` in one SQLite file."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor) -> None:
        """Wrap an engine made by :func:`sqlite_engine` whose schema is at head, used only
        from ``executor``'s single thread; prefer :meth:`open`."""
        super().__init__()
        self._engine = engine
        self._executor = executor
        #: the store thread's one connection, kept open between transactions (checking
        #: one out of the pool and resetting it on return cost more than a transaction)
        self._conn: Connection | None = None

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

    async def _close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._engine.dispose()

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    # transactions

    async def _read(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in a deferred transaction: a consistent snapshot under WAL."""
        return await self._run("DEFERRED", action, work)

    async def _write(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in ``BEGIN IMMEDIATE``: the database's write lock from its first
        statement; committed when it returns, rolled back when it raises."""
        return await self._run("IMMEDIATE", action, work)

    async def _run(self, begin: str, action: str, work: Callable[[Connection], _T]) -> _T:
        self._check_open()

        def transaction() -> _T:
            with map_sql_errors(action):
                conn = self._connection()
                conn.execution_options(**{_BEGIN_OPTION: begin})
                with conn.begin():
                    return work(conn)

        return await asyncio.get_running_loop().run_in_executor(self._executor, transaction)

    def _connection(self) -> Connection:
        """The store thread's connection, opened anew after one was lost."""
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._conn = self._engine.connect()
        return conn
