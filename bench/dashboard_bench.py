"""Benchmark the dashboard against the goals of its issue.

* ``page``: the build page of a 3,401-package build (wolfi's graph from
  ``wolfi-dag.json``, stored directly in a SQLite store as a build caught half-way:
  successes, some of them cached, failures and the dependents they skipped, 8 running,
  pending and blocked packages) served by a real ``melange-server`` process. Measured:
  the server's answer to ``GET /builds/{id}`` (wall time on loopback, and the server
  process's CPU time per request from ``/proc``), and in headless Chromium the first
  contentful paint of a fresh load. Goals: render under 300 ms, FCP under 1 s.
  The server's backend is a daemon that is not there (its circuit opens at the first
  probe), so nothing is dispatched and the build stays as stored.
* ``followers``: 50 concurrent followers of one running package's log
  (``logs?follow=true`` as Server-Sent Events, as the package page opens it) while its
  step prints a line every 100 ms, on the local farm (one buildkitd, the registry).
  Measured: the server process's CPU (``/proc/<pid>/stat``) over a window with no
  follower and over one with 50; goal: the 50 cost under 10 % of a core.

    .venv/bin/python bench/dashboard_bench.py page --runs 15
    .venv/bin/python bench/dashboard_bench.py followers --followers 50 --window 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from melange2.api.auth import TOKEN_COOKIE
from melange2.farm import processes
from melange2.farm.local import FarmEnv, LocalFarm, make_token, start_server
from melange2.ids import BuildId
from melange2.jobs import Attempt, Backend, Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.scheduler.graph import PackageNode, build_graph, priorities
from melange2.store import open_store
from melange2.testenv.browser import chromium, missing_chromium

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "bench" / "wolfi-dag.json"
TOOLS = ROOT / ".tools"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).date().isoformat(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load": os.getloadavg(),
    }


# -- the build page ---------------------------------------------------------------------


def config_text(name: str, deps: Sequence[str]) -> str:
    """A config of a typical size (about 1.5 KB: the store keeps each package's text,
    and the build page reads the build whole)."""
    packages = "".join(f"      - {d}\n" for d in ("busybox", "build-base", *deps))
    steps = "".join(
        f"  - name: step {n}\n    runs: |\n      ./configure --prefix=/usr --enable-{n}\n"
        f"      make -j$(nproc) V=1 check-{n}\n      make DESTDIR=${{{{targets.destdir}}}} "
        f"install-{n}\n"
        for n in range(6)
    )
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n  epoch: 0\n"
        f"  description: {name}, as wolfi builds it\n  copyright:\n    - license: MIT\n"
        f"environment:\n  contents:\n    packages:\n{packages}"
        f"pipeline:\n  - uses: fetch\n    with:\n      uri: https://example.org/{name}.tar.gz\n"
        f"      expected-sha256: {'0' * 64}\n{steps}"
        f"subpackages:\n  - name: {name}-doc\n    pipeline:\n      - uses: split/manpages\n"
    )


def wolfi_build(build_id: str) -> Build:
    """Wolfi's graph as one build caught half-way (deterministic)."""
    raw = json.loads(DATA.read_text())["packages"]
    nodes = [PackageNode(name=p["name"], needs=(*p["deps"], *p.get("cycle_deps", ()))) for p in raw]
    graph = build_graph(nodes, cycle_policy="break")
    durations = {
        p["name"]: 60.0 * max(int(p.get("steps", 1)), 1) * float(p.get("cpu", 1) or 1) for p in raw
    }
    prio = priorities(graph, durations)
    now = datetime.now(UTC)
    start = now - timedelta(hours=2)
    status: dict[str, PackageStatus] = {}
    running = 0
    jobs = []
    backends = [f"tcp://10.0.0.{n}:1234" for n in range(1, 5)]
    has_dependents = {d for deps in graph.deps.values() for d in deps}
    for i, name in enumerate(graph.order):
        deps = tuple(graph.deps.get(name, ()))
        states = [status[d] for d in deps]
        bad = {PackageStatus.FAILED, PackageStatus.SKIPPED}
        if any(s in bad for s in states):
            st = PackageStatus.SKIPPED
        elif all(s is PackageStatus.SUCCESS for s in states):
            if i < 1700:  # a few leaves failed, the rest built
                leaf = name not in has_dependents
                st = PackageStatus.FAILED if leaf and i % 37 == 5 else PackageStatus.SUCCESS
            elif running < 8:
                st, running = PackageStatus.RUNNING, running + 1
            else:  # ready, waiting for one of the 8 slots
                st = PackageStatus.PENDING
        else:
            st = PackageStatus.BLOCKED
        status[name] = st
        job = PackageJob(
            build_id=BuildId(build_id),
            name=name,
            seq=i,
            status=st,
            config_yaml=config_text(name, deps),
            arch="x86_64",
            dependencies=deps,
            priority=prio[name],
        )
        backend = backends[i % len(backends)]
        began = start + timedelta(seconds=i)
        if st in (PackageStatus.SUCCESS, PackageStatus.FAILED, PackageStatus.RUNNING):
            ended = None if st is PackageStatus.RUNNING else began + timedelta(seconds=30 + i % 90)
            error = "step 3 (make) exited 2" if st is PackageStatus.FAILED else ""
            job = job.evolve(
                started_at=began,
                finished_at=ended,
                backend=Backend(addr=backend, arch="x86_64"),
                attempts=(
                    Attempt(
                        number=1,
                        backend=backend,
                        started_at=began,
                        finished_at=ended,
                        error=error,
                    ),
                ),
                error=error,
                cached=st is PackageStatus.SUCCESS and i % 4 == 0,
                input_digest="sha256:" + f"{i:064x}",
            )
            if st is PackageStatus.RUNNING:  # another replica's lease: left alone
                job = job.evolve(
                    lease_owner="bench-elsewhere", lease_expires=now + timedelta(days=1)
                )
        elif st is PackageStatus.SKIPPED:
            failed = next(d for d in deps if status[d] in bad)
            job = job.evolve(error=f"dependency {failed} failed", finished_at=now)
        jobs.append(job)
    return Build(
        id=BuildId(build_id),
        status=BuildStatus.RUNNING,
        spec=BuildSpec(arch="x86_64", mode="dag", configs=()),
        created_at=start,
        started_at=start,
        packages=tuple(jobs),
    )


async def store_build(data_dir: Path, build: Build) -> None:
    async with open_store("sqlite", data_dir=data_dir) as store:
        await store.create_build(build)


async def serve_unreachable(root: Path) -> str:
    backends = root / "backends.yaml"
    backends.write_text(
        "backends:\n  - addr: tcp://127.0.0.1:9\n    arch: x86_64\n    maxJobs: 8\n"
        "failureThreshold: 1\nrecoveryTimeout: 1h\n"
    )
    env = FarmEnv(
        registry="127.0.0.1:9",
        buildkit_addrs=("tcp://127.0.0.1:9",),
        base_image="",
        extra={"BOOTSTRAP_REPO": str(root / "none"), "BOOTSTRAP_KEY": str(root / "none.pub")},
    )
    return await start_server(
        env,
        data_dir=root / "data",
        output_dir=root / "output",
        pid_file=root / "server.pid",
        log_file=root / "server.log",
        backends_config=backends,
        port=processes.free_port(),
    )


def bench_page(runs: int, loads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="melange2-dash-bench-") as tmp:
        root = Path(tmp)
        build = wolfi_build("bld-00000000000bench")
        asyncio.run(store_build(root / "data", build))
        token = asyncio.run(make_token(root / "data", name="bench"))  # an admin's view
        auth = {"Authorization": f"Bearer {token}"}
        url = asyncio.run(serve_unreachable(root))
        pid = processes.read_pid(root / "server.pid")
        assert pid is not None
        try:
            page_url = f"{url}/builds/{build.id}"
            wall, cpu, size = [], [], 0
            with httpx.Client(timeout=60, headers=auth) as http:
                http.get(page_url).raise_for_status()  # warm: imports, template compile
                for _ in range(runs):
                    c0, t0 = cpu_seconds(pid), time.perf_counter()
                    resp = http.get(page_url)
                    wall.append(time.perf_counter() - t0)
                    cpu.append(cpu_seconds(pid) - c0)
                    resp.raise_for_status()
                    size = len(resp.content)
                api = []
                for _ in range(max(3, runs // 3)):
                    t0 = time.perf_counter()
                    http.get(f"{url}/api/v1/builds/{build.id}").raise_for_status()
                    api.append(time.perf_counter() - t0)
                still = http.get(f"{url}/api/v1/builds/{build.id}").json()
            counts: dict[str, int] = {}
            for p in still["packages"]:
                counts[p["status"]] = counts.get(p["status"], 0) + 1
            fcp, dcl = [], []
            if not missing_chromium():
                with chromium() as browser:
                    browser.add_cookies([{"name": TOKEN_COOKIE, "value": token, "url": url}])
                    for _ in range(loads):
                        page = browser.new_page()
                        page.goto(page_url, wait_until="load")
                        assert page.url == page_url, f"redirected to {page.url}"
                        # the paint entry may be recorded a moment after `load`
                        page.wait_for_function(
                            "() => performance.getEntriesByName('first-contentful-paint')"
                            ".length > 0",
                            timeout=10_000,
                        )
                        timing = page.evaluate(
                            """() => {
                              const p = performance.getEntriesByName('first-contentful-paint')[0];
                              const n = performance.getEntriesByType('navigation')[0];
                              return [p ? p.startTime : null, n.domContentLoadedEventEnd];
                            }"""
                        )
                        fcp.append(timing[0] / 1000)
                        dcl.append(timing[1] / 1000)
                        page.close()
        finally:
            processes.stop(root / "server.pid")
    return {
        "packages": len(build.packages),
        "statuses": counts,
        "html_bytes": size,
        "render_wall_s": statistics.median(wall),
        "render_wall_p90_s": sorted(wall)[int(0.9 * (len(wall) - 1))],
        "render_cpu_s": statistics.median(cpu),
        "api_build_json_s": statistics.median(api),
        "fcp_s": statistics.median(fcp) if fcp else None,
        "dom_content_loaded_s": statistics.median(dcl) if dcl else None,
        "runs": runs,
        "loads": len(fcp),
    }


# -- log followers ----------------------------------------------------------------------


def ticker_config(lines: int, pause: float) -> str:
    return (
        "package:\n  name: bench-ticker\n  version: 1.0.0\n  description: prints\n"
        "environment:\n  contents:\n    packages:\n      - busybox\n"
        "pipeline:\n  - name: tick\n    runs: |\n"
        f'      i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo "line $i of the step"; '
        f"sleep {pause}; done\n"
        "      mkdir -p ${{targets.destdir}}/usr/share/bench\n"
    )


async def _follow(url: str, token: str, received: list[int], stop: asyncio.Event) -> None:
    headers = {"accept": "text/event-stream", "authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as http,
        http.stream("GET", url, headers=headers) as resp,
    ):
        async for chunk in resp.aiter_bytes():
            received.append(len(chunk))
            if stop.is_set():
                return


async def _measure_followers(
    url: str, token: str, pid: int, followers: int, window: float
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=auth) as http:
        resp = await http.post(
            "/api/v1/builds", json={"configs": [ticker_config(10_000, 0.1)], "force": True}
        )
        resp.raise_for_status()
        build_id = resp.json()["id"]
        log = f"/api/v1/builds/{build_id}/packages/bench-ticker/logs"
        deadline = time.monotonic() + 300
        while b"line 20 of the step" not in (await http.get(log)).content:
            assert time.monotonic() < deadline, "the ticker did not start"
            await asyncio.sleep(0.5)
        c0 = cpu_seconds(pid)
        await asyncio.sleep(window)
        idle = (cpu_seconds(pid) - c0) / window
        stop = asyncio.Event()
        received: list[int] = []
        tasks = [
            asyncio.create_task(_follow(f"{url}{log}?follow=true", token, received, stop))
            for _ in range(followers)
        ]
        await asyncio.sleep(3)  # every follower connected and caught up
        before = sum(received)
        c0 = cpu_seconds(pid)
        await asyncio.sleep(window)
        busy = (cpu_seconds(pid) - c0) / window
        streamed = sum(received) - before
        stop.set()
        await http.post(f"/api/v1/builds/{build_id}/cancel")
        await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            t.cancel()
    return {
        "followers": followers,
        "window_s": window,
        "server_cpu_no_followers": idle,
        "server_cpu_with_followers": busy,
        "followers_cost_of_a_core": busy - idle,
        "bytes_streamed_per_s": streamed / window,
        "lines_per_s_printed": 10,
    }


def bench_followers(followers: int, window: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="melange2-follow-bench-") as tmp:
        root = Path(tmp)
        farm = LocalFarm(root / "farm", tools_dir=TOOLS, daemons=1)
        env = asyncio.run(farm.up())
        try:
            (root / "data").mkdir()
            token = asyncio.run(make_token(root / "data", name="bench"))
            url = asyncio.run(
                start_server(
                    env,
                    data_dir=root / "data",
                    output_dir=root / "output",
                    pid_file=root / "server.pid",
                    log_file=root / "server.log",
                    port=processes.free_port(),
                )
            )
            pid = processes.read_pid(root / "server.pid")
            assert pid is not None
            try:
                return asyncio.run(_measure_followers(url, token, pid, followers, window))
            finally:
                processes.stop(root / "server.pid")
        finally:
            farm.down()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    page = sub.add_parser("page", help="the build page of a 3,401-package build")
    page.add_argument("--runs", type=int, default=15, help="server renders timed")
    page.add_argument("--loads", type=int, default=5, help="browser loads timed")
    follow = sub.add_parser("followers", help="log followers of one running package")
    follow.add_argument("--followers", type=int, default=50)
    follow.add_argument("--window", type=float, default=20.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    if args.what == "page":
        result = bench_page(args.runs, args.loads)
    else:
        result = bench_followers(args.followers, args.window)
    json.dump({"machine": machine(), args.what: result}, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
