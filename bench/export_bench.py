"""How a build's output comes back: the registry round trip against the local exporter
(issue 19 item 4), for a trivial package, on a farm of its own.

For each run a trivial package is planned by the real :class:`Builder` (a fresh nonce, so
the step runs), then solved twice, in alternating order:

* ``registry``: what ``Builder.run`` does today: the ``image`` exporter pushes
  ``melange-out`` to the registry, then :func:`unpack_image` pulls it back and unpacks it;
* ``local``: the ``local`` exporter sends the tree to this process through the solve's
  session (:mod:`melange2.buildkit.filesync`).

Measured per variant: wall time from solve to unpacked tree, and CPU-seconds from /proc
(user + system) of this process, of buildkitd (with the reaped runc children) and of the
registry. Medians over the runs, and local/registry ratios.

    .venv/bin/python bench/export_bench.py --runs 9 [--payload-mb 32] [--out r.json]

``--sources FILES:BYTES`` measures the other way, the sources' way in: pushed as a one-layer
image that the build copies into /home/build (what ``Builder.plan`` does, ``push_sources``)
against a ``local://`` source sent through the solve's session (hashing the tree too, as
the input digest would then have to). Each run a fresh tree; one step reads every file.

    .venv/bin/python bench/export_bench.py --runs 9 --sources 1:1024
    .venv/bin/python bench/export_bench.py --runs 5 --sources 200:50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from melange2.apk.signing import generate_key
from melange2.build.executor import Builder, BuildOptions
from melange2.build.inputs import read_tree, tree_digest
from melange2.build.outputs import unpack_image
from melange2.build.sources import push_sources
from melange2.buildkit import llb
from melange2.buildkit._proto.solver.pb import ops_pb2
from melange2.buildkit.client import BuildkitClient, local_export, push_image
from melange2.buildkit.session import Session
from melange2.farm.local import FarmEnv, LocalFarm
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform

ROOT = Path(__file__).resolve().parent.parent
OUT_REPO = "melange2/out"  #: where the registry path pushes the result (as Builder did)
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self", *, children: bool = False) -> float:
    """utime + stime (and the reaped children's, if asked) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the ")" of comm: state is field 3, so utime (14) is index 11
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / _TICK


def trivial(nonce: str, payload_mb: int = 0) -> str:
    dest = "${{targets.destdir}}/usr/share/doc"
    size = payload_mb * 1024 * 1024
    payload = f"      head -c {size} /dev/urandom > {dest}/blob\n" if payload_mb else ""
    return (
        "package:\n  name: trivial\n  version: 1.0.0\n  description: trivial\n"
        "environment:\n  contents:\n    packages:\n      - busybox\n"
        "pipeline:\n  - name: build\n    runs: |\n"
        "      mkdir -p ${{targets.destdir}}/usr/share/doc\n"
        f"      echo {nonce} > ${{{{targets.destdir}}}}/usr/share/doc/nonce\n" + payload
    )


async def measure(
    fn: Callable[[], Awaitable[None]], pids: dict[str, int]
) -> tuple[float, dict[str, float]]:
    before = {"client": cpu_seconds()}
    before |= {name: cpu_seconds(pid, children=True) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await fn()
    wall = time.perf_counter() - t0
    after = {"client": cpu_seconds()}
    after |= {name: cpu_seconds(pid, children=True) for name, pid in pids.items()}
    return wall, {k: after[k] - before[k] for k in before}


Variant = Callable[[ops_pb2.Definition, Path], Awaitable[None]]


def _bind(fn: Variant, definition: ops_pb2.Definition, dest: Path) -> Callable[[], Awaitable[None]]:
    return lambda: fn(definition, dest)


async def run(env: FarmEnv, pids: dict[str, int], runs: int, payload_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        key = tmp / "bench.rsa"
        generate_key(key, key_size=2048)
        addr = env.buildkit_addrs[0]
        walls: dict[str, list[float]] = {"registry": [], "local": []}
        cpus: dict[str, dict[str, list[float]]] = {"registry": {}, "local": {}}
        async with RegistryClient(env.registry) as registry:
            builder = Builder(registry, tmp / "cache")

            async def plan(i: int) -> ops_pb2.Definition:
                cfg = tmp / f"t{i}.yaml"
                cfg.write_text(trivial(uuid.uuid4().hex, payload_mb))
                opts = BuildOptions(
                    config=cfg,
                    arch="x86_64",
                    buildkit_addr=addr,
                    registry=env.registry,
                    out_dir=tmp / "out",
                    cache_dir=tmp / "cache",
                    signing_key=key,
                    repositories=[env.extra["BOOTSTRAP_REPO"]],
                    keyrings=[env.extra["BOOTSTRAP_KEY"], f"{key}.pub"],
                )
                return (await builder.plan(opts)).definition

            async def via_registry(definition: ops_pb2.Definition, dest: Path) -> None:
                tag = uuid.uuid4().hex
                async with BuildkitClient(addr) as bk:
                    result = await bk.solve(
                        definition, exporters=[push_image(f"{env.registry}/{OUT_REPO}:{tag}")]
                    )
                digest = result.exporter_response["containerimage.digest"]
                await unpack_image(registry, OUT_REPO, digest, dest)

            async def via_local(definition: ops_pb2.Definition, dest: Path) -> None:
                async with BuildkitClient(addr) as bk:
                    await bk.solve(definition, exporters=[local_export(dest)])

            variants: dict[str, Variant] = {"registry": via_registry, "local": via_local}
            for i in range(runs + 1):  # the first round warms up and is not counted
                order = ["registry", "local"] if i % 2 else ["local", "registry"]
                for name in order:
                    definition = await plan(i * 2 + order.index(name))
                    dest = tmp / f"{name}{i}"
                    wall, cpu = await measure(_bind(variants[name], definition, dest), pids)
                    assert next(dest.rglob("nonce"), None) is not None, f"{name}: no output"
                    if i:
                        walls[name].append(wall)
                        for part, value in cpu.items():
                            cpus[name].setdefault(part, []).append(value)
            await builder.aclose()
    med_wall = {k: statistics.median(v) for k, v in walls.items()}
    med_cpu = {
        k: {part: statistics.median(v) for part, v in parts.items()} for k, parts in cpus.items()
    }
    total = {k: sum(parts.values()) for k, parts in med_cpu.items()}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"x86_64, {len(os.sched_getaffinity(0))} cores",
        "runs": runs,
        "payload_mb": payload_mb,
        "median_wall_s": {k: round(v, 3) for k, v in med_wall.items()},
        "median_cpu_s": {
            k: {part: round(v, 3) for part, v in parts.items()} for k, parts in med_cpu.items()
        },
        "median_cpu_s_total": {k: round(v, 3) for k, v in total.items()},
        "ratio_wall_local_vs_registry": round(med_wall["local"] / med_wall["registry"], 2),
        "ratio_cpu_local_vs_registry": round(total["local"] / total["registry"], 2),
    }


SourceVariant = Callable[[Path, Path], Awaitable[None]]


def _bind_sources(fn: SourceVariant, src: Path, dest: Path) -> Callable[[], Awaitable[None]]:
    return lambda: fn(src, dest)


def make_sources(root: Path, files: int, size: int) -> None:
    """``files`` files of ``size`` random bytes in a few directories (a fresh tree: sources
    differ from package to package)."""
    for i in range(files):
        path = root / f"d{i % 8}" / f"f{i}.c"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


async def run_sources(
    env: FarmEnv, pids: dict[str, int], runs: int, files: int, size: int
) -> dict[str, Any]:
    """The sources' way in: pushed as an image and copied in (what ``Builder.plan`` does),
    against a ``local://`` source the daemon reads through the solve's session. Each run a
    fresh tree; one step reads every file (``cat``), its output comes back locally."""
    platform = Platform.from_arch("x86_64")
    addr = env.buildkit_addrs[0]
    walls: dict[str, list[float]] = {"registry": [], "local": []}
    cpus: dict[str, dict[str, list[float]]] = {"registry": {}, "local": {}}

    def graph(src: llb.State, nonce: str) -> llb.State:
        root = llb.copy(src, "/", llb.image(env.base_image, platform=platform), "/home/build")
        step = llb.run(
            root,
            [
                "/bin/sh",
                "-c",
                f"echo {nonce}; find /home/build -type f | xargs cat | wc -c > /out/n",
            ],
            mounts=[llb.Mount(dest="/out")],
            cwd="/home/build",
        )
        return step.output("/out")

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        async with RegistryClient(env.registry) as registry:

            async def via_registry(src_dir: Path, dest: Path) -> None:
                image = await push_sources(src_dir, platform, registry)
                state = graph(llb.image(str(image), platform=platform), uuid.uuid4().hex)
                async with BuildkitClient(addr) as bk:
                    await bk.solve(llb.marshal(state), exporters=[local_export(dest)])

            async def via_local(src_dir: Path, dest: Path) -> None:
                # the input digest would then hash the tree itself (the op names only the dir)
                await asyncio.to_thread(lambda: tree_digest(read_tree(src_dir)))
                state = graph(llb.local("src"), uuid.uuid4().hex)
                async with BuildkitClient(addr) as bk:
                    await bk.solve(
                        llb.marshal(state),
                        exporters=[local_export(dest)],
                        session=Session(local_dirs={"src": src_dir}),
                    )

            variants: dict[str, SourceVariant] = {"registry": via_registry, "local": via_local}
            for i in range(runs + 1):
                order = ["registry", "local"] if i % 2 else ["local", "registry"]
                for name in order:
                    src_dir = tmp / f"src-{name}{i}"
                    await asyncio.to_thread(make_sources, src_dir, files, size)
                    dest = tmp / f"{name}{i}"
                    wall, cpu = await measure(_bind_sources(variants[name], src_dir, dest), pids)
                    read = int((dest / "n").read_text())
                    assert read == files * size, f"{name}: read {read} bytes"
                    if i:
                        walls[name].append(wall)
                        for part, value in cpu.items():
                            cpus[name].setdefault(part, []).append(value)
    med_wall = {k: statistics.median(v) for k, v in walls.items()}
    per = {k: {part: sum(v) / len(v) for part, v in parts.items()} for k, parts in cpus.items()}
    total = {k: sum(parts.values()) for k, parts in per.items()}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"x86_64, {len(os.sched_getaffinity(0))} cores",
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
        "sources": {"files": files, "bytes_each": size},
        "median_wall_s": {k: round(v, 3) for k, v in med_wall.items()},
        "cpu_s_per_run": {
            k: {part: round(v, 4) for part, v in parts.items()} for k, parts in per.items()
        },
        "cpu_s_per_run_total": {k: round(v, 4) for k, v in total.items()},
        "ratio_wall_local_vs_registry": round(med_wall["local"] / med_wall["registry"], 2),
        "ratio_cpu_local_vs_registry": round(total["local"] / total["registry"], 2),
    }


async def main_async(
    runs: int, payload_mb: int, sources: tuple[int, int] | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="export-bench-") as root_s:
        root = Path(root_s)
        farm = LocalFarm(root, tools_dir=ROOT / ".tools", daemons=1)
        try:
            env = await farm.up()
            pids = {
                "buildkitd": int((root / "pids" / "buildkitd-0.pid").read_text()),
                "registry": int((root / "pids" / "registry.pid").read_text()),
            }
            if sources is not None:
                return await run_sources(env, pids, runs, *sources)
            return await run(env, pids, runs, payload_mb)
        finally:
            farm.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument(
        "--payload-mb", type=int, default=0, help="add a random file of this size to the package"
    )
    parser.add_argument(
        "--sources",
        metavar="FILES:BYTES",
        help="measure the sources' way in instead: FILES files of BYTES each, pushed as an "
        "image against a local:// source through the session",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    sources = None
    if args.sources:
        files, _, size = args.sources.partition(":")
        sources = (int(files), int(size or 1024))
    result = asyncio.run(main_async(args.runs, args.payload_mb, sources))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
