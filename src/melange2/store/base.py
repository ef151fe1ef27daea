"""The build store seam: everything the API and the scheduler keep, behind one Protocol.

Implementations: :mod:`melange2.store.memory` (tests, ``--store memory``) and
:mod:`melange2.store.sql` (SQLite by default, WAL mode; PostgreSQL for several
processes on one database; the same Alembic migrations). One contract suite
(``melange2.testenv.contracts.store``) runs against every one of them.

Every state change is a compare-and-set: :meth:`JobStore.transition` updates a package
only if its current state may move to the new one (``ALLOWED_TRANSITIONS`` in
:mod:`melange2.jobs`, narrowed by ``expect``) and raises
:class:`~melange2.errors.InvalidTransition` otherwise, in one transaction.
:meth:`JobStore.apply` makes several such moves (of any packages, to any states) in one
transaction, each answering for itself: a move refused leaves the others standing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from melange2.auth import Token
from melange2.buildkit.tls import ClientTLS
from melange2.ids import BuildId
from melange2.jobs import Attempt, Build, BuildStatus, PackageJob, PackageStatus


@dataclass(frozen=True, kw_only=True)
class BuildPage:
    """One page of :meth:`JobStore.list_builds`, newest first."""

    builds: Sequence[Build]
    #: pass as ``cursor`` for the next page; ``None`` on the last page
    next_cursor: str | None
    #: with ``packages=False``: each build's package count per status (its
    #: ``packages`` are then not loaded)
    counts: Mapping[str, Mapping[PackageStatus, int]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class StoredBackend:
    """A backend added at runtime (``POST /api/v1/backends``), kept across restarts."""

    addr: str
    arch: str
    labels: Mapping[str, str]
    max_jobs: int
    #: its client TLS settings, key included (the store keeps them as the API gave them)
    tls: ClientTLS | None = None
    #: what its machine has: millicores and bytes; ``None``: not declared (unlimited)
    cpu_millis: int | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Move:
    """One guarded move for :meth:`JobStore.apply`: what :meth:`JobStore.transition`
    takes, as a value."""

    build_id: BuildId
    name: str
    to: PackageStatus
    #: narrows the states it may move from (``ALLOWED_TRANSITIONS`` always applies)
    expect: frozenset[PackageStatus] | None = None
    #: :class:`PackageJob` fields set in the same UPDATE (not ``status``, ``build_id``,
    #: ``name``)
    fields: Mapping[str, Any] = field(default_factory=dict)
    #: only if the package's ``lease_owner`` is this (a running attempt's write about
    #: itself: a replica whose lease expired and whose package another replica took
    #: over cannot overwrite that one's run)
    owner: str | None = None


@dataclass(frozen=True, kw_only=True)
class Replica:
    """A server process on the store's database (``replicas`` table): registered at
    start, its heartbeat renewed while it runs, removed when it stops cleanly."""

    #: the scheduler's lease owner (``server-<hex>``): the ``lease_owner`` of its packages
    id: str
    #: where other replicas reach its API (``--advertise-url``)
    url: str
    started_at: datetime
    heartbeat_at: datetime


class ReplicaStore(Protocol):
    """The replicas sharing a database, and named locks that hold across them.

    ``hold_lock(name)`` is an async context manager: one holder of a name at a time,
    across every process on the database where the store can do that (PostgreSQL: a
    session advisory lock on a connection of its own, released if that connection
    dies), else within the process (memory, SQLite). Waiting for it may be cancelled.
    """

    def hold_lock(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold the lock ``name`` for the ``async with`` block (waits for it)."""

    async def register_replica(self, replica: Replica) -> None:
        """Insert ``replica``, or replace the one with its id."""

    async def heartbeat_replica(self, replica_id: str, at: datetime) -> bool:
        """Set the replica's ``heartbeat_at``; ``False`` if there is no such replica
        (it was removed: register again)."""

    async def remove_replica(self, replica_id: str) -> None:
        """Forget a replica (no error if absent)."""

    async def get_replica(self, replica_id: str) -> Replica | None:
        """The replica with this id, or ``None``."""

    async def list_replicas(self) -> Sequence[Replica]:
        """Every replica, oldest first (by ``started_at``, then id)."""


class TokenStore(Protocol):
    """API tokens (:class:`~melange2.auth.Token`): kept by their hash, never the secret.

    A name belongs to at most one token not revoked (``StoreConflict`` for a second);
    a revoked token keeps its row (``tokens list`` shows it), and its name is free again.
    """

    async def create_token(self, token: Token) -> None:
        """Insert ``token``. ``StoreConflict`` if its id or hash is taken, or another
        token not revoked has its name."""

    async def token_by_hash(self, token_hash: str) -> Token | None:
        """The token with this hash (revoked and expired ones too), or ``None``."""

    async def list_tokens(self) -> Sequence[Token]:
        """Every token, oldest first (by ``created_at``, then id)."""

    async def revoke_token(self, token_id: str, at: datetime) -> Token:
        """Mark the token revoked at ``at`` (a token already revoked keeps its first
        time) and return it. ``NotFound`` for an unknown id."""


class JobStore(TokenStore, ReplicaStore, Protocol):
    """Persistent builds, package jobs, leases, runtime backends and API tokens."""

    @property
    def supports_listen_notify(self) -> bool:
        """Whether the store's database can wake other processes that share it
        (PostgreSQL's LISTEN/NOTIFY); without it, only this process sees its events."""

    async def create_build(self, build: Build) -> None:
        """Insert ``build`` and all of ``build.packages`` atomically (all or nothing)."""

    async def get_build(self, build_id: BuildId) -> Build:
        """The build with its packages (in ``seq`` order). Raises ``NotFound``."""

    async def list_builds(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        status: BuildStatus | None = None,
        packages: bool = True,
    ) -> BuildPage:
        """Builds newest first (by ``created_at``, then id), with their packages; or,
        with ``packages=False``, only how many packages each has in each status (a
        listing of builds of thousands of packages each stays cheap)."""

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
        """Move one package to ``to`` if its current state allows it (and is in ``expect``
        when given, and its ``lease_owner`` is ``owner`` when given: a running attempt's
        write about itself), setting ``fields`` (any :class:`PackageJob` field but
        ``status``, ``build_id``, ``name``) in the same UPDATE. Returns the updated job.
        Raises ``InvalidTransition`` (current state wrong, or another owner's) or
        ``NotFound``."""

    async def transition_many(
        self,
        build_id: BuildId,
        names: Sequence[str],
        to: PackageStatus,
        *,
        expect: frozenset[PackageStatus] | None = None,
        **fields: Any,
    ) -> Sequence[PackageJob]:
        """:meth:`transition` for several packages of one build at once (one statement
        where the database allows): each package whose current state allows the move
        moves, with the same ``fields``; the others (and names not in the build) stay as
        they are. Returns the packages that moved, in ``seq`` order. Raises ``NotFound``
        for an unknown build."""

    async def apply(self, moves: Sequence[Move]) -> Sequence[PackageJob | None]:
        """Make ``moves`` in order, in one transaction, each a compare-and-set as in
        :meth:`transition` (a later move of the same package sees the earlier one's
        result). Returns, per move, the package after it moved, or ``None`` where it
        did not: its current state did not allow it, or there is no such package or
        build. A refused move leaves the others standing. A bad value in any move
        (``ValueError``, before anything is written) or a failed transaction
        (``StoreError``) writes none of them."""

    async def update_package(self, build_id: BuildId, name: str, **fields: Any) -> PackageJob:
        """Set non-state fields (``reason``, ``log_path``, ``priority``...). ``NotFound``."""

    async def add_attempt(self, build_id: BuildId, name: str, attempt: Attempt) -> None:
        """Append (or replace, same ``number``) an attempt of a package."""

    async def update_build(
        self, build_id: BuildId, *, with_packages: bool = True, **fields: Any
    ) -> Build:
        """Set build fields (``status``, ``started_at``, ``finished_at``,
        ``cancel_requested``). Returns the build; with ``with_packages=False`` without its
        packages (``packages`` empty: cheap for a build of thousands). Raises
        ``NotFound``."""

    async def renew_leases(self, owner: str, expires: datetime) -> int:
        """Extend every running lease held by ``owner``; return how many."""

    async def expire_leases(self, now: datetime) -> Sequence[PackageJob]:
        """Put every ``running`` package whose lease expired before ``now`` back to
        ``pending`` (lease cleared, reason set); return them."""

    async def unfinished_builds(self) -> Sequence[Build]:
        """Builds not yet in a final state, with their packages (for recovery)."""

    async def durations(self, names: Sequence[str]) -> Mapping[str, float]:
        """For each name with a past successful build, its latest duration in seconds."""

    async def save_backend(self, backend: StoredBackend) -> None:
        """Insert or replace a runtime backend by ``addr``."""

    async def delete_backend(self, addr: str) -> None:
        """Forget a runtime backend (no error if absent)."""

    async def list_backends(self) -> Sequence[StoredBackend]:
        """Runtime backends in the order they were added."""

    async def aclose(self) -> None:
        """Release connections."""
