"""Schedule quality on a virtual clock (issue 19, item 1): the real scheduler, simulated time.

The real :class:`~melange2.scheduler.loop.Scheduler`, :class:`~melange2.pool.pool.BackendPool`
and :class:`~melange2.store.memory.MemoryStore` build the whole graph of ``wolfi-dag.json``
(3,401 packages, bootstrap-cycle edges cut as ``cycle_policy: break`` does) on one backend
of ``--slots`` slots. The runner "builds" each package by sleeping for its duration on a
:class:`~melange2.testenv.virtualtime.VirtualTimeLoop`: when nothing is ready the loop jumps
to the next timer instead of waiting, so hours of builds take seconds, and the scheduler's
own timers (lease renewal, backoff) and its clock (``Scheduler(clock=VirtualClock())``:
timestamps, leases, the durations the store learns) run on the same virtual time. Nothing
on the path waits on a thread or real I/O (the loop refuses ``run_in_executor``), so the
scheduler's own CPU per dispatch is all the real time a run costs.

Durations are log-normal (median ``--median`` s, ``--sigma``), drawn per ``--seeds`` seed
in the graph's submission order. For each seed and slot count:

* ``fifo``: a scheduler constructed with ``schedule="fifo"`` (submission order);
* ``critical-path``: ``schedule="critical-path"`` with unit weights (``priorities(graph,
  {})``: what the server computes on a first build, knowing no durations);
* ``critical-path-learned``: then, on the same scheduler and store, the same graph again
  with the priorities the server would compute from ``store.durations()`` after that first
  build (the durations of the second build are the first one's: a simulated package takes
  as long every time);
* ``reference``: for context, a simulation (not our scheduler) of the reference
  implementation's loop on the same clock: every 1 s tick it claims ready packages (the
  first in its own topological order: Kahn's, alphabetical) while a slot is free, waiting
  for a slot when all are busy; once none is ready it waits for every package in flight,
  then for the next tick.

Each arm's ``ratio`` is makespan (submission to the last package's end) ÷
``max(critical path, total work ÷ slots)`` over the true durations. The goal: ≤ 1.05 for
``critical-path-learned`` at every slot count. The checks (``checks`` in the report; the
exit status is 1 if one fails): each arm ran with its own order (the packages started at
time 0 are, for ``fifo``, the ``slots`` earliest-submitted ready ones and, for the
critical-path arms, the ``slots`` with the highest priority; fifo's and critical-path's
start orders differ), and the learned run's makespan equals that of the dry-run planner's
list scheduling (:func:`~melange2.scheduler.graph.plan`) over the same durations.

Variations: ``--rerun-noise SIGMA`` (the learned run's packages each take a log-normal
factor longer or shorter than in the first run), ``--new-fraction F`` (that share of the
packages has no learned duration, as new packages on a server: they are expected to take
:func:`~melange2.scheduler.graph.typical_duration`, as at submission). The scheduler runs
with a lease TTL of 1 h (the server's default is 15 s; see ``LEASE_TTL_S``).

Output: a table of the median ratio per schedule and slot count (min and max over the
seeds), the checks, and with ``--out`` a JSON report: ``virtual``, one
``{schedule, slots, seed, ratio, makespan_s, bound_s, critical_path_s, work_s, ...}`` per
run of our scheduler (``schedule``: ``fifo``, ``critical-path`` or
``critical-path-learned``), ``virtual_reference`` (the same for the reference's loop),
``summary`` and ``checks``. ``bench/replay.py --virtual FILE`` merges it into a replay
report.

    .venv/bin/python bench/virtual_bench.py --out virtual.json
    .venv/bin/python bench/virtual_bench.py --seeds 1 --slots 64 --schedules fifo
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import heapq
import json
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from melange2.scheduler.graph import (
    Graph,
    PackageNode,
    build_graph,
    plan,
    priorities,
    typical_duration,
)
from melange2.scheduler.loop import RunOutcome, Scheduler, SchedulerEvent
from melange2.store.memory import MemoryStore
from melange2.testenv.virtualtime import VirtualClock, VirtualTimeLoop

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ("fifo", "critical-path", "critical-path-learned", "reference")
DEFAULT_SLOTS = (32, 64, 128, 256, 512)
GOAL = 1.05  #: critical-path-learned, every slot count
ARCH = "x86_64"
POLL_S = 1.0  #: the reference's poll interval
#: the scheduler's lease TTL here (the server's default is 15 s): leases renew every
#: TTL/3, and over hours of virtual time renewing every running lease every 5 s would be
#: most of the simulation's CPU (33 of 38 s on 64 slots) while changing no order
LEASE_TTL_S = 3600.0


def default_data() -> Path:
    """``shared/bench/wolfi-dag.json`` next to the checkout (or one level up, from a
    worktree in ``wt/``)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        path = base / "shared" / "bench" / "wolfi-dag.json"
        if path.exists():
            return path
    return ROOT.parent / "shared" / "bench" / "wolfi-dag.json"


def load_graph(path: Path) -> Graph:
    data = json.loads(path.read_text())
    nodes = [
        PackageNode(name=p["name"], needs=(*p["deps"], *p.get("cycle_deps", ())))
        for p in data["packages"]
    ]
    return build_graph(nodes, cycle_policy="break")


def lognormal_durations(
    names: Sequence[str], seed: int, median: float, sigma: float
) -> dict[str, float]:
    rng = random.Random(seed)
    mu = math.log(median)
    return {name: rng.lognormvariate(mu, sigma) for name in names}


def lower_bound(graph: Graph, durations: Mapping[str, float], slots: int) -> dict[str, float]:
    levels = priorities(graph, durations)
    critical = max(levels.values(), default=0.0)
    work = math.fsum(durations.values())
    return {"critical_path_s": critical, "work_s": work, "bound_s": max(critical, work / slots)}


# -- the real scheduler on the virtual clock ------------------------------------------------


@dataclass
class SleepRunner:
    """Builds a package by sleeping its duration in loop time (virtual in this bench);
    ``durations`` per build id, as a package may take another time in another build."""

    durations: dict[str, Mapping[str, float]] = field(default_factory=dict)

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        await asyncio.sleep(self.durations[build.id][job.name])
        return RunOutcome()

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return ""


@dataclass
class Recorder:
    """The scheduler's events of one build at a time; ``done`` when all of it finished."""

    build_id: str = ""
    expect: int = 0
    started: list[tuple[float, str]] = field(default_factory=list)
    last_end: float = 0.0
    finished: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def expect_build(self, build_id: str, packages: int) -> None:
        self.build_id, self.expect = build_id, packages
        self.started, self.finished, self.last_end = [], 0, 0.0
        self.done = asyncio.Event()

    def __call__(self, event: SchedulerEvent) -> None:
        if event.build_id != self.build_id:
            return
        if event.kind == "started":
            self.started.append((event.at, event.name))
        elif event.kind == "finished":
            self.finished += 1
            self.last_end = max(self.last_end, event.at)
            if self.finished >= self.expect:
                self.done.set()


def make_build(
    build_id: str, graph: Graph, prio: Mapping[str, float], schedule: Schedule, created: datetime
) -> Build:
    seq = {name: i for i, name in enumerate(graph.names)}
    jobs = [
        PackageJob(
            build_id=BuildId(build_id),
            name=name,
            seq=seq[name],
            status=PackageStatus.BLOCKED if graph.deps.get(name) else PackageStatus.PENDING,
            config_yaml="",
            arch=ARCH,
            dependencies=tuple(graph.deps.get(name, ())),
            priority=prio.get(name, 1.0),
        )
        for name in graph.names
    ]
    return Build(
        id=BuildId(build_id),
        status=BuildStatus.PENDING,
        spec=BuildSpec(schedule=schedule),  # as the server stores it: the build's own schedule
        created_at=created,
        packages=tuple(jobs),
    )


def first_wave_check(
    graph: Graph, prio: Mapping[str, float], schedule: Schedule, slots: int, started: set[str]
) -> bool:
    """Whether the packages started at time 0 are the ones ``schedule`` ranks first."""
    seq = {name: i for i, name in enumerate(graph.names)}
    roots = [n for n in graph.names if not graph.deps.get(n)]
    if schedule == "fifo":
        roots.sort(key=lambda n: seq[n])
    else:
        roots.sort(key=lambda n: (-prio.get(n, 1.0), seq[n]))
    return set(roots[:slots]) == started


async def run_scheduler(
    graph: Graph,
    slots: int,
    schedule: Schedule,
    runs: Sequence[Mapping[str, float]],
    *,
    new_fraction: float = 0.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One scheduler and one store, as one server: the graph built once per entry of
    ``runs`` (each the packages' true durations in that build), one after the other. The
    first build's priorities are unit weights (a fresh store knows no durations); each
    later one's come from ``store.durations()``, as the server computes them at
    submission. With ``new_fraction``, that share of the packages (drawn with ``seed``)
    counts as never built before in the later builds: their learned durations are
    dropped before the priorities are computed."""
    clock = VirtualClock()
    store = MemoryStore()
    pool = BackendPool.from_config(
        PoolConfig(backends=(BackendSpec(addr="tcp://sim:1", arch=ARCH, max_jobs=slots),))
    )
    recorder = Recorder()
    runner = SleepRunner()
    sched = Scheduler(
        store,
        pool,
        runner,
        owner="virtual-bench",
        schedule=schedule,
        observer=recorder,
        clock=clock,
        lease_ttl=LEASE_TTL_S,
    )
    assert sched.schedule == schedule
    task = asyncio.create_task(sched.run())
    results = []
    try:
        for n, durations in enumerate(runs):
            learned = await store.durations(graph.names)
            assert len(learned) == (len(graph.names) if n else 0), "durations learned"
            if new_fraction > 0:
                rng = random.Random(seed + 2_000_003)
                learned = {k: v for k, v in learned.items() if rng.random() >= new_fraction}
            prio = priorities(graph, learned, typical_duration(learned))  # as submit.py
            build_id = f"bld-{n + 1:016x}"
            runner.durations[build_id] = durations
            build = make_build(build_id, graph, prio, schedule, clock.now())
            recorder.expect_build(build_id, len(graph.names))
            cpu = time.process_time()
            submitted = clock.monotonic()
            await store.create_build(build)
            await sched.submit(build)
            await recorder.done.wait()
            # the memory store never yields: the build's status was written in the same
            # step as its last package's
            assert (await store.get_build(build.id)).status is BuildStatus.SUCCESS
            cpu = time.process_time() - cpu
            at_zero = {name for at, name in recorder.started if at == submitted}
            order = [name for _, name in recorder.started]
            results.append(
                {
                    "schedule": "critical-path-learned" if n else schedule,
                    "makespan_s": recorder.last_end - submitted,
                    "first_wave_ok": first_wave_check(graph, prio, schedule, slots, at_zero),
                    "start_order_sha": hashlib.sha256("\n".join(order).encode()).hexdigest()[:16],
                    "first_started": order[:3],
                    "cpu_s": cpu,
                    "started": len(order),
                }
            )
    finally:
        sched.stop()
        await task
    return results


# -- the reference's wave-and-poll loop, simulated -------------------------------------------


def reference_order(graph: Graph) -> list[str]:
    """The reference's topological order: Kahn's algorithm taking the alphabetically
    first of the packages whose dependencies are all placed."""
    waiting = {name: len(graph.deps.get(name, ())) for name in graph.names}
    queue = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(queue)
    order: list[str] = []
    while queue:
        name = heapq.heappop(queue)
        order.append(name)
        for dependent in graph.dependents.get(name, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(queue, dependent)
    return order


async def run_reference(graph: Graph, durations: Mapping[str, float], slots: int) -> float:
    """The reference's loop (one build), as a plain simulation on the same clock: on each
    ``POLL_S`` tick, claim the first ready package in :func:`reference_order` while a slot
    is free (waiting for a slot when all are busy; a package's dependents are ready before
    its slot is given back); once none is ready, wait for every package in flight, then
    for the next tick. Returns the makespan."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    order = reference_order(graph)
    rank = {name: i for i, name in enumerate(order)}
    waiting = {name: len(graph.deps.get(name, ())) for name in graph.names}
    ready = sorted(rank[n] for n, count in waiting.items() if count == 0)
    slots_free = asyncio.Semaphore(slots)
    remaining = len(graph.names)
    last_end = t0

    async def build(name: str) -> None:
        nonlocal remaining, last_end
        try:
            await asyncio.sleep(durations[name])
            last_end = loop.time()
            remaining -= 1
            for dependent in graph.dependents.get(name, ()):
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    heapq.heappush(ready, rank[dependent])
        finally:
            slots_free.release()

    while remaining:
        # the next tick (the ticker fires every POLL_S from the start; ticks that come
        # while a build is being processed are dropped)
        tick = math.floor((loop.time() - t0) / POLL_S + 1e-9) + 1
        await asyncio.sleep(t0 + tick * POLL_S - loop.time())
        in_flight = []
        while True:
            await slots_free.acquire()
            if not ready:
                slots_free.release()
                break
            name = order[heapq.heappop(ready)]
            in_flight.append(asyncio.create_task(build(name)))
        await asyncio.gather(*in_flight)
    return last_end - t0


# -- one (seed, slots) cell ------------------------------------------------------------------


def run_cell(
    data: Path,
    seed: int,
    slots: int,
    median: float,
    sigma: float,
    schedules: Sequence[str],
    rerun_noise: float = 0.0,
    new_fraction: float = 0.0,
) -> list[dict[str, Any]]:
    """Every arm of one seed and slot count; one row per arm."""
    graph = load_graph(data)
    durations = lognormal_durations(graph.names, seed, median, sigma)
    rerun = durations
    if rerun_noise > 0:  # the second build's packages take a little more or less
        rng = random.Random(seed + 1_000_003)
        rerun = {n: d * rng.lognormvariate(0.0, rerun_noise) for n, d in durations.items()}
    rows: list[dict[str, Any]] = []

    def add(result: Mapping[str, Any], truth: Mapping[str, float]) -> None:
        bound = lower_bound(graph, truth, slots)
        rows.append(
            {
                "seed": seed,
                "slots": slots,
                **result,
                **{k: round(v, 1) for k, v in bound.items()},
                "makespan_s": round(result["makespan_s"], 1),
                "ratio": round(result["makespan_s"] / bound["bound_s"], 4),
                "cpu_s": round(result["cpu_s"], 3),
                "cpu_ms_per_package": round(result["cpu_s"] * 1000 / len(graph.names), 3),
            }
        )

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        if "fifo" in schedules:
            (result,) = runner.run(run_scheduler(graph, slots, "fifo", [durations]))
            add(result, durations)
        if "critical-path" in schedules or "critical-path-learned" in schedules:
            learn = "critical-path-learned" in schedules
            first, *second = runner.run(
                run_scheduler(
                    graph,
                    slots,
                    "critical-path",
                    [durations, rerun] if learn else [durations],
                    new_fraction=new_fraction,
                    seed=seed,
                )
            )
            if "critical-path" in schedules:
                add(first, durations)
            if second:
                # the same list scheduling simulated by the dry-run planner, for the record:
                # with exact durations and nothing new the real scheduler matches it
                planned = plan(graph, rerun, slots=slots).estimated_makespan_s
                extra = {"rerun_noise": rerun_noise, "new_fraction": new_fraction}
                add({**second[0], **extra, "plan_makespan_s": round(planned, 1)}, rerun)
        if "reference" in schedules:
            cpu = time.process_time()
            makespan = runner.run(run_reference(graph, durations, slots))
            result = {"schedule": "reference", "makespan_s": makespan}
            add({**result, "cpu_s": time.process_time() - cpu}, durations)
    return rows


# -- report ----------------------------------------------------------------------------------


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per schedule and slot count: median, min and max ratio over the seeds."""
    cells: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        cells.setdefault((row["schedule"], row["slots"]), []).append(row["ratio"])
        cpu.setdefault((row["schedule"], row["slots"]), []).append(row["cpu_ms_per_package"])
    order = {s: i for i, s in enumerate(SCHEDULES)}
    return [
        {
            "schedule": schedule,
            "slots": slots,
            "median_ratio": round(statistics.median(ratios), 4),
            "min_ratio": min(ratios),
            "max_ratio": max(ratios),
            "seeds": len(ratios),
            "cpu_ms_per_package": round(statistics.median(cpu[schedule, slots]), 3),
        }
        for (schedule, slots), ratios in sorted(
            cells.items(), key=lambda c: (order[c[0][0]], c[0][1])
        )
    ]


def checks(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """That each arm ran with its own schedule, and whether the goal is met."""
    by_cell: dict[tuple[int, int], dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        by_cell.setdefault((row["seed"], row["slots"]), {})[row["schedule"]] = row
    orders_differ = [
        cell["fifo"]["start_order_sha"] != cell["critical-path"]["start_order_sha"]
        for cell in by_cell.values()
        if "fifo" in cell and "critical-path" in cell
    ]
    learned = [r["ratio"] for r in rows if r["schedule"] == "critical-path-learned"]
    exact = [
        r["makespan_s"] == r["plan_makespan_s"]
        for r in rows
        if r["schedule"] == "critical-path-learned"
        and r["rerun_noise"] == 0
        and r["new_fraction"] == 0
    ]
    return {
        "first_wave_as_scheduled": all(r.get("first_wave_ok", True) for r in rows),
        "fifo_and_critical_path_orders_differ": all(orders_differ) if orders_differ else None,
        "learned_matches_plan": all(exact) if exact else None,
        "goal": GOAL,
        "goal_met": (max(learned) <= GOAL) if learned else None,
        "worst_learned_ratio": max(learned) if learned else None,
    }


def table(summary: Sequence[Mapping[str, Any]], slots: Sequence[int]) -> str:
    schedules = [s for s in SCHEDULES if any(r["schedule"] == s for r in summary)]
    cell = {(r["schedule"], r["slots"]): r for r in summary}
    width = max(len(s) for s in schedules) + 2
    lines = [
        "makespan ÷ max(critical path, work ÷ slots): median over seeds (min..max)",
        "schedule".ljust(width) + "".join(f"{s:>22}" for s in slots),
    ]
    for schedule in schedules:
        parts = []
        for s in slots:
            r = cell.get((schedule, s))
            text = (
                "-"
                if r is None
                else (f"{r['median_ratio']:.3f} ({r['min_ratio']:.3f}..{r['max_ratio']:.3f})")
            )
            parts.append(f"{text:>22}")
        lines.append(schedule.ljust(width) + "".join(parts))
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    cells = [(seed, slots) for seed in range(1, args.seeds + 1) for slots in args.slots]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    cell_args = (args.median, args.sigma, args.schedules, args.rerun_noise, args.new_fraction)
    if args.jobs <= 1:
        for seed, slots in cells:
            rows += run_cell(args.data, seed, slots, *cell_args)
    else:
        with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(run_cell, args.data, seed, slots, *cell_args) for seed, slots in cells
            ]
            for future in futures:
                rows += future.result()
    graph = load_graph(args.data)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": shlex.join(["bench/virtual_bench.py", *args.argv]),
        "packages": len(graph.names),
        "cut_edges": len(graph.cut_edges),
        "durations": {
            "distribution": "log-normal",
            "median_s": args.median,
            "sigma": args.sigma,
            "rerun_noise": args.rerun_noise,
            "new_fraction": args.new_fraction,
        },
        "lease_ttl_s": LEASE_TTL_S,
        "seeds": list(range(1, args.seeds + 1)),
        "slots": list(args.slots),
        "wall_s": round(time.perf_counter() - started, 1),
        #: one row per run of our scheduler: ``schedule`` is fifo, critical-path or
        #: critical-path-learned
        "virtual": [r for r in rows if r["schedule"] != "reference"],
        #: the reference's loop, simulated (context, not our scheduler)
        "virtual_reference": [r for r in rows if r["schedule"] == "reference"],
        "summary": summarise(rows),
        "checks": checks(rows),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data(), help="wolfi-dag.json")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N of the durations")
    parser.add_argument(
        "--slots",
        default=",".join(map(str, DEFAULT_SLOTS)),
        help="comma-separated slot counts",
    )
    parser.add_argument(
        "--schedules", default=",".join(SCHEDULES), help=f"comma-separated: {SCHEDULES}"
    )
    parser.add_argument("--median", type=float, default=180.0, help="median duration, s")
    parser.add_argument("--sigma", type=float, default=1.2, help="log-normal sigma")
    parser.add_argument(
        "--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes in parallel"
    )
    parser.add_argument(
        "--rerun-noise",
        type=float,
        default=0.0,
        help="log-normal sigma of each package's change of duration in the learned run "
        "(default 0: it takes as long as in the first run)",
    )
    parser.add_argument(
        "--new-fraction",
        type=float,
        default=0.0,
        help="share of packages the learned run treats as never built (no learned duration)",
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.slots = tuple(int(s) for s in str(args.slots).split(",") if s.strip())
    args.schedules = tuple(s.strip() for s in str(args.schedules).split(",") if s.strip())
    bad = [s for s in args.schedules if s not in SCHEDULES]
    if bad or not args.schedules or not args.slots or min(args.slots) < 1 or args.seeds < 1:
        parser.error(f"--schedules from {SCHEDULES}, --slots ≥ 1, --seeds ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print(table(report["summary"], report["slots"]))
    print(json.dumps(report["checks"]))
    runs = len(report["virtual"]) + len(report["virtual_reference"])
    print(f"{runs} runs in {report['wall_s']} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    found = report["checks"]
    failed = [
        k
        for k in ("fifo_and_critical_path_orders_differ", "learned_matches_plan")
        if found[k] is False
    ]
    return 0 if found["first_wave_as_scheduled"] and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
