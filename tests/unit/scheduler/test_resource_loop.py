"""The scheduler placing by resources, with a fake runner (named as such) that records
where each package ran and when, and the memory store: 4-cpu packages never share a
4-cpu backend; what no backend could hold fails at submission, naming the request; a
big package is not starved by a stream of small ones (its kept backend); the waiting
reason names the resource; and a Hypothesis property over random farms and requests
(never over-committed; everything that fits somewhere runs)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.ids import BuildId
from melange2.jobs import Backend, Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import PackageRunner, RunOutcome, Scheduler
from melange2.store.memory import MemoryStore
from tests.unit.scheduler.test_loop import statuses, wait_done

pytestmark = pytest.mark.anyio
GI = 2**30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Run:
    name: str
    addr: str
    cpu: int
    memory: int


@dataclass
class RecordingRunner:
    """A fake PackageRunner: no BuildKit; keeps what runs where, at every moment, and
    the worst moment per backend; ``gates`` hold chosen packages until set."""

    delay: float = 0.0
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    now: dict[str, list[Run]] = field(default_factory=dict)
    peak_jobs: dict[str, int] = field(default_factory=dict)
    peak_cpu: dict[str, int] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        run = Run(job.name, backend.addr, job.cpu_millis, job.memory_bytes)
        here = self.now.setdefault(backend.addr, [])
        here.append(run)
        self.started.append(job.name)
        self.where[job.name] = backend.addr
        self.peak_jobs[backend.addr] = max(self.peak_jobs.get(backend.addr, 0), len(here))
        self.peak_cpu[backend.addr] = max(
            self.peak_cpu.get(backend.addr, 0), sum(r.cpu for r in here)
        )
        self.peak_memory[backend.addr] = max(
            self.peak_memory.get(backend.addr, 0), sum(r.memory for r in here)
        )
        try:
            gate = self.gates.get(job.name)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(self.delay)
            return RunOutcome(log_path=f"/logs/{job.name}")
        finally:
            here.remove(run)

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return f"/logs/{job.name}.{attempt}"


@contextlib.asynccontextmanager
async def running(
    store: MemoryStore, pool: BackendPool, runner: PackageRunner
) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(store, pool, runner, owner="test", retry_backoff=0.0)
    task = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        await scheduler.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cores(n: float) -> int:
    return int(n * 1000)


def farm(*backends: tuple[str, int, float | None, int | None]) -> BackendPool:
    """``(addr, maxJobs, cpu cores or None, memory bytes or None)`` per backend."""
    return BackendPool.from_config(
        PoolConfig(
            backends=tuple(
                BackendSpec(
                    addr=addr,
                    arch="x86_64",
                    max_jobs=jobs,
                    cpu=None if cpu is None else cores(cpu),
                    memory=memory,
                )
                for addr, jobs, cpu, memory in backends
            )
        )
    )


def build_of(
    asks: Mapping[str, tuple[float, int]],
    deps: Mapping[str, Sequence[str]] | None = None,
    *,
    build_id: str = "bld-0000000000000001",
    priority: Mapping[str, float] | None = None,
    created: datetime | None = None,
) -> Build:
    """One package per name asking ``(cores, memory bytes)``, in the mapping's order."""
    deps = deps or {}
    return Build(
        id=BuildId(build_id),
        status=BuildStatus.PENDING,
        spec=BuildSpec(),
        created_at=created or datetime.now(UTC),
        packages=tuple(
            PackageJob(
                build_id=BuildId(build_id),
                name=name,
                seq=seq,
                status=PackageStatus.BLOCKED if deps.get(name) else PackageStatus.PENDING,
                config_yaml="",
                arch="x86_64",
                dependencies=tuple(deps.get(name, ())),
                priority=(priority or {}).get(name, 1.0),
                cpu_millis=cores(cpu),
                memory_bytes=memory,
            )
            for seq, (name, (cpu, memory)) in enumerate(asks.items())
        ),
    )


async def test_four_cpu_packages_never_share_a_four_cpu_backend() -> None:
    runner = RecordingRunner(delay=0.02)
    pool = farm(("tcp://a:1", 4, 4, None), ("tcp://b:1", 4, 4, None))
    store = MemoryStore()
    build = build_of({f"big-{i}": (4, 0) for i in range(8)})
    async with running(store, pool, runner) as scheduler:
        await store.create_build(build)
        await scheduler.submit(build)
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS
    assert runner.peak_jobs == {"tcp://a:1": 1, "tcp://b:1": 1}
    assert runner.peak_cpu == {"tcp://a:1": cores(4), "tcp://b:1": cores(4)}
    # the store's times agree: no two runs on one backend overlap
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for job in done.packages:
        assert job.backend is not None and job.started_at and job.finished_at
        spans.setdefault(job.backend.addr, []).append((job.started_at, job.finished_at))
    for ranges in spans.values():
        ranges.sort()
        assert all(end <= start for (_, end), (start, _) in itertools.pairwise(ranges))


async def test_small_packages_share_and_memory_counts_too() -> None:
    runner = RecordingRunner(delay=0.02)
    pool = farm(("tcp://a:1", 8, 4, 8 * GI))
    store = MemoryStore()
    build = build_of({f"p{i}": (1, 3 * GI) for i in range(6)})
    await store.create_build(build)
    async with running(store, pool, runner) as scheduler:
        await scheduler.submit(build)
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS
    assert runner.peak_jobs["tcp://a:1"] == 2  # memory, not cpu, allows only two
    assert runner.peak_memory["tcp://a:1"] == 6 * GI


async def test_what_no_backend_could_hold_fails_at_submission_naming_the_request() -> None:
    gate = asyncio.Event()
    runner = RecordingRunner(gates={"ok": gate})
    pool = farm(("tcp://a:1", 4, 4, 16 * GI), ("tcp://b:1", 4, 8, 8 * GI))
    store = MemoryStore()
    build = build_of({"huge": (64, 16 * GI), "app": (1, 0), "ok": (2, 0)}, {"app": ["huge"]})
    await store.create_build(build)
    async with running(store, pool, runner) as scheduler:
        await scheduler.submit(build)
        now = {j.name: j for j in (await store.get_build(build.id)).packages}
        # at once: before anything ran, with "ok" still held
        assert now["huge"].status is PackageStatus.FAILED
        assert now["huge"].error == (
            "no available backend: package asks cpu 64, memory 16Gi: no backend for arch "
            "x86_64 has that much (largest: cpu 8, memory 16Gi)"
        )
        assert now["app"].status is PackageStatus.SKIPPED
        assert now["app"].error == "dependency huge failed"
        gate.set()
        done = await wait_done(store, build.id)
    assert statuses(done) == {"huge": "failed", "app": "skipped", "ok": "success"}
    assert done.status is BuildStatus.PARTIAL
    assert "huge" not in runner.started


async def test_a_big_package_is_not_starved_by_a_stream_of_small_ones() -> None:
    """One 4-cpu backend, two 1-cpu packages running; a 4-cpu package waits, and
    behind it (lower priority) twenty 1-cpu ones that would always find a free cpu.
    The big one keeps the backend: no small one starts before it."""
    hold = {name: asyncio.Event() for name in ("first", "second")}
    runner = RecordingRunner(gates=dict(hold), delay=0.01)
    pool = farm(("tcp://a:1", 4, 4, None))
    store = MemoryStore()
    early = build_of({"first": (1, 0), "second": (1, 0)}, build_id="bld-0000000000000001")
    later = build_of(
        {"big": (4, 0), **{f"small-{i:02d}": (1, 0) for i in range(20)}},
        build_id="bld-0000000000000002",
        priority={"big": 5.0},
    )
    async with running(store, pool, runner) as scheduler:
        await store.create_build(early)
        await scheduler.submit(early)
        await asyncio.sleep(0.02)
        await store.create_build(later)
        await scheduler.submit(later)
        await asyncio.sleep(0.05)
        # two cpus are free, yet no small one took them: the backend is kept for big
        assert runner.started == ["first", "second"]
        status = pool.backends["tcp://a:1"]
        assert status.reserved_for == f"{later.id}/big"
        reason = scheduler.queue_reason(later.id, "big")
        assert reason == (
            "waiting for cpu: needs 4, free at most 2 (backend tcp://a:1); tcp://a:1 is "
            "kept for it; 1 of 21 in the queue"
        )
        small = scheduler.queue_reason(later.id, "small-00")
        assert small.startswith(f"waiting for a backend slot; tcp://a:1 is kept for {later.id}/big")
        hold["first"].set()
        await asyncio.sleep(0.05)
        assert "big" not in runner.started  # one cpu still used by "second"
        hold["second"].set()
        done = await wait_done(store, later.id)
    assert done.status is BuildStatus.SUCCESS
    assert runner.started[2] == "big"
    assert runner.peak_cpu["tcp://a:1"] <= cores(4)
    assert pool.backends["tcp://a:1"].reserved_for == ""


async def test_the_waiting_reason_names_memory() -> None:
    gate = asyncio.Event()
    runner = RecordingRunner(gates={"hog": gate})
    pool = farm(("tcp://a:1", 4, None, 16 * GI))
    store = MemoryStore()
    build = build_of({"hog": (0, 12 * GI), "next": (0, 8 * GI)})
    await store.create_build(build)
    async with running(store, pool, runner) as scheduler:
        await scheduler.submit(build)
        await asyncio.sleep(0.05)
        assert scheduler.queue_reason(build.id, "next") == (
            "waiting for memory: needs 8Gi, free at most 4Gi (backend tcp://a:1); "
            "tcp://a:1 is kept for it; 1 of 1 in the queue"
        )
        gate.set()
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS


async def test_packages_asking_nothing_are_placed_by_jobs_alone() -> None:
    runner = RecordingRunner(delay=0.01)
    pool = farm(("tcp://a:1", 2, 1, GI))
    store = MemoryStore()
    build = build_of({f"p{i}": (0, 0) for i in range(6)})
    await store.create_build(build)
    async with running(store, pool, runner) as scheduler:
        await scheduler.submit(build)
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS
    assert runner.peak_jobs["tcp://a:1"] == 2
    assert pool.backends["tcp://a:1"].reserved_for == ""


async def test_resources_survive_a_restart() -> None:
    """Recovery: a pending package comes back from the store with what it asks."""
    store = MemoryStore()
    build = build_of({"big": (4, 0), "small": (1, 0)})
    await store.create_build(build)
    runner = RecordingRunner(delay=0.01)
    pool = farm(("tcp://a:1", 4, 4, None))
    async with running(store, pool, runner):  # recovers the build from the store
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.SUCCESS
    assert runner.peak_cpu["tcp://a:1"] <= cores(4)
    assert {j.name: j.cpu_millis for j in done.packages} == {"big": 4000, "small": 1000}


backend_specs = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=3),
        st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
        st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    ),
    min_size=1,
    max_size=3,
)
asks_of = st.tuples(st.integers(min_value=0, max_value=10), st.integers(min_value=0, max_value=10))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=backend_specs,
    asks=st.lists(asks_of, min_size=1, max_size=12),
    data=st.data(),
)
def test_random_farms_never_overcommit_and_run_everything_that_fits(
    specs: list[tuple[int, int | None, int | None]],
    asks: list[tuple[int, int]],
    data: st.DataObject,
) -> None:
    names = [f"p{i}" for i in range(len(asks))]
    deps = {
        name: sorted(data.draw(st.sets(st.sampled_from(names[:i]), max_size=2))) if i else []
        for i, name in enumerate(names)
    }
    backends = [(f"tcp://b{i}:1", jobs, cpu, memory) for i, (jobs, cpu, memory) in enumerate(specs)]

    def fits(cpu: int, memory: int) -> bool:
        return any(
            (c is None or cpu <= c) and (m is None or memory * GI <= m * GI)
            for _, _, c, m in backends
        )

    async def go() -> tuple[Build, RecordingRunner]:
        runner = RecordingRunner(delay=0.002)
        pool = farm(*((a, j, c, None if m is None else m * GI) for a, j, c, m in backends))
        store = MemoryStore()
        build = build_of(
            {n: (cpu, memory * GI) for n, (cpu, memory) in zip(names, asks, strict=True)}, deps
        )
        await store.create_build(build)
        async with running(store, pool, runner) as scheduler:
            await scheduler.submit(build)
            done = await wait_done(store, build.id)
        assert all(b.reserved_for == "" for b in pool.backends.values())
        assert all(b.active == b.cpu_used == b.memory_used == 0 for b in pool.backends.values())
        return done, runner

    done, runner = asyncio.run(go())
    final = statuses(done)
    doomed: set[str] = set()
    for name, (cpu, memory) in zip(names, asks, strict=True):
        if any(d in doomed for d in deps[name]):
            assert final[name] == "skipped"
            doomed.add(name)
        elif not fits(cpu, memory):
            assert final[name] == "failed"
            doomed.add(name)
        else:
            assert final[name] == "success"  # everything that fits somewhere runs
    for addr, jobs, cpu_cap, memory_cap in backends:
        assert runner.peak_jobs.get(addr, 0) <= jobs
        if cpu_cap is not None:
            assert runner.peak_cpu.get(addr, 0) <= cores(cpu_cap)
        if memory_cap is not None:
            assert runner.peak_memory.get(addr, 0) <= memory_cap * GI


async def test_a_cancelled_holder_gives_its_kept_backend_back() -> None:
    gate = asyncio.Event()
    runner = RecordingRunner(gates={"first": gate})
    pool = farm(("tcp://a:1", 4, 4, None))
    store = MemoryStore()
    early = build_of({"first": (1, 0)}, build_id="bld-0000000000000001")
    holder = build_of({"big": (4, 0)}, build_id="bld-0000000000000002")
    later = build_of({"small": (1, 0)}, build_id="bld-0000000000000003")
    async with running(store, pool, runner) as scheduler:
        for b in (early, holder):
            await store.create_build(b)
            await scheduler.submit(b)
            await asyncio.sleep(0.02)
        assert pool.backends["tcp://a:1"].reserved_for == f"{holder.id}/big"
        await scheduler.cancel(holder.id)
        await store.create_build(later)
        await scheduler.submit(later)
        done = await wait_done(store, later.id)  # while "first" still runs
        assert done.status is BuildStatus.SUCCESS
        assert pool.backends["tcp://a:1"].reserved_for == ""
        gate.set()
        assert (await wait_done(store, early.id)).status is BuildStatus.SUCCESS


async def test_a_farm_that_declares_nothing_never_keeps_a_backend() -> None:
    gate = asyncio.Event()
    runner = RecordingRunner(gates={"p0": gate})
    pool = farm(("tcp://a:1", 1, None, None))
    store = MemoryStore()
    build = build_of({"p0": (4, GI), "p1": (4, GI)})
    async with running(store, pool, runner) as scheduler:
        await store.create_build(build)
        await scheduler.submit(build)
        await asyncio.sleep(0.05)
        assert runner.started == ["p0"]
        assert pool.backends["tcp://a:1"].reserved_for == ""
        assert scheduler.queue_reason(build.id, "p1") == (
            "waiting for a backend slot: 1 of 1 in the queue"
        )
        gate.set()
        assert (await wait_done(store, build.id)).status is BuildStatus.SUCCESS
