"""A whole distribution in one dry run: Wolfi's 3,401 packages as real-sized configs.

The configs come from ``wolfi-dag.json`` through ``melange2.testenv.distro`` (real
names and build-time edges; a source step, the pipelines of each package's ecosystem,
shell steps up to the package's step count, split/* subpackages, tests using the
distribution's own ``pipelines/``). Each run submits all of them with their pipelines as
one ``dry_run`` request through the server's submission code:

* in-process (default): the ``Submitter`` a server runs, with a memory store and a
  one-backend pool, its request built from the JSON a client would send;
* ``--server URL``: POSTed to a running ``melange-server`` (``make farm-up``), with
  ``--token`` (default ``$MELANGE_TOKEN``, which ``.farm/env`` sets) when it requires one.

The worker processes are started first and timed apart (a server starts them on its first
large dry run). The first dry run is cold (nothing parsed yet); later runs of the same
configs find what it planned. Both are reported (medians), with the load average (on a
shared machine the wall times move with it) and the CPU seconds the submission process
and its workers spent (what does not).

    .venv/bin/python bench/dryrun_bench.py [--runs 5] [--limit N] [--workers N] [--out r.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from melange2.api.routes.builds import plan_out, submission_of
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.service.configs import PlanWorkers
from melange2.service.settings import ServerSettings
from melange2.service.submit import Planned, Submitter
from melange2.store.memory import MemoryStore
from melange2.testenv.distro import load_graph, make_distribution
from melange2.wire import CreateBuildRequest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "wolfi-dag.json"


def _cpu(pids: tuple[int, ...] = ()) -> float:
    """CPU seconds of this process and of the running worker processes ``pids``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


async def _in_process(body: bytes, runs: int, workers: int) -> list[dict[str, float]]:
    """``runs`` dry runs; the first entry is the workers' start."""
    out = []
    with tempfile.TemporaryDirectory(prefix="dryrun-bench-") as tmp:
        root = Path(tmp)
        settings = ServerSettings(data_dir=root / "data", output_dir=root / "out")
        pool = BackendPool.from_config(
            PoolConfig(backends=(BackendSpec(addr="tcp://127.0.0.1:1", arch="x86_64"),))
        )
        async with MemoryStore() as store:
            submitter = Submitter(
                settings,
                store,
                scheduler=None,  # type: ignore[arg-type]  # a dry run schedules nothing
                pool=pool,
                workers=PlanWorkers(workers),
            )
            try:
                t0 = time.perf_counter()
                await submitter.workers.start()
                out.append({"workers_start_seconds": time.perf_counter() - t0})
                for _ in range(runs):
                    t0, c0, s0 = time.perf_counter(), _cpu(submitter.workers.pids), _cpu()
                    request = CreateBuildRequest.model_validate_json(body)
                    planned = await submitter.submit(submission_of(request, settings))
                    assert isinstance(planned, Planned)
                    result = plan_out(planned)  # the route's answer
                    out.append(
                        {
                            "seconds": time.perf_counter() - t0,
                            "cpu_seconds": _cpu(submitter.workers.pids) - c0,
                            "server_cpu_seconds": _cpu() - s0,
                            "planned": len(result.packages),
                            "cut_edges": len(result.cut_edges),
                        }
                    )
            finally:
                await submitter.aclose()
    return out


def _over_http(body: bytes, runs: int, server: str, token: str) -> list[dict[str, float]]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    out = []
    with httpx.Client(base_url=server, timeout=600) as client:
        for _ in range(runs):
            t0 = time.perf_counter()
            resp = client.post("/api/v1/builds", content=body, headers=headers)
            elapsed = time.perf_counter() - t0
            resp.raise_for_status()
            plan = resp.json()
            out.append(
                {
                    "seconds": elapsed,
                    "planned": len(plan["packages"]),
                    "cut_edges": len(plan["cut_edges"]),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="wolfi-dag.json")
    parser.add_argument("--server", help="POST to this melange-server instead")
    parser.add_argument(
        "--token",
        default=os.environ.get("MELANGE_TOKEN", ""),
        help="with --server: an API token with the submit role (default: MELANGE_TOKEN)",
    )
    parser.add_argument("--runs", type=int, default=5, help="dry runs (the first is cold)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N packages")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: cores)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    graph = load_graph(args.data)
    if args.limit:
        graph = graph[: args.limit]
    configs, pipelines = make_distribution(graph)
    body = json.dumps(
        {
            "configs": configs,
            "pipelines": pipelines,
            "mode": "dag",
            "cycle_policy": "break",
            "dry_run": True,
        }
    ).encode()
    if args.server:
        runs = _over_http(body, args.runs, args.server, args.token)
    else:
        runs = asyncio.run(_in_process(body, args.runs, args.workers))
    start = runs.pop(0)["workers_start_seconds"] if "workers_start_seconds" in runs[0] else None
    warm = [r["seconds"] for r in runs[1:]]
    lines = [c.count("\n") for c in configs]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "mode": f"http {args.server}" if args.server else "in-process Submitter",
        "workers": args.workers or os.cpu_count(),
        "configs": len(configs),
        "config_lines_median": statistics.median(lines),
        "request_bytes": len(body),
        "workers_start_seconds": round(start, 2) if start is not None else None,
        "cold_seconds": round(runs[0]["seconds"], 2),
        "warm_seconds_median": round(statistics.median(warm), 2) if warm else None,
        "planned": runs[0]["planned"],
        "cut_edges": runs[0]["cut_edges"],
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }
    if not args.server:
        # this process and its workers: what the wall time would be on idle cores
        result["cold_cpu_seconds"] = round(runs[0]["cpu_seconds"], 2)
        result["cold_server_cpu_seconds"] = round(runs[0]["server_cpu_seconds"], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
