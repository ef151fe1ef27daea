"""The no-op scheduler benchmark with several replicas: ``scheduler_bench.py --store
postgres --replicas 3`` (this module is its replicas half).

``--replicas N`` processes (``multiprocessing``, spawned), each a real
:class:`~melange2.scheduler.loop.Scheduler` with its own real
:class:`~melange2.store.PostgresStore` on one shared database, the server's event bus
between replicas (PostgreSQL ``LISTEN/NOTIFY``, as ``melange-server`` wires it), one
backend of ``--slots`` jobs (its slots held in the database, across replicas) and a
runner that returns at once. The build is stored and submitted through replica 0 alone;
the others learn of it, and of every package's end, from the bus.

* ``wolfi``: all 3,401 packages of ``wolfi-dag.json`` in one DAG build. ``wall_s``: from
  the submission to the last package's ``finished_at`` in the store (every package
  dispatched, run and finished, by whichever replica claimed it). Goal (issue 16): under
  3 s with one replica.
* ``chain``: a chain of ``--chain`` packages; for each link whose dependency ended on one
  replica and which started on another: the store's ``started_at`` of the link minus the
  ``finished_at`` of its dependency, the cross-replica dispatch latency. Goal: p99 under
  50 ms. Links that stayed on one replica are counted, not measured. The replica that
  ends a link almost always starts the next itself (it knows first), so few links
  cross; what every link does measure is the **wake**: from a dependency's end on its
  replica (the scheduler's ``finished`` event) to the dependent becoming ready on each
  other replica (``ready``), the news of an end crossing the bus.

Which replica ran a package comes from each replica's own ``started`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from melange2.ids import BuildId
from melange2.jobs import Build, BuildStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import Scheduler, SchedulerEvent
from melange2.store import PostgresStore, open_store


@dataclass(frozen=True)
class Ran:
    """What one replica reports at its end."""

    replica: int
    started: tuple[str, ...]  #: names of the packages it started
    submitted_at: float  #: replica 0: time.monotonic() just before its submit (else 0)
    #: when a package became ready here (queued: after its dependencies' ends, its own
    #: or told by another replica) and when one of its own finished, by name
    #: (``time.monotonic()``: one clock for every process of the machine)
    ready_at: dict[str, float]
    finished_at: dict[str, float]
    #: the other replicas' events this one heard: (when, the sender, the packages named)
    heard: tuple[tuple[float, str, tuple[str, ...]], ...] = ()


def _replica_main(
    n: int, count: int, dsn: str, slots: int, conn: multiprocessing.connection.Connection
) -> None:
    asyncio.run(_replica(n, dsn, slots, conn))


async def _recv(conn: multiprocessing.connection.Connection) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


async def _replica(
    n: int, dsn: str, slots: int, conn: multiprocessing.connection.Connection
) -> None:
    from scheduler_bench import NoopRunner, make_build

    started: list[str] = []
    ready_at: dict[str, float] = {}
    finished_at: dict[str, float] = {}

    def observe(event: SchedulerEvent) -> None:
        if event.kind == "started":
            started.append(event.name)
        elif event.kind == "ready":
            ready_at.setdefault(event.name, event.at)
        elif event.kind == "finished":
            finished_at[event.name] = event.at

    heard: list[tuple[float, str, tuple[str, ...]]] = []
    async with open_store("postgres", dsn=dsn) as store:
        assert isinstance(store, PostgresStore)
        listening = asyncio.create_task(_listen(store, f"bench-replica-{n}", heard))
        pool = BackendPool.from_config(
            PoolConfig(backends=(BackendSpec(addr="tcp://noop:1", arch="x86_64", max_jobs=slots),))
        )
        owner = f"bench-replica-{n}"
        async with replica_bus(store, owner) as bus:
            sched = Scheduler(store, pool, NoopRunner(), owner=owner, observer=observe, **bus)
            task = asyncio.create_task(sched.run())
            conn.send("ready")
            submitted_at = 0.0
            while True:
                command, payload = await _recv(conn)
                if command == "submit":
                    # (a Build does not pickle: its parts do)
                    build = make_build(*payload)
                    await store.create_build(build)
                    submitted_at = time.monotonic()
                    await sched.submit(build)
                    conn.send("submitted")
                elif command == "report":
                    conn.send(
                        Ran(
                            replica=n,
                            started=tuple(started),
                            submitted_at=submitted_at,
                            ready_at=dict(ready_at),
                            finished_at=dict(finished_at),
                            heard=tuple(heard),
                        )
                    )
                    heard.clear()
                    started.clear()
                    ready_at.clear()
                    finished_at.clear()
                    submitted_at = 0.0
                elif command == "stop":
                    break
            await sched.shutdown()
            for t in (task, listening):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    conn.send("stopped")


async def _listen(
    store: PostgresStore, own: str, heard: list[tuple[float, str, tuple[str, ...]]]
) -> None:
    """Beside the scheduler's own listener, on a connection of its own: when each of the
    other replicas' events arrives here (what the scheduler then reads and applies)."""
    import psycopg

    from melange2.scheduler.replicas import decode_events
    from melange2.store.sql.bus import CHANNEL

    async with await psycopg.AsyncConnection.connect(store.conninfo(), autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        async for note in conn.notifies():
            at = time.monotonic()
            for event in decode_events(note.payload):
                if event.origin != own and event.kind == "moved":
                    heard.append((at, event.origin, event.names))


@contextlib.asynccontextmanager
async def replica_bus(store: PostgresStore, owner: str) -> AsyncIterator[dict[str, Any]]:
    """The Scheduler's keyword arguments that connect it to the other replicas, as
    ``melange-server`` makes them: on PostgreSQL with ``LISTEN/NOTIFY``, always (one
    replica alone included), :class:`~melange2.store.sql.bus.PostgresReplicas`."""
    from melange2.store.sql.bus import PostgresReplicas

    assert store.supports_listen_notify, "this PostgreSQL store cannot LISTEN"
    yield {"replicas": PostgresReplicas(store, owner=owner)}


class Replicas:
    """``count`` replica processes on ``dsn``."""

    def __init__(self, dsn: str, count: int, slots: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs = []
        for n in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_replica_main, args=(n, count, dsn, slots, child), daemon=True
            )
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for n, (conn, proc) in enumerate(zip(self.conns, self.procs, strict=True)):
            deadline = time.monotonic() + 120
            while not conn.poll(0.1):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"replica {n} did not start (exit code {proc.exitcode})")
            assert conn.recv() == "ready"

    def submit(self, build: Build) -> None:
        """Store and submit, in replica 0, the build ``make_build`` makes of its id,
        dependencies and priorities."""
        parts = (
            build.id,
            {j.name: j.dependencies for j in build.packages},
            {j.name: j.priority for j in build.packages},
        )
        self.conns[0].send(("submit", parts))
        assert self.conns[0].recv() == "submitted"

    def report(self) -> list[Ran]:
        for conn in self.conns:
            conn.send(("report", None))
        return [conn.recv() for conn in self.conns]

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for conn, proc in zip(self.conns, self.procs, strict=True):
            with contextlib.suppress(OSError, EOFError):
                if conn.poll(30):
                    conn.recv()
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _wait_finished(dsn: str, build_id: str, timeout: float = 600) -> None:
    """Until the build's row says it ended (a light query every 5 ms)."""
    import psycopg

    from melange2.store.sql.postgres import postgres_url

    url = postgres_url(dsn).render_as_string(hide_password=False).replace("+psycopg", "")
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT status FROM builds WHERE id = %s", (build_id,)).fetchone()
            if row is not None and row[0] not in (
                BuildStatus.PENDING.value,
                BuildStatus.RUNNING.value,
            ):
                return
            time.sleep(0.005)
    raise RuntimeError(f"build {build_id} did not end in {timeout}s")


async def _stored(dsn: str, build_id: str) -> Build:
    async with open_store("postgres", dsn=dsn) as store:
        return await store.get_build(BuildId(build_id))


def cross_replica_latencies(build: Build, ran: Sequence[Ran]) -> tuple[list[float], list[float]]:
    """For each package with dependencies: its ``started_at`` minus its last
    dependency's ``finished_at`` (ms), when the two ran on different replicas; and how
    the same for the pairs that stayed on one replica."""
    where = {name: r.replica for r in ran for name in r.started}
    jobs = {j.name: j for j in build.packages}
    latencies: list[float] = []
    same: list[float] = []
    for job in build.packages:
        if not job.dependencies or job.started_at is None:
            continue
        ends = [(jobs[d].finished_at, d) for d in job.dependencies]
        assert all(end is not None for end, _ in ends), job.name
        last = jobs[max((end, d) for end, d in ends if end is not None)[1]]
        assert last.finished_at is not None
        took = (job.started_at - last.finished_at).total_seconds() * 1000
        (same if where.get(last.name) == where.get(job.name) else latencies).append(took)
    return latencies, same


def cross_replica_wakes(build: Build, ran: Sequence[Ran]) -> list[float]:
    """For each package that ended and each other replica: from the end (its replica's
    ``finished`` event) to the first event of its replica naming it that arrived at the
    other replica afterwards, in ms: how long the news of an end takes to reach another
    replica's listener."""
    del build
    ended = {name: (r.replica, at) for r in ran for name, at in r.finished_at.items()}
    owner = {r.replica: f"bench-replica-{r.replica}" for r in ran}
    wakes = []
    for r in ran:
        first: dict[str, float] = {}
        for at, origin, names in r.heard:
            for name in names:
                if name in ended:
                    where, end = ended[name]
                    if owner[where] == origin and at >= end and name not in first:
                        first[name] = at
        for name, at in first.items():
            wakes.append((at - ended[name][1]) * 1000)
    return wakes


def run_build(
    replicas: Replicas, dsn: str, build: Build
) -> tuple[dict[str, float], Build, list[Ran]]:
    """Store and submit ``build`` through replica 0, wait for its end; the times:
    ``wall_s`` from the submission (after the store's create) to the build's end seen in
    the database (polled every 5 ms), ``store_span_s`` from the first ``started_at`` to
    the last ``finished_at``."""
    replicas.submit(build)
    _wait_finished(dsn, build.id)
    seen = time.monotonic()
    ran = replicas.report()
    stored = asyncio.run(_stored(dsn, build.id))
    assert stored.status is BuildStatus.SUCCESS, stored.status
    first = min(j.started_at for j in stored.packages if j.started_at is not None)
    last = max(j.finished_at for j in stored.packages if j.finished_at is not None)
    started = sum(len(r.started) for r in ran)
    assert started >= len(stored.packages), (started, len(stored.packages))
    times = {
        "wall_s": round(seen - ran[0].submitted_at, 3),
        "store_span_s": round((last - first).total_seconds(), 3),
    }
    return times, stored, ran


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float], same: list[float], wakes: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cross_replica_pairs": len(latencies),
        "same_replica_pairs": len(same),
    }
    if same:
        out |= {
            "same_dispatch_p50_ms": round(statistics.median(same), 2),
            "same_dispatch_p99_ms": round(percentile(same, 0.99), 2),
        }
    if latencies:
        out |= {
            "cross_dispatch_p50_ms": round(statistics.median(latencies), 2),
            "cross_dispatch_p99_ms": round(percentile(latencies, 0.99), 2),
            "cross_dispatch_max_ms": round(max(latencies), 2),
        }
    if wakes:
        out |= {
            "wakes": len(wakes),
            "wake_p50_ms": round(statistics.median(wakes), 2),
            "wake_p99_ms": round(percentile(wakes, 0.99), 2),
            "wake_max_ms": round(max(wakes), 2),
        }
    return out
