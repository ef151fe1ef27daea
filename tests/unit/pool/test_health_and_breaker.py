"""Health probes and the circuit breaker, with a fake probe and a fake clock (named as
such): a dead daemon opens its circuit without a package paying for it, a recovered one
comes back through half-open, a wrong platform is an error state; the breaker's state
machine checked against a model with hypothesis."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitUnavailable
from melange2.pool.breaker import BreakerState, CircuitBreaker
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.health import HealthProber, ProbeResult
from melange2.pool.pool import BackendPool, NoBackend


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProbe:
    """Answers like a daemon, or fails like a dead one."""

    alive: bool = True
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64")

    async def __call__(self, addr: str, tls: ClientTLS | None) -> ProbeResult:
        if not self.alive:
            raise BuildkitUnavailable(f"buildkitd at {addr}: connection refused")
        return ProbeResult(version="v0.34.2", platforms=self.platforms)


def pool_with(clock: FakeClock, arch: str = "x86_64") -> BackendPool:
    pool = BackendPool.from_config(
        PoolConfig(
            backends=(BackendSpec(addr="tcp://d:1", arch=arch, max_jobs=2),),
            failure_threshold=3,
            recovery_timeout=30,
        )
    )
    pool.backends["tcp://d:1"].breaker.clock = clock
    return pool


def test_probes_open_a_dead_daemons_circuit_and_close_it_when_it_recovers() -> None:
    clock, probe = FakeClock(), FakeProbe()
    pool = pool_with(clock)
    prober = HealthProber(pool, probe=probe)
    backend = pool.backends["tcp://d:1"]

    asyncio.run(prober.probe_all())
    assert backend.buildkit_version == "v0.34.2" and backend.last_probe_result == "ok"
    assert backend.last_probe is not None

    probe.alive = False
    for _ in range(3):
        asyncio.run(prober.probe_all())
    assert backend.breaker.state is BreakerState.OPEN
    assert backend.last_probe_result.startswith("error: ")
    assert pool.select("x86_64", {}) is NoBackend.BUSY  # no package pays for it

    probe.alive = True
    asyncio.run(prober.probe_all())
    assert backend.breaker.state is BreakerState.OPEN  # still within recoveryTimeout
    clock.now += 31
    assert backend.breaker.state.value == "half-open"
    asyncio.run(prober.probe_all())
    assert backend.breaker.state.value == "closed"
    assert pool.select("x86_64", {}) is not NoBackend.BUSY


def test_a_backend_without_its_declared_platform_gets_no_jobs() -> None:
    pool = pool_with(FakeClock(), arch="aarch64")
    asyncio.run(HealthProber(pool, probe=FakeProbe(platforms=("linux/amd64",))).probe_all())
    backend = pool.backends["tcp://d:1"]
    assert backend.platform_error
    assert "aarch64" in backend.last_probe_result
    assert pool.select("aarch64", {}) is NoBackend.BUSY


def test_half_open_lets_exactly_one_job_through() -> None:
    clock = FakeClock()
    pool = pool_with(clock)
    for _ in range(3):
        slot = pool.select("x86_64", {})
        assert not isinstance(slot, NoBackend)
        pool.release(slot, outcome="fault")
    assert pool.select("x86_64", {}) is NoBackend.BUSY
    clock.now += 30
    trial = pool.select("x86_64", {})
    assert not isinstance(trial, NoBackend)
    assert pool.select("x86_64", {}) is NoBackend.BUSY  # only one trial at a time
    pool.release(trial, outcome="fault")  # the trial failed: open for another 30 s
    assert pool.backends["tcp://d:1"].breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("outcome", ["neutral", "success"])
def test_a_packages_own_failure_never_opens_the_circuit(outcome: str) -> None:
    pool = pool_with(FakeClock())
    for _ in range(10):
        slot = pool.select("x86_64", {})
        assert not isinstance(slot, NoBackend)
        pool.release(slot, outcome=outcome)
    assert pool.backends["tcp://d:1"].breaker.state is BreakerState.CLOSED


class BreakerMachine(RuleBasedStateMachine):
    """The breaker against a small model: threshold 3, recovery 30 s."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=30, clock=self.clock)
        self.consecutive = 0
        self.opened_at: float | None = None
        self.trial = False

    def model_state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock.now - self.opened_at >= 30:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @rule(seconds=st.floats(min_value=0, max_value=40))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: self.breaker.can_accept())
    @rule()
    def start(self) -> None:
        if self.model_state() is BreakerState.HALF_OPEN:
            self.trial = True
        self.breaker.started()

    @rule()
    def fault(self) -> None:
        state = self.model_state()
        self.consecutive += 1
        if state is BreakerState.HALF_OPEN or self.consecutive >= 3:
            self.opened_at = self.clock.now
        self.trial = False
        self.breaker.record_failure()

    @rule()
    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.trial = False
        self.breaker.record_success()

    @rule()
    def neutral(self) -> None:
        self.trial = False
        self.breaker.finished_without_verdict()

    @invariant()
    def agrees(self) -> None:
        state = self.model_state()
        assert self.breaker.state is state
        expected = state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.trial
        )
        assert self.breaker.can_accept() is expected


TestBreakerMachine = BreakerMachine.TestCase
