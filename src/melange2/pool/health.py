"""Active health probes: every backend is asked ``Info`` and ``ListWorkers`` every few
seconds, so a dead daemon opens its circuit without a package paying for it, and a
recovered one comes back (a successful probe is the half-open circuit's trial).

A backend whose workers do not offer its declared architecture is shown in an error
state and gets no jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from melange2.buildkit.client import BuildkitClient
from melange2.buildkit.solver import Connect
from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitError, ConfigError
from melange2.platform import Platform
from melange2.pool.breaker import BreakerState
from melange2.pool.pool import BackendPool, PoolBackend


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    version: str
    platforms: tuple[str, ...]


#: asks the daemon at an address (over TLS with the settings, when given)
Probe = Callable[[str, ClientTLS | None], Awaitable[ProbeResult]]


async def buildkit_probe(
    addr: str, tls: ClientTLS | None = None, *, connect: Connect = BuildkitClient
) -> ProbeResult:
    """Ask a daemon what it is and what it runs (3 s timeout)."""
    async with connect(addr, tls=tls, connect_timeout=3.0) as bk:
        info = await bk.info()
        workers = await bk.list_workers()
    platforms = sorted({str(p) for w in workers for p in w.platforms})
    return ProbeResult(version=info.version, platforms=tuple(platforms))


class HealthProber:
    """Probes every backend of ``pool`` every ``interval`` seconds until stopped: with
    ``probe``, or by asking each daemon through ``connect`` (a real one over gRPC
    unless given; :mod:`melange2.buildkit.solver`)."""

    def __init__(
        self,
        pool: BackendPool,
        *,
        interval: float = 5.0,
        probe: Probe | None = None,
        connect: Connect = BuildkitClient,
        on_latency: Callable[[str, float], None] | None = None,
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.probe: Probe = probe or functools.partial(buildkit_probe, connect=connect)
        self.on_latency = on_latency
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.probe_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(b) for b in list(self.pool.backends.values())))

    async def _probe(self, backend: PoolBackend) -> None:
        started = time.monotonic()
        try:
            result = await self.probe(backend.addr, backend.tls)
        except (BuildkitError, OSError) as exc:
            backend.last_probe_result = f"error: {exc}"
            backend.breaker.record_failure()
        else:
            backend.last_probe_result = "ok"
            backend.buildkit_version = result.version
            backend.platforms = result.platforms
            backend.platform_error = not _offers(result.platforms, backend.arch)
            if backend.platform_error:
                backend.last_probe_result = (
                    f"error: declared arch {backend.arch} is not among the daemon's platforms "
                    f"({', '.join(result.platforms) or 'none'})"
                )
            elif backend.breaker.state is BreakerState.HALF_OPEN or (
                backend.breaker.state is BreakerState.CLOSED and backend.breaker.failures
            ):
                backend.breaker.record_success()  # the probe was the trial
        finally:
            elapsed = time.monotonic() - started
            backend.last_probe = datetime.now(UTC)
            if self.on_latency is not None:
                self.on_latency(backend.addr, elapsed)
        self.pool.notify()


def _offers(platforms: tuple[str, ...], arch: str) -> bool:
    try:
        wanted = str(Platform.from_arch(arch))
    except ConfigError:
        return False
    return wanted in platforms
