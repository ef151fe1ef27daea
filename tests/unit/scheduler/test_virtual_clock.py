"""The scheduler on a virtual clock (``Scheduler(clock=...)`` on a ``VirtualTimeLoop``),
with a fake runner (named as such) that sleeps each package's duration in loop time:
timestamps, leases, events and learned durations all come from the injected clock, and
the real dispatch (priority order, ties, slot accounting) builds exactly the schedule
that the dry-run planner's list scheduling predicts."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.ids import BuildId
from melange2.jobs import (
    Backend,
    Build,
    BuildSpec,
    BuildStatus,
    PackageJob,
    PackageStatus,
    Schedule,
)
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler import PackageNode, build_graph, plan, priorities, typical_duration
from melange2.scheduler.loop import RunOutcome, Scheduler, SchedulerEvent, SystemClock
from melange2.store.memory import MemoryStore
from melange2.testenv.virtualtime import EPOCH, VirtualClock, VirtualTimeLoop

T = TypeVar("T")


@dataclass
class SleepingRunner:
    """A fake PackageRunner: each package sleeps its duration (loop time), no BuildKit."""

    durations: Mapping[str, float]
    started: list[tuple[float, str]] = field(default_factory=list)

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        self.started.append((asyncio.get_running_loop().time(), job.name))
        await asyncio.sleep(self.durations[job.name])
        return RunOutcome()

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return ""


def make_build(
    deps: Mapping[str, Sequence[str]], priority: Mapping[str, float], created: datetime
) -> Build:
    build_id = BuildId("bld-00000000000000c1")
    jobs = tuple(
        PackageJob(
            build_id=build_id,
            name=name,
            seq=seq,
            status=PackageStatus.BLOCKED if ds else PackageStatus.PENDING,
            config_yaml="",
            arch="x86_64",
            dependencies=tuple(ds),
            priority=priority.get(name, 1.0),
        )
        for seq, (name, ds) in enumerate(deps.items())
    )
    return Build(
        id=build_id, status=BuildStatus.PENDING, spec=BuildSpec(), created_at=created, packages=jobs
    )


def simulate(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


async def run_virtual(
    deps: Mapping[str, Sequence[str]],
    durations: Mapping[str, float],
    priority: Mapping[str, float],
    *,
    slots: int,
    schedule: Schedule = "critical-path",
    lease_ttl: float = 15.0,
) -> tuple[Build, MemoryStore, SleepingRunner, list[SchedulerEvent]]:
    clock = VirtualClock()
    store = MemoryStore()
    pool = BackendPool.from_config(
        PoolConfig(backends=(BackendSpec(addr="tcp://sim:1", arch="x86_64", max_jobs=slots),))
    )
    runner = SleepingRunner(durations)
    events: list[SchedulerEvent] = []
    done = asyncio.Event()

    def observe(event: SchedulerEvent) -> None:
        events.append(event)
        if sum(e.kind == "finished" for e in events) == len(deps):
            done.set()

    scheduler = Scheduler(
        store,
        pool,
        runner,
        owner="test",
        schedule=schedule,
        lease_ttl=lease_ttl,
        observer=observe,
        clock=clock,
    )
    task = asyncio.create_task(scheduler.run())
    build = make_build(deps, priority, clock.now())
    await store.create_build(build)
    await scheduler.submit(build)
    await done.wait()
    scheduler.stop()
    await task
    return await store.get_build(build.id), store, runner, events


def test_timestamps_leases_and_events_come_from_the_injected_clock() -> None:
    deps = {"a": [], "b": ["a"]}

    async def main() -> tuple[Build, Mapping[str, float], list[SchedulerEvent]]:
        build, store, _, events = await run_virtual(
            deps, {"a": 600.0, "b": 45.5}, {}, slots=1, lease_ttl=30.0
        )
        return build, await store.durations(["a", "b"]), events

    build, learned, events = simulate(main())
    jobs = {j.name: j for j in build.packages}
    assert build.status is BuildStatus.SUCCESS
    assert build.created_at == EPOCH
    assert jobs["a"].started_at == EPOCH
    assert jobs["a"].finished_at == jobs["b"].started_at == EPOCH + timedelta(seconds=600)
    assert jobs["b"].finished_at == build.finished_at == EPOCH + timedelta(seconds=645.5)
    # the store learns the simulated durations, as it learns real ones on a server
    assert learned == {"a": 600.0, "b": 45.5}
    # leases were taken (and renewed every 10 s while "a" ran) on the virtual clock
    assert jobs["a"].attempts[0].started_at == EPOCH
    assert [(e.kind, e.name, e.at) for e in events if e.kind != "ready"] == [
        ("started", "a", 0.0),
        ("finished", "a", 600.0),
        ("started", "b", 600.0),
        ("finished", "b", 645.5),
    ]


def test_the_default_clock_is_the_system_clock() -> None:
    clock = SystemClock()
    before = datetime.now(UTC)
    assert before <= clock.now() <= datetime.now(UTC)
    assert clock.now().tzinfo is not None
    scheduler = Scheduler(MemoryStore(), BackendPool(), SleepingRunner({}), owner="x")
    assert isinstance(scheduler.clock, SystemClock)


def test_fifo_and_critical_path_start_different_packages_first() -> None:
    # "slow" heads a long chain but was submitted last; two slots, three roots
    deps = {"x": [], "y": [], "slow": [], "tail": ["slow"]}
    durations = {"x": 10.0, "y": 10.0, "slow": 10.0, "tail": 100.0}
    graph = build_graph([PackageNode(name=n, needs=tuple(d)) for n, d in deps.items()])
    prio = priorities(graph, durations)

    def first_two(schedule: Schedule) -> set[str]:
        _, _, runner, _ = simulate(run_virtual(deps, durations, prio, slots=2, schedule=schedule))
        return {name for at, name in runner.started if at == 0.0}

    assert first_two("fifo") == {"x", "y"}
    assert first_two("critical-path") == {"slow", "x"}  # x before y on the tie: submission


@st.composite
def weighted_dags(
    draw: st.DrawFn,
) -> tuple[dict[str, list[str]], dict[str, float], int]:
    n = draw(st.integers(min_value=1, max_value=16))
    names = [f"p{i}" for i in range(n)]
    deps = {
        name: sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=3)) if i else set())
        for i, name in enumerate(names)
    }
    # whole seconds: finishes at the same instant (ties) are common
    durations = {name: float(draw(st.integers(min_value=0, max_value=20))) for name in names}
    slots = draw(st.integers(min_value=1, max_value=5))
    return deps, durations, slots


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=weighted_dags(), known=st.floats(min_value=0.0, max_value=1.0))
def test_dispatch_builds_the_planned_list_schedule(
    case: tuple[dict[str, list[str]], dict[str, float], int], known: float
) -> None:
    """Whenever a slot is free the ready package with the highest priority starts
    (submission order on ties), at once: the makespan and every start time are those of
    ``plan``'s simulation with the same expected durations, also when only some are
    known (the others expected to take ``typical_duration``)."""
    deps, durations, slots = case
    graph = build_graph([PackageNode(name=n, needs=tuple(d)) for n, d in deps.items()])
    expected = dict(list(durations.items())[: round(known * len(durations))])
    default = typical_duration(expected)
    planned = plan(graph, expected, slots=slots, default=default)
    # the runner takes what the planner expects, so both simulate the same durations
    taken = {name: expected.get(name, default) for name in deps}
    build, _, runner, _ = simulate(
        run_virtual(deps, taken, priorities(graph, expected, default), slots=slots)
    )
    assert build.status is BuildStatus.SUCCESS
    started = dict((name, at) for at, name in runner.started)
    assert started == dict(planned.start_s)
    ends = [started[n] + taken[n] for n in deps]
    assert max(ends) == planned.estimated_makespan_s
