"""Benchmark the real scheduler (store, dispatch loop, pool) with a no-op runner.

Two measurements, both against the issue's goals:

* ``wolfi``: all 3,401 packages of ``wolfi-dag.json`` in one DAG build (bootstrap-cycle
  edges cut as ``cycle_policy: break`` would): graph built, priorities computed, the
  build stored, and every package dispatched and finished by the real
  :class:`~melange2.scheduler.loop.Scheduler` through a pool of ``--slots`` slots. The
  runner returns at once, so this is the scheduler's own cost. Goal: under 3 s in
  total, under 400 MB resident.
* ``chain``: a chain of ``--chain`` packages; for each link, the time from the
  dependency's success (the scheduler's ``finished`` event) to the dependent's runner
  being called (``started``): the dispatch latency. Goal: p50 under 10 ms, p99 under
  50 ms.

Both run on ``--store sqlite`` (a file in a temporary directory, WAL, as the server
runs), ``memory``, or ``postgres``: the database at ``--postgres-dsn`` (env
``POSTGRES_DSN``; every run's build gets a new id there), or else a throwaway cluster
this program starts (:mod:`melange2.testenv.postgres`, a fresh database per run, stopped
and removed at the end; ``--durable`` keeps PostgreSQL's default ``fsync`` and
``synchronous_commit`` on, as a production server runs; without it they are off).

With ``--resources`` the wolfi packages ask what their configs ask (the ``cpu`` hint of
``wolfi-dag.json``: ``package.resources.cpu``, 1 when absent; clipped to 16 cores) and
the pool is 4 backends of 16 cores with ``--slots`` jobs each, so placement by
resources (fits, backfill, kept backends) is what decides; without it, one backend
with ``--slots`` jobs and packages that ask nothing.

    .venv/bin/python bench/scheduler_bench.py --store sqlite
    .venv/bin/python bench/scheduler_bench.py --store sqlite --resources
    .venv/bin/python bench/scheduler_bench.py --store postgres --durable
    .venv/bin/python bench/scheduler_bench.py --store postgres --durable --replicas 3

With ``--replicas N`` (``--store postgres`` only) the scheduler runs as N replica
processes on one database, connected as ``melange-server`` replicas are (their
PostgreSQL event bus), the build submitted through the first: see ``replicas_bench.py``.

Wall times suffer from whatever else runs on the machine: ``schedule_all_cpu_s`` (this
process's CPU time while scheduling) and the load average at the end say how much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from melange2.ids import BuildId
from melange2.jobs import Backend, Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler.graph import PackageNode, build_graph, priorities
from melange2.scheduler.loop import RunOutcome, Scheduler, SchedulerEvent
from melange2.store import StoreKind, open_store
from melange2.store.base import JobStore
from melange2.testenv.postgres import PostgresCluster, migrated_template

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "wolfi-dag.json"


class NoopRunner:
    """Returns at once: what is measured is the scheduler."""

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        return RunOutcome()

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return ""


@dataclass
class Recorder:
    """Keeps the scheduler's events; ``done`` is set when ``expect`` packages finished
    (so the benchmark does not poll the store and measure its own polling)."""

    expect: int = 0
    events: list[SchedulerEvent] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished: int = 0

    def __call__(self, event: SchedulerEvent) -> None:
        self.events.append(event)
        if event.kind == "finished":
            self.finished += 1
            if self.finished >= self.expect:
                self.done.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def make_build(
    build_id: str,
    deps: dict[str, tuple[str, ...]],
    prio: dict[str, float],
    cpu: dict[str, int] | None = None,
) -> Build:
    jobs = [
        PackageJob(
            build_id=BuildId(build_id),
            name=name,
            seq=i,
            status=PackageStatus.BLOCKED if d else PackageStatus.PENDING,
            config_yaml="",
            arch="x86_64",
            dependencies=d,
            priority=prio.get(name, 1.0),
            cpu_millis=(cpu or {}).get(name, 0),
        )
        for i, (name, d) in enumerate(deps.items())
    ]
    return Build(
        id=BuildId(build_id),
        status=BuildStatus.PENDING,
        spec=BuildSpec(),
        created_at=datetime.now(UTC),
        packages=tuple(jobs),
    )


@dataclass(frozen=True)
class StoreChoice:
    """Which store each run opens: ``kind``, and for postgres where."""

    kind: StoreKind
    #: a fixed database (the user's), else each run gets its own from ``cluster``
    dsn: str = ""
    cluster: PostgresCluster | None = None
    template: str = ""

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """The DSN for one run ("" for memory and sqlite)."""
        if self.cluster is None:
            yield self.dsn
            return
        name = f"bench_{secrets.token_hex(4)}"
        try:
            yield self.cluster.create_database(name, template=self.template)
        finally:
            self.cluster.drop_database(name)


@contextlib.contextmanager
def store_choice(args: argparse.Namespace) -> Iterator[StoreChoice]:
    if args.store != "postgres":
        yield StoreChoice(kind=args.store)
    elif args.postgres_dsn:
        yield StoreChoice(kind="postgres", dsn=args.postgres_dsn)
    else:
        with PostgresCluster.create(durable=args.durable) as cluster:
            template = migrated_template(cluster)
            yield StoreChoice(kind="postgres", cluster=cluster, template=template)


def new_build_id(tag: str) -> str:
    """Unique per run, so runs can share a database."""
    return f"bld-{tag}{secrets.token_hex(7)}"


#: ``--resources``: backends of this many cores (and requests clipped to it)
CORES = 16


@contextlib.asynccontextmanager
async def scheduler(
    choice: StoreChoice, slots: int, recorder: Recorder, *, resources: bool = False
) -> AsyncIterator[tuple[Scheduler, JobStore]]:
    with tempfile.TemporaryDirectory() as tmp, choice.database() as dsn:
        async with open_store(choice.kind, data_dir=Path(tmp), dsn=dsn) as store:
            backends = (
                tuple(
                    BackendSpec(
                        addr=f"tcp://noop-{i}:1", arch="x86_64", max_jobs=slots, cpu=CORES * 1000
                    )
                    for i in range(4)
                )
                if resources
                else (BackendSpec(addr="tcp://noop:1", arch="x86_64", max_jobs=slots),)
            )
            pool = BackendPool.from_config(PoolConfig(backends=backends))
            sched = Scheduler(store, pool, NoopRunner(), owner="bench", observer=recorder)
            task = asyncio.create_task(sched.run())
            try:
                yield sched, store
            finally:
                await sched.shutdown()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def wait_done(store: JobStore, build_id: BuildId, recorder: Recorder) -> Build:
    await recorder.done.wait()
    while True:  # the build's own status is written just after its last package's
        build = await store.get_build(build_id)
        if build.status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
            return build
        await asyncio.sleep(0.01)


async def bench_wolfi(
    choice: StoreChoice, slots: int, data: Any, resources: bool = False
) -> dict[str, Any]:
    t0 = time.perf_counter()
    nodes = [
        PackageNode(name=p["name"], needs=(*p["deps"], *p.get("cycle_deps", ())))
        for p in data["packages"]
    ]
    graph = build_graph(nodes, cycle_policy="break")
    prio = priorities(graph, {})
    deps = {name: tuple(graph.deps.get(name, ())) for name in graph.names}
    cpu = (
        {p["name"]: int(min(float(p.get("cpu", 1) or 1), CORES) * 1000) for p in data["packages"]}
        if resources
        else None
    )
    build = make_build(new_build_id("aa"), deps, prio, cpu)
    t1 = time.perf_counter()
    recorder = Recorder(expect=len(deps))
    async with scheduler(choice, slots, recorder, resources=resources) as (sched, store):
        await store.create_build(build)
        t2, c2 = time.perf_counter(), time.process_time()
        await sched.submit(build)
        done = await wait_done(store, build.id, recorder)
        t3, c3 = time.perf_counter(), time.process_time()
    assert done.status is BuildStatus.SUCCESS, done.status
    started = [e for e in recorder.events if e.kind == "started"]
    assert len(started) == len(deps)
    return {
        "packages": len(deps),
        "edges": sum(len(d) for d in deps.values()),
        "cut_edges": len(graph.cut_edges),
        "graph_s": round(t1 - t0, 3),
        "store_create_s": round(t2 - t1, 3),
        "schedule_all_s": round(t3 - t2, 3),
        #: this process's CPU time over the same span (not the database server's)
        "schedule_all_cpu_s": round(c3 - c2, 3),
        "total_s": round(t3 - t0, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


async def bench_chain(choice: StoreChoice, length: int) -> dict[str, Any]:
    names = [f"link-{i:04d}" for i in range(length)]
    deps: dict[str, tuple[str, ...]] = {
        n: ((names[i - 1],) if i else ()) for i, n in enumerate(names)
    }
    recorder = Recorder(expect=length)
    async with scheduler(choice, 4, recorder) as (sched, store):
        build = make_build(new_build_id("bb"), deps, {})
        await store.create_build(build)
        await sched.submit(build)
        await wait_done(store, build.id, recorder)
    finished = {e.name: e.at for e in recorder.events if e.kind == "finished"}
    started = {e.name: e.at for e in recorder.events if e.kind == "started"}
    latencies = [(started[names[i]] - finished[names[i - 1]]) * 1000 for i in range(1, length)]
    return {
        "links": length - 1,
        "dispatch_p50_ms": round(statistics.median(latencies), 2),
        "dispatch_p95_ms": round(percentile(latencies, 0.95), 2),
        "dispatch_p99_ms": round(percentile(latencies, 0.99), 2),
        "dispatch_max_ms": round(max(latencies), 2),
    }


def bench_replicas(choice: StoreChoice, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    """``--replicas N``: each run on a fresh database (or the given one), N replica
    processes started on it, the wolfi build and then the chain submitted through the
    first; the medians of the runs."""
    import replicas_bench

    nodes = [
        PackageNode(name=p["name"], needs=(*p["deps"], *p.get("cycle_deps", ())))
        for p in data["packages"]
    ]
    graph = build_graph(nodes, cycle_policy="break")
    prio = priorities(graph, {})
    deps = {name: tuple(graph.deps.get(name, ())) for name in graph.names}
    names = [f"link-{i:04d}" for i in range(args.chain)]
    chain: dict[str, tuple[str, ...]] = {
        n: ((names[i - 1],) if i else ()) for i, n in enumerate(names)
    }
    wolfi_runs: list[dict[str, Any]] = []
    chain_runs: list[dict[str, Any]] = []
    for _ in range(args.runs):
        with choice.database() as dsn:
            replicas = replicas_bench.Replicas(dsn, args.replicas, args.slots)
            try:
                times, stored, ran = replicas_bench.run_build(
                    replicas, dsn, make_build(new_build_id("aa"), deps, prio)
                )
                wolfi_runs.append(
                    times | {f"started_by_replica_{r.replica}": len(r.started) for r in ran}
                )
                _, stored, ran = replicas_bench.run_build(
                    replicas, dsn, make_build(new_build_id("bb"), chain, {})
                )
                lat, same = replicas_bench.cross_replica_latencies(stored, ran)
                wakes = replicas_bench.cross_replica_wakes(stored, ran)
                chain_runs.append(replicas_bench.summary(lat, same, wakes))
            finally:
                replicas.stop()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "store": "postgres (--postgres-dsn)"
        if args.postgres_dsn
        else (f"postgres (throwaway cluster, {'durable' if args.durable else 'fsync off'})"),
        "replicas": args.replicas,
        "slots": args.slots,
        "packages": len(deps),
        "runs": args.runs,
        "wolfi": {k: statistics.median(r.get(k, 0) for r in wolfi_runs) for k in wolfi_runs[0]},
        "chain": {
            k: statistics.median(r[k] for r in chain_runs if k in r)
            for k in {k: None for r in chain_runs for k in r}
        },
        "wolfi_runs": wolfi_runs,
        "chain_runs": chain_runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "memory", "postgres"], default="sqlite")
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("POSTGRES_DSN", ""),
        help="with --store postgres: this database (env POSTGRES_DSN); "
        "default: a throwaway cluster",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="the throwaway cluster keeps fsync and synchronous_commit on",
    )
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--chain", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA, help="wolfi-dag.json")
    parser.add_argument(
        "--resources",
        action="store_true",
        help="packages ask their cpu hint; 4 backends of 16 cores (see the docstring)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="N replica processes on the one database (--store postgres; see "
        "replicas_bench.py); 0: one scheduler in this process",
    )
    args = parser.parse_args()
    data = json.loads(args.data.read_text())
    if args.replicas:
        if args.store != "postgres":
            parser.error("--replicas needs --store postgres")
        with store_choice(args) as choice:
            print(json.dumps(bench_replicas(choice, args, data), indent=2))
        return
    with store_choice(args) as choice:
        wolfi = [
            asyncio.run(bench_wolfi(choice, args.slots, data, args.resources))
            for _ in range(args.runs)
        ]
        chain = [asyncio.run(bench_chain(choice, args.chain)) for _ in range(args.runs)]
    if args.store != "postgres":
        store = args.store
    elif args.postgres_dsn:
        store = "postgres (--postgres-dsn)"
    else:
        store = f"postgres (throwaway cluster, {'durable' if args.durable else 'fsync off'})"
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "store": store,
        "resources": args.resources,
        "wolfi": {k: statistics.median(r[k] for r in wolfi) for k in wolfi[0]},
        "chain": {k: statistics.median(r[k] for r in chain) for k in chain[0]},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
