"""Prometheus metrics, in a registry of the app's own (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from melange2.pool.breaker import BreakerState
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import SchedulerEvent


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.backends_total = Gauge(
            "melange_backends_total", "Backends in the pool", registry=self.registry
        )
        self.backends_available = Gauge(
            "melange_backends_available",
            "Backends that can take a job now",
            registry=self.registry,
        )
        self.active_jobs = Gauge(
            "melange_backend_active_jobs",
            "Jobs running per backend",
            ["addr"],
            registry=self.registry,
        )
        self.circuit_changes = Counter(
            "melange_circuit_state_changes",
            "Circuit breaker state changes",
            ["addr", "to"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "melange_package_queue_wait_seconds",
            "From ready (pending) to running",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
        )
        self.probe_latency = Histogram(
            "melange_backend_probe_seconds",
            "Health probe latency (Info + ListWorkers)",
            ["addr"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
        )
        self.packages = Counter(
            "melange_packages_finished", "Packages finished", ["status"], registry=self.registry
        )
        self._ready_at: dict[tuple[str, str], float] = {}
        self._pool: BackendPool | None = None

    def attach(self, pool: BackendPool) -> None:
        self._pool = pool

    def probe(self, addr: str, seconds: float) -> None:
        self.probe_latency.labels(addr=addr).observe(seconds)

    def breaker_changed(self, addr: str, old: BreakerState, new: BreakerState) -> None:
        self.circuit_changes.labels(addr=addr, to=new.value).inc()

    def scheduler_event(self, event: SchedulerEvent) -> None:
        key = (event.build_id, event.name)
        if event.kind == "ready":
            self._ready_at[key] = event.at
        elif event.kind == "started":
            ready = self._ready_at.pop(key, None)
            if ready is not None:
                self.queue_wait.observe(event.at - ready)
        else:
            self._ready_at.pop(key, None)  # finished without starting: cancelled, failed
            self.packages.labels(status=event.status.value).inc()

    def render(self) -> bytes:
        if self._pool is not None:
            backends = list(self._pool.backends.values())
            self.backends_total.set(len(backends))
            self.backends_available.set(sum(b.available() for b in backends))
            for b in backends:
                self.active_jobs.labels(addr=b.addr).set(b.active)
        return generate_latest(self.registry)
