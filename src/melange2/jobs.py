"""Builds and their package jobs: the states, the legal moves between them, and the
frozen values the store hands out.

Package states and their moves::

    blocked  -> pending     its dependencies succeeded, no slot free yet
    blocked  -> running     its dependencies succeeded and a slot was free (one write)
    blocked  -> skipped     a dependency failed
    pending  -> running     a slot freed
    pending  -> failed      no backend could ever run it
    running  -> success | failed
    running  -> pending     a backend fault or an expired lease: retried
    blocked | pending | running -> cancelled

A build's status is derived from its packages (:func:`derive_build_status`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from melange2.ids import BuildId

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


class PackageStatus(StrEnum):
    BLOCKED = "blocked"  #: waiting for dependencies
    PENDING = "pending"  #: ready, waiting for a backend slot
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"  #: a dependency failed
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {PackageStatus.SUCCESS, PackageStatus.FAILED, PackageStatus.SKIPPED, PackageStatus.CANCELLED}
)

#: the single table of legal package moves; the store enforces it in its UPDATE
ALLOWED_TRANSITIONS: Mapping[PackageStatus, frozenset[PackageStatus]] = {
    PackageStatus.BLOCKED: frozenset(
        {
            PackageStatus.PENDING,
            PackageStatus.RUNNING,
            PackageStatus.SKIPPED,
            PackageStatus.CANCELLED,
        }
    ),
    PackageStatus.PENDING: frozenset(
        {PackageStatus.RUNNING, PackageStatus.FAILED, PackageStatus.CANCELLED}
    ),
    PackageStatus.RUNNING: frozenset(
        {
            PackageStatus.SUCCESS,
            PackageStatus.FAILED,
            PackageStatus.PENDING,
            PackageStatus.CANCELLED,
        }
    ),
    PackageStatus.SUCCESS: frozenset(),
    PackageStatus.FAILED: frozenset(),
    PackageStatus.SKIPPED: frozenset(),
    PackageStatus.CANCELLED: frozenset(),
}


def sources_of(target: PackageStatus) -> frozenset[PackageStatus]:
    """The states from which ``target`` may be entered."""
    return frozenset(s for s, targets in ALLOWED_TRANSITIONS.items() if target in targets)


class BuildStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"  #: every package failed or was skipped
    PARTIAL = "partial"  #: some succeeded, some failed
    CANCELLED = "cancelled"


def derive_build_status(statuses: Iterable[PackageStatus], *, cancelled: bool) -> BuildStatus:
    """A build's status from its packages', as the spec defines it."""
    counts = Counter(statuses)
    return status_from_counts(counts, cancelled=cancelled, started=False)


def status_from_counts(
    counts: Mapping[PackageStatus, int], *, cancelled: bool, started: bool
) -> BuildStatus:
    """:func:`derive_build_status` from per-status counts (the scheduler keeps them, so a
    package's move costs O(1), not a pass over thousands of packages)."""
    total = sum(counts.values())
    finished = sum(n for s, n in counts.items() if s.terminal)
    if finished < total:
        if started or counts.get(PackageStatus.RUNNING, 0) or finished:
            return BuildStatus.RUNNING
        return BuildStatus.PENDING
    if cancelled:
        return BuildStatus.CANCELLED
    succeeded = counts.get(PackageStatus.SUCCESS, 0)
    if succeeded == total:
        return BuildStatus.SUCCESS
    if succeeded == 0:
        return BuildStatus.FAILED
    return BuildStatus.PARTIAL


@dataclass(frozen=True, kw_only=True)
class Backend:
    """Where a package ran, as the API shows it."""

    addr: str
    arch: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One try at building a package on one backend."""

    number: int
    backend: str
    started_at: datetime
    finished_at: datetime | None = None
    error: str = ""
    log_path: str = ""


@dataclass(frozen=True, kw_only=True)
class PackageJob:
    """One package of a build."""

    build_id: BuildId
    name: str
    #: submission order within the build (stable tie-break)
    seq: int
    status: PackageStatus
    config_yaml: str
    arch: str
    #: names within the build this package waits for
    dependencies: tuple[str, ...] = ()
    #: longest remaining path to the end of the graph (seconds or units)
    priority: float = 1.0
    reason: str = ""
    error: str = ""
    attempts: tuple[Attempt, ...] = ()
    started_at: datetime | None = None
    finished_at: datetime | None = None
    log_path: str = ""
    output_path: str = ""
    backend: Backend | None = None
    #: built earlier from the same inputs: the artifacts were reused, nothing was built
    cached: bool = False
    #: sha256 over everything the build depends on (see melange2.build.inputs)
    input_digest: str = ""
    lease_owner: str = ""
    lease_expires: datetime | None = None
    #: what it asks (``package.resources``): cpu in millicores, memory in bytes; 0: none
    cpu_millis: int = 0
    memory_bytes: int = 0

    def evolve(self, **changes: Any) -> Self:
        return replace(self, **changes)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True, kw_only=True)
class Build:
    """A submission: its request and its packages."""

    id: BuildId
    status: BuildStatus
    spec: Mapping[str, JSONValue]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
    packages: tuple[PackageJob, ...] = ()
    #: the name of the token that submitted it (empty: no authentication)
    submitted_by: str = ""
    #: the commit a ``git_source`` build was made from (full SHA; empty: not from git)
    source_commit: str = ""

    def evolve(self, **changes: Any) -> Self:
        return replace(self, **changes)

    def package(self, name: str) -> PackageJob | None:
        for job in self.packages:
            if job.name == name:
                return job
        return None
