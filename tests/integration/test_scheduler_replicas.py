"""Several schedulers on one real PostgreSQL database, in one process: each replica has
its own :class:`PostgresStore`, its own event connection (:class:`PostgresReplicas`) and
its own pool over the same backend specs; packages are run by :class:`IntervalRunner`,
a fake runner (named as such: no BuildKit) that records the interval of every run.

What is checked: a DAG build submitted through one replica is run by several; no
package runs twice at once; a backend's ``maxJobs`` holds across replicas; a
dependency that ends on one replica starts its dependent on another through
LISTEN/NOTIFY alone (leases too long to help); a replica stopped dead loses its
packages to the others; a cancel through one stops the runs of another; a backend
added through one is used by another; a build ends (and is published) once; a lost
event connection is re-opened and the replica catches up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
import pytest

from melange2.ids import BuildId
from melange2.jobs import Backend, Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import RunOutcome, Scheduler
from melange2.scheduler.replicas import ReplicaEvent, decode_events, encode_events
from melange2.store.base import StoredBackend
from melange2.store.slots import FULL, SlotStart
from melange2.store.sql import PostgresStore
from melange2.store.sql.bus import PostgresReplicas

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Run:
    replica: str
    build_id: str
    name: str
    backend: str
    start: float
    end: float
    completed: bool


@dataclass
class IntervalRunner:
    """A fake PackageRunner: sleeps ``delay(name)`` seconds, records when each run
    started and ended (also when it was cancelled), for one replica."""

    replica: str
    runs: list[Run]
    delay: Callable[[str], float] = lambda name: 0.05
    running: dict[str, float] = field(default_factory=dict)

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        start = time.monotonic()
        self.running[job.name] = start
        completed = False
        try:
            await asyncio.sleep(self.delay(job.name))
            completed = True
            return RunOutcome(log_path=f"/logs/{job.name}", output_path=f"/out/{job.name}")
        finally:
            del self.running[job.name]
            self.runs.append(
                Run(
                    self.replica,
                    job.build_id,
                    job.name,
                    backend.addr,
                    start,
                    time.monotonic(),
                    completed,
                )
            )

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return f"/logs/{job.name}.{attempt}"


@dataclass
class Replica:
    name: str
    store: PostgresStore
    pool: BackendPool
    bus: PostgresReplicas
    scheduler: Scheduler
    runner: IntervalRunner
    task: asyncio.Task[None]
    ended: list[tuple[str, BuildStatus]]

    async def kill(self) -> None:
        """Stop dead, like ``kill -9``: no store write, no lease renewed again."""
        self.scheduler._stop.set()  # its cancelled runs write nothing (as at shutdown)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.scheduler.shutdown()


def make_build(deps: Mapping[str, Sequence[str]], build_id: str, *, arch: str = "x86_64") -> Build:
    jobs = [
        PackageJob(
            build_id=BuildId(build_id),
            name=name,
            seq=seq,
            status=PackageStatus.BLOCKED if ds else PackageStatus.PENDING,
            config_yaml="",
            arch=arch,
            dependencies=tuple(ds),
            priority=1.0,
        )
        for seq, (name, ds) in enumerate(deps.items())
    ]
    return Build(
        id=BuildId(build_id),
        status=BuildStatus.PENDING,
        spec=BuildSpec(),
        created_at=datetime.now(UTC),
        packages=tuple(jobs),
    )


@contextlib.asynccontextmanager
async def farm(
    dsn: str,
    count: int,
    specs: Sequence[BackendSpec],
    *,
    lease_ttl: float = 600.0,
    delay: Callable[[str], float] = lambda name: 0.05,
    backoff: tuple[float, float] = (0.1, 5.0),
) -> AsyncIterator[tuple[list[Replica], list[Run]]]:
    """``count`` replicas on the database ``dsn``, sharing one list of runs."""
    runs: list[Run] = []
    replicas: list[Replica] = []
    try:
        for n in range(count):
            name = f"replica-{n}"
            store = await PostgresStore.open(dsn, migrate_schema=False)
            pool = BackendPool.from_config(PoolConfig(backends=tuple(specs)))
            bus = PostgresReplicas(store, owner=name, backoff=backoff)
            runner = IntervalRunner(name, runs, delay)
            ended: list[tuple[str, BuildStatus]] = []

            async def before_end(
                build: Build, status: BuildStatus, ended: list[tuple[str, BuildStatus]] = ended
            ) -> None:
                ended.append((build.id, status))

            scheduler = Scheduler(
                store,
                pool,
                runner,
                owner=name,
                lease_ttl=lease_ttl,
                retry_backoff=0.0,
                replicas=bus,
                before_build_end=before_end,
            )
            task = asyncio.create_task(scheduler.run())
            replicas.append(Replica(name, store, pool, bus, scheduler, runner, task, ended))
            await until(lambda bus=bus: bus.connection is not None, "listening")  # type: ignore[misc]
        yield replicas, runs
    finally:
        for replica in replicas:
            if not replica.task.done():
                replica.scheduler.stop()
                await replica.scheduler.shutdown()
                replica.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replica.task
            await replica.store.aclose()


async def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def submit(replica: Replica, build: Build) -> None:
    await replica.store.create_build(build)
    await replica.scheduler.submit(build)


async def finished(store: PostgresStore, build_id: str, within: float = 60.0) -> Build:
    deadline = time.monotonic() + within
    while True:
        build = await store.get_build(BuildId(build_id))
        if build.status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
            return build
        if time.monotonic() > deadline:
            statuses = {j.name: j.status.value for j in build.packages}
            raise AssertionError(f"build {build_id} still {build.status}: {statuses}")
        await asyncio.sleep(0.05)


def peak_concurrency(runs: Sequence[Run]) -> int:
    """The most runs at once (an end at the same instant as a start frees first)."""
    points = sorted([(r.start, 1) for r in runs] + [(r.end, -1) for r in runs])
    peak = now = 0
    for _, step in points:
        now += step
        peak = max(peak, now)
    return peak


def assert_never_twice_at_once(runs: Sequence[Run]) -> None:
    by_package: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_package.setdefault((run.build_id, run.name), []).append(run)
    for key, package_runs in by_package.items():
        assert peak_concurrency(package_runs) == 1, (key, package_runs)


def assert_max_jobs(runs: Sequence[Run], specs: Sequence[BackendSpec]) -> None:
    for spec in specs:
        on = [r for r in runs if r.backend == spec.addr]
        assert peak_concurrency(on) <= spec.max_jobs, (spec.addr, on)


def sick(replica: Replica, addr: str) -> None:
    """Open ``addr``'s circuit on one replica (as its failures there would)."""
    breaker = replica.pool.backends[addr].breaker
    for _ in range(replica.pool.failure_threshold):
        breaker.record_failure()
    assert not breaker.can_accept()


# a DAG of 16 packages in four levels
DAG: dict[str, list[str]] = {
    **{f"base{i}": [] for i in range(6)},
    **{f"mid{i}": [f"base{i}", f"base{(i + 1) % 6}"] for i in range(5)},
    **{f"top{i}": [f"mid{i}", f"mid{(i + 2) % 5}"] for i in range(4)},
    "end": [f"top{i}" for i in range(4)],
}


async def test_a_dag_submitted_through_one_replica_runs_on_several(postgres_dsn: str) -> None:
    specs = [
        BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=2),
        BackendSpec(addr="tcp://y:1", arch="x86_64", max_jobs=1),
    ]
    async with farm(postgres_dsn, 3, specs, delay=lambda name: 0.15) as (replicas, runs):
        # the submitter would win every race for a slot it frees itself: replicas 0
        # and 1 each find one daemon sick (their own breakers; replica 2 sees both well)
        sick(replicas[0], "tcp://y:1")
        sick(replicas[1], "tcp://x:1")
        build = make_build(DAG, "bld-replicas-dag01")
        await submit(replicas[0], build)
        done = await finished(replicas[1].store, build.id)
        await asyncio.sleep(2)  # a duplicate end would come after END_GRACE

    assert done.status is BuildStatus.SUCCESS
    assert {j.name: j.status for j in done.packages} == dict.fromkeys(DAG, PackageStatus.SUCCESS)
    completed = [r for r in runs if r.completed]
    assert sorted(r.name for r in completed) == sorted(DAG)  # each once
    assert {r.replica for r in completed if r.backend == "tcp://x:1"} <= {"replica-0", "replica-2"}
    assert {r.replica for r in completed if r.backend == "tcp://y:1"} <= {"replica-1", "replica-2"}
    assert len({r.replica for r in completed}) >= 2, completed
    assert_never_twice_at_once(runs)
    assert_max_jobs(runs, specs)
    # the build ended (was published) once, on one replica
    ends = [e for r in replicas for e in r.ended]
    assert ends == [(build.id, BuildStatus.SUCCESS)]
    # every replica's books are empty again (their own slots and the others')
    for replica in replicas:
        assert {b.addr: b.active for b in replica.pool.backends.values()} == {
            s.addr: 0 for s in specs
        }


async def test_max_jobs_holds_across_replicas(postgres_dsn: str) -> None:
    specs = [BackendSpec(addr="tcp://only:1", arch="x86_64", max_jobs=2)]
    async with farm(postgres_dsn, 3, specs, delay=lambda name: 0.1) as (replicas, runs):
        builds = [
            make_build({f"p{i}": [] for i in range(8)}, f"bld-replicas-max{n:02d}")
            for n in range(3)
        ]
        for replica, build in zip(replicas, builds, strict=True):  # each submits one
            await submit(replica, build)
        for build in builds:
            assert (await finished(replicas[0].store, build.id)).status is BuildStatus.SUCCESS

    assert len([r for r in runs if r.completed]) == 24
    assert_never_twice_at_once(runs)
    assert_max_jobs(runs, specs)
    assert peak_concurrency(runs) == 2  # and the slots were used
    assert len({r.replica for r in runs}) >= 2


async def test_a_dependency_ending_on_one_replica_starts_its_dependent_on_another(
    postgres_dsn: str,
) -> None:
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=4)]
    # leases of ten minutes: the lease loop never runs, only NOTIFY can wake replica 1
    async with farm(postgres_dsn, 2, specs, delay=lambda name: 0.3) as (replicas, runs):
        first, second = replicas
        build = make_build({"dep": [], "dependent": ["dep"]}, "bld-replicas-wake1")
        await submit(first, build)
        await until(lambda: "dep" in first.runner.running, "dep running on replica 0")
        # replica 0 can place nothing more (as if its probes failed the daemon)
        first.pool.backends["tcp://x:1"].platform_error = True
        done = await finished(second.store, build.id)

    assert done.status is BuildStatus.SUCCESS
    where = {r.name: r for r in runs}
    assert where["dep"].replica == "replica-0"
    assert where["dependent"].replica == "replica-1"
    assert where["dependent"].start >= where["dep"].end


# the dead replica's tasks are cancelled wherever they are, a store call included: a
# connection it had checked out may be collected unreturned (what kill -9 leaves too)
@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_replica_stopped_dead_loses_its_packages_to_the_others(
    postgres_dsn: str,
) -> None:
    specs = [
        BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=3),
        BackendSpec(addr="tcp://y:1", arch="x86_64", max_jobs=3),
    ]
    deps: dict[str, list[str]] = {f"p{i}": [] for i in range(10)}
    deps["last"] = [f"p{i}" for i in range(10)]
    async with farm(postgres_dsn, 3, specs, lease_ttl=2.0, delay=lambda name: 1.0) as (
        replicas,
        runs,
    ):
        victim = replicas[2]
        build = make_build(deps, "bld-replicas-kill1")
        await submit(victim, build)  # it takes every slot at once
        await until(lambda: len(victim.runner.running) == 6, "the victim running six")
        lost = set(victim.runner.running)
        await victim.kill()
        done = await finished(replicas[0].store, build.id)

    assert done.status is BuildStatus.SUCCESS, {j.name: j.status for j in done.packages}
    assert all(j.status is PackageStatus.SUCCESS for j in done.packages)
    # what the victim was running ran again, to the end, on another replica
    for name in lost:
        again = [r for r in runs if r.name == name and r.completed]
        assert len(again) == 1 and again[0].replica != victim.name, (name, runs)
    assert_never_twice_at_once(runs)
    assert_max_jobs(runs, specs)


async def test_a_cancel_through_one_replica_stops_the_runs_of_another(postgres_dsn: str) -> None:
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=8)]
    async with farm(postgres_dsn, 2, specs, delay=lambda name: 60.0) as (replicas, runs):
        build = make_build({f"p{i}": [] for i in range(4)}, "bld-replicas-cncl1")
        await submit(replicas[1], build)  # replica 1 starts them (replica 0 may take some)
        await until(lambda: sum(len(r.runner.running) for r in replicas) == 4, "all four running")
        # cancel through the replica that runs fewer of them
        busy, other = sorted(replicas, key=lambda r: len(r.runner.running), reverse=True)
        cancelled_at = time.monotonic()
        await other.scheduler.cancel(build.id)
        done = await finished(other.store, build.id, within=20)

    assert done.status is BuildStatus.CANCELLED
    assert all(j.status is PackageStatus.CANCELLED for j in done.packages)
    assert sorted(r.name for r in runs) == [f"p{i}" for i in range(4)]
    assert not any(r.completed for r in runs)
    assert len([r for r in runs if r.replica == busy.name]) >= 2
    assert all(r.end - cancelled_at < 10 for r in runs)  # stopped, not run out


async def test_a_backend_added_through_one_replica_is_used_by_another(postgres_dsn: str) -> None:
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=2)]
    async with farm(postgres_dsn, 2, specs) as (replicas, runs):
        first, second = replicas
        added = BackendSpec(addr="tcp://arm:1", arch="aarch64", max_jobs=1)
        # what POST /api/v1/backends does on replica 0
        first.pool.add(added, dynamic=True)
        await first.store.save_backend(
            StoredBackend(addr=added.addr, arch="aarch64", labels={}, max_jobs=1)
        )
        first.scheduler.backends_changed()
        await until(lambda: "tcp://arm:1" in second.pool.backends, "replica 1 to see it")
        assert second.pool.backends["tcp://arm:1"].dynamic
        build = make_build({"arm": []}, "bld-replicas-back1", arch="aarch64")
        await submit(second, build)
        done = await finished(second.store, build.id)
        assert done.status is BuildStatus.SUCCESS
        assert [(r.name, r.backend) for r in runs] == [("arm", "tcp://arm:1")]
        # and removed through replica 0: replica 1 drains it too
        first.pool.remove(added.addr)
        await first.store.delete_backend(added.addr)
        first.scheduler.backends_changed()
        await until(lambda: "tcp://arm:1" not in second.pool.backends, "replica 1 to drop it")


async def test_a_lost_event_connection_is_reopened_and_the_replica_catches_up(
    postgres_dsn: str,
) -> None:
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=4)]
    async with farm(postgres_dsn, 2, specs, backoff=(1.5, 1.5), delay=lambda n: 0.2) as (
        replicas,
        runs,
    ):
        first, second = replicas
        conn = second.bus.connection
        assert conn is not None
        # break replica 1's listening connection from the server side: it listens
        # again 1.5 s later, and what was notified meanwhile is lost
        async with await psycopg.AsyncConnection.connect(
            first.store.conninfo(), autocommit=True
        ) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        await until(lambda: second.bus.connection is None, "replica 1 to notice")
        build = make_build({"dep": [], "dependent": ["dep"]}, "bld-replicas-sync1")
        await submit(first, build)
        await until(lambda: "dep" in first.runner.running, "dep running on replica 0")
        first.pool.backends["tcp://x:1"].platform_error = True  # replica 0 places no more
        await until(lambda: any(r.name == "dep" for r in runs), "dep to end")
        assert second.bus.connection is None  # it all happened while replica 1 was deaf
        done = await finished(second.store, build.id)

    assert done.status is BuildStatus.SUCCESS
    assert {r.name: r.replica for r in runs} == {"dep": "replica-0", "dependent": "replica-1"}


def test_events_are_batched_into_payloads_under_the_limit() -> None:
    build = BuildId("bld-0000000000000001")
    events = [
        ReplicaEvent(kind="submitted", build_id=build),
        *(
            ReplicaEvent(kind="moved", build_id=build, names=(f"package-{i:04d}",))
            for i in range(900)
        ),
        ReplicaEvent(kind="moved", build_id=build, names=("package-0001",)),
        ReplicaEvent(kind="cancelled", build_id=build),
        ReplicaEvent(kind="backends"),
    ]
    payloads = encode_events(events, origin="server-1")
    assert len(payloads) > 1
    assert all(len(p.encode()) <= 7000 for p in payloads)
    decoded = [e for p in payloads for e in decode_events(p)]
    assert all(e.origin == "server-1" for e in decoded)
    assert decoded[0].kind == "submitted"
    assert [e.kind for e in decoded][-2:] == ["cancelled", "backends"]
    moved = [n for e in decoded if e.kind == "moved" for n in e.names]
    assert moved == [f"package-{i:04d}" for i in range(900)]  # in order, each once
    with pytest.raises(ValueError, match="not a replica event payload"):
        decode_events('{"o": "x", "e": [["exploded", null, []]]}')


async def test_a_build_end_is_one_replicas_and_the_others_find_it_ended(
    postgres_dsn: str,
) -> None:
    build = make_build({"a": []}, "bld-replicas-endl1")
    async with (
        await PostgresStore.open(postgres_dsn, migrate_schema=False) as one,
        await PostgresStore.open(postgres_dsn, migrate_schema=False) as two,
    ):
        await one.create_build(build)
        order: list[str] = []
        async with one.build_end_lock(build.id) as mine:
            assert mine is True
            async with two.build_end_lock(build.id, wait=False) as busy:
                assert busy is None  # held: the other does not wait

            async def other() -> bool | None:
                async with two.build_end_lock(build.id) as theirs:
                    order.append("two")
                    return theirs

            waiting = asyncio.create_task(other())
            await asyncio.sleep(0.3)
            assert not waiting.done()  # it waits for the lock
            await one.update_build(build.id, status=BuildStatus.SUCCESS)
            order.append("one")
        assert await waiting is False  # ended by the first
        assert order == ["one", "two"]


async def test_a_start_checks_what_runs_on_the_backend_across_replicas(
    postgres_dsn: str,
) -> None:
    build = make_build({f"p{i}": [] for i in range(3)}, "bld-replicas-slot1")
    build = dataclasses.replace(  # p2 asks one cpu
        build,
        packages=(*build.packages[:2], dataclasses.replace(build.packages[2], cpu_millis=1000)),
    )
    backend = Backend(addr="tcp://x:1", arch="x86_64", labels={})
    async with await PostgresStore.open(postgres_dsn, migrate_schema=False) as store:
        await store.create_build(build)

        def start(name: str, max_jobs: int, *, cpu: int | None = None) -> SlotStart:
            return SlotStart(
                build_id=build.id,
                name=name,
                expect=frozenset({PackageStatus.PENDING}),
                addr=backend.addr,
                max_jobs=max_jobs,
                cpu=cpu,
                fields={"backend": backend, "lease_owner": "r1"},
            )

        started = await store.start_many([start("p0", 2)])
        assert isinstance(started[0], PackageJob)
        assert started[0].status is PackageStatus.RUNNING
        # in one transaction: p1 fits, then p2 finds the two slots taken, and p0 is
        # already running (someone's claim): refused
        p1, p2, p0 = await store.start_many([start("p1", 2), start("p2", 2), start("p0", 5)])
        assert isinstance(p1, PackageJob) and p2 is FULL and p0 is None
        assert (await store.get_build(build.id)).packages[2].status is PackageStatus.PENDING
        await store.transition(build.id, "p0", PackageStatus.SUCCESS)
        # a slot freed, but p2 asks more cpu than is free there (p1 asks none)
        assert await store.start_many([start("p2", 2, cpu=500)]) == [FULL]
        (p2,) = await store.start_many([start("p2", 2, cpu=1000)])
        assert isinstance(p2, PackageJob)


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_build_whose_ender_died_is_ended_by_another_replica(postgres_dsn: str) -> None:
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=2)]
    async with farm(postgres_dsn, 2, specs, delay=lambda name: 60.0) as (replicas, _):
        first, second = replicas
        build = make_build({"only": []}, "bld-replicas-endd1")
        await submit(first, build)
        await until(lambda: "only" in first.runner.running, "replica 0 running it")
        await first.kill()
        # what replica 0 wrote and told just before it died: its package's success
        await first.store.transition(
            build.id,
            "only",
            PackageStatus.SUCCESS,
            expect=frozenset({PackageStatus.RUNNING}),
            lease_owner="",
            lease_expires=None,
        )
        await first.bus.publish([ReplicaEvent(kind="moved", build_id=build.id, names=("only",))])
        done = await finished(second.store, build.id, within=20)

    assert done.status is BuildStatus.SUCCESS
    assert first.ended == []
    assert second.ended == [(build.id, BuildStatus.SUCCESS)]  # published by replica 1


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_what_a_dead_replica_wrote_but_never_told_is_read_when_its_leases_expire(
    postgres_dsn: str,
) -> None:
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=4)]
    slow = {"a", "b"}
    async with farm(
        postgres_dsn, 2, specs, lease_ttl=2.0, delay=lambda name: 60.0 if name in slow else 0.05
    ) as (replicas, runs):
        first, second = replicas
        build = make_build({"a": [], "b": [], "c": ["a"]}, "bld-replicas-untold")
        await submit(first, build)
        await until(lambda: set(first.runner.running) == {"a", "b"}, "replica 0 running a, b")
        await first.kill()
        slow.clear()  # their next runs are quick
        # replica 0 wrote a's success and died before telling anyone
        await first.store.transition(
            build.id,
            "a",
            PackageStatus.SUCCESS,
            expect=frozenset({PackageStatus.RUNNING}),
            lease_owner="",
            lease_expires=None,
        )
        done = await finished(second.store, build.id, within=30)

    assert done.status is BuildStatus.SUCCESS
    # b's lease expired on replica 1, which then read the store again and found a done
    assert sorted((r.name, r.replica) for r in runs if r.completed) == [
        ("b", "replica-1"),
        ("c", "replica-1"),
    ]


async def test_a_stale_attempts_finish_is_refused_and_the_new_owners_run_stands(
    postgres_dsn: str,
) -> None:
    """A replica whose lease expired unheard (slow, partitioned) while another took its
    package over: its finish (a guarded write that also names its lease owner) matches
    nothing, and the new owner's result is what the store keeps."""
    specs = [BackendSpec(addr="tcp://x:1", arch="x86_64", max_jobs=2)]
    async with farm(postgres_dsn, 1, specs, delay=lambda name: 1.0) as (replicas, runs):
        (stale,) = replicas
        build = make_build({"slow": []}, "bld-replicas-stale1")
        await submit(stale, build)
        await until(lambda: "slow" in stale.runner.running, "slow running")
        # what another replica's takeover leaves (its requeue and start, never told):
        # the package running again under the new owner's lease
        await stale.store.update_package(
            build.id, "slow", lease_owner="replica-new", log_path="/logs/new"
        )
        await until(lambda: any(r.name == "slow" for r in runs), "the stale run ending")
        await asyncio.sleep(0.3)  # its finish written (refused) and the row read back
        row = (await stale.store.read_packages(build.id, ["slow"]))[0]
        assert row.status is PackageStatus.RUNNING
        assert row.lease_owner == "replica-new" and row.log_path == "/logs/new"
        assert row.output_path != "/out/slow"
        # the new owner's own finish goes through
        done = await stale.store.transition(
            build.id,
            "slow",
            PackageStatus.SUCCESS,
            expect=frozenset({PackageStatus.RUNNING}),
            owner="replica-new",
            output_path="/out/new",
            lease_owner="",
            lease_expires=None,
        )
        assert done.output_path == "/out/new" and done.log_path == "/logs/new"
        stored = (await stale.store.get_build(build.id)).packages[0]
        assert stored == done
