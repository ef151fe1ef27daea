"""Replay of Wolfi's dependency graph on real BuildKit, through the server's public API
(issue 7).

Every package of ``wolfi-dag.json`` (3,401 packages and their acyclic build-time edges,
``deps``) becomes a real, trivial melange config, built by a ``melange-server`` this
program starts against the running farm's first daemon (x86_64), and driven only
over HTTP, as a user would: ``POST /api/v1/builds`` with every config in one ``dag``
build, then ``GET`` until it ends.

The generated package
    ``wb-<name>`` (lowercased; any character outside ``[a-z0-9._+-]`` becomes ``-``):
    the prefix keeps Wolfi's own ``busybox`` and friends from shadowing the farm's
    bootstrap ``busybox`` in the published repository. Its environment is ``busybox``
    plus ``wb-<dep>`` for each dependency, so the server derives the same edges. Its one
    step writes a file (unique to the package, holding the run's nonce) and sleeps.

The weight formula
    ``weight = cpu * (1 + steps + subpackages)`` (the ``cpu`` hint, top-level pipeline
    steps and subpackage count of the Wolfi package; ``1 +`` so a package without steps
    still weighs something), and the step sleeps
    ``sleep = clamp(scale * weight, 0.05 s, 30 s)``, rounded to the millisecond. With
    the default ``--scale 0.035`` the whole graph holds 2,238 s of sleep (median 0.245 s,
    mean 0.66 s; 9 packages reach the 30 s cap, none the 0.05 s floor): 559 s on the
    default 4 slots, against a critical path of 81 s. So the sleep alone of a full
    replay fills about ten minutes of the slots;
    everything beyond that is the farm's overhead.

What one run does
    For each ``--schedules`` entry (default ``fifo,critical-path``, in that order), the same
    graph with a fresh nonce (in each description and step: neither BuildKit's cache nor a
    skip-unchanged server may answer for it), ``schedule`` set in the request as users set
    it (and the build's recorded ``spec.schedule`` checked against it: a run the server
    ordered otherwise fails), on a fresh server (empty store and published repository), so
    both start equal: the critical-path order then knows no durations yet and ranks packages
    by their longest chain of dependents. ``--same-server`` runs them all on one server
    instead (a later run gets the earlier runs' durations, but also a published repository
    already full). Then, unless ``--no-resubmit``, the last run's request again on its
    server, byte for byte: the no-op resubmission, timed from the POST to the build's end as
    the client sees it.

What it reports (per run; the top-level fields are the critical-path run's)
    * ``makespan_s``: the first package's start to the last package's end (server
      timestamps; the submission's parsing is not in it, ``wall_s`` has it);
    * ``lower_bound_s = max(critical_path_s, work_s / slots)``: sleep only, over the
      replayed subset's DAG, ``slots`` read from ``GET /api/v1/backends/status``
      (``maxJobs``); ``ratio = makespan_s / lower_bound_s``;
    * ``measured_bound_s``: the same bound over the durations the packages really held
      their slot (sleep plus overhead), and ``schedule_ratio = makespan_s /
      measured_bound_s``: how far the order itself is from the best, overhead apart;
    * ``dispatch_*_ms``: for each package with dependencies, its start minus its last
      dependency's end (so it includes waiting for a free slot);
      ``reaction_*_ms``: its start minus the latest event that could have let it start
      (its last dependency's end or any package's end, which frees a slot): the
      scheduler's own reaction time, queueing excluded;
    * ``overhead_*_ms``: each package's ``finished_at - started_at`` minus its sleep;
    * ``packages_per_s``, ``utilisation`` (busy slot-seconds / (slots * makespan));
    * the server process's peak CPU (100 % = one core) and peak RSS, sampled with psutil;
    * ``cpu_s_per_package``: CPU-seconds (user + system, /proc) per package of the server,
      of buildkitd (with the runc processes it reaped) and of the registry over the build,
      and, as ``buildctl``, what ``buildctl`` (itself, buildkitd, the registry) takes to
      solve a replayed package's steps (``--buildctl-runs`` solves of the LLB our builder
      makes for a package without dependencies, local output as the server's);
      ``farm_cpu_s_per_package`` (the three summed) and ``cpu_ratio_vs_buildctl``.

``--virtual [VIRTUAL.json]`` adds schedule quality on a virtual clock
(``bench/virtual_bench.py``: a saved report, or a fresh run): the ``virtual`` field, one
``{schedule, slots, seed, ratio, ...}`` per run, beside ``virtual_reference``,
``virtual_summary`` and ``virtual_checks``; with ``--replot``, it is merged into the saved
report (``--out``).

Output: a table on stdout, ``--out FILE`` (JSON, with every package's timeline),
``--plot FILE.svg`` (slots busy and packages ready over time, one panel per schedule);
``--replot FILE.json`` prints and plots a saved report again without running anything.

    make farm-up && .venv/bin/python bench/replay.py --limit 200 --out r.json
    make bench BENCH_FLAGS='--limit 400 --out r.json --plot docs/img/replay.svg'
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import importlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from melange2.errors import FarmError
from melange2.farm import processes
from melange2.farm.local import FarmEnv, make_token, start_server

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "bench" / "wolfi-dag.json"
DEFAULT_SCALE = 0.035
MIN_SLEEP_S = 0.05
MAX_SLEEP_S = 30.0
DEFAULT_SLOTS = 4
PREFIX = "wb-"
SCHEDULES = ("fifo", "critical-path")
ARCH = "x86_64"
#: the issue's goals, checked in the table
GOALS = {
    "ratio": 1.10,
    "dispatch_p99_ms": 50.0,
    "overhead_p50_ms": 300.0,
    "noop_resubmit_s": 10.0,
}
_BAD_CHARS = re.compile(r"[^a-z0-9._+-]")


class ReplayError(Exception):
    """The replay could not run or a build did not succeed."""


# -- the graph and its subset -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Package:
    """One replayed package."""

    source: str  #: the Wolfi package's name
    name: str  #: the generated package's name (``wb-...``)
    deps: tuple[str, ...]  #: generated names of its dependencies
    weight: float
    sleep_s: float


def package_name(source: str) -> str:
    return PREFIX + _BAD_CHARS.sub("-", source.lower())


def weight_of(raw: Mapping[str, Any]) -> float:
    """``cpu * (1 + steps + subpackages)``."""
    return float(raw.get("cpu", 1.0)) * (
        1 + int(raw.get("steps", 0)) + int(raw.get("subpackages", 0))
    )


def sleep_for(weight: float, scale: float) -> float:
    return round(min(max(scale * weight, MIN_SLEEP_S), MAX_SLEEP_S), 3)


def topological(raw: Sequence[Mapping[str, Any]]) -> list[str]:
    """A depth-first post-order from the packages in the file's order: every package
    after its dependencies, and a dependency chain kept together, so any prefix is
    dependency-closed and has real chains (a breadth-first prefix would be all roots)."""
    deps = {str(p["name"]): [str(d) for d in p["deps"]] for p in raw}
    order: list[str] = []
    seen: set[str] = set()
    for root in deps:
        if root in seen:
            continue
        seen.add(root)
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i < len(deps[node]):
                stack.append((node, i + 1))
                dep = deps[node][i]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, 0))
            else:
                order.append(node)
    return order


def select(raw: Sequence[Mapping[str, Any]], limit: int, scale: float) -> list[Package]:
    """The first ``limit`` packages (all when 0) of :func:`topological`, in that order."""
    by_name = {str(p["name"]): p for p in raw}
    unknown = sorted({str(d) for p in raw for d in p["deps"]} - by_name.keys())
    if unknown:
        raise ReplayError(f"dependencies not in the graph: {', '.join(unknown[:5])}")
    order = topological(raw)
    chosen = order[:limit] if limit else order
    names = {source: package_name(source) for source in by_name}
    if len(set(names.values())) != len(names):
        raise ReplayError("two packages map to the same generated name")
    out = []
    for source in chosen:
        p = by_name[source]
        w = weight_of(p)
        out.append(
            Package(
                source=source,
                name=names[source],
                deps=tuple(names[str(d)] for d in p["deps"]),
                weight=w,
                sleep_s=sleep_for(w, scale),
            )
        )
    return out


def critical_path_s(packages: Sequence[Package]) -> float:
    """The longest chain of sleeps (``packages`` in a topological order)."""
    finish: dict[str, float] = {}
    for p in packages:
        finish[p.name] = p.sleep_s + max((finish[d] for d in p.deps), default=0.0)
    return max(finish.values(), default=0.0)


def render_config(p: Package, nonce: str) -> str:
    """The melange config of ``p`` for one run; ``nonce`` makes each run's text (and so
    its step, its package and every dependent's environment) new."""
    packages = "".join(f"      - {d}\n" for d in ("busybox", *p.deps))
    doc = "${{targets.destdir}}/usr/share/wolfi-replay"
    return (
        f"package:\n  name: {p.name}\n  version: 1.0.0\n  epoch: 0\n"
        f"  description: replay of {p.source} (run {nonce})\n"
        f"environment:\n  contents:\n    packages:\n{packages}"
        "pipeline:\n  - name: work\n    runs: |\n"
        f"      mkdir -p {doc}\n"
        f"      echo {nonce} > {doc}/{p.name}\n"
        f"      sleep {p.sleep_s:.3f}\n"
    )


# -- the server under test ---------------------------------------------------------------


@dataclass(kw_only=True)
class Server:
    """The ``melange-server`` this replay runs, on its own port and data."""

    url: str
    pid: int
    pid_file: Path
    log_file: Path
    #: an admin token for it
    token: str = ""


@contextlib.asynccontextmanager
async def replay_server(env: FarmEnv, work: Path, slots: int) -> AsyncIterator[Server]:
    """Start a server on a free port with fresh data, the farm's first daemon as its only
    (x86_64) backend with ``slots`` slots; stop it on exit."""
    config = work / "backends.yaml"
    config.write_text(
        "backends:\n"
        f"  - addr: {env.buildkit_addrs[0]}\n    arch: {ARCH}\n    maxJobs: {slots}\n"
        f"defaultMaxJobs: {slots}\nfailureThreshold: 3\nrecoveryTimeout: 30s\n"
    )
    pid_file = work / "melange-server.pid"
    log_file = work / "melange-server.log"
    try:
        token = await make_token(work / "data", name="replay")
        url = await start_server(
            env,
            data_dir=work / "data",
            output_dir=work / "output",
            pid_file=pid_file,
            log_file=log_file,
            backends_config=config,
            port=processes.free_port(),
        )
        pid = processes.read_pid(pid_file)
        assert pid is not None
        yield Server(url=url, pid=pid, pid_file=pid_file, log_file=log_file, token=token)
    finally:
        processes.stop(pid_file)


@dataclass(kw_only=True)
class Sampler:
    """The server's CPU and RSS (with its children), and the host's CPU, every
    ``interval`` seconds while running."""

    pid: int
    interval: float = 0.5
    peak_cpu_pct: float = 0.0
    peak_rss_mb: float = 0.0
    cpu: list[float] = field(default_factory=list)
    host_cpu: list[float] = field(default_factory=list)
    #: the host's 1-minute load average: above the core count, something competes
    peak_load: float = 0.0
    _task: asyncio.Task[None] | None = None

    def _processes(self, root: psutil.Process) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [root, *root.children(recursive=True)]
        return [root]

    async def _run(self) -> None:
        root = psutil.Process(self.pid)
        known: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)
        while True:
            cpu = 0.0
            rss = 0
            for proc in self._processes(root):
                proc = known.setdefault(proc.pid, proc)
                with contextlib.suppress(psutil.Error):
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            self.cpu.append(cpu)
            self.host_cpu.append(psutil.cpu_percent(None))
            self.peak_load = max(self.peak_load, os.getloadavg()[0])
            self.peak_cpu_pct = max(self.peak_cpu_pct, cpu)
            self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def summary(self) -> dict[str, float]:
        # the first sample of each process has no interval behind it: drop it
        cpu = self.cpu[1:] or [0.0]
        host = self.host_cpu[1:] or [0.0]
        return {
            "server_peak_cpu_pct": round(self.peak_cpu_pct, 1),
            "server_mean_cpu_pct": round(statistics.fmean(cpu), 1),
            "server_peak_rss_mb": round(self.peak_rss_mb, 1),
            "host_mean_cpu_pct": round(statistics.fmean(host), 1),
            "host_peak_load_1m": round(self.peak_load, 2),
        }


# -- driving the API ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PackageResult:
    """What the API says of one package at the build's end."""

    name: str
    status: str
    deps: tuple[str, ...]
    started: float | None  #: POSIX seconds
    finished: float | None
    error: str
    cached: bool | None  #: None when the server does not report it


@dataclass(frozen=True, kw_only=True)
class BuildResult:
    id: str
    status: str
    created: float
    finished: float | None
    packages: tuple[PackageResult, ...]
    wall_s: float  #: POST sent to the end seen by polling
    submit_s: float  #: the POST's round trip
    #: the schedule the server recorded for the build (its ``spec``)
    schedule: str = ""


def _ts(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _package(raw: Mapping[str, Any]) -> PackageResult:
    cached = raw.get("cached")
    return PackageResult(
        name=str(raw["name"]),
        status=str(raw["status"]),
        deps=tuple(str(d) for d in raw.get("dependencies", ())),
        started=_ts(raw.get("started_at")),
        finished=_ts(raw.get("finished_at")),
        error=str(raw.get("error") or ""),
        cached=cached if isinstance(cached, bool) else None,
    )


TERMINAL = {"success", "failed", "partial", "cancelled"}


async def slots_of(http: httpx.AsyncClient, arch: str) -> int:
    """Slots of ``arch``: the sum of ``maxJobs`` the server reports for its backends."""
    resp = await http.get("/api/v1/backends/status")
    resp.raise_for_status()
    return sum(
        int(b["maxJobs"])
        for b in resp.json()["backends"]
        if b["arch"] == arch and not b.get("draining")
    )


_FINISHED = re.compile(r"^melange_packages_finished_total\{[^}]*\}\s+([0-9.eE+]+)\s*$", re.M)
#: a full status read at least this often, whatever ``/metrics`` says
_STATUS_EVERY_S = 15.0


async def finished_count(http: httpx.AsyncClient) -> float | None:
    """Packages the server finished so far (any status), from ``/metrics``; None if it
    does not say. Cheap, unlike the build list, which reads every package of the build
    from the store: polling that every second took a third of the server's CPU on
    3,401 packages (and its store thread from the scheduler)."""
    resp = await http.get("/metrics")
    if resp.status_code != 200:
        return None
    found = _FINISHED.findall(resp.text)
    return sum(float(n) for n in found) if found else 0.0


async def build_status(http: httpx.AsyncClient, build_id: str) -> str:
    page = (await http.get("/api/v1/builds", params={"limit": 1})).json()["builds"]
    if page and page[0]["id"] == build_id:
        return str(page[0]["status"])
    return str((await http.get(f"/api/v1/builds/{build_id}")).json()["status"])


async def build_and_wait(
    http: httpx.AsyncClient,
    body: Mapping[str, Any],
    *,
    give_up_s: float,
    progress: Callable[[str], object] | None = None,
) -> BuildResult:
    """Submit ``body`` and wait for the build's end, then read it.

    Progress comes from the server's finished-packages counter (``/metrics``; this
    server runs nothing else); the build's status is read when the counter says every
    package finished, and every ``_STATUS_EVERY_S`` in case it never will (a failure
    skips dependents)."""
    expected = len(body["configs"])
    before = await finished_count(http)
    t0 = time.perf_counter()
    resp = await http.post("/api/v1/builds", json=body)
    submit_s = time.perf_counter() - t0
    if resp.status_code != 201:
        raise ReplayError(f"submission refused ({resp.status_code}): {resp.text[:2000]}")
    build_id = str(resp.json()["id"])
    deadline = t0 + give_up_s
    last_status = last_report = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        await asyncio.sleep(0.05 if elapsed < 5 else 0.1 if elapsed < 60 else 0.5)
        now = time.perf_counter()
        done = await finished_count(http)
        progressed = done is not None and before is not None and done - before >= expected
        if done is None or progressed or now - last_status >= _STATUS_EVERY_S:
            last_status = now
            if await build_status(http, build_id) in TERMINAL:
                wall_s = time.perf_counter() - t0
                break
        if progress is not None and now - last_report >= 60 and done is not None:
            last_report = now
            progress(f"  {now - t0:.0f} s: {done - (before or 0):.0f}/{expected} finished")
        if now > deadline:
            await http.post(f"/api/v1/builds/{build_id}/cancel")
            raise ReplayError(f"build {build_id} did not end within {give_up_s:.0f} s (cancelled)")
    resp = await http.get(f"/api/v1/builds/{build_id}")
    resp.raise_for_status()
    raw = resp.json()
    created = _ts(raw["created_at"])
    assert created is not None
    return BuildResult(
        id=build_id,
        status=str(raw["status"]),
        created=created,
        finished=_ts(raw.get("finished_at")),
        packages=tuple(_package(p) for p in raw["packages"]),
        wall_s=wall_s,
        submit_s=submit_s,
        schedule=str((raw.get("spec") or {}).get("schedule") or ""),
    )


def check_success(result: BuildResult, server: Server) -> None:
    bad = [p for p in result.packages if p.status != "success"]
    if result.status == "success" and not bad:
        return
    lines = [f"{p.name}: {p.status} {p.error[:300]}" for p in bad[:10]]
    raise ReplayError(
        f"build {result.id} ended {result.status}; {len(bad)} packages not successful:\n  "
        + "\n  ".join(lines)
        + f"\nserver log: {server.log_file}"
    )


# -- metrics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Timeline:
    """Per package: its dependencies, when it became ready, started and finished
    (seconds since the build's creation). Kept in the JSON, so plots and numbers can be
    made again from a report (``--replot``)."""

    deps: dict[str, tuple[str, ...]]
    ready: dict[str, float]
    started: dict[str, float]
    finished: dict[str, float]

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {
            name: {
                "deps": list(deps),
                "ready": round(self.ready[name], 4),
                "start": round(self.started[name], 4),
                "end": round(self.finished[name], 4),
            }
            for name, deps in self.deps.items()
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Mapping[str, Any]]) -> Timeline:
        return cls(
            deps={n: tuple(v["deps"]) for n, v in raw.items()},
            ready={n: float(v["ready"]) for n, v in raw.items()},
            started={n: float(v["start"]) for n, v in raw.items()},
            finished={n: float(v["end"]) for n, v in raw.items()},
        )


def timeline(result: BuildResult) -> Timeline:
    """The timeline of a build whose packages all started and finished."""
    t0 = result.created
    started, finished = {}, {}
    for p in result.packages:
        if p.started is None or p.finished is None:
            raise ReplayError(f"build {result.id}: {p.name} has no start or end time")
        started[p.name], finished[p.name] = p.started - t0, p.finished - t0
    deps = {p.name: p.deps for p in result.packages}
    ready = {n: max((finished[d] for d in ds), default=0.0) for n, ds in deps.items()}
    return Timeline(deps=deps, ready=ready, started=started, finished=finished)


def run_metrics(tl: Timeline, packages: Sequence[Package], slots: int) -> dict[str, Any]:
    """The numbers of one run (see the module docstring)."""
    sleep = {p.name: p.sleep_s for p in packages}
    first_start = min(tl.started.values())
    makespan = max(tl.finished.values()) - first_start
    work = sum(sleep.values())
    cp = critical_path_s(packages)
    bound = max(cp, work / slots)
    # the same bound over the durations measured (sleep + overhead): what a perfect
    # scheduler could have done with these packages as they ran
    held = {n: tl.finished[n] - tl.started[n] for n in tl.deps}
    chain: dict[str, float] = {}
    for p in packages:
        chain[p.name] = held[p.name] + max((chain[d] for d in p.deps), default=0.0)
    measured_bound = max(max(chain.values()), sum(held.values()) / slots)
    ends = sorted(tl.finished.values())
    dispatch, reaction, overhead = [], [], []
    for name, deps in tl.deps.items():
        start = tl.started[name]
        overhead.append((held[name] - sleep[name]) * 1000)
        if deps:
            dispatch.append((start - tl.ready[name]) * 1000)
        # the latest end (any package's: it freed a slot) at or before this start
        i = bisect.bisect_right(ends, start)
        trigger = max(tl.ready[name], ends[i - 1] if i else 0.0)
        reaction.append((start - trigger) * 1000)
    return {
        "packages": len(tl.deps),
        "slots": slots,
        "makespan_s": round(makespan, 3),
        "lower_bound_s": round(bound, 3),
        "ratio": round(makespan / bound, 3),
        "critical_path_s": round(cp, 3),
        "work_s": round(work, 3),
        "measured_bound_s": round(measured_bound, 3),
        "schedule_ratio": round(makespan / measured_bound, 3),
        "first_start_s": round(first_start, 3),
        "dispatch_p50_ms": round(percentile(dispatch, 50), 1),
        "dispatch_p95_ms": round(percentile(dispatch, 95), 1),
        "dispatch_p99_ms": round(percentile(dispatch, 99), 1),
        "reaction_p50_ms": round(percentile(reaction, 50), 1),
        "reaction_p95_ms": round(percentile(reaction, 95), 1),
        "reaction_p99_ms": round(percentile(reaction, 99), 1),
        "overhead_p50_ms": round(percentile(overhead, 50), 1),
        "overhead_p99_ms": round(percentile(overhead, 99), 1),
        "packages_per_s": round(len(tl.deps) / makespan, 3),
        "utilisation": round(sum(held.values()) / (slots * makespan), 3),
    }


def series(tl: Timeline) -> tuple[list[float], list[int], list[int]]:
    """Step series over time: slots busy (started, not finished) and packages ready (all
    dependencies done, not started)."""
    events: list[tuple[float, int, int]] = []
    for name, start in tl.started.items():
        events.append((tl.ready[name], 0, 1))
        events.append((start, 1, 1))
        events.append((start, 0, -1))
        events.append((tl.finished[name], 1, -1))
    events.sort(key=lambda e: e[0])
    times, busy, ready = [0.0], [0], [0]
    counts = [0, 0]  # ready, busy
    for at, which, delta in events:
        counts[which] += delta
        if times[-1] == at:
            busy[-1], ready[-1] = counts[1], counts[0]
        else:
            times.append(at)
            busy.append(counts[1])
            ready.append(counts[0])
    return times, busy, ready


# -- the replay --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReplayOptions:
    limit: int = 0
    scale: float = DEFAULT_SCALE
    slots: int = DEFAULT_SLOTS
    schedules: tuple[str, ...] = SCHEDULES
    resubmit: bool = True
    #: all schedules on one server (later runs see earlier runs' durations and a full
    #: published repository); by default each gets a fresh one, so each starts equal
    same_server: bool = False
    data: Path = DATA
    timeout: float = 4 * 3600.0
    work_dir: Path | None = None  #: kept when given; a temporary one otherwise
    #: solves of a replayed package's steps by buildctl, for ``cpu_s_per_package``
    buildctl_runs: int = 5


@contextlib.asynccontextmanager
async def _session(
    env: FarmEnv, work: Path, slots: int
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    async with (
        replay_server(env, work, slots) as server,
        httpx.AsyncClient(
            base_url=server.url,
            timeout=600,
            headers={"Authorization": f"Bearer {server.token}"},
        ) as http,
    ):
        yield server, http


async def _measure(
    http: httpx.AsyncClient,
    server: Server,
    body: Mapping[str, Any],
    options: ReplayOptions,
    progress: Callable[[str], object] | None = None,
    farm: Mapping[str, int] | None = None,
) -> tuple[BuildResult, dict[str, Any]]:
    """One build, with the server's resource use while it ran; it must succeed. With
    ``farm`` (the farm's process ids by name), also the CPU-seconds per package of the
    server and of each of them (/proc), as ``cpu_s_per_package``."""
    procstat = _bench_module("procstat")
    pids = {"server": server.pid, **(farm or {})}
    before = procstat.Snapshot.take(pids)
    sampler = Sampler(pid=server.pid)
    sampler.start()
    try:
        result = await build_and_wait(http, body, give_up_s=options.timeout, progress=progress)
    finally:
        await sampler.stop()
    used = procstat.Snapshot.take(pids).since(before)
    check_success(result, server)
    asked = body.get("schedule")
    if asked is not None and result.schedule != asked:
        raise ReplayError(
            f"build {result.id} asked for schedule {asked!r}; the server recorded "
            f"{result.schedule or 'none'!r}"
        )
    n = max(1, len(result.packages))
    usage: dict[str, Any] = dict(sampler.summary())
    usage["cpu_s_per_package"] = {
        name: round(used[name] / n, 4) if name in used else None
        for name in ("server", "buildkitd", "registry")
    }
    return result, usage


async def run_replay(
    env: FarmEnv, options: ReplayOptions, *, log: Console | None = None
) -> dict[str, Any]:
    """Run the replay against the farm described by ``env``; return the report (what
    ``--out`` writes, with :class:`Timeline` objects under ``timelines``)."""
    say = log.print if log is not None else (lambda *a, **k: None)
    raw = json.loads(options.data.read_text())["packages"]
    packages = select(raw, options.limit, options.scale)
    work = options.work_dir or Path(tempfile.mkdtemp(prefix="melange2-replay-"))
    runs: dict[str, dict[str, Any]] = {}
    timelines: dict[str, Timeline] = {}
    noop: dict[str, Any] = {"noop_resubmit_s": None, "noop_resubmit_cached": None}
    say(
        f"replaying {len(packages)} packages: {sum(p.sleep_s for p in packages):.0f} s of "
        f"sleep, critical path {critical_path_s(packages):.0f} s"
    )
    farm = _bench_module("procstat").farm_pids(env.buildkit_addrs[0], env.registry)
    ok = False
    try:
        async with contextlib.AsyncExitStack() as outer:
            shared: tuple[Server, httpx.AsyncClient] | None = None
            if options.same_server:
                shared = await outer.enter_async_context(
                    _session(env, work / "server", options.slots)
                )
            for i, schedule in enumerate(options.schedules):
                async with contextlib.AsyncExitStack() as inner:
                    if shared is None:
                        server, http = await inner.enter_async_context(
                            _session(env, work / schedule, options.slots)
                        )
                    else:
                        server, http = shared
                    slots = await slots_of(http, ARCH)
                    if slots < 1:
                        raise ReplayError(f"the server reports no {ARCH} slots")
                    say(f"{schedule}: building on {server.url} ({slots} {ARCH} slots)")
                    nonce = f"{schedule}-{uuid.uuid4().hex[:12]}"
                    body = {
                        "configs": [render_config(p, nonce) for p in packages],
                        "mode": "dag",
                        "arch": ARCH,
                        "schedule": schedule,
                    }
                    result, usage = await _measure(http, server, body, options, say, farm)
                    timelines[schedule] = timeline(result)
                    runs[schedule] = {
                        "build_id": result.id,
                        "schedule": result.schedule,
                        **run_metrics(timelines[schedule], packages, slots),
                        "wall_s": round(result.wall_s, 3),
                        "submit_s": round(result.submit_s, 3),
                        **usage,
                    }
                    say(
                        f"{schedule}: makespan {runs[schedule]['makespan_s']:.1f} s, "
                        f"ratio {runs[schedule]['ratio']}"
                    )
                    if options.resubmit and i == len(options.schedules) - 1:
                        noop = await _resubmit(http, server, body, options)
                        say(f"no-op resubmission: {noop['noop_resubmit_s']:.2f} s")
        if options.buildctl_runs:
            baseline = await buildctl_baseline(env, packages, options.buildctl_runs, work)
            say(f"buildctl, the same steps: {baseline:.3f} CPU-s per package")
            for run in runs.values():
                cpu = run["cpu_s_per_package"]
                cpu["buildctl"] = baseline
                farm_cpu = sum(cpu[k] or 0.0 for k in ("server", "buildkitd", "registry"))
                run["farm_cpu_s_per_package"] = round(farm_cpu, 4)
                run["cpu_ratio_vs_buildctl"] = round(farm_cpu / baseline, 2) if baseline else None
        main_run = runs.get("critical-path") or next(iter(runs.values()), {})
        report: dict[str, Any] = {
            **main_run,
            **noop,
            "packages": len(packages),
            "scale": options.scale,
            "limit": options.limit,
            "schedules": list(options.schedules),
            "same_server": options.same_server,
            "runs": runs,
            "goals": GOALS,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": machine(),
        }
        ok = True
    finally:
        if options.work_dir is None and ok:
            shutil.rmtree(work, ignore_errors=True)
        elif not ok:
            say(f"kept the replay's files (server logs, data) in {work}")
    report["timelines"] = timelines
    return report


async def _resubmit(
    http: httpx.AsyncClient, server: Server, body: Mapping[str, Any], options: ReplayOptions
) -> dict[str, Any]:
    """The last request again, byte for byte; timed from the POST to the end seen."""
    again, usage = await _measure(http, server, body, options)
    flags = [p.cached for p in again.packages]
    end = again.finished or max(p.finished or 0.0 for p in again.packages)
    return {
        "noop_resubmit_s": round(again.wall_s, 3),
        "noop_resubmit_server_s": round(end - again.created, 3),
        "noop_resubmit_submit_s": round(again.submit_s, 3),
        #: None when the server does not report ``cached``
        "noop_resubmit_cached": (
            None if any(f is None for f in flags) else sum(1 for f in flags if f)
        ),
        "noop_resubmit_server_peak_cpu_pct": usage["server_peak_cpu_pct"],
    }


def machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def json_report(report: Mapping[str, Any]) -> dict[str, Any]:
    timelines: Mapping[str, Timeline] = report.get("timelines", {})
    return {**report, "timelines": {k: tl.to_json() for k, tl in timelines.items()}}


def merge_virtual(report: dict[str, Any], virtual: Mapping[str, Any]) -> None:
    """Add a ``bench/virtual_bench.py`` report (schedule quality on a virtual clock) to
    ``report``: ``virtual`` (one ``{schedule, slots, seed, ratio, ...}`` per run),
    ``virtual_reference`` (the reference's loop, simulated), ``virtual_summary`` (median
    ratio per schedule and slot count) and ``virtual_checks``.
    The replay's own fields are left as they are."""
    report["virtual"] = list(virtual["virtual"])
    report["virtual_reference"] = list(virtual.get("virtual_reference", []))
    report["virtual_summary"] = list(virtual.get("summary", []))
    report["virtual_checks"] = dict(virtual.get("checks", {}))
    report["virtual_command"] = virtual.get("command", "")


def run_virtual(spec: str) -> dict[str, Any]:
    """``--virtual``: a saved virtual-clock report, or ``run`` for a fresh one (the
    default seeds, slot counts and schedules)."""
    if spec != "run":
        loaded: dict[str, Any] = json.loads(Path(spec).read_text())
        return loaded
    vb = _virtual_bench()
    fresh: dict[str, Any] = vb.run(vb.parse_args([]))
    return fresh


def virtual_table(report: Mapping[str, Any]) -> str:
    slots = sorted({row["slots"] for row in report.get("virtual_summary", [])})
    return str(_virtual_bench().table(report.get("virtual_summary", []), slots))


def _virtual_bench() -> ModuleType:
    return _bench_module("virtual_bench")


def _bench_module(name: str) -> ModuleType:
    """Another script of bench/ (not a package), imported by name."""
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    return importlib.import_module(name)


async def buildctl_baseline(
    env: FarmEnv, packages: Sequence[Package], runs: int, work: Path
) -> float:
    """CPU-seconds per package (buildctl, buildkitd with its runc, the registry) of
    ``buildctl`` solving a replayed package's steps: the LLB ``Builder.plan`` makes for a
    package without dependencies (a fresh nonce each run, so the steps run), with the same
    exporter kind as the server (``--output type=local``). The mean over ``runs`` solves,
    after one unmeasured."""
    bb = _bench_module("build_bench")
    procstat = _bench_module("procstat")
    from melange2.build.executor import Builder, BuildOptions
    from melange2.oci.registry import RegistryClient

    root = next((p for p in packages if not p.deps), None)
    if root is None:
        raise ReplayError("no package without dependencies for the buildctl baseline")
    tmp = work / "buildctl"
    await asyncio.to_thread(tmp.mkdir, parents=True, exist_ok=True)
    pids = procstat.farm_pids(env.buildkit_addrs[0], env.registry)
    total = 0.0
    async with RegistryClient(env.registry) as registry:
        builder = Builder(registry, tmp / "cache")
        try:
            for i in range(runs + 1):
                cfg = tmp / f"{root.name}-{i}.yaml"
                text = render_config(root, f"buildctl-{uuid.uuid4().hex[:12]}")
                await asyncio.to_thread(cfg.write_text, text)
                planned = await builder.plan(
                    BuildOptions(
                        config=cfg,
                        arch=ARCH,
                        buildkit_addr=env.buildkit_addrs[0],
                        registry=env.registry,
                        out_dir=tmp / "out",
                        cache_dir=tmp / "cache",
                        repositories=[env.extra["BOOTSTRAP_REPO"]],
                        keyrings=[env.extra["BOOTSTRAP_KEY"]],
                    )
                )
                before = procstat.Snapshot.take(pids)
                child = await asyncio.to_thread(
                    bb.buildctl_solve,
                    env.buildkit_addrs[0],
                    planned.definition.SerializeToString(),
                    tmp / f"out{i}",
                )
                if i:
                    total += child + sum(procstat.Snapshot.take(pids).since(before).values())
        finally:
            await builder.aclose()
    return round(total / runs, 4)


def load_report(path: Path) -> dict[str, Any]:
    """A report written by ``--out``, its timelines as :class:`Timeline` again."""
    report: dict[str, Any] = json.loads(path.read_text())
    report["timelines"] = {k: Timeline.from_json(v) for k, v in report.get("timelines", {}).items()}
    return report


# -- output ------------------------------------------------------------------------------

_ROWS = (
    ("packages", "packages", ""),
    ("makespan_s", "makespan", "s"),
    ("lower_bound_s", "lower bound", "s"),
    ("critical_path_s", "  critical path", "s"),
    ("work_s", "  work (sleep)", "s"),
    ("ratio", "makespan / lower bound", ""),
    ("measured_bound_s", "bound over measured durations", "s"),
    ("schedule_ratio", "makespan / that bound", ""),
    ("dispatch_p50_ms", "dispatch latency p50", "ms"),
    ("dispatch_p95_ms", "dispatch latency p95", "ms"),
    ("dispatch_p99_ms", "dispatch latency p99", "ms"),
    ("reaction_p50_ms", "reaction latency p50", "ms"),
    ("reaction_p99_ms", "reaction latency p99", "ms"),
    ("overhead_p50_ms", "overhead per package p50", "ms"),
    ("overhead_p99_ms", "overhead per package p99", "ms"),
    ("packages_per_s", "packages per second", ""),
    ("utilisation", "slot utilisation", ""),
    ("server_peak_cpu_pct", "server peak CPU", "%"),
    ("server_mean_cpu_pct", "server mean CPU", "%"),
    ("server_peak_rss_mb", "server peak RSS", "MB"),
    ("host_mean_cpu_pct", "host mean CPU (all cores)", "%"),
    ("host_peak_load_1m", "host peak load (1 min)", ""),
    ("farm_cpu_s_per_package", "farm CPU per package", "s"),
    ("cpu_ratio_vs_buildctl", "farm CPU / buildctl's", ""),
    ("wall_s", "submit to end (client)", "s"),
)


def table(report: Mapping[str, Any]) -> Table:
    runs: Mapping[str, Mapping[str, Any]] = report["runs"]
    slots = next(iter(runs.values()))["slots"] if runs else 0
    t = Table(title=f"replay of {report['packages']} wolfi packages on {slots} slots")
    t.add_column("measure")
    for schedule in runs:
        t.add_column(schedule, justify="right")
    t.add_column("goal", justify="right")
    for key, label, unit in _ROWS:
        goal = GOALS.get(key)
        cells = [_fmt(run.get(key), unit) for run in runs.values()]
        t.add_row(label, *cells, f"≤ {goal:g}{unit and ' ' + unit}" if goal else "")
    if report.get("noop_resubmit_s") is not None:
        cached = report.get("noop_resubmit_cached")
        t.add_row(
            "no-op resubmission",
            *([""] * (len(runs) - 1)),
            _fmt(report["noop_resubmit_s"], "s"),
            f"≤ {GOALS['noop_resubmit_s']:g} s",
        )
        t.add_row(
            "  packages cached",
            *([""] * (len(runs) - 1)),
            "not reported" if cached is None else str(cached),
            "",
        )
    return t


def _fmt(value: object, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 10 and unit != "ms" else f"{value:,.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def write_plot(report: Mapping[str, Any], path: Path) -> None:
    """Slots busy (left axis) and packages ready but not started (right axis) over time,
    one panel per schedule; the format follows the suffix (``.svg``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timelines: Mapping[str, Timeline] = report["timelines"]
    runs: Mapping[str, Mapping[str, Any]] = report["runs"]
    fig, axes = plt.subplots(
        len(timelines), 1, figsize=(9, 3.2 * len(timelines)), sharex=True, squeeze=False
    )
    for ax, (schedule, tl) in zip(axes[:, 0], timelines.items(), strict=True):
        times, busy, ready = series(tl)
        run = runs[schedule]
        twin = ax.twinx()
        ax.step(times, busy, where="post", color="tab:blue", linewidth=0.8, label="slots busy")
        twin.step(
            times,
            ready,
            where="post",
            color="tab:orange",
            linewidth=0.8,
            label="packages ready, not started (right axis)",
        )
        for at, style, colour, label in (
            (run["lower_bound_s"], "--", "red", "lower bound (sleep only)"),
            (run["measured_bound_s"], "-.", "purple", "bound over measured durations"),
        ):
            ax.axvline(
                run["first_start_s"] + at, color=colour, linestyle=style, linewidth=0.9, label=label
            )
        ax.set_ylim(0, run["slots"] * 1.15)
        twin.set_ylim(0, max(ready) * 1.15 + 1)
        ax.set_ylabel("slots busy", color="tab:blue")
        twin.set_ylabel("packages ready", color="tab:orange")
        ax.set_title(
            f"{schedule}: {run['packages']} packages on {run['slots']} slots, makespan "
            f"{run['makespan_s']:.0f} s, lower bound {run['lower_bound_s']:.0f} s "
            f"(ratio {run['ratio']:.2f})",
            fontsize=10,
        )
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        ax.legend(
            handles[0] + twin_handles[0],
            handles[1] + twin_handles[1],
            loc="lower left",
            fontsize=7,
            framealpha=0.9,
        )
    axes[-1, 0].set_xlabel("seconds since submission")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# -- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--farm-dir", type=Path, default=ROOT / ".farm", help="the running farm's root"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the graph (wolfi-dag.json)")
    parser.add_argument("--limit", type=int, default=0, help="a dependency-closed N packages")
    parser.add_argument(
        "--scale", type=float, default=DEFAULT_SCALE, help="seconds of sleep per weight unit"
    )
    parser.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="maxJobs of daemon0")
    parser.add_argument(
        "--schedules",
        default=",".join(SCHEDULES),
        help="comma-separated, run in this order (fifo, critical-path)",
    )
    parser.add_argument(
        "--schedule", dest="schedules", help="one schedule only (same as --schedules X)"
    )
    parser.add_argument("--no-resubmit", action="store_true", help="skip the no-op resubmission")
    parser.add_argument(
        "--buildctl-runs",
        type=int,
        default=5,
        help="buildctl solves of a replayed package's steps for cpu_s_per_package (0: none)",
    )
    parser.add_argument(
        "--same-server",
        action="store_true",
        help="run every schedule on one server (default: a fresh server for each)",
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--plot", type=Path, help="write the plot (SVG) here")
    parser.add_argument("--work-dir", type=Path, help="keep the server's data and log here")
    parser.add_argument("--timeout", type=float, default=4 * 3600.0, help="seconds per build")
    parser.add_argument(
        "--virtual",
        nargs="?",
        const="run",
        metavar="VIRTUAL.json",
        help="add schedule quality on a virtual clock (bench/virtual_bench.py): its --out "
        "report, or with no file a fresh run (about a minute)",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="REPORT.json",
        help="run nothing: print the table of a report written by --out (and --plot it)",
    )
    args = parser.parse_args(argv)
    schedules = tuple(s.strip() for s in str(args.schedules).split(",") if s.strip())
    bad = [s for s in schedules if s not in SCHEDULES]
    if bad or not schedules:
        parser.error(f"--schedules: unknown {', '.join(bad) or '(none)'}; use {SCHEDULES}")
    args.schedules = schedules
    if args.limit < 0 or args.scale <= 0 or args.slots < 1:
        parser.error("--limit ≥ 0, --scale > 0, --slots ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.replot:
        report = load_report(args.replot)
        if args.virtual:
            merge_virtual(report, run_virtual(args.virtual))
        console.print(table(report))
        if report.get("virtual_summary"):
            console.print(virtual_table(report))
        if args.out:  # with --virtual: the saved report and the virtual one, merged
            args.out.write_text(json.dumps(json_report(report), indent=2) + "\n")
        if args.plot:
            write_plot(report, args.plot)
        return 0
    env_file = args.farm_dir / "env"
    if not env_file.exists():
        console.print(f"[red]the farm is not running ({env_file} missing): `make farm-up` first")
        return 2
    options = ReplayOptions(
        limit=args.limit,
        scale=args.scale,
        slots=args.slots,
        schedules=args.schedules,
        resubmit=not args.no_resubmit,
        same_server=args.same_server,
        data=args.data,
        timeout=args.timeout,
        work_dir=args.work_dir,
        buildctl_runs=args.buildctl_runs,
    )
    try:
        report = asyncio.run(run_replay(FarmEnv.load(env_file), options, log=console))
    except (ReplayError, FarmError, httpx.HTTPError) as exc:
        console.print(f"[red]replay failed: {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[red]interrupted (the replay's servers are stopped)")
        return 130
    report["command"] = shlex.join(["bench/replay.py", *(argv or sys.argv[1:])])
    if args.virtual:
        merge_virtual(report, run_virtual(args.virtual))
    console.print(table(report))
    if report.get("virtual_summary"):
        console.print(virtual_table(report))
    if args.out:
        args.out.write_text(json.dumps(json_report(report), indent=2) + "\n")
    if args.plot:
        write_plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
