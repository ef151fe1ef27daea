"""The PostgreSQL store: SQLAlchemy's async engine on psycopg 3, Alembic-migrated at open.

The queries are :mod:`~melange2.store.sql.queries`, shared with SQLite. Each store call
is one transaction (or one statement in autocommit): the same synchronous query functions
run inside ``AsyncConnection.run_sync``, so every statement's round trip yields to the
event loop while SQLAlchemy's work stays one plain function per call.

Transactions and what makes them safe with several processes on one database:

* writes run in ``READ COMMITTED``. A guarded ``UPDATE ... WHERE status IN (...)
  RETURNING`` is a compare-and-set there: a concurrent update of the same row waits
  for the first to commit and then re-checks the ``WHERE`` against the new row, so of
  two claims one wins and the other matches nothing (``InvalidTransition``);
* a write that is one statement (a transition, renewing or expiring leases) runs in
  autocommit: the statement is atomic by itself, and it costs one round trip instead
  of ``BEGIN``, the statement and ``COMMIT``;
* reads run in ``REPEATABLE READ, READ ONLY``: one snapshot for the several queries of
  a build and its packages (read-only transactions never fail to serialize);
* claims of many rows take them ``FOR UPDATE SKIP LOCKED`` (``expire_leases``): two
  replicas requeueing expired leases split the rows instead of waiting on each other;
* migrations run under a transaction-level advisory lock (:data:`ADVISORY_LOCKS`), so
  replicas starting together migrate once. DDL is transactional here: a failed
  migration leaves the schema as it was.

::

    async with await PostgresStore.open("postgresql://melange@db/melange") as store:
        await store.create_build(build)

The DSN is a libpq URI (``postgresql://user:password@host:port/database?options``;
``host=/run/postgresql`` as a query parameter for a unix socket), or SQLAlchemy's
``postgresql+psycopg://`` form.

Several replicas on one database: a package's lease is its row (``lease_owner``,
``lease_expires``; ``renew_leases`` is an owner's heartbeat, ``expire_leases`` requeues a
dead owner's packages, ``SKIP LOCKED``); a replica's own heartbeat is a row of
``replicas`` (r0007); :meth:`PostgresStore.hold_lock` is a named lock across them (one
publisher per arch): a session advisory lock, keyed ``(ADVISORY_LOCKS["named"],
crc32(name))``, held on a connection of its own for the block and released with it, also
when that connection dies; events ``LISTEN/NOTIFY`` on a connection of psycopg's own
(:attr:`PostgresStore.supports_listen_notify`).
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

from sqlalchemy import URL, Connection, make_url, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from melange2.errors import ConfigError, StoreError
from melange2.store.migrations import upgrade
from melange2.store.sql.errors import map_sql_errors
from melange2.store.sql.store import SqlStore

__all__ = ["ADVISORY_LOCKS", "PostgresStore", "lock_keys", "migrate", "postgres_url"]

#: keys of the advisory locks the store takes (one namespace for the whole farm, so
#: they never collide): ``migrate`` serializes schema upgrades across replicas (a
#: one-key lock); ``named`` is the first key of :meth:`PostgresStore.hold_lock`'s
#: two-key locks (the second: the CRC-32 of the name, as a signed 32-bit integer; two
#: names of one CRC only wait for each other, they never hold at once)
ADVISORY_LOCKS: Mapping[str, int] = {"migrate": 0x6D656C0001, "named": 0x6D656C02}
#: how long a waiter for a named lock sleeps between tries, at first and at most
LOCK_POLL_S = (0.002, 0.05)
#: the driver SQLAlchemy uses (psycopg 3, async)
DRIVER = "postgresql+psycopg"
_SCHEMES = ("postgresql", "postgres", DRIVER)
_DEFAULT_CONNECT_ARGS: Mapping[str, Any] = {
    "application_name": "melange2",
    "connect_timeout": 10,
}
_T = TypeVar("_T")
_log = logging.getLogger(__name__)


def postgres_url(dsn: str) -> URL:
    """The SQLAlchemy URL of a DSN (``postgresql://`` becomes ``postgresql+psycopg://``).
    Raises ``ConfigError`` for anything else, without echoing a password."""
    try:
        url = make_url(dsn)
    except ArgumentError:
        raise ConfigError(
            "the PostgreSQL DSN must be a URL: postgresql://user[:password]@host[:port]/database"
        ) from None
    if url.drivername not in _SCHEMES:
        raise ConfigError(
            f"the PostgreSQL DSN must start with postgresql://, not {url.drivername}://"
        )
    if not url.database:
        raise ConfigError(
            f"the PostgreSQL DSN names no database: {url.render_as_string(hide_password=True)}"
        )
    return url.set(drivername=DRIVER)


def lock_keys(name: str) -> tuple[int, int]:
    """The two keys of the advisory lock :meth:`PostgresStore.hold_lock` takes for
    ``name`` (``pg_locks.classid``, ``objid`` as signed integers)."""
    crc = zlib.crc32(name.encode())
    return ADVISORY_LOCKS["named"], crc - (1 << 32) if crc >= 1 << 31 else crc


def migrate(conn: Connection) -> None:
    """Migrate the database behind ``conn`` to head, in its transaction, holding the
    ``migrate`` advisory lock until it commits (other replicas wait, then find head)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCKS["migrate"]})
    upgrade(conn)


class PostgresStore(SqlStore):
    """A :class:`~melange2.store.base.JobStore` in a PostgreSQL database."""

    supports_listen_notify: ClassVar[bool] = True

    def __init__(self, engine: AsyncEngine, autocommit: AsyncEngine) -> None:
        """Wrap engines on a database whose schema is at head (``autocommit`` with
        ``isolation_level="AUTOCOMMIT"``); prefer :meth:`open`."""
        super().__init__()
        self._engine = engine
        self._reader = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        self._autocommit = autocommit

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        migrate_schema: bool = True,
    ) -> PostgresStore:
        """Connect to ``dsn`` and migrate the database to head (``migrate_schema``).

        Two pools, one for transactions and one for single statements in autocommit
        (switching a connection between the two costs more than the statement): each
        keeps ``pool_size`` connections open, up to ``max_overflow`` more while busy
        (at most 30 connections by default). Raises ``ConfigError`` for a bad DSN,
        ``StoreUnavailable`` when the server cannot be reached."""
        url = postgres_url(dsn)
        connect_args = {k: v for k, v in _DEFAULT_CONNECT_ARGS.items() if k not in url.query}
        options: dict[str, Any] = {
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "connect_args": connect_args,
        }
        engine = create_async_engine(url, **options)
        autocommit = create_async_engine(
            url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options
        )
        try:
            if migrate_schema:
                where = url.render_as_string(hide_password=True)
                with map_sql_errors(f"migrating {where}"):
                    async with engine.begin() as conn:
                        await conn.run_sync(migrate)
        except BaseException:
            await engine.dispose()
            await autocommit.dispose()
            raise
        return cls(engine, autocommit)

    async def _close(self) -> None:
        await self._engine.dispose()
        await self._autocommit.dispose()

    # transactions

    async def _read(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in ``REPEATABLE READ, READ ONLY``: one snapshot."""
        return await self._run(self._reader, action, work)

    async def _write(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in ``READ COMMITTED``: committed when it returns, rolled back when it
        raises."""
        return await self._run(self._engine, action, work)

    async def _write_one(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in autocommit: its first statement is the one write, atomic alone."""
        return await self._run(self._autocommit, action, work)

    async def _run(self, engine: AsyncEngine, action: str, work: Callable[[Connection], _T]) -> _T:
        self._check_open()
        with map_sql_errors(action):
            async with engine.begin() as conn:
                return await conn.run_sync(work)

    # named locks across replicas

    @asynccontextmanager
    async def hold_lock(self, name: str) -> AsyncIterator[None]:
        """Hold the advisory lock of ``name`` (:func:`lock_keys`) on a connection taken
        for the block. Waiting polls ``pg_try_advisory_lock`` (2 ms, doubling to 50 ms):
        a blocking ``pg_advisory_lock`` could not be cancelled from here. At the end the
        lock is released and the connection goes back to the pool; if that fails (the
        connection died), the connection is thrown away, and the server released the
        lock with its session."""
        self._check_open()
        first, second = lock_keys(name)
        keys = {"a": first, "b": second}
        action = f"taking the lock {name!r}"
        with map_sql_errors(action):
            conn = await self._autocommit.connect()
        released = False
        try:
            wait, most = LOCK_POLL_S
            while True:
                with map_sql_errors(action):
                    got = await conn.scalar(text("SELECT pg_try_advisory_lock(:a, :b)"), keys)
                if got:
                    break
                await asyncio.sleep(wait)
                wait = min(wait * 2, most)
            try:
                yield
            finally:
                try:
                    with map_sql_errors(f"releasing the lock {name!r}"):
                        unlock = text("SELECT pg_advisory_unlock(:a, :b)")
                        released = bool(await conn.scalar(unlock, keys))
                except StoreError as exc:
                    _log.warning("the lock %r: %s (its session ends with it)", name, exc)
                else:
                    if not released:
                        _log.warning("the lock %r was no longer held when released", name)
        finally:
            if not released:
                await conn.invalidate()  # the session ends: whatever it held is released
            await conn.close()
