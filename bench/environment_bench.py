"""The first build's environment: what composing a toolchain environment costs a server
that has never seen its packages (issue 14: GNU hello's first build spent ~51 s planning).

One round, for each world (default: GNU hello's ``build-base busybox tar``, x86_64):

* ``cold``: a fresh package cache, layer cache and registry: the packages are fetched
  from the bootstrap repository (copied and verified), each becomes a layer (its data
  stream, the digest of its inflated tar, its installed-db fragment) and is pushed, then
  the environment's own layer, config and manifest;
* ``layers``: the same with the packages already fetched (a fresh layer cache and
  registry): the layers and the pushes alone;
* ``warm``: the same builder again: one manifest lookup.

Everything is what :meth:`EnvironmentBuilder.prepare` does for a build (the daemon's
pull and unpack are not part of it). The registry is Debian's ``docker-registry``, started
for each round in its own directory (:meth:`LocalFarm.start_registry`), so no blob is
there before. Wall and process CPU time (threads included), medians of ``--runs``.

The bootstrap repository: ``--repo DIR`` (with ``keys/`` beside ``repo/``, as
``.farm/bootstrap``), else the local farm's (``.farm/env``)::

    .venv/bin/python bench/environment_bench.py --runs 3 --out env.json
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from melange2.build.environment_resolve import EnvironmentBuilder, EnvironmentRequest
from melange2.farm.local import FarmEnv, LocalFarm
from melange2.oci.registry import RegistryClient

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORLD = ("build-base", "busybox", "tar")


async def _prepare(registry: str, cache: Path, request: EnvironmentRequest) -> tuple[float, float]:
    """(wall, cpu) seconds of one ``prepare``."""
    async with RegistryClient(registry) as client:
        builder = EnvironmentBuilder(client, cache)
        try:
            start, cpu = time.perf_counter(), time.process_time()
            await builder.prepare(request)
            return time.perf_counter() - start, time.process_time() - cpu
        finally:
            await builder.aclose()


async def _warm(registry: str, cache: Path, request: EnvironmentRequest) -> tuple[float, float]:
    async with RegistryClient(registry) as client:
        builder = EnvironmentBuilder(client, cache)
        try:
            await builder.prepare(request)
            start, cpu = time.perf_counter(), time.process_time()
            await builder.prepare(request)
            return time.perf_counter() - start, time.process_time() - cpu
        finally:
            await builder.aclose()


def one_round(work: Path, request: EnvironmentRequest) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for phase in ("cold", "layers", "warm"):
        farm = LocalFarm(work / f"registry-{phase}", tools_dir=ROOT / ".tools")
        try:
            registry = asyncio.run(farm.start_registry())
            cache = work / "cache"
            if phase == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            else:  # packages fetched, layers made afresh
                shutil.rmtree(cache / "layers", ignore_errors=True)
            run = _warm if phase == "warm" else _prepare
            out[phase] = asyncio.run(run(registry, cache, request))
        finally:
            farm.down()
    return out


@click.command()
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--arch", default="x86_64", show_default=True)
@click.option("--runs", default=3, show_default=True)
@click.option("--world", multiple=True, help=f"packages (default: {' '.join(DEFAULT_WORLD)})")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
def main(repo: Path | None, arch: str, runs: int, world: tuple[str, ...], out: Path | None) -> None:
    """Time composing a toolchain environment on a fresh server (see the module doc)."""
    if repo is None:
        env = FarmEnv.load(ROOT / ".farm" / "env")
        repo, key = Path(env.extra["BOOTSTRAP_REPO"]), Path(env.extra["BOOTSTRAP_KEY"])
    else:
        (key,) = sorted((repo.parent / "keys").glob("*.rsa.pub"))
    request = EnvironmentRequest(
        arch=arch, packages=world or DEFAULT_WORLD, repositories=[str(repo)], keyring=[str(key)]
    )
    rounds = []
    with tempfile.TemporaryDirectory(prefix="env-bench-") as tmp:
        for n in range(runs):
            result = one_round(Path(tmp), request)
            rounds.append(result)
            click.echo(
                f"round {n + 1}: "
                + ", ".join(f"{k} {w:.2f} s (cpu {c:.2f} s)" for k, (w, c) in result.items())
                + f"; load {os.getloadavg()[0]:.1f}"
            )
    summary: dict[str, Any] = {
        "world": list(request.packages),
        "arch": arch,
        "runs": runs,
        "cpus": os.cpu_count(),
        "load_after": os.getloadavg()[0],
    }
    for phase in ("cold", "layers", "warm"):
        summary[phase] = {
            "wall_median": statistics.median(r[phase][0] for r in rounds),
            "cpu_median": statistics.median(r[phase][1] for r in rounds),
            "wall": [r[phase][0] for r in rounds],
        }
        click.echo(
            f"{phase}: median {summary[phase]['wall_median']:.2f} s wall, "
            f"{summary[phase]['cpu_median']:.2f} s cpu"
        )
    if out is not None:
        out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
