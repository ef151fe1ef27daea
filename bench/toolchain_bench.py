"""Compiling real software: zlib and GNU hello (examples/) through the farm, through
upstream melange (bubblewrap runner), and with ``./configure && make`` on the host.

Each arm builds each package once, from the same upstream tarball (the farm's source
cache) and, for the farm and melange, the same toolchain repository:

* ``farm``: ``POST /api/v1/builds`` to the running farm's server with the config and
  ``force`` (no reuse of an earlier build) and a fresh nonce in ``env`` (so BuildKit's
  cache cannot answer either), then ``GET`` until it ends: the wall time a user waits,
  environment, solve, packaging and publishing included.
* ``melange``: ``melange build --runner bubblewrap`` with ``--repository-append`` the
  bootstrap repository and ``--cache-dir`` the source cache (apko builds its guest
  each time, as melange does).
* ``host``: unpack the tarball, ``./configure && make -j<cpus>`` (zlib's own configure,
  hello's autoconf one) with the host's gcc: the floor, no packaging at all.

The goal (issue 14) is the farm at most 1.2 x melange for each package. Run it on the
local farm (``make farm-up`` first)::

    .venv/bin/python bench/toolchain_bench.py --out toolchain.json
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx

from melange2.farm.local import FarmEnv

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    # name: (config, tarball digest, configure command)
    "zlib": (
        ROOT / "examples" / "zlib" / "zlib.yaml",
        "71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1",
        "./configure --prefix=/usr --shared",
    ),
    "gnu-hello": (
        ROOT / "examples" / "gnu-hello" / "gnu-hello.yaml",
        "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b",
        "./configure --prefix=/usr",
    ),
}


def farm_build(server: str, token: str, config: Path) -> float:
    body = {
        "config_yaml": config.read_text(),
        "force": True,
        "env": {"BENCH_NONCE": secrets.token_hex(8)},
    }
    auth = {"Authorization": f"Bearer {token}"} if token else {}  # the farm's admin token
    with httpx.Client(base_url=server, timeout=60, headers=auth) as client:
        start = time.monotonic()
        resp = client.post("/api/v1/builds", json=body)
        resp.raise_for_status()
        build_id = resp.json()["id"]
        while True:
            build = client.get(f"/api/v1/builds/{build_id}").json()
            if build["status"] not in ("pending", "running"):
                break
            time.sleep(0.2)
        took = time.monotonic() - start
    if build["status"] != "success":
        raise click.ClickException(f"farm build of {config.name}: {build['status']}")
    return took


def melange_build(env: FarmEnv, config: Path, work: Path) -> float:
    melange = ROOT / ".tools" / "bin" / "melange"
    key = work / "bench.rsa"
    if not key.exists():
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "melange2"), "keygen", str(key)],
            check=True,
            capture_output=True,
        )
    out = work / f"melange-{config.stem}"
    start = time.monotonic()
    done = subprocess.run(
        [
            str(melange),
            "build",
            str(config),
            "--runner",
            "bubblewrap",
            "--arch",
            "x86_64",
            "--repository-append",
            env.extra["BOOTSTRAP_REPO"],
            "--keyring-append",
            env.extra["BOOTSTRAP_KEY"],
            "--cache-dir",
            env.extra["SOURCE_CACHE"],
            "--signing-key",
            str(key),
            "--out-dir",
            str(out),
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - start
    if done.returncode != 0:
        raise click.ClickException(f"melange build of {config.name}:\n{done.stderr[-2000:]}")
    return took


def host_build(env: FarmEnv, digest: str, configure: str, work: Path) -> float:
    tree = work / f"host-{digest[:12]}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    start = time.monotonic()
    with tarfile.open(Path(env.extra["SOURCE_CACHE"]) / f"sha256:{digest}") as tar:
        tar.extractall(tree, filter="tar")
    (src,) = list(tree.iterdir())
    cpus = os.cpu_count() or 2
    subprocess.run(
        f"{configure} >/dev/null && make -j{cpus} >/dev/null",
        shell=True,
        cwd=src,
        check=True,
    )
    return time.monotonic() - start


@click.command()
@click.option("--farm", "farm_root", default=".farm", show_default=True, help="The running farm.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="JSON report.")
@click.option(
    "--package",
    "packages",
    multiple=True,
    type=click.Choice(sorted(PACKAGES)),
    help="Only these (default: all).",
)
@click.option(
    "--runs",
    default=1,
    show_default=True,
    help="Rounds; each round runs farm, melange and host once, one after the other, so "
    "the three share whatever else loads the machine. Medians are reported.",
)
def main(farm_root: str, out: Path | None, packages: tuple[str, ...], runs: int) -> None:
    """Wall time of zlib and GNU hello: farm vs upstream melange vs the host."""
    env_file = Path(farm_root) / "env"
    if not env_file.exists():
        raise click.ClickException("the farm is not running: `make farm-up` first")
    env = FarmEnv.load(env_file)
    if not env.melange_server:
        raise click.ClickException("the farm runs no server (farm-up --server)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="toolchain-bench-") as tmp:
        work = Path(tmp)
        for name in packages or sorted(PACKAGES):
            config, digest, configure = PACKAGES[name]
            times: dict[str, list[float]] = {"farm": [], "melange": [], "host": []}
            for _ in range(runs):
                times["farm"].append(farm_build(env.melange_server, env.melange_token, config))
                times["melange"].append(melange_build(env, config, work))
                times["host"].append(host_build(env, digest, configure, work))
            row: dict[str, Any] = {"package": name, "runs": runs}
            for arm, values in times.items():
                row[f"{arm}_s"] = round(statistics.median(values), 2)
                row[f"{arm}_all_s"] = [round(v, 2) for v in values]
            row["farm_over_melange"] = round(row["farm_s"] / row["melange_s"], 2)
            rows.append(row)
            click.echo(
                f"{name:10} farm {row['farm_s']:7.2f}s  melange {row['melange_s']:7.2f}s  "
                f"host {row['host_s']:6.2f}s  farm/melange {row['farm_over_melange']:.2f}"
                f"  (medians of {runs})"
            )
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cpus, {os.uname().machine}, {os.uname().sysname}",
        "load_average": os.getloadavg(),
        "goal": "farm_over_melange <= 1.2",
        "results": rows,
    }
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    if any(r["farm_over_melange"] > 1.2 for r in rows):
        click.echo("goal missed: the farm is slower than 1.2 x melange for some package")
    sys.exit(0)


if __name__ == "__main__":
    main()
