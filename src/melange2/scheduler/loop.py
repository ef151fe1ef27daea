"""The scheduler: dispatches a package the moment its last dependency succeeds and a
matching backend slot is free. No polling interval, no waves.

It wakes on events: a package became ready (submission, a dependency's success, a
retry), a slot freed or a backend appeared, a cancel, the stop request. Among ready
packages it takes the highest priority first (the longest remaining path to the end of
the graph, weighted by expected durations; computed at submission), then older builds,
then submission order; ``fifo`` keeps plain submission order. Each build's own
``schedule`` decides (:meth:`Scheduler._key`); the server's is for builds without one.
A package goes where what it asks (``package.resources``: cpu, memory) fits what is free
(:mod:`melange2.scheduler.placement`; the pool keeps the books). A package that fits
nowhere now stays ``pending``, saying what it waits for, and is reconsidered when a
slot frees; the first such package of a queue that waits for cpu or memory keeps one
backend for itself until it fits there (so smaller ones cannot starve it), while the others
backfill the rest. One that no backend could ever run (no backend of its arch and
labels, or none that large) fails at once with that error, at submission already. A
failure skips the dependents, each naming the failed dependency.

The store is the truth: every move is a compare-and-set there first; the in-memory
graph only makes dispatch fast. Running packages hold a lease renewed every few
seconds; an expired lease (the server died) puts the package back in the queue.
Moves made together go to the store together (:class:`~melange2.store.batch.MoveBatcher`,
one :meth:`~melange2.store.base.JobStore.apply`): a dispatch round's starts and its
packages left waiting, or the ends of packages that finish at once, are one transaction,
each still its own compare-and-set.

Nothing one build brings stops the loop: a store write that fails for a package
(the store is down, or refuses a value) fails that package with the reason, and if the
store refuses even that, the scheduler stops tracking that build (it stays unfinished
in the store; the next start recovers it). Every error text is made storable first. A
package whose runner ended without a result fails ("lost its runner"); a cancelled
build's packages are cancelled whatever state they are in, also those no task of this
process runs. Only the store failing as a whole ends :meth:`Scheduler.run`: when leases
cannot be renewed for a whole ``lease_ttl`` (:class:`LeasesLost`), or recovery fails.

Several replicas on one store (PostgreSQL) share the farm through :class:`Replicas`
(``replicas``; :mod:`melange2.scheduler.replicas` says what is shared and how): this
scheduler announces its own moves, applies the others' (section *replicas* below),
starts packages with the store checking the backend's limits across replicas, and ends
a build only if no other replica did. Alone on its store (the default,
:class:`~melange2.scheduler.replicas.LocalReplicas`) none of that costs anything.

Time comes from the event loop (timers) and from a :class:`Clock` (timestamps, leases,
event times): :class:`SystemClock` unless given, so a simulation can run the real
scheduler on a virtual clock (``bench/virtual_bench.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from melange2 import tracing
from melange2.errors import (
    BuildkitUnavailable,
    ConfigError,
    FarmError,
    InvalidTransition,
    NotFound,
    RequestError,
    SolveCancelled,
    StoreError,
    StoreUnavailable,
)
from melange2.ids import BuildId
from melange2.jobs import (
    Attempt,
    Backend,
    Build,
    BuildStatus,
    PackageJob,
    PackageStatus,
    Schedule,
    status_from_counts,
)
from melange2.pool.pool import BackendPool, BackendSlot
from melange2.scheduler.placement import Never, Request, Wait
from melange2.scheduler.replicas import (
    END_GRACE,
    LocalReplicas,
    ReplicaEvent,
    Replicas,
    backend_spec,
)
from melange2.store.base import JobStore, Move
from melange2.store.batch import MoveBatcher
from melange2.store.slots import FULL, Full, SlotStart

_log = logging.getLogger(__name__)


#: what a failed store write raises: the store failed, or refused a value (ValueError)
_STORE_FAILURES = (StoreError, ValueError)
#: the longest error text kept for a package
MAX_ERROR_CHARS = 16 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


def storable(text: str) -> str:
    """``text`` as any store keeps it: no lone surrogate, no NUL, not too long."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\0")
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


class LeasesLost(StoreError):
    """The store refused to renew this server's leases for a whole lease period."""

    code = "leases_lost"


class Clock(Protocol):
    """Where the scheduler reads the time: the one seam a simulation needs (see
    ``melange2.testenv.virtualtime``). Its timers (retry backoff, lease renewal) are
    the event loop's, so a loop with a virtual ``time()`` moves them too."""

    def now(self) -> datetime:
        """Aware UTC wall time: package and build timestamps, lease expiry."""
        ...

    def monotonic(self) -> float:
        """Seconds on a monotonic scale: :attr:`SchedulerEvent.at`."""
        ...


class SystemClock:
    """The real clock (the server's): ``datetime.now(UTC)`` and ``time.monotonic()``."""

    def now(self) -> datetime:
        return utcnow()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """What a runner reports for a package it built."""

    log_path: str = ""
    output_path: str = ""
    #: nothing was built: the artifacts of an earlier build with the same inputs
    cached: bool = False
    input_digest: str = ""


class PackageRunner(Protocol):
    """Builds one package on one backend. Raises ``BuildkitUnavailable`` for a backend
    fault (retried elsewhere), any other ``FarmError`` for the package's own failure."""

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome: ...

    def log_location(self, job: PackageJob, attempt: int) -> str:
        """Where attempt ``attempt``'s log is kept, also when it fails."""
        ...


@dataclass(kw_only=True)
class _BuildState:
    """What the scheduler keeps of a build in memory. Only ever updated with what the
    store answered to our own compare-and-set writes, never with older snapshots."""

    build: Build
    jobs: dict[str, PackageJob]
    dependents: dict[str, list[str]]
    status: BuildStatus
    counts: Counter[PackageStatus] = field(default_factory=Counter)
    #: per package, how many of its dependencies (in this build) have not succeeded,
    #: and how many ended otherwise: settling a dependent is O(1), not O(its deps)
    unmet: Counter[str] = field(default_factory=Counter)
    failed_deps: Counter[str] = field(default_factory=Counter)
    #: told of every package whose status this state sees change (old job, new job)
    moved: Callable[[_BuildState, PackageJob, PackageJob], None] | None = None

    def set(self, job: PackageJob) -> None:
        old = self.jobs.get(job.name)
        if old is not None:
            self.counts[old.status] -= 1
        self.counts[job.status] += 1
        self.jobs[job.name] = job
        if old is None or old.status is not job.status:
            self._count_for_dependents(old, job)
        if old is not None and old.status is not job.status and self.moved is not None:
            self.moved(self, old, job)

    def _count_for_dependents(self, old: PackageJob | None, job: PackageJob) -> None:
        was_ok = old is not None and old.status is PackageStatus.SUCCESS
        was_bad = old is not None and _ended_badly(old.status)
        ok, bad = job.status is PackageStatus.SUCCESS, _ended_badly(job.status)
        if was_ok == ok and was_bad == bad:
            return
        for dependent in self.dependents.get(job.name, ()):
            self.unmet[dependent] += was_ok - ok
            self.failed_deps[dependent] += bad - was_bad


def _ended_badly(status: PackageStatus) -> bool:
    return status.terminal and status is not PackageStatus.SUCCESS


#: (arch, backend selector): packages that compete for the same backends
QueueKey = tuple[str, tuple[tuple[str, str], ...]]
#: the reason shown for a package waiting for a slot of any size
_SLOT_REASON = "waiting for a backend slot"
#: replicas: the first and the longest wait before trying again starts the store could
#: not make (doubling while it keeps failing, back to the first after one it made)
RETRY_DELAYS = (0.01, 0.5)
#: replicas: how many ended builds a replica remembers to ignore late events about
ENDED_BUILDS_KEPT = 1024


@dataclass(order=True, frozen=True)
class _Ready:
    key: tuple[float, ...]
    build_id: str = field(compare=False)
    name: str = field(compare=False)


@dataclass(frozen=True, kw_only=True)
class _Start:
    """A start placed in this dispatch round, written with the round's others."""

    state: _BuildState
    job: PackageJob
    slot: BackendSlot
    attempt: int
    now: datetime
    move: Move


@dataclass(kw_only=True)
class SchedulerEvent:
    """What happened, for observers (metrics, benchmarks, live displays)."""

    kind: Literal["ready", "started", "finished"]
    build_id: BuildId
    name: str
    at: float  #: the scheduler's ``Clock.monotonic()`` (``time.monotonic()`` by default)
    status: PackageStatus


@dataclass(frozen=True, kw_only=True)
class StateChange:
    """A package or a build moved, as the store answered the scheduler's own write: for
    live displays (``GET /api/v1/events``). Given to ``on_change`` in the order of the
    writes, every package move included (skips, cancels, retries, expired leases).

    ``job`` is the package after its move; ``None`` for the build's own status (or, with
    ``previous`` ``None``, a build just submitted)."""

    build_id: BuildId
    #: the build's status (for a package's move: as it stood before the move settled it)
    build_status: BuildStatus
    #: how many of the build's packages are in each status, after the move
    counts: Mapping[PackageStatus, int]
    at: datetime
    job: PackageJob | None = None
    previous: PackageStatus | BuildStatus | None = None


class Scheduler:
    """Dispatch for one server process (one replica of several when ``replicas`` is
    shared: see the module's docstring). Use :meth:`run`."""

    def __init__(
        self,
        store: JobStore,
        pool: BackendPool,
        runner: PackageRunner,
        *,
        owner: str,
        schedule: Schedule = "critical-path",
        lease_ttl: float = 15.0,
        max_attempts: int = 3,
        retry_backoff: float = 1.0,
        observer: Callable[[SchedulerEvent], None] | None = None,
        before_build_end: Callable[[Build, BuildStatus], Awaitable[None]] | None = None,
        clock: Clock | None = None,
        on_change: Callable[[StateChange], None] | None = None,
        replicas: Replicas | None = None,
    ) -> None:
        self.store = store
        #: the other schedulers on this store, if any (:mod:`melange2.scheduler.replicas`)
        self.replicas: Replicas = replicas if replicas is not None else LocalReplicas(store)
        self.pool = pool
        self.runner = runner
        self.owner = owner
        self.schedule = schedule
        self.lease_ttl = lease_ttl
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.observer = observer
        #: runs before a build's final status is written (publication on success)
        self.before_build_end = before_build_end
        self.clock: Clock = clock if clock is not None else SystemClock()
        #: every state change, in the order written (see :class:`StateChange`)
        self.on_change = on_change
        self._builds: dict[BuildId, _BuildState] = {}
        #: ready packages, per (arch, backend selector) one priority queue per request
        #: (what they ask): when the head of one finds no room, the rest of it waits
        #: too, and a dispatch round costs O((started + requests) log n), not O(waiting)
        self._queues: dict[QueueKey, dict[Request, list[_Ready]]] = {}
        #: per queue, the package (``build/name``) a backend is kept for, and why it waits
        self._holders: dict[QueueKey, str] = {}
        self._holder_reasons: dict[str, str] = {}
        #: why the packages of one request of one queue wait, from the last round
        self._reasons: dict[tuple[QueueKey, Request], str] = {}
        #: blocked packages whose dependencies all succeeded, queued but not yet written
        self._promoted: set[tuple[BuildId, str]] = set()
        #: replicas: the wait before trying again starts the store could not make
        self._retry_delay = RETRY_DELAYS[0]
        self._retry_due = False
        self._tasks: dict[tuple[BuildId, str], asyncio.Task[None]] = {}
        #: guarded moves made at about the same time go to the store in one transaction
        self._moves = MoveBatcher(store)
        #: the starts placed in this dispatch round, not yet written (see _start)
        self._starts: dict[tuple[BuildId, str], _Start] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        #: replicas: our moves not yet told to the others
        self._outbox: list[ReplicaEvent] = []
        self._outbox_ready = asyncio.Event()
        #: replicas: the pool's bookings of packages other replicas run
        self._remote_slots: dict[tuple[BuildId, str], BackendSlot] = {}
        #: replicas: our packages another replica took over (our lease had expired)
        self._taken: set[tuple[BuildId, str]] = set()
        #: replicas: set while a row read from the store is applied (not re-announced)
        self._quiet = False
        self._ending: dict[BuildId, asyncio.Task[None]] = {}
        #: replicas: the last builds that ended here (oldest first): other replicas'
        #: events about them that come after the end are ignored, not read whole
        self._ended_builds: dict[BuildId, None] = {}
        pool.on_available = self.wake

    # -- public ---------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Recover unfinished builds, then dispatch until :meth:`stop`. With other
        replicas, listen to their events first (nothing is missed meanwhile)."""
        listener = await self._listen() if self.replicas.shared else None
        try:
            await self.recover()
            async with asyncio.TaskGroup() as group:
                group.create_task(self._dispatch_loop())
                group.create_task(self._lease_loop())
                if listener is not None:
                    group.create_task(self._announce_loop())
                    group.create_task(self._watch(listener))
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._outbox_ready.set()

    async def shutdown(self) -> None:
        """Stop dispatching and abandon running solves: their leases expire and the
        next start resumes them (graceful shutdown as the spec says)."""
        self.stop()
        tasks = [*self._tasks.values(), *self._ending.values()]
        for task in tasks:
            task.cancel("shutdown")
        await asyncio.gather(*tasks, return_exceptions=True)

    async def submit(self, build: Build) -> None:
        """Take a build the store just created. Its packages are pending or blocked, or
        already succeeded (reused at submission); a build with nothing left to run ends
        here."""
        async with self._lock:
            state = self._track(build)
            self._changed(state, None, None)
            self._announce(ReplicaEvent(kind="submitted", build_id=build.id))
            reused = [j for j in state.jobs.values() if j.status.terminal]
            for job in reused:
                self._emit("finished", build.id, job.name, job.status)
            for name in list(state.jobs):
                job = state.jobs[name]  # as of now: a refusal may have skipped it
                if job.status.terminal:
                    continue
                selector = _selector(build)
                if not self.pool.matching(job.arch, selector):  # at once, not when ready
                    await self._no_backend(state, job, selector)
                elif (never := self.pool.never(job.arch, selector, _request(job))) is not None:
                    await self._no_backend(state, job, selector, never)
                elif job.status is PackageStatus.PENDING:
                    self._push(state, job)
            await self._update_status(state)
        self.wake()

    async def cancel(self, build_id: BuildId) -> Build:
        """Cancel waiting packages now and running solves on their daemons."""
        build = await self.store.update_build(build_id, cancel_requested=True)
        self._announce(ReplicaEvent(kind="cancelled", build_id=build_id))
        async with self._lock:
            state = self._builds.get(build_id)
            if state is None and build.status in (BuildStatus.PENDING, BuildStatus.RUNNING):
                state = self._track(build)  # e.g. given up after a store failure
            if state is not None:
                state.build = build
            for job in build.packages:
                if job.status in (PackageStatus.BLOCKED, PackageStatus.PENDING):
                    with contextlib.suppress(InvalidTransition):
                        updated = await self.store.transition(
                            build_id,
                            job.name,
                            PackageStatus.CANCELLED,
                            finished_at=self.clock.now(),
                            reason="",
                            error="build cancelled",
                        )
                        if state is not None:
                            state.set(updated)
            for job in build.packages:
                if job.status is PackageStatus.RUNNING and (build_id, job.name) not in self._tasks:
                    if self._live_elsewhere(job):
                        continue  # its replica cancels it (it hears the cancel)
                    # no task of ours runs it (its runner died, or another server's
                    # lease): cancel it here, or it would come back
                    with contextlib.suppress(InvalidTransition):
                        updated = await self.store.transition(
                            build_id,
                            job.name,
                            PackageStatus.CANCELLED,
                            expect=frozenset({PackageStatus.RUNNING}),
                            finished_at=self.clock.now(),
                            error="build cancelled",
                            lease_owner="",
                            lease_expires=None,
                        )
                        if state is not None:
                            state.set(updated)
            if state is not None:
                await self._update_status(state)
        for (bid, _name), task in list(self._tasks.items()):
            if bid == build_id:
                task.cancel("build cancelled")
        return await self.store.get_build(build_id)

    def queue_positions(self) -> dict[tuple[str, str], tuple[int, int]]:
        """Every waiting package's place in its queue: ``(build, name) -> (n, of)``.
        One pass over the queues, so a response listing thousands of packages sorts each
        queue once, not once per package."""
        positions: dict[tuple[str, str], tuple[int, int]] = {}
        for shapes in self._queues.values():
            unique = {(e.build_id, e.name): e for queue in shapes.values() for e in queue}
            waiting = sorted(unique.values())
            for n, entry in enumerate(waiting, 1):
                positions[(entry.build_id, entry.name)] = (n, len(waiting))
        return positions

    def queue_reason(
        self,
        build_id: BuildId,
        name: str,
        positions: Mapping[tuple[str, str], tuple[int, int]] | None = None,
    ) -> str:
        """Why a pending package waits: what it waits for (a slot; or cpu or memory,
        how much it needs and the most free on one backend) and its place in the queue."""
        reason = _SLOT_REASON
        state = self._builds.get(build_id)
        job = state.jobs.get(name) if state is not None else None
        if state is not None and job is not None:
            key = _queue_key(state.build, job)
            holder = f"{build_id}/{name}"
            if self._holders.get(key) == holder:
                reason = self._holder_reasons.get(holder, reason)
            else:
                reason = self._reasons.get((key, _request(job)), reason)
        place = (positions if positions is not None else self.queue_positions()).get(
            (build_id, name)
        )
        if place is None:
            return reason
        where = f"{place[0]} of {place[1]} in the queue"
        return f"{reason}: {where}" if reason == _SLOT_REASON else f"{reason}; {where}"

    # -- tracking -------------------------------------------------------------------------

    def _track(self, build: Build) -> _BuildState:
        dependents: dict[str, list[str]] = {j.name: [] for j in build.packages}
        for job in build.packages:
            for dep in job.dependencies:
                if dep in dependents:
                    dependents[dep].append(job.name)
        state = _BuildState(build=build, jobs={}, dependents=dependents, status=build.status)
        for waiting in dependents.values():  # unmet until set() sees them succeed
            for dependent in waiting:
                state.unmet[dependent] += 1
        for job in build.packages:
            state.set(job)
            if job.status is PackageStatus.RUNNING:
                self._book_remote(job)
        state.moved = self._moved
        self._builds[build.id] = state
        return state

    def _moved(self, state: _BuildState, old: PackageJob, job: PackageJob) -> None:
        if self.replicas.shared:
            if not self._quiet:
                self._announce(
                    ReplicaEvent(kind="moved", build_id=state.build.id, names=(job.name,))
                )
            if old.status is PackageStatus.RUNNING:
                self._release_remote((job.build_id, job.name))
            if job.status is PackageStatus.RUNNING:
                self._book_remote(job)
        if self.on_change is not None:
            self._changed(state, job, old.status)

    def _changed(
        self,
        state: _BuildState,
        job: PackageJob | None,
        previous: PackageStatus | BuildStatus | None,
    ) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(
                StateChange(
                    build_id=state.build.id,
                    build_status=state.status,
                    counts={s: n for s, n in state.counts.items() if n},
                    at=self.clock.now(),
                    job=job,
                    previous=previous,
                )
            )
        except Exception:  # a display must not wedge the scheduler
            _log.exception("on_change failed for build %s", state.build.id)

    def _key(self, state: _BuildState, job: PackageJob) -> tuple[float, ...]:
        """A ready package's place: its build's ``schedule`` (the server's for builds
        stored without one). ``critical-path``: the highest priority first, then older
        builds, then submission order; ``fifo``: no priority (0), so among fifo builds
        older builds first, then submission order, and after the ready packages of
        critical-path builds (whose priorities are above 0)."""
        created = state.build.created_at.timestamp()
        if (state.build.spec.schedule or self.schedule) == "fifo":
            return (0.0, created, float(job.seq))
        return (-job.priority, created, float(job.seq))

    def _push(self, state: _BuildState, job: PackageJob) -> None:
        shapes = self._queues.setdefault(_queue_key(state.build, job), {})
        queue = shapes.setdefault(_request(job), [])
        heapq.heappush(queue, _Ready(self._key(state, job), state.build.id, job.name))
        self._emit("ready", state.build.id, job.name, job.status)

    def _emit(self, kind: str, build_id: BuildId, name: str, status: PackageStatus) -> None:
        if self.observer is not None:
            self.observer(
                SchedulerEvent(
                    kind=kind,  # type: ignore[arg-type]
                    build_id=build_id,
                    name=name,
                    at=self.clock.monotonic(),
                    status=status,
                )
            )

    async def recover(self) -> None:
        """Load unfinished builds from the store (after a restart): pending packages
        are queued, blocked ones whose dependencies are settled move on, running ones
        stay until their lease expires."""
        for build in await self.store.unfinished_builds():
            async with self._lock:
                state = self._track(build)
                for job in list(state.jobs.values()):
                    if job.status is PackageStatus.PENDING:
                        self._push(state, job)
                for job in list(state.jobs.values()):
                    if job.status is PackageStatus.BLOCKED:
                        await self._settle_blocked(state, job.name)
                await self._update_status(state)
        await self._expire_leases()
        self.wake()

    # -- dispatch -------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            await self._dispatch()

    async def _dispatch(self) -> None:
        async with self._lock:
            for queue_key in [k for k in self._holders if k not in self._queues]:
                self._drop_holder(queue_key)  # its package no longer waits
            for queue_key, shapes in list(self._queues.items()):
                await self._dispatch_queue(queue_key, shapes)
                if not shapes:
                    del self._queues[queue_key]
            await self._write_starts()

    async def _dispatch_queue(
        self, queue_key: QueueKey, shapes: dict[Request, list[_Ready]]
    ) -> None:
        """Start what fits of one queue, highest priority first. A request that found no
        room waits with the rest of its kind this round; the others go on (backfill).
        The package a backend is kept for is tried first."""
        selector = dict(queue_key[1])
        holder = self._holders.get(queue_key)
        if holder is not None:
            build_id, _, name = holder.partition("/")
            state = self._builds.get(BuildId(build_id))
            job = state.jobs.get(name) if state is not None else None
            if (
                state is None
                or job is None
                or not self._dispatchable(job)
                or state.build.cancel_requested
            ):
                self._drop_holder(queue_key)  # started, cancelled or failed meanwhile
            else:
                await self._try_place(queue_key, selector, state, job)
        blocked: set[Request] = set()
        while True:
            head = self._head(queue_key, shapes, blocked)
            if head is None:
                return
            request, state, job = head
            if state.build.cancel_requested:  # cancelled while it waited: cancel it now
                heapq.heappop(shapes[request])
                await self._cancel_waiting(state, job)
                continue
            if await self._try_place(queue_key, selector, state, job):
                heapq.heappop(shapes[request])
            else:
                blocked.add(request)

    def _head(
        self, queue_key: QueueKey, shapes: dict[Request, list[_Ready]], blocked: set[Request]
    ) -> tuple[Request, _BuildState, PackageJob] | None:
        """The highest-priority waiting package among requests not blocked this round
        (entries that are no longer waiting are dropped on the way)."""
        best: tuple[Request, _BuildState, PackageJob] | None = None
        best_key: _Ready | None = None
        for request, queue in list(shapes.items()):
            if request in blocked:
                continue
            while queue:
                entry = queue[0]
                state = self._builds.get(BuildId(entry.build_id))
                job = state.jobs.get(entry.name) if state is not None else None
                if state is not None and job is not None and self._dispatchable(job):
                    if best_key is None or entry < best_key:
                        best, best_key = (request, state, job), entry
                    break
                heapq.heappop(queue)  # cancelled, or taken care of meanwhile
            if not queue:
                del shapes[request]
                self._reasons.pop((queue_key, request), None)
        return best

    async def _try_place(
        self, queue_key: QueueKey, selector: Mapping[str, str], state: _BuildState, job: PackageJob
    ) -> bool:
        """Start ``job`` where it fits, or fail it if it never can; ``False``: it waits
        (and, the first of its queue to wait for cpu or memory, gets a backend kept)."""
        request = _request(job)
        key = f"{job.build_id}/{job.name}"
        tried = {a.backend for a in job.attempts if a.error}
        found = self.pool.place(job.arch, selector, request, holder=key, avoid=tried)
        if isinstance(found, Wait):
            holder = self._holders.get(queue_key)
            if holder == key or (holder is None and found.blocked_by == "resources"):
                kept = self.pool.reserve(key, job.arch, selector, request)
                if kept is not None:
                    self._holders[queue_key] = key
                    reason = found.reason
                    if "is kept for it" not in reason:
                        reason += f"; {kept} is kept for it"
                    self._holder_reasons[key] = reason
                    return False
                if holder == key:  # nothing to keep now (e.g. every circuit is open)
                    self._drop_holder(queue_key)
            self._reasons[(queue_key, request)] = found.reason
            return False
        if self._holders.get(queue_key) == key:
            self._drop_holder(queue_key)
        if isinstance(found, Never):
            await self._no_backend(state, job, selector, found.message)
        else:
            await self._start(state, job, found)
        return True

    def _drop_holder(self, queue_key: QueueKey) -> None:
        holder = self._holders.pop(queue_key, None)
        if holder is not None:
            self.pool.unreserve(holder)
            self._holder_reasons.pop(holder, None)

    async def _cancel_waiting(self, state: _BuildState, job: PackageJob) -> None:
        """A package of a cancelled build that was about to start: cancelled instead."""
        self._promoted.discard((job.build_id, job.name))
        try:
            state.set(
                await self.store.transition(
                    state.build.id,
                    job.name,
                    PackageStatus.CANCELLED,
                    finished_at=self.clock.now(),
                    reason="",
                    error="build cancelled",
                )
            )
        except InvalidTransition:
            return
        except _STORE_FAILURES:
            _log.exception("cancelling %s/%s", job.build_id, job.name)
            self._abandon(state)
            return
        await self._update_status(state)

    def _dispatchable(self, job: PackageJob) -> bool:
        if (job.build_id, job.name) in self._starts:  # placed this round already
            return False
        return job.status is PackageStatus.PENDING or (
            job.status is PackageStatus.BLOCKED and (job.build_id, job.name) in self._promoted
        )

    async def _no_backend(
        self,
        state: _BuildState,
        job: PackageJob,
        selector: Mapping[str, str],
        why: str | None = None,
    ) -> None:
        """Fail a package no backend could ever run: ``why`` (placement's message), or
        none of its arch and labels exists."""
        message = storable(
            f"no available backend: {why}"
            if why is not None and self.pool.matching(job.arch, selector)
            else "no available backend: no backend for "
            f"{self.pool.describe(job.arch, selector)} (all backends: "
            f"{', '.join(f'{b.addr} {b.arch}' for b in self.pool.serving()) or 'none'})"
        )
        try:
            if job.status is PackageStatus.BLOCKED:
                self._promoted.discard((job.build_id, job.name))
                job = await self.store.transition(
                    state.build.id, job.name, PackageStatus.PENDING, reason=""
                )
                state.set(job)
            failed = await self.store.transition(
                state.build.id,
                job.name,
                PackageStatus.FAILED,
                error=message,
                reason="",
                finished_at=self.clock.now(),
            )
        except InvalidTransition:
            pass
        except _STORE_FAILURES as exc:
            await self._fail_package(state, job, f"{message}; and the store refused it: {exc}")
            return
        else:
            state.set(failed)
            await self._cascade_failure(state, job.name)
        await self._update_status(state)

    async def _start(self, state: _BuildState, job: PackageJob, slot: BackendSlot) -> None:
        """Start ``job`` on ``slot``: its move to ``running`` is written with the other
        starts of this dispatch round, in one store transaction (:meth:`_write_starts`)."""
        backend = Backend(
            addr=slot.backend.addr, arch=slot.backend.arch, labels=dict(slot.backend.labels)
        )
        now = self.clock.now()
        attempt = len(job.attempts) + 1
        move = Move(
            build_id=state.build.id,
            name=job.name,
            to=PackageStatus.RUNNING,
            expect=frozenset({job.status}),
            fields={
                "backend": backend,
                "started_at": job.started_at or now,
                "reason": "",
                "lease_owner": self.owner,
                "lease_expires": now + timedelta(seconds=self.lease_ttl),
                "attempts": (
                    *job.attempts,
                    Attempt(number=attempt, backend=backend.addr, started_at=now),
                ),
            },
        )
        start = _Start(state=state, job=job, slot=slot, attempt=attempt, now=now, move=move)
        self._starts[(job.build_id, job.name)] = start

    async def _write_starts(self) -> None:
        """Write this dispatch round in one store transaction: its starts, each a
        compare-and-set of its own (one refused, e.g. cancelled meanwhile, frees its
        slot; the others start), and, written ``pending``, the packages whose
        dependencies all succeeded but found no free slot (those that found one go
        straight to ``running``: one write instead of two on the path from a
        dependency's success to its dependent's start). Then start the tasks. With
        other replicas the starts are a transaction of their own, where the store also
        checks each backend's limits across replicas (:meth:`Replicas.start_many`)."""
        starts = list(self._starts.values())
        waiting = [
            Move(
                build_id=build_id,
                name=name,
                to=PackageStatus.PENDING,
                expect=frozenset({PackageStatus.BLOCKED}),
                fields={"reason": ""},
            )
            for build_id, name in sorted(self._promoted)
            if (build_id, name) not in self._starts
            and (state := self._builds.get(build_id)) is not None
            and state.jobs[name].status is PackageStatus.BLOCKED
        ]
        self._promoted.clear()  # the started ones are in self._starts
        if not starts and not waiting:
            return
        started: Sequence[PackageJob | Full | BaseException | None]
        try:
            if self.replicas.shared:
                started = await self._start_shared(starts) if starts else []
                moved = await self._moves.many(waiting)
            else:
                results = await self._moves.many([s.move for s in starts] + waiting)
                started, moved = results[: len(starts)], results[len(starts) :]
        finally:
            self._starts.clear()
        for start, result in zip(starts, started, strict=True):
            await self._started(start, result)
        for move, answer in zip(waiting, moved, strict=True):
            if isinstance(answer, BaseException):  # they stay queued; the store says blocked
                _log.error("recording %s/%s as pending: %s", move.build_id, move.name, answer)
                continue
            state = self._builds.get(move.build_id)
            if answer is not None and state is not None:
                state.set(answer)

    async def _start_shared(
        self, starts: Sequence[_Start]
    ) -> Sequence[PackageJob | Full | BaseException | None]:
        slots = [
            SlotStart(
                build_id=s.move.build_id,
                name=s.move.name,
                expect=s.move.expect or frozenset(PackageStatus),
                addr=s.slot.backend.addr,
                max_jobs=s.slot.backend.max_jobs,
                cpu=s.slot.backend.cpu,
                memory=s.slot.backend.memory,
                fields=s.move.fields,
            )
            for s in starts
        ]
        try:
            started = await self.replicas.start_many(slots)
        except _STORE_FAILURES as exc:
            return [exc] * len(starts)
        self._retry_delay = RETRY_DELAYS[0]
        return started

    async def _started(
        self, start: _Start, result: PackageJob | Full | BaseException | None
    ) -> None:
        state, job, slot, now = start.state, start.job, start.slot, start.now
        waits = result is FULL or (self.replicas.shared and isinstance(result, StoreUnavailable))
        if waits:  # it stays queued (and, if blocked, promoted: written pending next round)
            self.pool.release(slot, outcome="neutral", quiet=True)
            if job.status is PackageStatus.BLOCKED:
                self._promoted.add((job.build_id, job.name))
            if result is FULL:  # a package's end anywhere wakes us
                self._reasons[(_queue_key(state.build, job), _request(job))] = (
                    f"{_SLOT_REASON}: {slot.backend.addr} is full with other replicas' packages"
                )
            else:  # e.g. a deadlock or serialization failure between replicas
                assert isinstance(result, StoreUnavailable)
                self._retry_soon(result)
            self._push(state, job)
            return
        self._promoted.discard((job.build_id, job.name))
        if result is None:  # refused: no longer what it was when placed
            self.pool.release(slot, outcome="neutral")
            if self.replicas.shared:  # another replica took it: see how it stands
                await self._refresh(state, job.name)
            return
        if isinstance(result, _STORE_FAILURES):
            self.pool.release(slot, outcome="neutral")
            await self._fail_package(state, job, f"the store refused its start: {result}")
            return
        if isinstance(result, BaseException):
            self.pool.release(slot, outcome="neutral")
            raise result
        assert isinstance(result, PackageJob)
        running = result
        state.set(running)
        self._emit("started", state.build.id, job.name, PackageStatus.RUNNING)
        if state.status is BuildStatus.PENDING:
            state.status = BuildStatus.RUNNING
            try:
                state.build = await self.store.update_build(
                    state.build.id, with_packages=False, status=BuildStatus.RUNNING, started_at=now
                )
            except _STORE_FAILURES:  # written with the build's next change
                _log.exception("recording build %s as running", state.build.id)
            self._changed(state, None, BuildStatus.PENDING)
        key = (state.build.id, job.name)
        task = asyncio.create_task(
            self._run(state, running, slot, start.attempt),
            name=f"build {job.build_id}/{job.name}",
        )
        task.add_done_callback(_log_crash)
        self._tasks[key] = task

    async def _run(
        self, state: _BuildState, job: PackageJob, slot: BackendSlot, attempt: int
    ) -> None:
        backend = Backend(
            addr=slot.backend.addr, arch=slot.backend.arch, labels=dict(slot.backend.labels)
        )
        key = (state.build.id, job.name)
        attributes: dict[str, str | int] = {
            "melange2.build.id": job.build_id,
            "melange2.package": job.name,
            "melange2.attempt": attempt,
            "melange2.arch": job.arch,
            "melange2.backend": backend.addr,
        }
        with tracing.span("package.attempt", attributes):  # one trace per attempt
            await self._attempt(state, job, slot, attempt, backend, key)

    async def _attempt(
        self,
        state: _BuildState,
        job: PackageJob,
        slot: BackendSlot,
        attempt: int,
        backend: Backend,
        key: tuple[BuildId, str],
    ) -> None:
        outcome = "neutral"
        released = False
        try:
            result = await self.runner.run(job, state.build, backend, attempt)
        except asyncio.CancelledError:
            await asyncio.shield(self._finish_cancelled(state, job, attempt))
            raise
        except (BuildkitUnavailable, SolveCancelled) as exc:
            # free the slot (and count the fault) before backing off
            self.pool.release(
                slot, outcome="fault" if isinstance(exc, BuildkitUnavailable) else "neutral"
            )
            released = True
            await asyncio.shield(self._finish_fault(state, job, attempt, exc))
        except FarmError as exc:
            await asyncio.shield(
                self._finish(
                    state,
                    job,
                    attempt,
                    PackageStatus.FAILED,
                    str(exc),
                    log_path=self._log_location(job, attempt),
                )
            )
        except Exception as exc:  # a bug in a runner must not wedge the build
            _log.exception("runner crashed on %s/%s", job.build_id, job.name)
            await asyncio.shield(
                self._finish(
                    state,
                    job,
                    attempt,
                    PackageStatus.FAILED,
                    f"internal error: {type(exc).__name__}: {exc}",
                    log_path=self._log_location(job, attempt),
                )
            )
        else:
            outcome = "success"
            await asyncio.shield(
                self._finish(
                    state,
                    job,
                    attempt,
                    PackageStatus.SUCCESS,
                    "",
                    log_path=result.log_path,
                    output_path=result.output_path,
                    cached=result.cached,
                    input_digest=result.input_digest,
                )
            )
        finally:
            self._tasks.pop(key, None)
            if not released:
                self.pool.release(slot, outcome=outcome)

    def _log_location(self, job: PackageJob, attempt: int) -> str:
        try:
            return self.runner.log_location(job, attempt)
        except Exception:  # where the log is matters less than recording the failure
            _log.exception("log location of %s/%s", job.build_id, job.name)
            return ""

    async def _finish(
        self,
        state: _BuildState,
        job: PackageJob,
        attempt: int,
        status: PackageStatus,
        error: str,
        **fields: Any,
    ) -> None:
        now = self.clock.now()
        error = storable(error)
        move = Move(
            build_id=state.build.id,
            name=job.name,
            to=status,
            expect=frozenset({PackageStatus.RUNNING}),
            owner=self.owner,  # not over another replica's run (our lease expired)
            fields={
                "finished_at": now,
                "error": error,
                "lease_owner": "",
                "lease_expires": None,
                "attempts": _closed(job, attempt, now, error, fields.get("log_path", "")),
                **fields,
            },
        )
        # written outside the lock, so that finishes arriving together share one store
        # transaction; only this package's task moves it while it runs (a cancel, an
        # orphan's failure, a lease expiry: the compare-and-set refuses one of the two)
        try:
            done = await self._moves.move(move)
        except _STORE_FAILURES as exc:
            async with self._lock:
                await self._fail_package(
                    state,
                    job,
                    f"the store refused its result ({status.value}): {exc}",
                    owner=self.owner,
                )
            return
        if done is None:  # cancelled or taken over meanwhile
            if self.replicas.shared:
                async with self._lock:
                    await self._refresh(state, job.name)
            return
        async with self._lock:
            state.set(done)
            self._emit("finished", state.build.id, job.name, status)
            if status is PackageStatus.SUCCESS:
                for dependent in state.dependents.get(job.name, []):
                    await self._settle_blocked(state, dependent)
            else:
                await self._cascade_failure(state, job.name)
            await self._update_status(state)
        self.wake()

    async def _finish_fault(
        self, state: _BuildState, job: PackageJob, attempt: int, exc: FarmError
    ) -> None:
        """A backend fault: retry on another backend with backoff, up to max_attempts."""
        if attempt >= self.max_attempts or state.build.cancel_requested:
            await self._finish(
                state,
                job,
                attempt,
                PackageStatus.FAILED,
                f"backend failed {attempt} time(s); last: {exc}",
            )
            return
        closed = _closed(job, attempt, self.clock.now(), storable(str(exc)), "")
        await asyncio.sleep(self.retry_backoff * (2 ** (attempt - 1)))
        if state.build.cancel_requested:  # cancelled while backing off: cancel wins
            await self._finish(state, job, attempt, PackageStatus.CANCELLED, "build cancelled")
            return
        async with self._lock:
            try:
                retry = await self.store.transition(
                    state.build.id,
                    job.name,
                    PackageStatus.PENDING,
                    expect=frozenset({PackageStatus.RUNNING}),
                    owner=self.owner,
                    lease_owner="",
                    lease_expires=None,
                    reason=storable(f"retrying after a backend fault: {exc}"),
                    attempts=closed,
                )
            except InvalidTransition:  # cancelled, or taken over meanwhile
                if self.replicas.shared:
                    await self._refresh(state, job.name)
                return
            except _STORE_FAILURES as e:
                await self._fail_package(
                    state, job, f"the store refused its retry: {e}", owner=self.owner
                )
                return
            state.set(retry)
            self._push(state, retry)
        self.wake()

    async def _finish_cancelled(self, state: _BuildState, job: PackageJob, attempt: int) -> None:
        if (job.build_id, job.name) in self._taken:  # another replica runs it now
            self._taken.discard((job.build_id, job.name))
            return
        if self._stop.is_set() and not state.build.cancel_requested:
            return  # shutdown: keep it running in the store; the lease brings it back
        await self._finish(state, job, attempt, PackageStatus.CANCELLED, "build cancelled")

    async def _settle_blocked(self, state: _BuildState, name: str) -> None:
        """A dependency of ``name`` finished: make it pending if all succeeded."""
        job = state.jobs[name]
        if job.status is not PackageStatus.BLOCKED:
            return
        if state.failed_deps[name]:
            failed = next(
                d
                for d in job.dependencies
                if d in state.jobs and _ended_badly(state.jobs[d].status)
            )
            await self._cascade_failure(state, failed)
            return
        if not state.unmet[name]:
            # ready: queued now, written `running` if a slot is free at the next dispatch,
            # else `pending` (see _write_starts)
            self._promoted.add((state.build.id, name))
            self._push(state, job)

    async def _cascade_failure(self, state: _BuildState, failed: str) -> None:
        """Skip every package that (transitively) depends on ``failed``."""
        todo = [(failed, d) for d in state.dependents.get(failed, [])]
        while todo:
            cause, name = todo.pop()
            job = state.jobs[name]
            if job.status is not PackageStatus.BLOCKED:
                continue
            try:
                skipped = await self.store.transition(
                    state.build.id,
                    name,
                    PackageStatus.SKIPPED,
                    error=f"dependency {cause} failed",
                    reason="",
                    finished_at=self.clock.now(),
                )
            except InvalidTransition:
                continue
            except _STORE_FAILURES:
                _log.exception("skipping %s/%s", state.build.id, name)
                self._abandon(state)
                return
            state.set(skipped)
            todo.extend((name, d) for d in state.dependents.get(name, []))

    async def _update_status(self, state: _BuildState, *, remote: bool = False) -> None:
        """Write the build's status when its packages' moves changed it (O(1)).
        ``remote``: the moves were another replica's (it writes the build's status; an
        end seen here is left to it for a while, :meth:`_end_later`)."""
        status = status_from_counts(
            state.counts,
            cancelled=state.build.cancel_requested,
            started=state.build.started_at is not None,
        )
        ending = status not in (BuildStatus.PENDING, BuildStatus.RUNNING)
        if status != state.status:
            if ending:
                if remote:
                    self._end_later(state.build.id)
                else:
                    await self._end(state, status)
                return
            if not remote:
                try:
                    state.build = await self.store.update_build(
                        state.build.id, with_packages=False, status=status
                    )
                except _STORE_FAILURES:
                    _log.exception("recording build %s as %s", state.build.id, status.value)
                    self._abandon(state)
                    return
            previous, state.status = state.status, status
            self._changed(state, None, previous)
        elif ending:
            self._forget(state.build.id)

    async def _end(self, state: _BuildState, status: BuildStatus, *, wait: bool = True) -> None:
        """End the build: publication (``before_build_end``), then its final status;
        on exactly one replica (:meth:`Replicas.ending`): if another ended it, take
        its status from the store. ``wait=False``: if another replica is ending it
        now, ask again later (:meth:`_end_later`) rather than wait for it."""
        mine: bool | None = False
        try:
            async with self.replicas.ending(state.build.id, wait=wait) as mine:
                if mine is None:
                    pass
                elif mine:
                    if self.before_build_end is not None:
                        current = replace(state.build, packages=tuple(state.jobs.values()))
                        try:
                            await self.before_build_end(current, status)
                        except Exception:
                            _log.exception("finishing build %s", state.build.id)
                    state.build = await self.store.update_build(
                        state.build.id,
                        with_packages=False,
                        status=status,
                        finished_at=self.clock.now(),
                    )
                else:
                    state.build = await self.store.get_build(state.build.id)
                    status = state.build.status
        except _STORE_FAILURES:
            _log.exception("recording build %s as %s", state.build.id, status.value)
            self._abandon(state)
            return
        if mine is None:  # another replica is publishing it
            self._end_later(state.build.id)
            return
        if mine:
            self._announce(ReplicaEvent(kind="ended", build_id=state.build.id))
        previous, state.status = state.status, status
        self._changed(state, None, previous)
        self._forget(state.build.id)

    # -- leases ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = self.lease_ttl / 3
        renewed = self.clock.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), period)
            if self._stop.is_set():
                return
            try:
                await self.store.renew_leases(
                    self.owner, self.clock.now() + timedelta(seconds=self.lease_ttl)
                )
                renewed = self.clock.monotonic()
                if await self._expire_leases() and self.replicas.shared:
                    # a replica died: what it wrote but had not told yet is read now
                    await self._resync()
            except _STORE_FAILURES as exc:
                _log.exception("renewing leases")
                if self.clock.monotonic() - renewed >= self.lease_ttl:
                    raise LeasesLost(
                        f"the store refused to renew leases for {self.lease_ttl:g} s: {exc}"
                    ) from exc
            await self._fail_orphans()

    async def _fail_orphans(self) -> None:
        """Packages running in memory with no task of ours: their runner ended without
        a result (a bug). Failed (or cancelled, for a cancelled build), never left
        running with a lease renewed forever."""
        async with self._lock:
            for state in list(self._builds.values()):
                for job in list(state.jobs.values()):
                    key = (state.build.id, job.name)
                    if job.status is not PackageStatus.RUNNING or key in self._tasks:
                        continue
                    if job.lease_owner and job.lease_owner != self.owner:
                        continue  # recovered from a dead server: its lease expires first
                    if state.build.cancel_requested:
                        await self._cancel_running(state, job)
                    else:
                        await self._fail_package(
                            state, job, "internal error: its runner ended without a result"
                        )

    async def _cancel_running(self, state: _BuildState, job: PackageJob) -> None:
        try:
            state.set(
                await self.store.transition(
                    state.build.id,
                    job.name,
                    PackageStatus.CANCELLED,
                    expect=frozenset({PackageStatus.RUNNING}),
                    finished_at=self.clock.now(),
                    error="build cancelled",
                    lease_owner="",
                    lease_expires=None,
                )
            )
        except InvalidTransition:
            return
        except _STORE_FAILURES:
            _log.exception("cancelling %s/%s", state.build.id, job.name)
            self._abandon(state)
            return
        await self._update_status(state)

    async def _fail_package(
        self, state: _BuildState, job: PackageJob, reason: str, *, owner: str | None = None
    ) -> None:
        """Fail ``job`` with ``reason`` after a store write for it failed (call with the
        lock held; ``owner``: only while it runs under that lease, for a running
        attempt's own write). If the store refuses that too, stop tracking the build: it
        stays unfinished in the store, and the next start recovers it."""
        _log.error("%s/%s: %s", state.build.id, job.name, reason)
        try:
            failed = await self.store.transition(
                state.build.id,
                job.name,
                PackageStatus.FAILED,
                owner=owner,
                error=storable(reason),
                reason="",
                finished_at=self.clock.now(),
                lease_owner="",
                lease_expires=None,
            )
        except InvalidTransition:
            return
        except _STORE_FAILURES:
            _log.exception("recording %s/%s as failed", state.build.id, job.name)
            self._abandon(state)
            return
        state.set(failed)
        self._emit("finished", state.build.id, job.name, PackageStatus.FAILED)
        await self._cascade_failure(state, job.name)
        await self._update_status(state)

    def _abandon(self, state: _BuildState) -> None:
        """Stop tracking a build the store refuses to record (logged): its queued
        packages are dropped at the next dispatch, its tasks end on their own."""
        if self._forget(state.build.id) is not None:
            _log.error(
                "build %s is no longer scheduled by this server: the store refuses its "
                "writes (it stays unfinished in the store; a restart recovers it)",
                state.build.id,
            )

    async def _expire_leases(self) -> bool:
        """Requeue the packages whose lease expired; whether there were any."""
        expired = await self.store.expire_leases(self.clock.now())
        if not expired:
            return False
        async with self._lock:
            for job in expired:
                state = self._builds.get(job.build_id)
                if state is None:
                    try:
                        state = self._track(await self.store.get_build(job.build_id))
                    except NotFound:
                        continue
                state.set(job)
                if state.build.cancel_requested:
                    await self._cancel_waiting(state, job)
                else:
                    self._push(state, job)
        self.wake()
        return True

    # -- replicas -------------------------------------------------------------------------
    # Other schedulers on this store (see melange2.scheduler.replicas): what this one
    # tells them, and how what they tell is applied. Alone on the store
    # (LocalReplicas), _announce keeps nothing and nothing here runs.

    def backends_changed(self) -> None:
        """The runtime backends changed here (added or removed through the API): the
        other replicas reload them from the store."""
        self._announce(ReplicaEvent(kind="backends"))

    def _announce(self, event: ReplicaEvent) -> None:
        if self.replicas.shared:
            self._outbox.append(event)
            self._outbox_ready.set()

    async def _announce_loop(self) -> None:
        """Send what was written since the last send, in one batch (one NOTIFY
        statement); a failed send is tried again with what came meanwhile."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            events, self._outbox = self._outbox, []
            if events:
                try:
                    await self.replicas.publish(events)
                except _STORE_FAILURES:
                    _log.exception("telling the other replicas of %d events", len(events))
                    self._outbox[:0] = events
                    if not self._stop.is_set():
                        await asyncio.sleep(0.5)
                        self._outbox_ready.set()
                        continue
            if self._stop.is_set():
                return

    async def _listen(self) -> asyncio.Task[None]:
        """Start hearing the other replicas; returns once listening."""
        ready = asyncio.Event()
        task = asyncio.create_task(
            self.replicas.listen(self._on_events, self._resync, ready.set),
            name="replica events",
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # it failed: raise why
        return task

    async def _watch(self, listener: asyncio.Task[None]) -> None:
        """Until :meth:`stop`: if hearing the others ends (a bug: it reconnects after
        any database error), so does :meth:`run` (the replica would go deaf)."""
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({listener, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if listener.done() and not self._stop.is_set():
            listener.result()
            raise RuntimeError("stopped hearing the other replicas")

    async def _on_events(self, events: Sequence[ReplicaEvent]) -> None:
        """Apply what other replicas did (read from the store, under the lock)."""
        for event in events:
            if event.kind == "backends":
                await self._reload_backends()
                continue
            if event.build_id is None:
                continue
            async with self._lock:
                if event.kind == "ended":
                    await self._ended_elsewhere(event.build_id)
                elif event.kind == "cancelled":
                    await self._cancelled_elsewhere(event.build_id)
                else:
                    await self._apply_remote(event.build_id, event.names, event.kind)
            if event.kind == "cancelled":
                self._cancel_tasks(event.build_id)
        self.wake()

    async def _apply_remote(self, build_id: BuildId, names: Sequence[str], kind: str) -> None:
        state = self._builds.get(build_id)
        if state is None:  # a build submitted elsewhere (or not seen yet)
            if build_id in self._ended_builds:  # late news of a build that ended
                return
            try:
                build = await self.store.get_build(build_id)
            except NotFound:
                return
            if build.status in (BuildStatus.PENDING, BuildStatus.RUNNING):
                await self._adopt(build)
            return
        if kind == "submitted":
            return
        if names:
            rows = await self.replicas.read_packages(build_id, names)
        else:
            rows = (await self.store.get_build(build_id)).packages
        for row in rows:
            await self._apply_row(state, row)
        if self._builds.get(build_id) is state:
            await self._update_status(state, remote=True)

    async def _adopt(self, build: Build) -> None:
        """Track a build another replica submitted (or recovered): queue what is
        ready, as :meth:`recover` does; its status is the store's."""
        state = self._track(build)
        self._changed(state, None, None)
        selector = _selector(build)
        for job in list(state.jobs.values()):
            if job.status is PackageStatus.PENDING and self.pool.matching(job.arch, selector):
                self._push(state, job)
        for job in list(state.jobs.values()):
            if job.status is PackageStatus.BLOCKED:
                await self._settle_blocked(state, job.name)

    async def _apply_row(self, state: _BuildState, row: PackageJob) -> None:
        """A package as it stands in the store, moved by another replica: applied to
        the graph as our own moves are (dependents released, failures cascaded, a
        package pending again queued; bookings follow in :meth:`_moved`)."""
        old = state.jobs.get(row.name)
        if old is None or old == row:
            return
        key = (row.build_id, row.name)
        if key in self._tasks and (
            row.status is not PackageStatus.RUNNING or row.lease_owner != self.owner
        ):
            # we run it: a row read before our own start (a snapshot) must not undo it;
            # only the row as it stands now says whether another replica took it over
            fresh = await self.replicas.read_packages(row.build_id, [row.name])
            if not fresh:
                return
            row = fresh[0]
            if row.status is PackageStatus.RUNNING and row.lease_owner == self.owner:
                if old != row:
                    self._set_remote(state, row)
                return
        self._set_remote(state, row)
        task = self._tasks.get(key)
        if task is not None and (
            row.status is not PackageStatus.RUNNING or row.lease_owner != self.owner
        ):
            self._taken.add(key)  # our lease expired and another replica took it
            task.cancel("taken over by another replica")
        if old.status is row.status:
            return
        if row.status is PackageStatus.PENDING:
            self._push(state, row)
        elif row.status is PackageStatus.SUCCESS:
            for dependent in state.dependents.get(row.name, []):
                await self._settle_blocked(state, dependent)
        elif row.status.terminal:
            await self._cascade_failure(state, row.name)

    def _set_remote(self, state: _BuildState, row: PackageJob) -> None:
        """``state.set(row)`` for a move another replica made: not announced again."""
        self._quiet = True
        try:
            state.set(row)
        finally:
            self._quiet = False

    async def _refresh(self, state: _BuildState, name: str) -> None:
        """A guarded write of ours matched nothing: read how the package stands."""
        try:
            rows = await self.replicas.read_packages(state.build.id, [name])
        except _STORE_FAILURES:
            _log.exception("reading %s/%s", state.build.id, name)
            return
        for row in rows:
            await self._apply_row(state, row)

    async def _cancelled_elsewhere(self, build_id: BuildId) -> None:
        """Another replica cancelled the build: its queued packages are cancelled at
        the next dispatch, our running solves now (:meth:`_cancel_tasks`)."""
        state = self._builds.get(build_id)
        if state is None:
            return
        state.build = await self.store.get_build(build_id)

    def _cancel_tasks(self, build_id: BuildId) -> None:
        for (bid, _name), task in list(self._tasks.items()):
            if bid == build_id:
                task.cancel("build cancelled")

    async def _ended_elsewhere(self, build_id: BuildId, build: Build | None = None) -> None:
        """Another replica ended the build: stop tracking it."""
        state = self._builds.get(build_id)
        if state is None:
            return
        if build is None:
            build = await self.store.get_build(build_id)
        state.build = build
        previous, state.status = state.status, build.status
        if previous != build.status:
            self._changed(state, None, previous)
        self._forget(build_id)

    def _end_later(self, build_id: BuildId) -> None:
        """The build's last package ended on another replica, which ends the build;
        if it is still unfinished after :data:`END_GRACE` (that replica died), end it."""
        if build_id in self._ending:
            return

        async def later() -> None:
            await asyncio.sleep(END_GRACE)
            self._ending.pop(build_id, None)  # from here on, one may be asked for again
            async with self._lock:
                state = self._builds.get(build_id)
                if state is None:
                    return
                status = status_from_counts(
                    state.counts,
                    cancelled=state.build.cancel_requested,
                    started=state.build.started_at is not None,
                )
                if status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
                    await self._end(state, status, wait=False)

        task = asyncio.create_task(later(), name=f"end of build {build_id}")
        self._ending[build_id] = task
        task.add_done_callback(
            lambda done: self._ending.pop(build_id) if self._ending.get(build_id) is done else None
        )

    def _forget(self, build_id: BuildId) -> _BuildState | None:
        """Stop tracking a build (ended, or given up): what the others run of it is
        no longer booked here."""
        state = self._builds.pop(build_id, None)
        if state is not None and state.status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
            self._ended_builds[build_id] = None
            while len(self._ended_builds) > ENDED_BUILDS_KEPT:
                del self._ended_builds[next(iter(self._ended_builds))]
        for key in [k for k in self._remote_slots if k[0] == build_id]:
            self._release_remote(key)
        return state

    def _book_remote(self, job: PackageJob) -> None:
        """Book on the local pool a package another replica runs."""
        if not self.replicas.shared or job.backend is None or job.lease_owner == self.owner:
            return
        key = (job.build_id, job.name)
        if key not in self._remote_slots:
            slot = self.pool.book_remote(job.backend.addr, _request(job))
            if slot is not None:
                self._remote_slots[key] = slot

    def _release_remote(self, key: tuple[BuildId, str]) -> None:
        slot = self._remote_slots.pop(key, None)
        if slot is not None:
            self.pool.release_remote(slot)

    def _retry_soon(self, exc: Exception) -> None:
        """A start the store could not make now (with other replicas: a deadlock, a
        serialization failure, the database unreachable): the package waits, and the
        scheduler tries again in a moment: :data:`RETRY_DELAYS`, from 10 ms doubling while
        it keeps failing (no spinning on a down store), 10 ms again once a start is made."""
        if self._retry_due:  # one wake for all the starts of a round
            return
        _log.warning("starting packages: %s (again in %.2f s)", exc, self._retry_delay)
        self._retry_due = True
        asyncio.get_running_loop().call_later(self._retry_delay, self._retry_now)
        self._retry_delay = min(self._retry_delay * 2, RETRY_DELAYS[1])

    def _retry_now(self) -> None:
        self._retry_due = False
        self.wake()

    def _live_elsewhere(self, job: PackageJob) -> bool:
        """Running under another replica's lease that has not expired."""
        return (
            self.replicas.shared
            and bool(job.lease_owner)
            and job.lease_owner != self.owner
            and job.lease_expires is not None
            and job.lease_expires > self.clock.now()
        )

    async def _resync(self) -> None:
        """Catch up with the store after events may have been lost (the events
        connection was down): every unfinished build as it stands, the builds that
        ended meanwhile forgotten, the runtime backends reloaded."""
        cancelled: list[BuildId] = []
        async with self._lock:  # read under the lock: none of our own moves in between
            builds = await self.store.unfinished_builds()
            seen: set[BuildId] = set()
            for build in builds:
                seen.add(build.id)
                state = self._builds.get(build.id)
                if state is None:
                    await self._adopt(build)
                    continue
                if build.cancel_requested and not state.build.cancel_requested:
                    cancelled.append(build.id)
                state.build = build
                for row in build.packages:
                    await self._apply_row(state, row)
                if self._builds.get(build.id) is state:
                    await self._update_status(state, remote=True)
            for build_id in [b for b in self._builds if b not in seen]:
                try:
                    build = await self.store.get_build(build_id)
                except NotFound:
                    self._forget(build_id)
                    continue
                if build.status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
                    await self._ended_elsewhere(build_id, build)
        for build_id in cancelled:
            self._cancel_tasks(build_id)
        await self._reload_backends()
        self.wake()

    async def _reload_backends(self) -> None:
        """The runtime backends as the store keeps them: new ones added to the pool,
        removed ones drained."""
        stored = await self.store.list_backends()
        addrs = {b.addr for b in stored}
        for backend in stored:
            current = self.pool.backends.get(backend.addr)
            if current is None or current.draining:
                with contextlib.suppress(RequestError):
                    self.pool.add(backend_spec(backend), dynamic=True)
        for pooled in self.pool.serving():
            if pooled.dynamic and pooled.addr not in addrs:
                with contextlib.suppress(ConfigError, RequestError):
                    self.pool.remove(pooled.addr)
        self.wake()


def _log_crash(task: asyncio.Task[None]) -> None:
    """A package's task that died of a bug (its package is failed by the lease loop)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("%s crashed", task.get_name(), exc_info=exc)


def _closed(
    job: PackageJob, attempt: int, now: datetime, error: str, log_path: str
) -> tuple[Attempt, ...]:
    """The job's attempts with attempt ``attempt`` finished."""
    closed = []
    for a in job.attempts:
        if a.number == attempt:
            a = Attempt(
                number=a.number,
                backend=a.backend,
                started_at=a.started_at,
                finished_at=now,
                error=error,
                log_path=log_path,
            )
        closed.append(a)
    return tuple(closed)


def _request(job: PackageJob) -> Request:
    return Request(cpu=job.cpu_millis, memory=job.memory_bytes)


def _queue_key(build: Build, job: PackageJob) -> QueueKey:
    return (job.arch, tuple(sorted(_selector(build).items())))


def _selector(build: Build) -> Mapping[str, str]:
    return build.spec.backend_selector
