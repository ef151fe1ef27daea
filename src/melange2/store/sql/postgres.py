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

Several replicas on one database (:mod:`melange2.store.sql.bus` wires these into the
scheduler): a package's lease is its row (``lease_owner``, ``lease_expires``;
``renew_leases`` is an owner's heartbeat, ``expire_leases`` requeues a dead owner's
packages, ``SKIP LOCKED``); a replica's own heartbeat is a row of ``replicas`` (r0007).
Starts check their backends' limits across replicas
(:meth:`PostgresStore.start_many`: an advisory lock per backend, then the packages
running there, then the guarded updates, in one transaction). A build's end runs once
(:meth:`PostgresStore.build_end_lock`: an advisory lock per build held while it is
published and its final status written). :meth:`PostgresStore.hold_lock` is a named lock
across them (one publisher per arch): a session advisory lock, keyed
``(ADVISORY_LOCKS["named"], crc32(name))``, held on a connection of its own for the block
and released with it, also when that connection dies. Events are ``NOTIFY``
(:meth:`PostgresStore.notify`) heard by ``LISTEN`` on a connection of psycopg's own
(:attr:`PostgresStore.supports_listen_notify`). The one-key advisory lock keys are
:func:`advisory_key` of a kind in :data:`ADVISORY_LOCKS` and a name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

from sqlalchemy import URL, Connection, make_url, select, text
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from melange2.errors import ConfigError, StoreError
from melange2.ids import BuildId
from melange2.jobs import PackageJob, PackageStatus, sources_of
from melange2.store.migrations import upgrade
from melange2.store.rules import PACKAGE_FIELDS, UNFINISHED_BUILD_STATES, check_fields, check_text
from melange2.store.slots import FULL, Full, SlotStart
from melange2.store.sql import queries
from melange2.store.sql.errors import map_sql_errors
from melange2.store.sql.store import SqlStore
from melange2.store.sql.tables import builds

__all__ = [
    "ADVISORY_LOCKS",
    "PostgresStore",
    "advisory_key",
    "libpq_dsn",
    "lock_keys",
    "migrate",
    "postgres_url",
]

#: keys of the advisory locks the store takes (one namespace for the whole farm, so
#: they never collide): ``migrate`` serializes schema upgrades across replicas (a
#: one-key lock); ``backend`` and ``build-end`` are kinds, keyed per backend and per
#: build by :func:`advisory_key`; ``named`` is the first key of
#: :meth:`PostgresStore.hold_lock`'s two-key locks (the second: the CRC-32 of the name,
#: as a signed 32-bit integer; two names of one CRC only wait for each other, they never
#: hold at once; two-key locks are a space of their own beside the one-key ones)
ADVISORY_LOCKS: Mapping[str, int] = {
    "migrate": 0x6D656C0001,
    "backend": 0x6D656C0002,
    "build-end": 0x6D656C0003,
    "named": 0x6D656C02,
}
#: how long a waiter for a named lock sleeps between tries, at first and at most
LOCK_POLL_S = (0.002, 0.05)


def advisory_key(kind: str, name: str) -> int:
    """The advisory lock key of ``name`` (a backend's addr, a build's id) among locks
    of ``kind``: the kind's 40 bits, then 24 bits of the name's SHA-256 (a collision
    only makes two names wait for each other)."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:3], "big")
    return (ADVISORY_LOCKS[kind] << 24) | digest


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


def libpq_dsn(dsn: str) -> str:
    """``dsn`` as libpq (and so ``psycopg.AsyncConnection.connect``) takes it, password
    included: a ``postgresql://`` URL."""
    url = postgres_url(dsn).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


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

    # several replicas (see the module's docstring)

    def conninfo(self) -> str:
        """The database's libpq URL, password included (for a connection of one's own,
        e.g. ``LISTEN``)."""
        return libpq_dsn(self._engine.url.render_as_string(hide_password=False))

    async def read_packages(self, build_id: BuildId, names: Sequence[str]) -> list[PackageJob]:
        """The named packages of a build as they stand now (unknown ones left out)."""
        wanted = list(dict.fromkeys(names))
        return await self._read(
            f"reading {len(wanted)} packages of {build_id}",
            lambda c: queries.fetch_packages(c, build_id, wanted),
        )

    async def start_many(self, starts: Sequence[SlotStart]) -> list[PackageJob | Full | None]:
        """Make ``starts`` in order, in one transaction, each only if its backend has
        room across replicas: the advisory lock of each backend named (in the order of
        their keys, so two replicas never wait on each other in a circle; starts on one
        backend queue, finishes do not), what runs there counted once, then which starts
        fit, in the order given (each counts for the next ones), then their guarded
        updates (the rows in the order of build and name, so concurrent batches never
        deadlock). A start that fits but whose update is refused leaves its room unused
        until the next batch. Per start:
        the package running, :data:`~melange2.store.slots.FULL` (its backend had no
        room; nothing written) or ``None`` (its state did not allow it, e.g. another
        replica took it, or there is no such package). A bad value or a failed
        transaction (``StoreError``) writes none."""
        for start in starts:
            check_fields(start.fields, PACKAGE_FIELDS, "package")
            check_text(start.fields, "package fields")
        if not starts:
            return []
        to = PackageStatus.RUNNING
        keys = sorted({(advisory_key("backend", s.addr), s.addr) for s in starts})

        def run(conn: Connection) -> list[PackageJob | Full | None]:
            load: dict[str, list[int]] = {}
            for key, addr in keys:
                queries.advisory_xact_lock(conn, key)
                load[addr] = list(queries.backend_load(conn, addr))
            asked: dict[tuple[str, str], PackageJob] = {}
            for build_id in dict.fromkeys(st.build_id for st in starts):
                names = [st.name for st in starts if st.build_id == build_id]
                for job in queries.fetch_packages(conn, build_id, names):
                    asked[(build_id, job.name)] = job
            # which fit, in the order given (the scheduler's priority order)
            results: list[PackageJob | Full | None] = []
            chosen: list[int] = []
            for n, start in enumerate(starts):
                ask = asked.get((start.build_id, start.name))
                used = load[start.addr]
                if ask is None:
                    results.append(None)
                elif (
                    used[0] >= start.max_jobs
                    or (start.cpu is not None and used[1] + ask.cpu_millis > start.cpu)
                    or (start.memory is not None and used[2] + ask.memory_bytes > start.memory)
                ):
                    results.append(FULL)
                else:
                    used[0] += 1
                    used[1] += ask.cpu_millis
                    used[2] += ask.memory_bytes
                    results.append(None)
                    chosen.append(n)
            # then their guarded updates, the rows in one order (build, name) whoever
            # writes them: two replicas' batches never wait on each other in a circle
            for n in sorted(chosen, key=lambda i: (starts[i].build_id, starts[i].name)):
                start = starts[n]
                allowed = sources_of(to) & start.expect
                results[n] = queries.transition_package(
                    conn, start.build_id, start.name, to, allowed, start.fields
                )
            return results

        return await self._write(f"starting {len(starts)} packages", run)

    @contextlib.asynccontextmanager
    async def build_end_lock(
        self, build_id: BuildId, *, wait: bool = True
    ) -> AsyncIterator[bool | None]:
        """Hold the build's advisory lock while the block runs (a transaction of its
        own, committed at the end): ``True`` if the build is still unfinished once the
        lock is held, so the block should end it (publish, write the final status,
        committed before the lock is released); ``False``: another replica ended it.
        ``wait=False``: ``None`` at once if another replica holds the lock (it is
        ending the build now)."""
        self._check_open()
        key = advisory_key("build-end", build_id)
        unfinished = {s.value for s in UNFINISHED_BUILD_STATES}

        def lock(conn: Connection) -> bool | None:
            if wait:
                queries.advisory_xact_lock(conn, key)
            elif not queries.try_advisory_xact_lock(conn, key):
                return None
            status = conn.scalar(select(builds.c.status).where(builds.c.id == build_id))
            return status in unfinished

        with map_sql_errors(f"locking the end of build {build_id}"):
            async with self._engine.begin() as conn:
                mine = await conn.run_sync(lock)
                yield mine

    async def notify(self, channel: str, payloads: Sequence[str]) -> None:
        """``NOTIFY channel`` with each payload (under 8000 bytes each), in order, one
        statement."""
        await self._write_one(
            f"notifying {len(payloads)} events",
            lambda c: queries.notify(c, channel, payloads),
        )

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
