"""What the SQL stores share: every :class:`~melange2.store.base.JobStore` method as one
transaction of :mod:`~melange2.store.sql.queries`, whatever the database.

A subclass says only how a transaction runs: :meth:`SqlStore._read` (a consistent
snapshot) and :meth:`SqlStore._write` run a plain function of a synchronous
:class:`~sqlalchemy.Connection` whole, in one transaction, with database errors mapped
by :func:`~melange2.store.sql.errors.map_sql_errors`. SQLite runs it on the store's own
thread (:mod:`~melange2.store.sql.sqlite`); PostgreSQL in ``AsyncConnection.run_sync``
on the event loop (:mod:`~melange2.store.sql.postgres`). So the queries, the checks
and the errors callers see are the same code for both.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from sqlalchemy import Connection

from melange2.auth import Token
from melange2.errors import InvalidTransition, NotFound, StoreConflict, StoreError
from melange2.ids import BuildId
from melange2.jobs import Attempt, Build, BuildStatus, PackageJob, PackageStatus, sources_of
from melange2.store.base import BuildPage, Move, Replica, StoredBackend
from melange2.store.locks import LocalLocks
from melange2.store.rules import (
    BUILD_FIELDS,
    PACKAGE_FIELDS,
    check_aware,
    check_fields,
    check_limit,
    check_new_build,
    check_new_token,
    check_text,
    decode_cursor,
    encode_cursor,
    token_name_taken,
)
from melange2.store.sql import queries, replica_queries

__all__ = ["SqlStore"]

_T = TypeVar("_T")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class SqlStore:
    """The :class:`~melange2.store.base.JobStore` methods over :mod:`queries`; subclass
    and give :meth:`_read`, :meth:`_write` and :meth:`_close`."""

    #: whether the database can wake other processes (PostgreSQL's LISTEN/NOTIFY)
    supports_listen_notify: ClassVar[bool] = False

    def __init__(self) -> None:
        self._state = _State.OPEN
        self._locks = LocalLocks()

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
            await self._close()

    # -- what a subclass gives -----------------------------------------------------------

    async def _read(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in a read transaction: one consistent snapshot."""
        raise NotImplementedError

    async def _write(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` in a write transaction: committed when it returns, rolled back when
        it raises. Guarded updates in it are compare-and-sets."""
        raise NotImplementedError

    async def _write_one(self, action: str, work: Callable[[Connection], _T]) -> _T:
        """``work`` whose one write is its first statement (what follows only reads, say
        why a guarded UPDATE matched nothing). Where the database makes each statement
        atomic this may run without a transaction around it (one round trip, not three);
        by default it is :meth:`_write`."""
        return await self._write(action, work)

    async def _close(self) -> None:
        """Release the connections (called once)."""
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise StoreError("the store is closed")

    # -- builds --------------------------------------------------------------------------

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

    async def update_build(
        self, build_id: BuildId, *, with_packages: bool = True, **fields: Any
    ) -> Build:
        check_fields(fields, BUILD_FIELDS, "build")
        check_text(fields, "build fields")

        def update(conn: Connection) -> Build:
            if not queries.update_build(conn, build_id, fields):
                raise NotFound(f"no build {build_id}")
            build = queries.fetch_build(conn, build_id, packages=with_packages)
            assert build is not None
            return build

        return await self._write(f"updating build {build_id}", update)

    async def unfinished_builds(self) -> Sequence[Build]:
        return await self._read("listing unfinished builds", queries.fetch_unfinished_builds)

    # -- packages ------------------------------------------------------------------------

    async def transition(
        self,
        build_id: BuildId,
        name: str,
        to: PackageStatus,
        *,
        expect: frozenset[PackageStatus] | None = None,
        owner: str | None = None,
        **fields: Any,
    ) -> PackageJob:
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        to = PackageStatus(to)
        allowed = sources_of(to) if expect is None else sources_of(to) & expect

        def move(conn: Connection) -> PackageJob | PackageStatus | None:
            job = queries.transition_package(conn, build_id, name, to, allowed, fields, owner=owner)
            if job is not None:
                return job
            return queries.package_status(conn, build_id, name)

        found = await self._write_one(f"moving {build_id}/{name} to {to}", move)
        if isinstance(found, PackageJob):
            return found
        if found is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        if owner is not None and found in allowed:
            raise InvalidTransition(
                f"package {name!r} of build {build_id} is not {owner}'s, cannot move to {to}"
            )
        raise InvalidTransition(
            f"package {name!r} of build {build_id} is {found}, cannot move to {to}"
            + ("" if expect is None else f" (expected {', '.join(sorted(expect))})")
        )

    async def transition_many(
        self,
        build_id: BuildId,
        names: Sequence[str],
        to: PackageStatus,
        *,
        expect: frozenset[PackageStatus] | None = None,
        **fields: Any,
    ) -> Sequence[PackageJob]:
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        to = PackageStatus(to)
        allowed = sources_of(to) if expect is None else sources_of(to) & expect
        wanted = list(dict.fromkeys(names))

        def move(conn: Connection) -> list[PackageJob] | None:
            moved = queries.transition_packages(conn, build_id, wanted, to, allowed, fields)
            if moved or queries.build_exists(conn, build_id):
                return moved
            return None

        found = await self._write_one(f"moving {len(wanted)} packages of {build_id}", move)
        if found is None:
            raise NotFound(f"no build {build_id}")
        return found

    async def apply(self, moves: Sequence[Move]) -> Sequence[PackageJob | None]:
        for move in moves:
            check_fields(move.fields, PACKAGE_FIELDS, "package")
            check_text(move.fields, "package fields")
            PackageStatus(move.to)
        if not moves:
            return []
        plan = queries.plan_moves(moves)
        # one guarded UPDATE (the finishes that arrived together, most rounds' starts)
        # is atomic alone: where the database allows, no transaction around it
        write = self._write_one if len(plan) == 1 else self._write
        return await write(
            f"making {len(moves)} package moves",
            lambda c: queries.apply_planned(c, moves, plan),
        )

    async def update_package(self, build_id: BuildId, name: str, **fields: Any) -> PackageJob:
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        job = await self._write_one(
            f"updating {build_id}/{name}",
            lambda c: queries.update_package_fields(c, build_id, name, fields),
        )
        if job is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        return job

    async def add_attempt(self, build_id: BuildId, name: str, attempt: Attempt) -> None:
        check_text(attempt, "attempt")

        def add(conn: Connection) -> None:
            if not queries.put_attempt(conn, build_id, name, attempt):
                raise NotFound(f"no package {name!r} in build {build_id}")

        await self._write(f"recording attempt {attempt.number} of {build_id}/{name}", add)

    # -- leases --------------------------------------------------------------------------

    async def renew_leases(self, owner: str, expires: datetime) -> int:
        check_aware(expires, "expires")
        if not owner:
            return 0
        return await self._write_one(
            f"renewing leases of {owner}", lambda c: queries.renew_leases(c, owner, expires)
        )

    async def expire_leases(self, now: datetime) -> Sequence[PackageJob]:
        check_aware(now, "now")
        return await self._write_one("expiring leases", lambda c: queries.expire_leases(c, now))

    async def durations(self, names: Sequence[str]) -> Mapping[str, float]:
        return await self._read("reading durations", lambda c: queries.latest_durations(c, names))

    # -- runtime backends ----------------------------------------------------------------

    async def save_backend(self, backend: StoredBackend) -> None:
        check_text(backend, "backend")
        await self._write(
            f"saving backend {backend.addr}", lambda c: queries.save_backend(c, backend)
        )

    async def delete_backend(self, addr: str) -> None:
        await self._write_one(f"deleting backend {addr}", lambda c: queries.delete_backend(c, addr))

    async def list_backends(self) -> Sequence[StoredBackend]:
        return await self._read("listing backends", queries.list_backends)

    # -- API tokens ----------------------------------------------------------------------

    async def create_token(self, token: Token) -> None:
        check_new_token(token)

        def create(conn: Connection) -> bool:
            if token.revoked_at is None and queries.active_token_named(conn, token.name):
                return False
            queries.insert_token(conn, token)
            return True

        # the partial unique index decides between two writers at once (a conflict)
        if not await self._write(f"creating token {token.id}", create):
            raise StoreConflict(token_name_taken(token.name))

    async def token_by_hash(self, token_hash: str) -> Token | None:
        return await self._read("reading a token", lambda c: queries.token_by_hash(c, token_hash))

    async def list_tokens(self) -> Sequence[Token]:
        return await self._read("listing tokens", queries.list_tokens)

    async def revoke_token(self, token_id: str, at: datetime) -> Token:
        check_aware(at, "at")
        found = await self._write(
            f"revoking token {token_id}", lambda c: queries.revoke_token(c, token_id, at)
        )
        if found is None:
            raise NotFound(f"no token {token_id!r}")
        return found

    # -- replicas and named locks ----------------------------------------------------------

    @asynccontextmanager
    async def hold_lock(self, name: str) -> AsyncIterator[None]:
        """Within this process (SQLite's data has one server); PostgreSQL overrides it."""
        self._check_open()
        async with self._locks.hold(name):
            yield

    async def register_replica(self, replica: Replica) -> None:
        check_aware(replica.started_at, "started_at")
        check_aware(replica.heartbeat_at, "heartbeat_at")
        check_text(replica, "replica")
        await self._write(
            f"registering replica {replica.id}",
            lambda c: replica_queries.put_replica(c, replica),
        )

    async def heartbeat_replica(self, replica_id: str, at: datetime) -> bool:
        check_aware(at, "at")
        return await self._write_one(
            f"renewing the heartbeat of replica {replica_id}",
            lambda c: replica_queries.heartbeat_replica(c, replica_id, at),
        )

    async def remove_replica(self, replica_id: str) -> None:
        await self._write_one(
            f"removing replica {replica_id}",
            lambda c: replica_queries.remove_replica(c, replica_id),
        )

    async def get_replica(self, replica_id: str) -> Replica | None:
        return await self._read(
            f"reading replica {replica_id}",
            lambda c: replica_queries.get_replica(c, replica_id),
        )

    async def list_replicas(self) -> Sequence[Replica]:
        return await self._read("listing replicas", replica_queries.list_replicas)
