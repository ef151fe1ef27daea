"""The scheduler with a fake runner (named as such) and the memory store: dependency
order, priority, capacity, cascades, retries on backend faults, cancel, leases, and a
hypothesis property over random graphs (no package dispatched twice, never before its
dependencies, failures skip exactly their dependents)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.errors import BuildkitUnavailable, SolveFailed
from melange2.ids import BuildId
from melange2.jobs import Backend, Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import RunOutcome, Scheduler
from melange2.store.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Behaviour = Callable[[str, str], Exception | None]


@dataclass
class FakeRunner:
    """A fake PackageRunner: records what ran where, fails on demand, no BuildKit."""

    behaviour: Behaviour = lambda name, addr: None
    delay: float = 0.0
    started: list[str] = field(default_factory=list)
    backends: list[tuple[str, str]] = field(default_factory=list)
    running: int = 0
    peak: int = 0
    gate: asyncio.Event | None = None

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        self.started.append(job.name)
        self.backends.append((job.name, backend.addr))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
            error = self.behaviour(job.name, backend.addr)
            if error is not None:
                raise error
            return RunOutcome(log_path=f"/logs/{job.name}", output_path=f"/out/{job.name}")
        finally:
            self.running -= 1

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return f"/logs/{job.name}.{attempt}"


def make_build(
    deps: Mapping[str, Sequence[str]],
    *,
    priority: Mapping[str, float] | None = None,
    arch: str = "x86_64",
    build_id: str = "bld-0000000000000001",
    created: datetime | None = None,
) -> Build:
    jobs = []
    for seq, (name, ds) in enumerate(deps.items()):
        jobs.append(
            PackageJob(
                build_id=BuildId(build_id),
                name=name,
                seq=seq,
                status=PackageStatus.BLOCKED if ds else PackageStatus.PENDING,
                config_yaml="",
                arch=arch,
                dependencies=tuple(ds),
                priority=(priority or {}).get(name, 1.0),
            )
        )
    return Build(
        id=BuildId(build_id),
        status=BuildStatus.PENDING,
        spec=BuildSpec(),
        created_at=created or datetime.now(UTC),
        packages=tuple(jobs),
    )


def make_pool(*backends: tuple[str, str, int]) -> BackendPool:
    return BackendPool.from_config(
        PoolConfig(
            backends=tuple(BackendSpec(addr=a, arch=arch, max_jobs=n) for a, arch, n in backends),
            failure_threshold=3,
            recovery_timeout=60,
        )
    )


@contextlib.asynccontextmanager
async def running(
    store: MemoryStore, pool: BackendPool, runner: FakeRunner, **kw: object
) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(store, pool, runner, owner="test", retry_backoff=0.0, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        scheduler.stop()
        await scheduler.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_build(
    build: Build,
    pool: BackendPool,
    runner: FakeRunner,
    store: MemoryStore | None = None,
    **kw: object,
) -> Build:
    store = store or MemoryStore()
    await store.create_build(build)
    async with running(store, pool, runner, **kw) as scheduler:
        await scheduler.submit(build)
        return await wait_done(store, build.id)


async def wait_done(store: MemoryStore, build_id: BuildId) -> Build:
    async with asyncio.timeout(10):
        while True:
            build = await store.get_build(build_id)
            if build.status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
                return build
            await asyncio.sleep(0.005)


def statuses(build: Build) -> dict[str, str]:
    return {j.name: j.status.value for j in build.packages}


async def test_chain_runs_in_dependency_order() -> None:
    runner = FakeRunner()
    build = await run_build(
        make_build({"c": ["b"], "b": ["a"], "a": []}), make_pool(("tcp://x:1", "x86_64", 4)), runner
    )
    assert runner.started == ["a", "b", "c"]
    assert build.status is BuildStatus.SUCCESS
    assert all(j.log_path == f"/logs/{j.name}" for j in build.packages)
    assert all(j.backend is not None and j.backend.addr == "tcp://x:1" for j in build.packages)
    assert [len(j.attempts) for j in build.packages] == [1, 1, 1]


async def test_failure_skips_dependents_naming_the_dependency() -> None:
    runner = FakeRunner(behaviour=lambda n, a: SolveFailed("step 'x' failed") if n == "a" else None)
    build = await run_build(
        make_build({"a": [], "b": ["a"], "c": ["b"], "d": []}),
        make_pool(("tcp://x:1", "x86_64", 4)),
        runner,
    )
    assert statuses(build) == {"a": "failed", "b": "skipped", "c": "skipped", "d": "success"}
    jobs = {j.name: j for j in build.packages}
    assert jobs["b"].error == "dependency a failed"
    assert jobs["c"].error == "dependency b failed"
    assert build.status is BuildStatus.PARTIAL
    assert "b" not in runner.started and "c" not in runner.started


async def test_all_failed_or_skipped_is_failed() -> None:
    runner = FakeRunner(behaviour=lambda n, a: SolveFailed("boom"))
    build = await run_build(
        make_build({"a": [], "b": ["a"]}), make_pool(("tcp://x:1", "x86_64", 1)), runner
    )
    assert build.status is BuildStatus.FAILED


async def test_priority_then_fifo() -> None:
    deps: dict[str, list[str]] = {"low": [], "high": [], "mid": []}
    prio = {"low": 1.0, "high": 9.0, "mid": 5.0}
    runner = FakeRunner()
    await run_build(make_build(deps, priority=prio), make_pool(("tcp://x:1", "x86_64", 1)), runner)
    assert runner.started == ["high", "mid", "low"]
    fifo = FakeRunner()
    await run_build(
        make_build(deps, priority=prio),
        make_pool(("tcp://x:1", "x86_64", 1)),
        fifo,
        schedule="fifo",
    )
    assert fifo.started == ["low", "high", "mid"]


@pytest.mark.parametrize("server", ["critical-path", "fifo"])
async def test_each_build_is_ordered_by_its_own_schedule(server: str) -> None:
    """Two builds waiting at once on one slot: the fifo build's packages start in
    submission order, the critical-path build's by priority, whatever the server's
    --schedule; fifo packages carry no priority, so they come after the other's; a build
    stored without a schedule gets the server's."""
    prio = {"low": 1.0, "high": 9.0, "mid": 5.0}

    def build(prefix: str, n: int, schedule: str | None) -> Build:
        made = make_build(
            {f"{prefix}-{k}": [] for k in prio},
            priority={f"{prefix}-{k}": v for k, v in prio.items()},
            build_id=f"bld-{n:016x}",
        )
        return made.evolve(spec=BuildSpec(schedule=schedule))  # type: ignore[arg-type]

    store = MemoryStore()
    runner = FakeRunner(gate=asyncio.Event())
    blocker = make_build({"blocker": []}, build_id=f"bld-{9:016x}")
    builds = [build("f", 1, "fifo"), build("c", 2, "critical-path"), build("d", 3, None)]
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), runner, schedule=server) as s:
        await store.create_build(blocker)
        await s.submit(blocker)
        async with asyncio.timeout(5):
            while True:
                if runner.started == ["blocker"]:
                    break
                await asyncio.sleep(0.005)
        for b in builds:  # all waiting behind the blocker's slot
            await store.create_build(b)
            await s.submit(b)
        runner.gate.set()  # type: ignore[union-attr]
        for b in builds:
            await wait_done(store, b.id)

    def order(prefix: str) -> list[str]:
        return [n.split("-", 1)[1] for n in runner.started if n.startswith(prefix + "-")]

    assert order("f") == ["low", "high", "mid"]  # submission order
    assert order("c") == ["high", "mid", "low"]  # priority
    assert order("d") == (order("f") if server == "fifo" else order("c"))
    cp_builds = ["c", "d"] if server == "critical-path" else ["c"]
    last_cp = max(i for i, n in enumerate(runner.started) if n[0] in cp_builds)
    first_fifo = min(i for i, n in enumerate(runner.started) if n[0] not in (*cp_builds, "b"))
    assert last_cp < first_fifo, runner.started


async def test_capacity_is_respected_and_least_loaded_wins() -> None:
    runner = FakeRunner(delay=0.01)
    deps: dict[str, list[str]] = {f"p{i}": [] for i in range(12)}
    build = await run_build(
        make_build(deps), make_pool(("tcp://a:1", "x86_64", 2), ("tcp://b:1", "x86_64", 1)), runner
    )
    assert build.status is BuildStatus.SUCCESS
    assert runner.peak <= 3
    used = {addr for _, addr in runner.backends}
    assert used == {"tcp://a:1", "tcp://b:1"}


async def test_no_backend_for_the_arch_fails_with_that_error() -> None:
    runner = FakeRunner()
    build = await run_build(
        make_build({"a": [], "b": ["a"]}, arch="aarch64"),
        make_pool(("tcp://x:1", "x86_64", 2)),
        runner,
    )
    jobs = {j.name: j for j in build.packages}
    assert jobs["a"].status is PackageStatus.FAILED
    assert jobs["a"].error.startswith("no available backend")
    assert "aarch64" in jobs["a"].error
    assert jobs["b"].status is PackageStatus.SKIPPED
    assert runner.started == []


async def test_backend_fault_retries_on_another_backend_and_counts_for_the_breaker() -> None:
    def behaviour(name: str, addr: str) -> Exception | None:
        return BuildkitUnavailable("connection refused") if addr == "tcp://sick:1" else None

    runner = FakeRunner(behaviour=behaviour)
    pool = make_pool(("tcp://sick:1", "x86_64", 1), ("tcp://well:1", "x86_64", 1))
    build = await run_build(make_build({"a": []}), pool, runner)
    job = build.packages[0]
    assert job.status is PackageStatus.SUCCESS
    assert [a.backend for a in job.attempts] == ["tcp://sick:1", "tcp://well:1"]
    assert job.attempts[0].error.endswith("connection refused")
    assert pool.backends["tcp://sick:1"].breaker.failures == 1


async def test_package_failure_does_not_count_for_the_breaker() -> None:
    runner = FakeRunner(behaviour=lambda n, a: SolveFailed("exit code: 1"))
    pool = make_pool(("tcp://x:1", "x86_64", 1))
    deps: dict[str, list[str]] = {f"p{i}": [] for i in range(5)}
    await run_build(make_build(deps), pool, runner)
    assert pool.backends["tcp://x:1"].breaker.failures == 0


async def test_gives_up_after_max_attempts() -> None:
    runner = FakeRunner(behaviour=lambda n, a: BuildkitUnavailable("down"))
    pool = make_pool(("tcp://x:1", "x86_64", 1))
    pool.failure_threshold = 100
    pool.backends["tcp://x:1"].breaker.failure_threshold = 100
    build = await run_build(make_build({"a": []}), pool, runner, max_attempts=3)
    job = build.packages[0]
    assert job.status is PackageStatus.FAILED
    assert len(job.attempts) == 3 and "backend failed 3 time(s)" in job.error


async def test_waits_for_a_slot_instead_of_failing() -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate=gate)
    store = MemoryStore()
    build = make_build({"a": [], "b": []})
    await store.create_build(build)
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), runner) as scheduler:
        await scheduler.submit(build)
        await asyncio.sleep(0.05)
        now = await store.get_build(build.id)
        assert sorted(statuses(now).values()) == ["pending", "running"]
        waiting = next(j for j in now.packages if j.status is PackageStatus.PENDING)
        assert "waiting for a backend slot" in scheduler.queue_reason(build.id, waiting.name)
        gate.set()
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS


async def test_cancel_stops_running_and_waiting_packages() -> None:
    gate = asyncio.Event()
    runner = FakeRunner(gate=gate)
    store = MemoryStore()
    build = make_build({"a": [], "b": ["a"], "c": []})
    await store.create_build(build)
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), runner) as scheduler:
        await scheduler.submit(build)
        await asyncio.sleep(0.05)
        await scheduler.cancel(build.id)
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.CANCELLED
    assert set(statuses(done).values()) == {"cancelled"}


async def test_expired_lease_puts_a_running_package_back_in_the_queue() -> None:
    store = MemoryStore()
    build = make_build({"a": [], "b": ["a"]})
    await store.create_build(build)
    # a previous server took "a" and died: its lease is long expired
    past = datetime.now(UTC) - timedelta(minutes=5)
    await store.transition(
        build.id,
        "a",
        PackageStatus.RUNNING,
        lease_owner="dead-server",
        lease_expires=past,
        started_at=past,
        backend=Backend(addr="tcp://x:1", arch="x86_64"),
    )
    runner = FakeRunner()
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), runner, lease_ttl=0.3):
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS
    assert runner.started == ["a", "b"]


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], set[str], int]:
    n = draw(st.integers(min_value=1, max_value=14))
    names = [f"p{i}" for i in range(n)]
    deps = {
        name: sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=3)) if i else set())
        for i, name in enumerate(names)
    }
    failing = draw(st.sets(st.sampled_from(names), max_size=3))
    slots = draw(st.integers(min_value=1, max_value=4))
    return deps, failing, slots


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=dags())
def test_random_graphs_respect_order_and_cascade(
    case: tuple[dict[str, list[str]], set[str], int],
) -> None:
    deps, failing, slots = case

    async def go() -> tuple[Build, FakeRunner]:
        runner = FakeRunner(behaviour=lambda n, a: SolveFailed("boom") if n in failing else None)
        build = await run_build(make_build(deps), make_pool(("tcp://x:1", "x86_64", slots)), runner)
        return build, runner

    build, runner = asyncio.run(go())
    final = statuses(build)
    # no package dispatched twice
    assert len(runner.started) == len(set(runner.started))
    # never before its dependencies succeeded
    position = {name: i for i, name in enumerate(runner.started)}
    for name in runner.started:
        for dep in deps[name]:
            assert final[dep] == "success" and position[dep] < position[name]
    # exactly the transitive dependents of failures are skipped
    doomed: set[str] = set()
    for name in deps:  # names are in topological order
        if any(d in failing or d in doomed for d in deps[name]):
            doomed.add(name)
    for name, status in final.items():
        if name in doomed:
            assert status == "skipped"
        elif name in failing:
            assert status == "failed"
        else:
            assert status == "success"
    assert runner.peak <= slots


async def test_packages_reused_at_submission_count_as_done() -> None:
    ended: list[tuple[str, BuildStatus]] = []

    async def before_end(build: Build, status: BuildStatus) -> None:
        ended.append((build.id, status))

    pool = make_pool(("tcp://a", "x86_64", 2))
    # lib was reused at submission: app does not wait for it, only for tool
    base = make_build({"lib": [], "tool": [], "app": ["lib", "tool"]})
    now = datetime.now(UTC)
    reused = base.evolve(
        packages=tuple(
            j.evolve(status=PackageStatus.SUCCESS, cached=True, started_at=now, finished_at=now)
            if j.name == "lib"
            else j
            for j in base.packages
        )
    )
    runner = FakeRunner()
    done = await run_build(reused, pool, runner, before_build_end=before_end)
    assert statuses(done) == dict.fromkeys(["lib", "tool", "app"], "success")
    assert sorted(runner.started) == ["app", "tool"]  # lib never ran
    assert ended == [(done.id, BuildStatus.SUCCESS)]

    # everything reused: the build ends at submission, nothing runs
    store, runner, ended[:] = MemoryStore(), FakeRunner(), []
    whole = base.evolve(
        id=BuildId("bld-0000000000000002"),
        packages=tuple(
            j.evolve(
                build_id=BuildId("bld-0000000000000002"),
                status=PackageStatus.SUCCESS,
                cached=True,
                started_at=now,
                finished_at=now,
            )
            for j in base.packages
        ),
    )
    await store.create_build(whole)
    async with running(store, pool, runner, before_build_end=before_end) as scheduler:
        await scheduler.submit(whole)
        assert (await store.get_build(whole.id)).status is BuildStatus.SUCCESS
    assert runner.started == [] and ended == [(whole.id, BuildStatus.SUCCESS)]


async def test_recovery_ends_a_build_whose_packages_all_ended_before_a_crash() -> None:
    # the last package's status was written, then the server died before the build's:
    # on restart the build ends, and the hook (publication on success) runs then
    ended: list[BuildStatus] = []

    async def before_end(build: Build, status: BuildStatus) -> None:
        ended.append(status)

    base = make_build({"a": [], "b": ["a"]})
    now = datetime.now(UTC)
    crashed = base.evolve(
        status=BuildStatus.RUNNING,
        started_at=now,
        packages=tuple(
            j.evolve(status=PackageStatus.SUCCESS, started_at=now, finished_at=now)
            for j in base.packages
        ),
    )
    store = MemoryStore()
    await store.create_build(crashed)
    async with running(
        store, make_pool(("tcp://a", "x86_64", 1)), FakeRunner(), before_build_end=before_end
    ) as scheduler:
        await scheduler.recover()
        assert (await wait_done(store, crashed.id)).status is BuildStatus.SUCCESS
    assert ended == [BuildStatus.SUCCESS]


async def test_recovery_settles_blocked_packages_by_what_their_dependencies_became() -> None:
    # the server died after "bad" failed and "a" succeeded, before their dependents
    # were skipped or released: on restart the dependents of a failure are skipped
    # (naming it, whatever order the dependencies are listed in), the others run
    base = make_build({"a": [], "bad": [], "x": ["a", "bad"], "y": ["a"], "z": ["x"]})
    now = datetime.now(UTC)
    ended = {"a": PackageStatus.SUCCESS, "bad": PackageStatus.FAILED}
    crashed = base.evolve(
        status=BuildStatus.RUNNING,
        started_at=now,
        packages=tuple(
            j.evolve(status=ended[j.name], started_at=now, finished_at=now)
            if j.name in ended
            else j.evolve(status=PackageStatus.BLOCKED)
            for j in base.packages
        ),
    )
    store, runner = MemoryStore(), FakeRunner()
    await store.create_build(crashed)
    async with running(store, make_pool(("tcp://a", "x86_64", 2)), runner):
        done = await wait_done(store, crashed.id)
    assert statuses(done) == {
        "a": "success",
        "bad": "failed",
        "x": "skipped",
        "y": "success",
        "z": "skipped",
    }
    jobs = {j.name: j for j in done.packages}
    assert jobs["x"].error == "dependency bad failed"
    assert jobs["z"].error == "dependency x failed"
    assert runner.started == ["y"]
