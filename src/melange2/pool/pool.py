"""The pool: which backend runs a package now, and what each one runs.

Selection (:meth:`BackendPool.place`, :meth:`BackendPool.select`): the architecture
matches, every selector label matches, the backend is not draining, its circuit accepts
jobs, it runs fewer than ``max_jobs``, and what the package asks (``package.resources``:
cpu, memory) fits what its running packages leave free of the ``cpu`` and ``memory`` it
declares (undeclared: unlimited); among those the least loaded wins. The rules are
:mod:`melange2.scheduler.placement`'s (pure); the pool keeps the books: jobs, cpu and
memory in use per backend, and reservations (a backend kept for one waiting package so
that smaller ones cannot starve it). Selection and the booking happen together,
synchronously, so two packages never take the last slot (or cpu) of one backend.

All of a backend's accounting is here, behind :meth:`~BackendPool.place`,
:meth:`~BackendPool.release`, :meth:`~BackendPool.reserve` and
:meth:`~BackendPool.unreserve`. With several replicas on one store the books of each
replica's pool also hold the packages the others run (:meth:`~BackendPool.book_remote`,
from their events), and the store checks the limits across replicas when a package
starts (:mod:`melange2.scheduler.replicas`); each replica keeps its own circuit
breakers and probes every daemon itself.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from melange2.buildkit.tls import ClientTLS
from melange2.errors import ConfigError, RequestError
from melange2.pool.breaker import BreakerState, CircuitBreaker
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.scheduler.placement import (
    NOTHING,
    Candidate,
    Capacity,
    Chosen,
    Never,
    Request,
    Usage,
    Wait,
    choose,
    never_message,
    reservation,
)


class NoBackend(enum.Enum):
    """Why :meth:`BackendPool.select` found no backend."""

    NEVER = "never"  #: no backend has this arch and labels: the package cannot run
    BUSY = "busy"  #: matching backends exist, none can take a job now


@dataclass(kw_only=True)
class PoolBackend:
    """A backend and what the pool knows of it."""

    addr: str
    arch: str
    labels: Mapping[str, str]
    max_jobs: int
    breaker: CircuitBreaker
    active: int = 0
    draining: bool = False
    #: kept in the store (added at runtime) rather than from the config
    dynamic: bool = False
    last_probe: datetime | None = None
    last_probe_result: str = ""
    buildkit_version: str = ""
    platforms: tuple[str, ...] = ()
    #: declared arch not among the daemon's platforms: shown in error, gets no jobs
    platform_error: bool = False
    #: how to reach it over TLS (``None``: plain)
    tls: ClientTLS | None = None
    #: declared cpu (millicores) and memory (bytes); ``None``: not declared, unlimited
    cpu: int | None = None
    memory: int | None = None
    #: what its running packages asked, summed
    cpu_used: int = 0
    memory_used: int = 0
    #: the waiting package (``build/name``) this backend is kept for; ``""``: none
    reserved_for: str = ""
    _capacity: Capacity | None = field(default=None, repr=False, compare=False)

    @property
    def capacity(self) -> Capacity:
        return Capacity(max_jobs=self.max_jobs, cpu=self.cpu, memory=self.memory)

    @property
    def usage(self) -> Usage:
        return Usage(jobs=self.active, cpu=self.cpu_used, memory=self.memory_used)

    def candidate(self) -> Candidate:
        """This backend as placement sees it now (a snapshot)."""
        capacity = self._capacity
        if capacity is None or capacity.max_jobs != self.max_jobs:
            capacity = self._capacity = self.capacity
        return Candidate(
            addr=self.addr,
            capacity=capacity,
            used=Usage(jobs=self.active, cpu=self.cpu_used, memory=self.memory_used),
            accepting=self.accepting(),
            reserved_for=self.reserved_for,
        )

    def accepting(self) -> bool:
        """Takes jobs at all now (whatever its load)."""
        return not self.draining and not self.platform_error and self.breaker.can_accept()

    def matches(self, arch: str, selector: Mapping[str, str]) -> bool:
        return self.arch == arch and all(self.labels.get(k) == v for k, v in selector.items())

    def available(self) -> bool:
        """Accepting jobs and a job slot free (whatever a package asks)."""
        return self.accepting() and self.active < self.max_jobs


@dataclass(frozen=True, kw_only=True)
class BackendSlot:
    """A booked job slot on one backend; give it back with :meth:`BackendPool.release`."""

    backend: PoolBackend
    #: what the package asked, booked on the backend until released
    request: Request = NOTHING


@dataclass(kw_only=True)
class BackendPool:
    default_max_jobs: int = 4
    failure_threshold: int = 3
    recovery_timeout: float = 30.0
    backends: dict[str, PoolBackend] = field(default_factory=dict)
    #: called when a slot frees or a backend appears (the scheduler's wake-up)
    on_available: Callable[[], None] | None = None
    on_breaker_change: Callable[[str, BreakerState, BreakerState], None] | None = None

    @classmethod
    def from_config(cls, config: PoolConfig) -> BackendPool:
        pool = cls(
            default_max_jobs=config.default_max_jobs,
            failure_threshold=config.failure_threshold,
            recovery_timeout=config.recovery_timeout,
        )
        for spec in config.backends:
            pool.add(spec)
        return pool

    def add(self, spec: BackendSpec, *, dynamic: bool = False) -> PoolBackend:
        if spec.addr in self.backends and not self.backends[spec.addr].draining:
            raise RequestError(f"backend {spec.addr} already exists")
        addr = spec.addr
        breaker = CircuitBreaker(
            failure_threshold=self.failure_threshold, recovery_timeout=self.recovery_timeout
        )
        backend = PoolBackend(
            addr=addr,
            arch=spec.arch,
            labels=dict(spec.labels),
            max_jobs=spec.max_jobs or self.default_max_jobs,
            breaker=breaker,
            dynamic=dynamic,
            tls=spec.tls,
            cpu=spec.cpu,
            memory=spec.memory,
        )
        if self.on_breaker_change is not None:
            hook = self.on_breaker_change
            breaker.on_change = lambda old, new: hook(addr, old, new)
        old = self.backends.get(addr)
        if old is not None:  # re-adding a draining backend: keep what it runs
            backend.active = old.active
            backend.cpu_used = old.cpu_used
            backend.memory_used = old.memory_used
        self.backends[addr] = backend
        self.notify()
        return backend

    def remove(self, addr: str) -> PoolBackend:
        """Drain ``addr``: its running jobs finish, it gets no new ones, and it leaves
        the pool when idle. The last serving backend cannot be removed."""
        backend = self.backends.get(addr)
        if backend is None or backend.draining:
            raise RequestError(f"no backend {addr}")
        serving = [b for b in self.backends.values() if not b.draining]
        if len(serving) <= 1:
            raise ConfigError(f"cannot remove {addr}: it is the last backend")
        backend.draining = True
        backend.reserved_for = ""
        if backend.active == 0:
            del self.backends[addr]
        return backend

    def tls_for(self, addr: str) -> ClientTLS | None:
        """How to dial ``addr`` (a backend keeps its entry while its jobs drain)."""
        backend = self.backends.get(addr)
        return backend.tls if backend is not None else None

    def serving(self) -> list[PoolBackend]:
        return [b for b in self.backends.values() if not b.draining]

    def architectures(self) -> list[str]:
        return sorted({b.arch for b in self.serving()})

    def matching(self, arch: str, selector: Mapping[str, str]) -> list[PoolBackend]:
        """The serving backends of ``arch`` with every selector label, in config order."""
        return [b for b in self.serving() if b.matches(arch, selector)]

    def candidates(self, arch: str, selector: Mapping[str, str]) -> list[Candidate]:
        """:meth:`matching` as placement sees them (a snapshot)."""
        return [b.candidate() for b in self.matching(arch, selector)]

    def place(
        self,
        arch: str,
        selector: Mapping[str, str],
        request: Request = NOTHING,
        *,
        holder: str = "",
        avoid: Collection[str] = (),
    ) -> BackendSlot | Wait | Never:
        """Book a slot (and the request's cpu and memory) on the least-loaded backend
        it fits now, or say why not (:func:`melange2.scheduler.placement.choose`).
        ``holder``: the package's key, so a backend kept for it is free to it (and the
        reservation ends when it starts). ``avoid``: backends where it already failed,
        taken only if no other fits."""
        matching = self.matching(arch, selector)
        found = choose(
            request,
            [b.candidate() for b in matching],
            where=self.describe(arch, selector),
            holder=holder,
            avoid=avoid,
        )
        if not isinstance(found, Chosen):
            return found
        best = next(b for b in matching if b.addr == found.addr)
        best.active += 1
        best.cpu_used += request.cpu
        best.memory_used += request.memory
        best.breaker.started()
        if holder:
            self.unreserve(holder)
        return BackendSlot(backend=best, request=request)

    def select(
        self,
        arch: str,
        selector: Mapping[str, str],
        *,
        avoid: Collection[str] = (),
        request: Request = NOTHING,
    ) -> BackendSlot | NoBackend:
        """:meth:`place`, answering only whether it waits (``BUSY``) or never runs
        (``NEVER``)."""
        found = self.place(arch, selector, request, avoid=avoid)
        if isinstance(found, Never):
            return NoBackend.NEVER
        if isinstance(found, Wait):
            return NoBackend.BUSY
        return found

    def never(self, arch: str, selector: Mapping[str, str], request: Request) -> str | None:
        """Why no serving backend could ever run ``request`` (``None``: one could)."""
        return never_message(
            request, self.candidates(arch, selector), self.describe(arch, selector)
        )

    def reserve(
        self, holder: str, arch: str, selector: Mapping[str, str], request: Request
    ) -> str | None:
        """Keep one backend for ``holder``, a waiting package that asks ``request``
        (:func:`melange2.scheduler.placement.reservation` picks it); no other package
        starts there until the holder does (:meth:`place` ends it) or
        :meth:`unreserve`. Returns the backend kept, or ``None`` (none qualifies)."""
        matching = self.matching(arch, selector)
        addr = reservation(request, [b.candidate() for b in matching], holder=holder)
        for b in self.backends.values():
            if b.reserved_for == holder and b.addr != addr:
                b.reserved_for = ""
        if addr is not None:
            self.backends[addr].reserved_for = holder
        return addr

    def unreserve(self, holder: str) -> None:
        """End ``holder``'s reservation, if any (it started, or no longer waits)."""
        for b in self.backends.values():
            if b.reserved_for == holder:
                b.reserved_for = ""

    def reserved_for(self, holder: str) -> str | None:
        """The backend kept for ``holder``, if any."""
        return next((b.addr for b in self.backends.values() if b.reserved_for == holder), None)

    def capacity(self, arch: str, selector: Mapping[str, str]) -> int:
        return sum(b.max_jobs for b in self.matching(arch, selector))

    def release(self, slot: BackendSlot, *, outcome: str, quiet: bool = False) -> None:
        """Give a slot back. ``outcome``: ``success`` (the backend worked), ``fault``
        (a backend fault: counts for the breaker) or ``neutral`` (the package's own
        failure, or a cancel: not the backend's doing). ``quiet``: wake nobody (the
        slot was never used: the start did not happen)."""
        backend = slot.backend
        backend.active -= 1
        backend.cpu_used -= slot.request.cpu
        backend.memory_used -= slot.request.memory
        if outcome == "success":
            backend.breaker.record_success()
        elif outcome == "fault":
            backend.breaker.record_failure()
        else:
            backend.breaker.finished_without_verdict()
        if backend.draining and backend.active == 0:
            self.backends.pop(backend.addr, None)
        if not quiet:
            self.notify()

    def book_remote(self, addr: str, request: Request) -> BackendSlot | None:
        """Book what a package another replica runs on ``addr`` takes, so placement
        here sees the backend's real load (no breaker verdict: that replica's own).
        ``None``: no such backend here."""
        backend = self.backends.get(addr)
        if backend is None:
            return None
        backend.active += 1
        backend.cpu_used += request.cpu
        backend.memory_used += request.memory
        return BackendSlot(backend=backend, request=request)

    def release_remote(self, slot: BackendSlot) -> None:
        """That package ended there (:meth:`book_remote`): its slot is free here too."""
        backend = slot.backend
        backend.active -= 1
        backend.cpu_used -= slot.request.cpu
        backend.memory_used -= slot.request.memory
        if backend.draining and backend.active == 0 and self.backends.get(backend.addr) is backend:
            self.backends.pop(backend.addr, None)
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits for a slot (a slot freed, a backend appeared or recovered)."""
        if self.on_available is not None:
            self.on_available()

    def describe(self, arch: str, selector: Mapping[str, str]) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return f"arch {arch}" + (f" and labels {labels}" if labels else "")


def single_backend(addr: str, arch: str, max_jobs: int = 4) -> PoolConfig:
    return PoolConfig(backends=(BackendSpec(addr=addr, arch=arch, max_jobs=max_jobs),))
