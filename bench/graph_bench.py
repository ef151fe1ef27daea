"""Benchmark the scheduler's dependency graph and planning on the whole Wolfi distribution.

Loads ``wolfi-dag.json`` (3,401 packages; acyclic edges in ``deps``, bootstrap-cycle
edges in ``cycle_deps``), builds one :class:`~melange2.scheduler.PackageNode` per package
from both edge sets, and times :func:`~melange2.scheduler.build_graph` (with
``cycle_policy="break"``), :func:`~melange2.scheduler.priorities` and
:func:`~melange2.scheduler.plan`. Prints the median of ``--runs`` runs and the peak
resident set size; ``--json`` prints one JSON object instead.

Durations are synthetic but deterministic: ``--unit`` seconds per top-level pipeline step,
times the package's ``cpu`` hint (so larger builds take longer).

With ``--cores C`` the plan is simulated on ``--backends`` backends of ``C`` cores and
``--slots`` jobs each, every package asking its ``cpu`` hint (``package.resources.cpu``):
placement by resources, as a dry run does; packages asking more than ``C`` cores (and
their dependents) are reported unplaceable.

    .venv/bin/python bench/graph_bench.py --runs 15
    .venv/bin/python bench/graph_bench.py --runs 5 --cores 16 --backends 4
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melange2.scheduler import PackageNode, build_graph, plan, priorities
from melange2.scheduler.placement import Capacity, Request

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "wolfi-dag.json"


def requests(path: Path) -> dict[str, Request]:
    """What each package asks: its ``cpu`` hint."""
    data = json.loads(path.read_text())
    return {
        p["name"]: Request(cpu=int(float(p.get("cpu", 1) or 1) * 1000)) for p in data["packages"]
    }


def load(path: Path, unit: float) -> tuple[list[PackageNode], dict[str, float], int]:
    """The nodes, synthetic durations and number of input edges in ``path``."""
    data = json.loads(path.read_text())
    nodes: list[PackageNode] = []
    durations: dict[str, float] = {}
    edges = 0
    for entry in data["packages"]:
        needs = (*entry["deps"], *entry.get("cycle_deps", ()))
        edges += len(needs)
        nodes.append(PackageNode(name=entry["name"], needs=tuple(needs)))
        steps = max(int(entry.get("steps", 1)), 1)
        durations[entry["name"]] = unit * steps * float(entry.get("cpu", 1) or 1)
    return nodes, durations, edges


def run(
    path: Path, *, runs: int, slots: int, unit: float, backends: int = 1, cores: int = 0
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"load": [], "build_graph": [], "priorities": [], "plan": []}
    totals: list[float] = []
    summary: dict[str, Any] = {}
    farm = [Capacity(max_jobs=slots, cpu=cores * 1000) for _ in range(backends)] if cores else []
    asks = requests(path) if cores else None
    for _ in range(runs):
        t0 = time.perf_counter()
        nodes, durations, edges = load(path, unit)
        t1 = time.perf_counter()
        graph = build_graph(nodes, cycle_policy="break")
        t2 = time.perf_counter()
        priorities(graph, durations)
        t3 = time.perf_counter()
        result = plan(graph, durations, slots=slots, backends=farm, requests=asks)
        t4 = time.perf_counter()
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(value)
        totals.append(t4 - t1)
        summary = {
            "packages": len(nodes),
            "input_edges": edges,
            "kept_edges": sum(len(d) for d in graph.deps.values()),
            "cut_edges": len(graph.cut_edges),
            "cyclic_components": [len(c) for c in graph.cyclic_components],
            "critical_path_packages": len(result.critical_path),
            "critical_path_s": result.critical_path_s,
            "total_work_s": result.total_work_s,
            "lower_bound_s": result.lower_bound_s,
            "estimated_makespan_s": result.estimated_makespan_s,
            "unplaceable": len(result.unplaceable),
        }

    # One extra, traced run: the Python heap the graph work itself allocates at its peak.
    nodes, durations, _ = load(path, unit)
    tracemalloc.start()
    graph = build_graph(nodes, cycle_policy="break")
    priorities(graph, durations)
    plan(graph, durations, slots=slots, backends=farm, requests=asks)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    return {
        "data": str(path),
        "runs": runs,
        "slots": slots,
        "backends": backends if cores else 0,
        "cores": cores,
        "unit_s": unit,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **summary,
        "median_s": {key: statistics.median(values) for key, values in times.items()},
        "median_graph_total_s": statistics.median(totals),
        "max_graph_total_s": max(totals),
        "graph_heap_peak_mb": traced_peak / 2**20,
        # Linux reports ru_maxrss in KiB.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="wolfi-dag.json")
    parser.add_argument("--runs", type=int, default=15, help="runs to take the median of")
    parser.add_argument("--slots", type=int, default=8, help="parallel slots for plan()")
    parser.add_argument("--unit", type=float, default=60.0, help="seconds per pipeline step")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--cores", type=int, default=0, help="plan on backends of this many cores (0: slots)"
    )
    parser.add_argument("--backends", type=int, default=4, help="with --cores: how many")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    report = run(
        args.data,
        runs=args.runs,
        slots=args.slots,
        unit=args.unit,
        backends=args.backends,
        cores=args.cores,
    )
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    medians: dict[str, float] = report["median_s"]
    print(f"data        {report['data']} ({report['packages']} packages)")
    print(
        f"edges       {report['input_edges']} in, {report['kept_edges']} kept, "
        f"{report['cut_edges']} cut; cyclic components {report['cyclic_components']}"
    )
    print(f"runs        {report['runs']} (median), slots {report['slots']}")
    for key, value in medians.items():
        print(f"  {key:<12} {value * 1000:8.1f} ms")
    print(f"  {'graph total':<12} {report['median_graph_total_s'] * 1000:8.1f} ms")
    print(
        f"plan        critical path {report['critical_path_packages']} packages, "
        f"{report['critical_path_s']:.0f} s; total work {report['total_work_s']:.0f} s; "
        f"lower bound {report['lower_bound_s']:.0f} s; "
        f"estimated makespan {report['estimated_makespan_s']:.0f} s"
        + (
            f"; on {report['backends']} backends of {report['cores']} cores, "
            f"{report['unplaceable']} unplaceable"
            if report["cores"]
            else ""
        )
    )
    print(f"memory      graph heap peak {report['graph_heap_peak_mb']:.1f} MB, ", end="")
    print(f"process peak RSS {report['peak_rss_mb']:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
