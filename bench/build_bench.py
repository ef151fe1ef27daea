"""A trivial package end to end on the warm local farm, against ``buildctl`` solving the
same steps on a ready-made image, in the same run (issue: build executor).

Each run uses a fresh nonce in its step, so neither side gets BuildKit's cache for the step
itself; the environment image is warm (composed in a first, unmeasured run).

* ``ours_lib``: :meth:`melange2.build.executor.Builder.build` in-process: environment
  lookup, sources, solve with the image exporter, pulling ``melange-out`` back, writing and
  signing the APK and the index.
* ``ours_cli``: the same through ``melange2 build`` (a new Python process each time).
* ``buildctl``: ``buildctl build`` of the same exec steps on the same environment image
  (no export: BuildKit's own client doing only the work).
* ``new_env``: as ``ours_lib``, but each run's environment is a combination of
  already-built packages never composed before.

    make farm-up && .venv/bin/python bench/build_bench.py --runs 7
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from melange2.apk.signing import generate_key
from melange2.build.executor import Builder, BuildOptions, prepare, step_env
from melange2.buildkit import llb
from melange2.farm.local import FarmEnv
from melange2.oci.registry import RegistryClient

ROOT = Path(__file__).resolve().parent.parent


def trivial(name: str, nonce: str, packages: list[str]) -> str:
    pkgs = "\n".join(f"      - {p}" for p in packages)
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n  description: trivial\n"
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


async def ours(builder: Builder, opts: BuildOptions) -> float:
    t0 = time.perf_counter()
    await builder.build(opts)
    return time.perf_counter() - t0


async def buildctl_time(builder: Builder, opts: BuildOptions, tools: Path) -> float:
    """The same steps, on the same (already composed) environment image, by buildctl."""
    config, plan = prepare(opts)
    contents = config.environment.contents
    image, _ = await builder.environment(
        opts, list(contents.packages), contents.repositories, contents.keyring
    )
    root = llb.image(image, platform=llb.Platform.from_arch(opts.arch))
    for name in config.package_names:
        root = llb.mkdir(root, f"/home/build/melange-out/{name}")
    for step in plan.steps:
        root = llb.run(
            root,
            ["/bin/sh", "-c", step.script],
            env=step_env(plan.environment, step, opts),
            cwd=step.workdir,
            name=step.name,
        ).root
    data = llb.marshal(root).SerializeToString()
    t0 = time.perf_counter()
    await asyncio.to_thread(
        subprocess.run,
        [str(tools / "buildctl"), "--addr", opts.buildkit_addr, "build", "--progress=quiet"],
        input=data,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


async def run(env: FarmEnv, runs: int) -> dict[str, Any]:
    tools = ROOT / ".tools" / "bin"
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        key = tmp / "bench.rsa"
        generate_key(key, key_size=2048)
        cache = tmp / "cache"
        results: dict[str, list[float]] = {
            "ours_lib": [],
            "ours_cli": [],
            "buildctl": [],
            "new_env": [],
        }
        async with RegistryClient(env.registry) as registry:
            builder = Builder(registry, cache)
            # prebuilt dependencies for the new-environment case
            deps_repo = tmp / "deps"
            for i in range(runs + 1):
                cfg = tmp / f"dep{i}.yaml"
                cfg.write_text(trivial(f"dep{i}", "dep", ["busybox"]))
                await builder.build(options(env, cfg, deps_repo, key, cache, []))
            for i in range(runs + 1):  # the first run warms up and is not counted
                nonce = uuid.uuid4().hex
                cfg = tmp / f"t{i}.yaml"
                cfg.write_text(trivial("trivial", nonce, ["busybox"]))
                t_lib = await ours(builder, options(env, cfg, tmp / f"o{i}", key, cache, []))
                cfg.write_text(trivial("trivial", uuid.uuid4().hex, ["busybox"]))
                t_ctl = await buildctl_time(
                    builder, options(env, cfg, tmp / "x", key, cache, []), tools
                )
                cfg.write_text(trivial("trivial", uuid.uuid4().hex, ["busybox"]))
                argv = [
                    sys.executable,
                    "-m",
                    "melange2",
                    "build",
                    str(cfg),
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
                t0 = time.perf_counter()
                await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)
                t_cli = time.perf_counter() - t0
                cfg.write_text(trivial("trivial", uuid.uuid4().hex, ["busybox", f"dep{i}"]))
                t_new = await ours(
                    builder, options(env, cfg, tmp / f"n{i}", key, cache, [str(deps_repo)])
                )
                if i:
                    results["ours_lib"].append(t_lib)
                    results["buildctl"].append(t_ctl)
                    results["ours_cli"].append(t_cli)
                    results["new_env"].append(t_new)
            await builder.aclose()
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"x86_64, {len(os.sched_getaffinity(0))} cores",
        "runs": runs,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_lib_vs_buildctl": round(med["ours_lib"] / med["buildctl"], 2),
        "ratio_cli_vs_buildctl": round(med["ours_cli"] / med["buildctl"], 2),
        "ratio_new_env_vs_buildctl": round(med["new_env"] / med["buildctl"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--farm-env", type=Path, default=ROOT / ".farm" / "env")
    args = parser.parse_args()
    env = FarmEnv.load(args.farm_env)
    print(json.dumps(asyncio.run(run(env, args.runs)), indent=2))


if __name__ == "__main__":
    main()
