"""A trivial package end to end, against ``buildctl`` solving the same LLB, in the same run
(issue: build executor; issue 19 item 4: the cost of one package).

Each run of each arm plans its own trivial package with a fresh nonce in its step, so
BuildKit's cache never answers for the step; the environment image is warm (composed in a
first, unmeasured round). The arms run interleaved, one of each per round, so a change in
the machine's load hits all of them alike.

* ``buildctl``: ``buildctl build`` of the LLB definition our ``Builder.plan`` makes for the
  package (the same ops: environment, workspace, step, the collecting copies), the
  definition on stdin, ``--output type=local``: BuildKit's own client doing the same solve
  with the same exporter kind, and nothing else.
* ``ours_lib``: :meth:`melange2.build.executor.Builder.build` in-process: planning
  (environment lookup), the solve with the local exporter, the APK, its signature, the
  SBOM and the index.
* ``ours_server``: the package as a one-package build submitted to a real
  ``melange-server`` (started here, on the same daemon), its end seen by polling the build
  every ``--poll`` seconds (0.5: each request costs the server CPU); the wall time is the
  server's own, from accepting the build to its end. It adds the API, the store,
  scheduling, the log, storage and publication.
* ``ours_cli``: ``melange2 build`` as a new process each time (wall only).
* ``new_env``: as ``ours_lib``, with an environment never composed before (a new
  combination of already-built packages).

CPU-seconds (user + system, from /proc; buildkitd with the runc processes it reaped; the
buildctl process by its rusage) are summed over the measured runs of each arm and divided
by their number: ``cpu_s_per_package`` is the server arm's ``server``, ``buildkitd`` and
``registry`` and, as ``buildctl``, the buildctl arm's total (buildctl + buildkitd +
registry). Wall times are medians. ``--profile FILE`` samples the server with py-spy
(``--py-spy PATH``) from the first measured round to the end (the server is idle during
the other arms) and writes its flame graph (SVG) or, with a ``.txt`` name, the raw
collapsed stacks.

    .venv/bin/python bench/build_bench.py --runs 9 --out build.json   # a farm of its own
    .venv/bin/python bench/build_bench.py --farm .farm --runs 9        # the running farm
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstat import Snapshot, cpu_seconds, farm_pids

from melange2.apk.signing import generate_key
from melange2.build.executor import Builder, BuildOptions
from melange2.farm import processes
from melange2.farm.local import FarmEnv, LocalFarm, start_server
from melange2.oci.registry import RegistryClient

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "bin"
GOALS = {"wall_ratio": 1.25, "cpu_ratio": 1.5}
ARMS = ("buildctl", "ours_lib", "ours_server", "ours_cli", "new_env")


def trivial(name: str, nonce: str, packages: list[str], version: str = "1.0.0") -> str:
    pkgs = "\n".join(f"      - {p}" for p in packages)
    return (
        f"package:\n  name: {name}\n  version: {version}\n  description: trivial\n"
        f"environment:\n  contents:\n    packages:\n{pkgs}\n"
        "pipeline:\n  - name: build\n    runs: |\n"
        "      mkdir -p ${{targets.destdir}}/usr/share/doc\n"
        f"      echo {nonce} > ${{{{targets.destdir}}}}/usr/share/doc/nonce\n"
    )


def options(
    env: FarmEnv, config: Path, out: Path, key: Path, cache: Path, extra: list[str]
) -> BuildOptions:
    return BuildOptions(
        config=config,
        arch="x86_64",
        buildkit_addr=env.buildkit_addrs[0],
        registry=env.registry,
        out_dir=out,
        cache_dir=cache,
        signing_key=key,
        repositories=[env.extra["BOOTSTRAP_REPO"], *extra],
        keyrings=[env.extra["BOOTSTRAP_KEY"], f"{key}.pub"],
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def buildctl_solve(addr: str, definition: bytes, dest: Path) -> float:
    """``buildctl build`` of ``definition`` (stdin), the result into ``dest``; returns the
    buildctl process's CPU-seconds."""
    before = _children_cpu()
    subprocess.run(
        [
            str(TOOLS / "buildctl"),
            "--addr",
            addr,
            "build",
            "--progress=quiet",
            "--output",
            f"type=local,dest={dest}",
        ],
        input=definition,
        check=True,
        capture_output=True,
    )
    return _children_cpu() - before


_TIMINGS = re.compile(r"^timings: (.*)$", re.M)


def phase_timings(log: str) -> dict[str, float]:
    """The ``timings: plan 0.108 s, solve 0.874 s, ...`` line a server's log ends with."""
    found = _TIMINGS.findall(log)
    if not found:
        return {}
    out = {}
    for part in found[-1].split(", "):
        name, _, value = part.rpartition(" ")[0].rpartition(" ")
        out[name] = float(value)
    return out


@dataclass
class Arm:
    walls: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    runs: int = 0

    def add(self, wall: float, cpu: dict[str, float]) -> None:
        self.walls.append(wall)
        self.runs += 1
        for k, v in cpu.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v


@dataclass(frozen=True)
class Outcome:
    """What an arm's run reports beside what :func:`measure` sees: the CPU of a child
    process it ran, and a wall time of its own (the server's timestamps)."""

    child_cpu: float | None = None
    wall: float | None = None


async def measure(
    fn: Callable[[], Awaitable[Outcome | None]], pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    """Run ``fn``; its wall time and the CPU-seconds each process of ``pids`` used (plus
    ``"self"``, and the CPU of a child ``fn`` ran, under ``"child"``)."""
    before = Snapshot.take(pids)
    me = cpu_seconds("self", children=False)
    t0 = time.perf_counter()
    outcome = await fn() or Outcome()
    wall = time.perf_counter() - t0
    cpu = Snapshot.take(pids).since(before)
    cpu["self"] = cpu_seconds("self", children=False) - me
    if outcome.child_cpu is not None:
        cpu["child"] = outcome.child_cpu
    return (outcome.wall if outcome.wall is not None else wall), cpu


@contextlib.asynccontextmanager
async def bench_server(env: FarmEnv, work: Path) -> AsyncIterator[tuple[str, int]]:
    """A melange-server on the farm's first daemon, fresh data; its URL and pid."""
    backends = work / "backends.yaml"
    text = f"backends:\n  - addr: {env.buildkit_addrs[0]}\n    arch: x86_64\n    maxJobs: 4\n"
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(backends.write_text, text)
    pid_file = work / "server.pid"
    try:
        url = await start_server(
            env,
            data_dir=work / "data",
            output_dir=work / "output",
            pid_file=pid_file,
            log_file=work / "server.log",
            backends_config=backends,
            port=processes.free_port(),
        )
        pid = processes.read_pid(pid_file)
        assert pid is not None
        yield url, pid
    finally:
        processes.stop(pid_file)


async def via_server(
    http: httpx.AsyncClient,
    config: str,
    logs: list[str],
    spans: dict[str, list[float]],
    poll_s: float,
) -> Outcome:
    """One package through the server's API, as a user would: submit, wait for the end
    (polling every ``poll_s``: the API costs CPU per request, so seldom), read its log.
    The wall time is the server's, from accepting the build to its end."""
    resp = await http.post("/api/v1/builds", json={"configs": [config], "arch": "x86_64"})
    resp.raise_for_status()
    build_id = resp.json()["id"]
    while True:
        await asyncio.sleep(poll_s)
        build = (await http.get(f"/api/v1/builds/{build_id}")).json()
        if build["status"] not in ("pending", "running"):
            break
    if build["status"] != "success":
        raise RuntimeError(f"build {build_id}: {build}")
    log = await http.get(f"/api/v1/builds/{build_id}/packages/trivial/logs")
    logs.append(log.text)
    created = datetime.fromisoformat(build["created_at"])
    finished = datetime.fromisoformat(build["finished_at"])
    (package,) = build["packages"]
    started = datetime.fromisoformat(package["started_at"])
    ended = datetime.fromisoformat(package["finished_at"])
    spans.setdefault("accepted_to_start", []).append((started - created).total_seconds())
    spans.setdefault("start_to_end", []).append((ended - started).total_seconds())
    spans.setdefault("end_to_build_end", []).append((finished - ended).total_seconds())
    return Outcome(wall=(finished - created).total_seconds())


@contextlib.contextmanager
def py_spy(pid: int, out: Path, py_spy_bin: str) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs (idle threads left out)."""
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    proc = subprocess.Popen(
        [
            py_spy_bin,
            "record",
            "--pid",
            str(pid),
            "--format",
            fmt,
            "-o",
            str(out),
            "--rate",
            "200",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # attached
        yield
    finally:
        proc.send_signal(2)  # py-spy writes its output on SIGINT
        proc.wait(60)


async def run(env: FarmEnv, args: argparse.Namespace) -> dict[str, Any]:
    runs: int = args.runs
    arms_wanted = set(args.arms)
    pids = farm_pids(env.buildkit_addrs[0], env.registry)
    if set(pids) != {"buildkitd", "registry"}:
        raise RuntimeError(f"cannot find the farm's processes (found {pids})")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        key = tmp / "bench.rsa"
        generate_key(key, key_size=2048)
        cache = tmp / "cache"
        arms = {name: Arm() for name in ARMS}
        server_logs: list[str] = []
        #: the server's timestamps of each run: accepted -> package started -> ended -> build ended
        spans: dict[str, list[float]] = {}
        async with contextlib.AsyncExitStack() as stack:
            registry = await stack.enter_async_context(RegistryClient(env.registry))
            builder = Builder(registry, cache)
            stack.push_async_callback(builder.aclose)
            url, server_pid = await stack.enter_async_context(bench_server(env, tmp / "server"))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=300))
            server_pids = {**pids, "server": server_pid}
            deps_repo = tmp / "deps"
            if "new_env" in arms_wanted:  # prebuilt dependencies for the new environments
                for i in range(runs + 1):
                    cfg = tmp / f"dep{i}.yaml"
                    cfg.write_text(trivial(f"dep{i}", "dep", ["busybox"]))
                    await builder.build(options(env, cfg, deps_repo, key, cache, []))

            def config(i: int, arm: str, packages: list[str] | None = None) -> Path:
                # a new version each run: the farm's repository never takes other bytes
                # under a name and version it holds
                cfg = tmp / f"{arm}{i}.yaml"
                text = trivial("trivial", uuid.uuid4().hex, packages or ["busybox"], f"1.0.{i}")
                cfg.write_text(text)
                return cfg

            for i in range(runs + 1):  # the first round warms up and is not counted
                results: dict[str, tuple[float, dict[str, float]]] = {}
                if "buildctl" in arms_wanted:
                    planned = await builder.plan(
                        options(env, config(i, "ctl"), tmp / "x", key, cache, [])
                    )
                    definition = planned.definition.SerializeToString()
                    dest = tmp / f"ctl{i}"

                    async def ctl(definition: bytes = definition, dest: Path = dest) -> Outcome:
                        return Outcome(
                            child_cpu=await asyncio.to_thread(
                                buildctl_solve, env.buildkit_addrs[0], definition, dest
                            )
                        )

                    results["buildctl"] = await measure(ctl, pids)
                    assert (dest / "trivial" / "usr" / "share" / "doc" / "nonce").is_file()
                if "ours_lib" in arms_wanted:
                    opts = options(env, config(i, "lib"), tmp / f"o{i}", key, cache, [])

                    async def lib(opts: BuildOptions = opts) -> None:
                        await builder.build(opts)

                    results["ours_lib"] = await measure(lib, pids)
                if "ours_server" in arms_wanted:
                    text = config(i, "srv").read_text()

                    async def srv(text: str = text) -> Outcome:
                        return await via_server(http, text, server_logs, spans, args.poll)

                    results["ours_server"] = await measure(srv, server_pids)
                if "ours_cli" in arms_wanted:
                    argv = [
                        sys.executable,
                        "-m",
                        "melange2",
                        "build",
                        str(config(i, "cli")),
                        "--out-dir",
                        str(tmp / f"c{i}"),
                        "--buildkit-addr",
                        env.buildkit_addrs[0],
                        "--registry",
                        env.registry,
                        "--repository-append",
                        env.extra["BOOTSTRAP_REPO"],
                        "--keyring-append",
                        env.extra["BOOTSTRAP_KEY"],
                        "--signing-key",
                        str(key),
                        "--apk-cache-dir",
                        str(cache),
                        "--plain",
                    ]

                    async def cli(argv: list[str] = argv) -> Outcome:
                        before = _children_cpu()
                        await asyncio.to_thread(
                            subprocess.run, argv, check=True, capture_output=True
                        )
                        return Outcome(child_cpu=_children_cpu() - before)

                    results["ours_cli"] = await measure(cli, pids)
                if "new_env" in arms_wanted:
                    cfg = config(i, "new", ["busybox", f"dep{i}"])
                    opts = options(env, cfg, tmp / f"n{i}", key, cache, [str(deps_repo)])

                    async def new(opts: BuildOptions = opts) -> None:
                        await builder.build(opts)

                    results["new_env"] = await measure(new, pids)
                if i:
                    for name, (wall, cpu) in results.items():
                        arms[name].add(wall, cpu)
                elif args.profile is not None:  # after the warm-up, until the end
                    stack.enter_context(py_spy(server_pid, args.profile, args.py_spy))
    if args.show_log and server_logs:
        print(server_logs[-1], file=sys.stderr)
    return report(arms, server_logs[1:], {k: v[1:] for k, v in spans.items()}, load_before, runs)


def report(
    arms: dict[str, Arm],
    server_logs: list[str],
    spans: dict[str, list[float]],
    load_before: tuple[float, ...],
    runs: int,
) -> dict[str, Any]:
    done = {k: a for k, a in arms.items() if a.runs}
    med = {k: statistics.median(a.walls) for k, a in done.items()}
    per = {k: {part: v / a.runs for part, v in a.cpu.items()} for k, a in done.items()}
    out: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"x86_64, {len(os.sched_getaffinity(0))} cores",
        "load_avg_1_5_15": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "runs": runs,
        "median_wall_s": {k: round(v, 3) for k, v in med.items()},
        "cpu_s_per_package_by_arm": {
            k: {part: round(v, 4) for part, v in parts.items()} for k, parts in per.items()
        },
        "goals": GOALS,
    }
    if "buildctl" in med:
        for k in med:
            if k != "buildctl":
                out[f"ratio_wall_{k.removeprefix('ours_')}_vs_buildctl"] = round(
                    med[k] / med["buildctl"], 2
                )
    ctl = per.get("buildctl")
    srv = per.get("ours_server")
    if ctl is not None:
        ctl_total = ctl.get("child", 0.0) + ctl.get("buildkitd", 0.0) + ctl.get("registry", 0.0)
        out["cpu_s_per_package"] = {
            "server": round(srv["server"], 4) if srv else None,
            "buildkitd": round(srv["buildkitd"], 4) if srv else None,
            "registry": round(srv["registry"], 4) if srv else None,
            "buildctl": round(ctl_total, 4),
        }
        if srv:
            farm = srv["server"] + srv["buildkitd"] + srv["registry"]
            out["ratio_cpu_server_vs_buildctl"] = round(farm / ctl_total, 2)
        lib = per.get("ours_lib")
        if lib:
            ours = lib["self"] + lib["buildkitd"] + lib["registry"]
            out["ratio_cpu_lib_vs_buildctl"] = round(ours / ctl_total, 2)
    phases: dict[str, list[float]] = {}
    for log in server_logs:
        for name, value in phase_timings(log).items():
            phases.setdefault(name, []).append(value)
    if spans:
        out["server_spans_median_s"] = {k: round(statistics.median(v), 4) for k, v in spans.items()}
    if phases:
        out["server_phases_median_s"] = {
            k: round(statistics.median(v), 4) for k, v in phases.items()
        }
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.farm is not None:
        return await run(FarmEnv.load(args.farm / "env"), args)
    with tempfile.TemporaryDirectory(prefix="build-bench-") as root_s:
        farm = LocalFarm(Path(root_s), tools_dir=ROOT / ".tools", daemons=1)
        try:
            return await run(await farm.up(), args)
        finally:
            farm.down()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--farm", type=Path, help="a running farm's directory (default: start one of its own)"
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        type=lambda s: [a for a in s.split(",") if a],
        help=f"which arms to run (default: {','.join(ARMS)})",
    )
    parser.add_argument(
        "--poll", type=float, default=0.5, help="seconds between the server arm's status polls"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--show-log", action="store_true", help="print the server arm's last log on stderr"
    )
    parser.add_argument("--profile", type=Path, help="py-spy the server arm into this file")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    args = parser.parse_args(argv)
    bad = set(args.arms) - set(ARMS)
    if bad:
        parser.error(f"--arms: unknown {', '.join(sorted(bad))}")
    return args


def main() -> None:
    args = parse_args()
    result = asyncio.run(main_async(args))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
