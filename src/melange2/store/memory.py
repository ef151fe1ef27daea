"""The in-process store: plain dicts you can look at, honest to the same contract.

Used by tests and by ``--store memory``. Everything runs between two ``await`` points,
so each method is atomic on one event loop, just as each SQL method is one transaction.
Values are copied in and out (JSON fields through a JSON round trip, datetimes to UTC),
so what you read back looks exactly like what the SQL store returns.

Inspect state directly::

    store = MemoryStore()
    await store.create_build(build)
    assert store.builds[build.id].packages[0].status is PackageStatus.PENDING
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, Self

from melange2.auth import Role, Token
from melange2.errors import InvalidTransition, NotFound, StoreConflict, StoreError
from melange2.ids import BuildId
from melange2.jobs import (
    Attempt,
    Backend,
    Build,
    BuildSpec,
    BuildStatus,
    PackageJob,
    PackageStatus,
    sources_of,
)
from melange2.store.base import BuildPage, Move, Replica, StoredBackend
from melange2.store.locks import LocalLocks
from melange2.store.rules import (
    BUILD_FIELDS,
    LEASE_EXPIRED_REASON,
    PACKAGE_FIELDS,
    UNFINISHED_BUILD_STATES,
    check_aware,
    check_fields,
    check_limit,
    check_new_build,
    check_new_token,
    check_text,
    decode_cursor,
    encode_cursor,
    page_key,
    to_utc,
    token_name_taken,
)

__all__ = ["MemoryStore"]


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class MemoryStore:
    """A :class:`~melange2.store.base.JobStore` kept in dicts.

    ``builds`` maps build ids to builds (packages in ``seq`` order, attempts by number);
    ``backends`` maps addresses to runtime backends in the order they were added.
    """

    #: one process only: nothing to wake elsewhere
    supports_listen_notify: ClassVar[bool] = False

    def __init__(self) -> None:
        self.builds: dict[BuildId, Build] = {}
        self.backends: dict[str, StoredBackend] = {}
        #: API tokens by id (their hashes; never a secret)
        self.tokens: dict[str, Token] = {}
        #: the replicas on this store, by id
        self.replicas: dict[str, Replica] = {}
        self._locks = LocalLocks()
        #: per build, each package's index in ``packages`` (O(1) reads and writes)
        self._positions: dict[BuildId, dict[str, int]] = {}
        self._state = _State.OPEN

    def reset(self) -> None:
        """Forget everything (between tests that share a store)."""
        self.builds.clear()
        self.backends.clear()
        self.tokens.clear()
        self.replicas.clear()
        self._positions.clear()

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
        self._state = _State.CLOSED

    # builds

    async def create_build(self, build: Build) -> None:
        self._check_open()
        check_new_build(build)
        stored = _copy_build(build)
        if stored.id in self.builds:
            raise StoreConflict(f"build {build.id} already exists")
        names = [job.name for job in stored.packages]
        if len(set(names)) != len(names):
            raise StoreConflict(f"build {build.id} names a package twice")
        for job in stored.packages:
            if job.build_id != stored.id:
                raise ValueError(f"package {job.name!r} belongs to {job.build_id}, not {build.id}")
        self.builds[stored.id] = stored
        self._positions[stored.id] = {job.name: i for i, job in enumerate(stored.packages)}

    async def get_build(self, build_id: BuildId) -> Build:
        self._check_open()
        return _copy_build(self._build(build_id))

    async def list_builds(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: BuildStatus | None = None,
        packages: bool = True,
    ) -> BuildPage:
        self._check_open()
        check_limit(limit)
        ordered = sorted(self.builds.values(), key=page_key, reverse=True)
        if status is not None:
            ordered = [b for b in ordered if b.status == status]
        if cursor is not None:
            after = decode_cursor(cursor)
            ordered = [b for b in ordered if page_key(b) < after]
        page = ordered[:limit]
        more = len(ordered) > limit
        next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        if not packages:
            return BuildPage(
                builds=[replace(b, packages=()) for b in page],
                next_cursor=next_cursor,
                counts={b.id: Counter(j.status for j in b.packages) for b in page},
            )
        return BuildPage(builds=[_copy_build(b) for b in page], next_cursor=next_cursor)

    async def update_build(
        self, build_id: BuildId, *, with_packages: bool = True, **fields: Any
    ) -> Build:
        self._check_open()
        check_fields(fields, BUILD_FIELDS, "build")
        check_text(fields, "build fields")
        build = self._build(build_id)
        # the build's own fields checked and copied; its packages are stored copies
        changed = _copy_build(replace(build, packages=(), **fields))
        self.builds[build_id] = replace(changed, packages=build.packages)
        return _copy_build(self.builds[build_id]) if with_packages else changed

    async def unfinished_builds(self) -> Sequence[Build]:
        self._check_open()
        unfinished = [b for b in self.builds.values() if b.status in UNFINISHED_BUILD_STATES]
        return [_copy_build(b) for b in sorted(unfinished, key=page_key)]

    # packages

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
        self._check_open()
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        to = PackageStatus(to)
        allowed = sources_of(to) if expect is None else sources_of(to) & expect
        job = self._package(build_id, name)
        if job.status not in allowed:
            raise InvalidTransition(
                f"package {name!r} of build {build_id} is {job.status}, cannot move to {to}"
                + ("" if expect is None else f" (expected {_names(expect)})")
            )
        if owner is not None and job.lease_owner != owner:
            raise InvalidTransition(
                f"package {name!r} of build {build_id} is not {owner}'s "
                f"(its lease owner: {job.lease_owner or 'none'}), cannot move to {to}"
            )
        return self._put(replace(job, status=to, **fields))

    async def transition_many(
        self,
        build_id: BuildId,
        names: Sequence[str],
        to: PackageStatus,
        *,
        expect: frozenset[PackageStatus] | None = None,
        **fields: Any,
    ) -> Sequence[PackageJob]:
        self._check_open()
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        to = PackageStatus(to)
        allowed = sources_of(to) if expect is None else sources_of(to) & expect
        build = self._build(build_id)
        positions = self._positions[build_id]
        moved = []
        for name in dict.fromkeys(names):
            if name in positions:
                job = build.packages[positions[name]]
                if job.status in allowed:
                    moved.append(replace(job, status=to, **fields))
        stored = [_copy_package(job) for job in moved]  # all valid, or none is written
        if stored:
            packages = list(build.packages)
            for job in stored:
                packages[positions[job.name]] = job
            self.builds[build_id] = replace(build, packages=tuple(packages))
        return sorted(stored, key=lambda j: (j.seq, j.name))

    async def apply(self, moves: Sequence[Move]) -> Sequence[PackageJob | None]:
        self._check_open()
        for move in moves:
            check_fields(move.fields, PACKAGE_FIELDS, "package")
            check_text(move.fields, "package fields")
        # made on copies first: a value refused in any move writes none of them
        current: dict[tuple[BuildId, str], PackageJob] = {}
        results: list[PackageJob | None] = []
        for move in moves:
            key = (move.build_id, move.name)
            job = current.get(key)
            if job is None:
                position = self._positions.get(move.build_id, {}).get(move.name)
                if position is None:
                    results.append(None)
                    continue
                job = self.builds[move.build_id].packages[position]
            to = PackageStatus(move.to)
            allowed = sources_of(to) if move.expect is None else sources_of(to) & move.expect
            if job.status not in allowed or (
                move.owner is not None and job.lease_owner != move.owner
            ):
                results.append(None)
                continue
            moved = _copy_package(replace(job, status=to, **move.fields))
            current[key] = moved
            results.append(moved)
        by_build: dict[BuildId, list[PackageJob]] = {}
        for (build_id, _name), job in current.items():
            by_build.setdefault(build_id, []).append(job)
        for build_id, jobs in by_build.items():
            build = self.builds[build_id]
            packages = list(build.packages)
            for job in jobs:
                packages[self._positions[build_id][job.name]] = job
            self.builds[build_id] = replace(build, packages=tuple(packages))
        return results

    async def update_package(self, build_id: BuildId, name: str, **fields: Any) -> PackageJob:
        self._check_open()
        check_fields(fields, PACKAGE_FIELDS, "package")
        check_text(fields, "package fields")
        return self._put(replace(self._package(build_id, name), **fields))

    async def add_attempt(self, build_id: BuildId, name: str, attempt: Attempt) -> None:
        self._check_open()
        check_text(attempt, "attempt")
        job = self._package(build_id, name)
        others = tuple(a for a in job.attempts if a.number != attempt.number)
        self._put(replace(job, attempts=(*others, attempt)))

    # leases

    async def renew_leases(self, owner: str, expires: datetime) -> int:
        self._check_open()
        check_aware(expires, "expires")
        if not owner:
            return 0
        renewed = [
            job
            for build in self.builds.values()
            for job in build.packages
            if job.status == PackageStatus.RUNNING and job.lease_owner == owner
        ]
        for job in renewed:
            self._put(replace(job, lease_expires=expires))
        return len(renewed)

    async def expire_leases(self, now: datetime) -> Sequence[PackageJob]:
        self._check_open()
        check_aware(now, "now")
        expired = [
            job
            for build in self.builds.values()
            for job in build.packages
            if job.status == PackageStatus.RUNNING
            and job.lease_expires is not None
            and job.lease_expires < now
        ]
        moved = [
            self._put(
                replace(
                    job,
                    status=PackageStatus.PENDING,
                    lease_owner="",
                    lease_expires=None,
                    reason=LEASE_EXPIRED_REASON,
                )
            )
            for job in expired
        ]
        return sorted(moved, key=lambda j: (j.build_id, j.seq, j.name))

    async def durations(self, names: Sequence[str]) -> Mapping[str, float]:
        self._check_open()
        wanted = set(names)
        latest: dict[str, tuple[datetime, str, float]] = {}
        for build in self.builds.values():
            for job in build.packages:
                duration = job.duration_s
                if job.name not in wanted or job.status != PackageStatus.SUCCESS:
                    continue
                if duration is None or job.finished_at is None:
                    continue
                key = (job.finished_at, job.build_id, duration)
                if job.name not in latest or key[:2] > latest[job.name][:2]:
                    latest[job.name] = key
        return {name: value[2] for name, value in latest.items()}

    # runtime backends

    async def save_backend(self, backend: StoredBackend) -> None:
        self._check_open()
        check_text(backend, "backend")
        self.backends[backend.addr] = _copy_backend(backend)

    async def delete_backend(self, addr: str) -> None:
        self._check_open()
        self.backends.pop(addr, None)

    async def list_backends(self) -> Sequence[StoredBackend]:
        self._check_open()
        return [_copy_backend(b) for b in self.backends.values()]

    # API tokens

    async def create_token(self, token: Token) -> None:
        self._check_open()
        check_new_token(token)
        stored = _copy_token(token)
        for other in self.tokens.values():
            if other.id == stored.id or other.token_hash == stored.token_hash:
                raise StoreConflict(f"token {stored.id}: its id or hash is taken")
            if stored.revoked_at is None and other.revoked_at is None and other.name == stored.name:
                raise StoreConflict(token_name_taken(stored.name))
        self.tokens[stored.id] = stored

    async def token_by_hash(self, token_hash: str) -> Token | None:
        self._check_open()
        for token in self.tokens.values():
            if token.token_hash == token_hash:
                return _copy_token(token)
        return None

    async def list_tokens(self) -> Sequence[Token]:
        self._check_open()
        return [_copy_token(t) for t in sorted(self.tokens.values(), key=_token_order)]

    async def revoke_token(self, token_id: str, at: datetime) -> Token:
        self._check_open()
        check_aware(at, "at")
        token = self.tokens.get(token_id)
        if token is None:
            raise NotFound(f"no token {token_id!r}")
        if token.revoked_at is None:
            token = token.evolve(revoked_at=to_utc(at))
            self.tokens[token_id] = token
        return _copy_token(token)

    # replicas and named locks (one process: the locks hold within it)

    @asynccontextmanager
    async def hold_lock(self, name: str) -> AsyncIterator[None]:
        self._check_open()
        async with self._locks.hold(name):
            yield

    async def register_replica(self, replica: Replica) -> None:
        self._check_open()
        check_aware(replica.started_at, "started_at")
        check_aware(replica.heartbeat_at, "heartbeat_at")
        check_text(replica, "replica")
        self.replicas[replica.id] = _copy_replica(replica)

    async def heartbeat_replica(self, replica_id: str, at: datetime) -> bool:
        self._check_open()
        check_aware(at, "at")
        found = self.replicas.get(replica_id)
        if found is None:
            return False
        self.replicas[replica_id] = replace(found, heartbeat_at=at.astimezone(UTC))
        return True

    async def remove_replica(self, replica_id: str) -> None:
        self._check_open()
        self.replicas.pop(replica_id, None)

    async def get_replica(self, replica_id: str) -> Replica | None:
        self._check_open()
        found = self.replicas.get(replica_id)
        return None if found is None else _copy_replica(found)

    async def list_replicas(self) -> Sequence[Replica]:
        self._check_open()
        return sorted(
            (_copy_replica(r) for r in self.replicas.values()), key=lambda r: (r.started_at, r.id)
        )

    # helpers

    def _check_open(self) -> None:
        if self._state is _State.CLOSED:
            raise StoreError("the store is closed")

    def _build(self, build_id: BuildId) -> Build:
        try:
            return self.builds[build_id]
        except KeyError:
            raise NotFound(f"no build {build_id}") from None

    def _package(self, build_id: BuildId, name: str) -> PackageJob:
        build = self._build(build_id)
        position = self._positions[build_id].get(name)
        if position is None:
            raise NotFound(f"no package {name!r} in build {build_id}")
        return build.packages[position]

    def _put(self, job: PackageJob) -> PackageJob:
        """Replace a package of its build (validated and normalised); return a copy."""
        stored = _copy_package(job)
        build = self.builds[job.build_id]
        packages = list(build.packages)
        packages[self._positions[job.build_id][job.name]] = stored
        self.builds[job.build_id] = replace(build, packages=tuple(packages))
        return stored  # frozen, and a copy of what the caller passed


def _names(states: frozenset[PackageStatus]) -> str:
    return ", ".join(sorted(states))


def _json(spec: BuildSpec) -> BuildSpec:
    """The spec as a SQL store gives it back: through its JSON."""
    return BuildSpec.from_json(json.loads(json.dumps(spec.to_json())))


def _in_seq_order(jobs: Sequence[PackageJob]) -> tuple[PackageJob, ...]:
    return tuple(sorted(jobs, key=lambda j: (j.seq, j.name)))


def _copy_build(build: Build) -> Build:
    for what in ("created_at", "started_at", "finished_at"):
        check_aware(getattr(build, what), what)
    created_at = to_utc(build.created_at)
    assert created_at is not None
    return replace(
        build,
        status=BuildStatus(build.status),
        spec=_json(build.spec),
        created_at=created_at,
        started_at=to_utc(build.started_at),
        finished_at=to_utc(build.finished_at),
        packages=_in_seq_order([_copy_package(j) for j in build.packages]),
    )


def _copy_package(job: PackageJob) -> PackageJob:
    for what in ("started_at", "finished_at", "lease_expires"):
        check_aware(getattr(job, what), what)
    backend = job.backend
    if backend is not None:
        backend = Backend(addr=backend.addr, arch=backend.arch, labels=dict(backend.labels))
    attempts = sorted((_copy_attempt(a) for a in job.attempts), key=lambda a: a.number)
    return replace(
        job,
        status=PackageStatus(job.status),
        dependencies=tuple(job.dependencies),
        attempts=tuple(attempts),
        priority=float(job.priority),
        started_at=to_utc(job.started_at),
        finished_at=to_utc(job.finished_at),
        lease_expires=to_utc(job.lease_expires),
        backend=backend,
    )


def _copy_attempt(attempt: Attempt) -> Attempt:
    check_aware(attempt.started_at, "started_at")
    check_aware(attempt.finished_at, "finished_at")
    started_at = to_utc(attempt.started_at)
    assert started_at is not None
    return replace(attempt, started_at=started_at, finished_at=to_utc(attempt.finished_at))


def _copy_backend(backend: StoredBackend) -> StoredBackend:
    return replace(backend, labels=dict(backend.labels))


def _copy_token(token: Token) -> Token:
    created_at = to_utc(token.created_at)
    assert created_at is not None
    return replace(
        token,
        role=Role(token.role),
        created_at=created_at,
        expires_at=to_utc(token.expires_at),
        revoked_at=to_utc(token.revoked_at),
    )


def _copy_replica(replica: Replica) -> Replica:
    started, beat = to_utc(replica.started_at), to_utc(replica.heartbeat_at)
    assert started is not None and beat is not None
    return replace(replica, started_at=started, heartbeat_at=beat)


def _token_order(token: Token) -> tuple[datetime, str]:
    return (token.created_at, token.id)
