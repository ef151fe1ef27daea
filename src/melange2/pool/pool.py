"""The pool: which backend runs a package now, and how many jobs each one runs.

Selection (:meth:`BackendPool.select`): the architecture matches, every selector label
matches, the backend is not draining, its circuit accepts jobs, it runs fewer than
``max_jobs``; among those the lowest load ``active/max_jobs`` wins (then the order
backends were configured in). Selection and slot reservation happen together,
synchronously, so two packages never take the last slot of one backend.
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

    def matches(self, arch: str, selector: Mapping[str, str]) -> bool:
        return self.arch == arch and all(self.labels.get(k) == v for k, v in selector.items())

    @property
    def load(self) -> float:
        return self.active / self.max_jobs

    def available(self) -> bool:
        return (
            not self.draining
            and not self.platform_error
            and self.active < self.max_jobs
            and self.breaker.can_accept()
        )


@dataclass(frozen=True, kw_only=True)
class BackendSlot:
    """A reserved job slot on one backend; give it back with :meth:`BackendPool.release`."""

    backend: PoolBackend


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
        )
        if self.on_breaker_change is not None:
            hook = self.on_breaker_change
            breaker.on_change = lambda old, new: hook(addr, old, new)
        old = self.backends.get(addr)
        if old is not None:  # re-adding a draining backend: keep its running count
            backend.active = old.active
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

    def select(
        self, arch: str, selector: Mapping[str, str], *, avoid: Collection[str] = ()
    ) -> BackendSlot | NoBackend:
        """Reserve a slot on the least-loaded matching backend, or say why not. Backends
        in ``avoid`` (where this package already failed) are taken only if no other is
        free, so a retry goes to another backend when there is one."""
        matching = [b for b in self.serving() if b.matches(arch, selector)]
        if not matching:
            return NoBackend.NEVER
        ready = [b for b in matching if b.available()]
        if not ready:
            return NoBackend.BUSY
        best = min(ready, key=lambda b: (b.addr in avoid, b.load))
        best.active += 1
        best.breaker.started()
        return BackendSlot(backend=best)

    def capacity(self, arch: str, selector: Mapping[str, str]) -> int:
        return sum(b.max_jobs for b in self.serving() if b.matches(arch, selector))

    def release(self, slot: BackendSlot, *, outcome: str) -> None:
        """Give a slot back. ``outcome``: ``success`` (the backend worked), ``fault``
        (a backend fault: counts for the breaker) or ``neutral`` (the package's own
        failure, or a cancel: not the backend's doing)."""
        backend = slot.backend
        backend.active -= 1
        if outcome == "success":
            backend.breaker.record_success()
        elif outcome == "fault":
            backend.breaker.record_failure()
        else:
            backend.breaker.finished_without_verdict()
        if backend.draining and backend.active == 0:
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
