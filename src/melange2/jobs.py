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

A build's status is derived from its packages (:func:`derive_build_status`). What a
build asks for is its :class:`BuildSpec`, made once from the request at submission and
kept by the store as JSON (:meth:`BuildSpec.to_json`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal, Self, get_args

from melange2.ids import BuildId

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]

#: the order among a build's ready packages (``schedule``)
Schedule = Literal["critical-path", "fifo"]
#: ``flat``: every package on its own; ``dag``: dependencies in the build first
BuildMode = Literal["flat", "dag"]
#: what a dependency cycle in the build does: refused, or its edges cut
CyclePolicy = Literal["error", "break"]
#: into the farm's repository as each package succeeds, or once the whole build has
PublishMode = Literal["package", "build"]


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


def _frozen(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


def _choice(value: object, choices: tuple[str, ...], default: str | None) -> Any:
    return value if isinstance(value, str) and value in choices else default


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """What a build asks of every package's steps. The build of a package and its
    digests (reuse) read them here, so the two cannot drift."""

    #: set in every step (``env``)
    env: Mapping[str, str] = field(default_factory=dict)
    #: run the configs' tests after building (``with_test``)
    with_test: bool = False
    #: trace every command of every step in the log (``debug``)
    debug: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "env", _frozen(self.env))

    def digest_fields(self) -> dict[str, object]:
        """The options as the reuse digests take them (their keys are part of the digest)."""
        return {"env": dict(self.env), "with_test": self.with_test, "debug": self.debug}


@dataclass(frozen=True, kw_only=True)
class GitSpec:
    """A build's configs from a git repository (``git_source``)."""

    repository: str
    ref: str = ""
    pattern: str = "*.yaml"
    path: str = ""


@dataclass(frozen=True, kw_only=True)
class BuildSpec:
    """What a build asks for, typed: made once from the request at submission; the store
    keeps :meth:`to_json` (the request's own field names) and reads it back with
    :meth:`from_json`. Nothing reads a build's request any other way."""

    #: the configs as sent: one of ``config_yaml``, ``configs``, ``git_source``
    config_yaml: str | None = None
    configs: tuple[str, ...] | None = None
    git_source: GitSpec | None = None
    #: ``uses:`` pipelines sent with the build, by relative path
    pipelines: Mapping[str, str] = field(default_factory=dict)
    arch: str = "x86_64"
    #: labels a backend must have, every pair
    backend_selector: Mapping[str, str] = field(default_factory=dict)
    mode: BuildMode = "flat"
    options: StepOptions = field(default_factory=StepOptions)
    cycle_policy: CyclePolicy = "error"
    #: the order of this build's ready packages; ``None`` (builds stored before it was
    #: recorded): the server's ``--schedule``
    schedule: Schedule | None = None
    #: build every package even if an earlier build made it from the same inputs
    force: bool = False
    publish: PublishMode = "package"
    #: may replace packages of the farm's repository (same file name, other bytes)
    replace: bool = False
    #: the source files sent for each package (their paths; the files are kept apart)
    source_files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: ``{NAME: value}`` every step gets as BuildKit secret env (never in the LLB or a
    #: digest, masked in logs; ``GET`` shows the names only)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: seconds each package may run (wall clock); ``None``: its config's
    #: ``package.timeout``, else the server's ``--package-timeout``
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipelines", _frozen(self.pipelines))
        object.__setattr__(self, "secrets", _frozen(self.secrets))
        object.__setattr__(self, "backend_selector", _frozen(self.backend_selector))
        object.__setattr__(
            self,
            "source_files",
            MappingProxyType({k: tuple(v) for k, v in self.source_files.items()}),
        )
        if self.configs is not None:
            object.__setattr__(self, "configs", tuple(self.configs))

    def evolve(self, **changes: Any) -> Self:
        return replace(self, **changes)

    def to_json(self) -> dict[str, JSONValue]:
        """The spec as the store keeps it and ``GET`` shows it: the request's fields."""
        git = self.git_source
        return {
            "config_yaml": self.config_yaml,
            "configs": list(self.configs) if self.configs is not None else None,
            "git_source": None
            if git is None
            else {
                "repository": git.repository,
                "ref": git.ref,
                "pattern": git.pattern,
                "path": git.path,
            },
            "pipelines": dict(self.pipelines),
            "arch": self.arch,
            "backend_selector": dict(self.backend_selector),
            "mode": self.mode,
            "with_test": self.options.with_test,
            "debug": self.options.debug,
            "env": dict(self.options.env),
            "secrets": dict(self.secrets),
            "timeout_s": self.timeout_s,
            "cycle_policy": self.cycle_policy,
            "schedule": self.schedule,
            "force": self.force,
            "publish": self.publish,
            "replace": self.replace,
            "source_files": {pkg: list(paths) for pkg, paths in self.source_files.items()},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, JSONValue]) -> BuildSpec:
        """A stored spec (any this server ever stored: a missing field takes its
        default, an unknown one is left out)."""
        configs = raw.get("configs")
        git = raw.get("git_source")
        files = raw.get("source_files")
        timeout = raw.get("timeout_s")
        return cls(
            config_yaml=str(raw["config_yaml"]) if raw.get("config_yaml") is not None else None,
            configs=tuple(str(c) for c in configs) if isinstance(configs, list) else None,
            git_source=GitSpec(
                repository=str(git.get("repository", "")),
                ref=str(git.get("ref", "")),
                pattern=str(git.get("pattern", "*.yaml")),
                path=str(git.get("path", "")),
            )
            if isinstance(git, dict)
            else None,
            pipelines=_strings(raw.get("pipelines")),
            arch=str(raw.get("arch") or "x86_64"),
            backend_selector=_strings(raw.get("backend_selector")),
            mode=_choice(raw.get("mode"), get_args(BuildMode), "flat"),
            options=StepOptions(
                env=_strings(raw.get("env")),
                with_test=raw.get("with_test") is True,
                debug=raw.get("debug") is True,
            ),
            cycle_policy=_choice(raw.get("cycle_policy"), get_args(CyclePolicy), "error"),
            schedule=_choice(raw.get("schedule"), get_args(Schedule), None),
            force=raw.get("force") is True,
            publish=_choice(raw.get("publish"), get_args(PublishMode), "package"),
            replace=raw.get("replace") is True,
            source_files={
                str(pkg): tuple(str(p) for p in paths)
                for pkg, paths in files.items()
                if isinstance(paths, list)
            }
            if isinstance(files, dict)
            else {},
            secrets=_strings(raw.get("secrets")),
            timeout_s=float(timeout)
            if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0
            else None,
        )


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
    spec: BuildSpec
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
