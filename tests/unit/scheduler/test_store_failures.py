"""A store write that fails inside the scheduler fails that one package or build, never
the loop; a runner that ends without a result, or one whose log location cannot be
named, never leaves a package running; cancel wins over everything; and only the store
failing as a whole (leases not renewed for a whole lease period) ends the loop, loudly.

The store is the memory store behind a fake that fails the writes a test picks (unit
test only); the runner is test_loop's FakeRunner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from melange2.errors import StoreError
from melange2.ids import BuildId
from melange2.jobs import Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.scheduler.loop import LeasesLost, Scheduler, storable
from melange2.store.base import Move
from melange2.store.memory import MemoryStore
from tests.unit.scheduler.test_loop import (
    FakeRunner,
    make_build,
    make_pool,
    running,
    statuses,
    wait_done,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Fault = Callable[[str, tuple[Any, ...], dict[str, Any]], Exception | None]


class FlakyStore(MemoryStore):
    """The memory store, failing the calls ``fault`` picks (a fake, unit test only)."""

    def __init__(self) -> None:
        super().__init__()
        self.fault: Fault = lambda op, args, fields: None

    def _maybe(self, op: str, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        error = self.fault(op, args, fields)
        if error is not None:
            raise error

    async def transition(self, *args: Any, **fields: Any) -> PackageJob:
        self._maybe("transition", args, fields)
        return await super().transition(*args, **fields)

    async def apply(self, moves: Sequence[Move]) -> Sequence[PackageJob | None]:
        # one transaction: a move the fault picks fails all of them, as a database would
        for move in moves:
            self._maybe("transition", (move.build_id, move.name, move.to), dict(move.fields))
        return await super().apply(moves)

    async def update_build(
        self, build_id: BuildId, *, with_packages: bool = True, **fields: Any
    ) -> Build:
        self._maybe("update_build", (build_id,), fields)
        return await super().update_build(build_id, with_packages=with_packages, **fields)

    async def renew_leases(self, *args: Any, **fields: Any) -> int:
        self._maybe("renew_leases", args, fields)
        return await super().renew_leases(*args, **fields)


def _to(status: PackageStatus, name: str | None = None) -> Fault:
    def fault(op: str, args: tuple[Any, ...], fields: dict[str, Any]) -> Exception | None:
        if op == "transition" and args[2] is status and (name is None or args[1] == name):
            return StoreError("disk I/O error")
        return None

    return fault


async def test_a_store_write_refused_at_start_fails_that_package_only() -> None:
    store = FlakyStore()
    store.fault = _to(PackageStatus.RUNNING, "poison")
    pool = make_pool(("tcp://x:1", "x86_64", 2))
    async with running(store, pool, FakeRunner()) as scheduler:
        bad = make_build({"poison": [], "after": ["poison"], "fine": []})
        await store.create_build(bad)
        await scheduler.submit(bad)
        done = await wait_done(store, bad.id)
        assert statuses(done) == {"poison": "failed", "after": "skipped", "fine": "success"}
        job = done.package("poison")
        assert job is not None and "the store refused its start: disk I/O error" in job.error
        # the loop lives: the next build is dispatched and succeeds
        good = make_build({"next": []}, build_id="bld-0000000000000002")
        await store.create_build(good)
        await scheduler.submit(good)
        assert (await wait_done(store, good.id)).status is BuildStatus.SUCCESS


async def test_a_refused_result_is_recorded_as_a_failure() -> None:
    store = FlakyStore()
    store.fault = _to(PackageStatus.SUCCESS)
    async with running(store, make_pool(("tcp://x:1", "x86_64", 2)), FakeRunner()) as scheduler:
        build = make_build({"a": []})
        await store.create_build(build)
        await scheduler.submit(build)
        done = await wait_done(store, build.id)
        job = done.packages[0]
        assert job.status is PackageStatus.FAILED
        assert "the store refused its result (success): disk I/O error" in job.error
        assert job.lease_owner == ""


async def test_a_build_the_store_refuses_entirely_is_given_up_and_the_loop_goes_on() -> None:
    store = FlakyStore()
    doomed = BuildId("bld-00000000000000dd")

    def fault(op: str, args: tuple[Any, ...], fields: dict[str, Any]) -> Exception | None:
        if op in ("transition", "update_build") and args[0] == doomed:
            return StoreError("row is corrupt")
        return None

    store.fault = fault
    async with running(store, make_pool(("tcp://x:1", "x86_64", 2)), FakeRunner()) as scheduler:
        bad = make_build({"a": []}, build_id=doomed)
        await store.create_build(bad)
        await scheduler.submit(bad)
        good = make_build({"b": []}, build_id="bld-0000000000000002")
        await store.create_build(good)
        await scheduler.submit(good)
        assert (await wait_done(store, good.id)).status is BuildStatus.SUCCESS
        assert doomed not in scheduler._builds  # not tracked any more, not retried forever


async def test_poisoned_text_in_an_error_is_stored_escaped() -> None:
    # a selector no backend matches, with text the store would refuse: the message
    # naming it must still be storable (it once killed the loop)
    store = MemoryStore()
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), FakeRunner()) as scheduler:
        build = make_build({"a": []}).evolve(spec=BuildSpec(backend_selector={"tier": "gold"}))
        poisoned = build.evolve(spec=BuildSpec(backend_selector={"t\ud800": "\x00"}))
        with pytest.raises(ValueError):
            await store.create_build(poisoned)  # the store's own rule
        await store.create_build(build)
        scheduler._builds.clear()
        # the scheduler holds the poisoned spec in memory (as if it got past the edge)
        await scheduler.submit(poisoned)
        done = await wait_done(store, build.id)
        assert done.packages[0].status is PackageStatus.FAILED
        assert "no available backend" in done.packages[0].error
        assert "\\ud800" in done.packages[0].error
        ok = make_build({"b": []}, build_id="bld-0000000000000002")
        await store.create_build(ok)
        await scheduler.submit(ok)
        assert (await wait_done(store, ok.id)).status is BuildStatus.SUCCESS


def test_storable_text_keeps_what_it_can() -> None:
    assert storable("plain") == "plain"
    assert storable("a\ud800b\x00c") == "a\\ud800b\\0c"
    assert len(storable("x" * 100_000)) < 20_000


class _NoLocation(FakeRunner):
    """A runner that fails and cannot even say where its log is (a fake)."""

    def log_location(self, job: PackageJob, attempt: int) -> str:
        raise ValueError(f"invalid storage key for {job.name}")


async def test_a_failing_runner_whose_log_cannot_be_named_still_ends_failed() -> None:
    runner = _NoLocation(behaviour=lambda n, a: RuntimeError("runner bug"))
    store = MemoryStore()
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), runner) as scheduler:
        build = make_build({"a": []})
        await store.create_build(build)
        await scheduler.submit(build)
        done = await wait_done(store, build.id)
        assert done.packages[0].status is PackageStatus.FAILED
        assert "internal error: RuntimeError: runner bug" in done.packages[0].error


async def test_a_package_whose_runner_task_died_is_failed_not_left_running() -> None:
    store = FlakyStore()
    broke: list[str] = []

    def fault(op: str, args: tuple[Any, ...], fields: dict[str, Any]) -> Exception | None:
        # a bug (not a store error) while recording the result, once: the package's
        # task dies with the package running in the store and in memory
        if op == "transition" and args[2] is PackageStatus.SUCCESS and not broke:
            broke.append(args[1])
            return RuntimeError("a bug while finishing")
        return None

    store.fault = fault
    pool = make_pool(("tcp://x:1", "x86_64", 2))
    async with running(store, pool, FakeRunner(), lease_ttl=0.3) as scheduler:
        build = make_build({"lost": []})
        await store.create_build(build)
        await scheduler.submit(build)
        done = await wait_done(store, build.id)
        job = done.packages[0]
        assert broke == ["lost"]
        assert job.status is PackageStatus.FAILED, job
        assert "its runner ended without a result" in job.error
        assert job.lease_owner == ""


async def test_cancel_ends_a_running_package_no_task_runs() -> None:
    store = MemoryStore()
    gate = asyncio.Event()
    runner = FakeRunner(gate=gate)
    async with running(store, make_pool(("tcp://x:1", "x86_64", 1)), runner) as scheduler:
        build = make_build({"a": []})
        await store.create_build(build)
        await scheduler.submit(build)
        async with asyncio.timeout(5):
            while True:
                if runner.started == ["a"]:
                    break
                await asyncio.sleep(0.01)
        # no task of this process runs it any more (it died, or the package was
        # recovered from a server that did), the store still says running
        orphan = scheduler._tasks.pop((build.id, "a"))
        await scheduler.cancel(build.id)
        done = await wait_done(store, build.id)
        assert done.status is BuildStatus.CANCELLED
        assert done.packages[0].status is PackageStatus.CANCELLED
        gate.set()  # the orphan's result, if it ever comes, changes nothing
        await orphan
        assert (await store.get_build(build.id)).packages[0].status is PackageStatus.CANCELLED


async def test_leases_the_store_refuses_to_renew_end_the_loop_loudly() -> None:
    store = FlakyStore()
    store.fault = lambda op, args, fields: (
        StoreError("database is locked") if op == "renew_leases" else None
    )
    scheduler = Scheduler(
        store, make_pool(("tcp://x:1", "x86_64", 1)), FakeRunner(), owner="t", lease_ttl=0.3
    )
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(5):
            await scheduler.run()
    (error,) = caught.value.exceptions
    assert isinstance(error, LeasesLost) and "database is locked" in str(error)
