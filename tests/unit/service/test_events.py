"""Live events: the scheduler reports every state change it writes, in order, and
:class:`LocalEvents` fans them out with bounded queues (drop-and-resync), filters by
build, and replays what a reconnecting client missed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from melange2.errors import SolveFailed
from melange2.jobs import ALLOWED_TRANSITIONS, BuildStatus, PackageStatus
from melange2.scheduler.loop import StateChange
from melange2.service.events import (
    BuildEvent,
    Delivery,
    LiveEvent,
    LocalEvents,
    PackageEvent,
    Resync,
    event_of,
)
from melange2.store.memory import MemoryStore
from tests.unit.scheduler.test_loop import (
    FakeRunner,
    make_build,
    make_pool,
    run_build,
    running,
    wait_done,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _event(build: str = "bld-1", n: int = 0) -> LiveEvent:
    return BuildEvent(
        build_id=build,
        status=BuildStatus.RUNNING,
        previous=BuildStatus.PENDING,
        at=datetime.now(UTC),
        counts={"running": n},
    )


async def test_every_move_of_a_build_reaches_on_change_in_order() -> None:
    changes: list[StateChange] = []
    deps = {"base": [], "bad": ["base"], "child": ["bad"], "grandchild": ["child"], "ok": []}
    runner = FakeRunner(behaviour=lambda name, addr: SolveFailed("boom") if name == "bad" else None)
    store = MemoryStore()
    final = await run_build(
        make_build(deps),
        make_pool(("tcp://a", "x86_64", 2)),
        runner,
        store,
        on_change=changes.append,
    )
    assert final.status is BuildStatus.PARTIAL
    events = [event_of(c) for c in changes]
    walks: dict[str, list[PackageStatus]] = {}
    for ev in events:
        if isinstance(ev, PackageEvent):
            walk = walks.setdefault(ev.name, [ev.previous])
            assert ev.previous is walk[-1]  # gapless
            assert ev.status in ALLOWED_TRANSITIONS[walk[-1]]  # and legal
            walk.append(ev.status)
            assert sum(ev.counts.values()) == len(deps)
    assert {n: w[-1] for n, w in walks.items()} == {j.name: j.status for j in final.packages}
    assert walks["grandchild"] == [PackageStatus.BLOCKED, PackageStatus.SKIPPED]
    builds = [(e.previous, e.status) for e in events if isinstance(e, BuildEvent)]
    assert builds == [
        (None, BuildStatus.PENDING),
        (BuildStatus.PENDING, BuildStatus.RUNNING),
        (BuildStatus.RUNNING, BuildStatus.PARTIAL),
    ]
    failed = next(
        e
        for e in events
        if isinstance(e, PackageEvent) and e.name == "bad" and e.status is PackageStatus.FAILED
    )
    assert failed.backend == "tcp://a" and failed.attempt == 1


async def test_cancel_reports_each_cancelled_package() -> None:
    changes: list[StateChange] = []
    gate = asyncio.Event()
    runner = FakeRunner(gate=gate)
    store = MemoryStore()
    build = make_build({"a": [], "b": ["a"]})
    await store.create_build(build)

    async with running(
        store, make_pool(("tcp://a", "x86_64", 1)), runner, on_change=changes.append
    ) as s:
        await s.submit(build)
        async with asyncio.timeout(10):
            while "a" not in runner.started:  # noqa: ASYNC110 (the fake records, no event)
                await asyncio.sleep(0.005)
        await s.cancel(build.id)
        done = await wait_done(store, build.id)
    assert done.status is BuildStatus.CANCELLED
    moves = [(e.name, e.status) for e in map(event_of, changes) if isinstance(e, PackageEvent)]
    assert ("b", PackageStatus.CANCELLED) in moves and ("a", PackageStatus.CANCELLED) in moves
    last = event_of(changes[-1])
    assert isinstance(last, BuildEvent) and last.status is BuildStatus.CANCELLED


async def test_subscribers_get_their_build_in_order() -> None:
    events = LocalEvents()
    async with events.subscribe(build="bld-2") as two, events.subscribe() as every:
        for n in range(5):
            events.publish(_event("bld-1" if n % 2 else "bld-2", n))
        events.close()
        got_two = [d async for d in two]
        got_all = [d async for d in every]
    assert [d.event.counts["running"] for d in got_two if isinstance(d, Delivery)] == [0, 2, 4]
    assert len(got_all) == 5
    ids = [int(d.id.split("-")[1]) for d in got_all]
    assert ids == [1, 2, 3, 4, 5]
    assert events.followers == 0  # unsubscribed on exit


async def test_a_slow_subscriber_is_dropped_and_told_to_resync() -> None:
    events = LocalEvents(queue_size=3)
    async with events.subscribe() as slow:
        for n in range(100):
            events.publish(_event(n=n))
        assert len(slow._follower.queue) <= 3  # bounded, whatever it missed
        first = await slow.get()
        assert isinstance(first, Resync) and "fell behind" in first.reason
        events.publish(_event(n=100))
        after = await slow.get()
        assert isinstance(after, Delivery) and after.event.counts == {"running": 100}
        assert slow.dropped >= 1


async def test_reconnecting_replays_what_was_missed_or_says_resync() -> None:
    events = LocalEvents(history=4)
    for n in range(3):
        events.publish(_event(n=n))
    seen = f"{events.epoch}-1"
    async with events.subscribe(last_id=seen) as sub:
        events.close()
        replay = [d async for d in sub]
    assert [d.id for d in replay] == [f"{events.epoch}-2", f"{events.epoch}-3"]

    events = LocalEvents(history=2)
    for n in range(5):
        events.publish(_event(n=n))
    for stale in (f"{events.epoch}-1", "0000-3", "garbage", f"{events.epoch}-99"):
        async with events.subscribe(last_id=stale) as sub:
            item = await sub.get()
            assert isinstance(item, Resync), stale
            assert item.id == events.last_id
