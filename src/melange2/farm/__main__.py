"""``python -m melange2.farm up|down|status|smoke``: the local farm behind ``make farm-up``."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from melange2.errors import FarmError
from melange2.farm.local import FARM_STORES, FarmEnv, LocalFarm
from melange2.farm.smoke import run_smoke
from melange2.farm.toolchain import default_cache_dir


def _farm(
    root: str,
    tools: str,
    daemons: int = 2,
    server: bool = True,
    tls: bool = False,
    toolchain: bool = True,
    store: str = "sqlite",
    replicas: int = 1,
) -> LocalFarm:
    return LocalFarm(
        Path(root),
        tools_dir=Path(tools),
        daemons=daemons,
        server=server,
        tls=tls,
        toolchain_cache=default_cache_dir() if toolchain else None,
        store=store,
        replicas=replicas,
    )


@click.group()
@click.option("--root", default=".farm", show_default=True, help="Where the farm keeps its state.")
@click.option("--tools", default=".tools", show_default=True, help="Where `make setup` put tools.")
@click.pass_context
def cli(ctx: click.Context, root: str, tools: str) -> None:
    """Start, stop and check the local build farm."""
    ctx.obj = (root, tools)


@cli.command()
@click.option("--daemons", default=2, show_default=True, help="How many buildkitd daemons.")
@click.option(
    "--server/--no-server",
    default=True,
    show_default=True,
    help="Also start melange-server (first daemon x86_64, second aarch64).",
)
@click.option(
    "--tls/--no-tls",
    default=False,
    show_default=True,
    help="Daemons serve TLS and require a client certificate (made into <root>/tls/; "
    "the server and .farm/env use it). `make farm-up FARM_TLS=1`.",
)
@click.option(
    "--toolchain/--no-toolchain",
    default=True,
    show_default=True,
    help="Publish the toolchain converted from Debian (gcc, make, autoconf, ...) beside "
    "busybox in the bootstrap repository (cached in $MELANGE2_TOOLCHAIN_CACHE, default "
    "~/.cache/melange2/toolchain).",
)
@click.option(
    "--store",
    type=click.Choice(FARM_STORES),
    default="sqlite",
    show_default=True,
    help="The server's store: SQLite in <root>/server/data, or a PostgreSQL cluster "
    "initdb'd into <root>/postgres (Debian's postgresql binaries; a unix socket and a "
    "loopback port; POSTGRES_DSN in <root>/env). `make farm-up FARM_STORE=postgres`.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many melange-server replicas (more than one needs --store postgres): one "
    "database, one storage (<root>/server/output), one signing key, each on its own "
    "port; MELANGE_SERVERS in <root>/env lists them. `make farm-up FARM_REPLICAS=3`.",
)
@click.pass_obj
def up(
    obj: tuple[str, str],
    daemons: int,
    server: bool,
    tls: bool,
    toolchain: bool,
    store: str,
    replicas: int,
) -> None:
    """Start the registry, push the base image, build the bootstrap repository, start
    the buildkitd daemons and the server (or, with --store postgres, PostgreSQL and
    --replicas servers)."""
    if replicas > 1 and store != "postgres":
        raise click.UsageError(
            f"--replicas {replicas} needs --store postgres (the replicas share one database)"
        )
    farm = _farm(
        *obj,
        daemons=daemons,
        server=server,
        tls=tls,
        toolchain=toolchain,
        store=store,
        replicas=replicas,
    )
    running = farm.running_services()
    if running:
        click.echo(
            f"farm already running under {farm.root} ({', '.join(running)}); nothing changed"
        )
        return
    env = asyncio.run(farm.up())
    for tarball, problem in farm.source_problems:
        click.echo(f"warning: {tarball.filename} is not in the source cache: {problem}", err=True)
    for tc in farm.bootstrap.toolchains if farm.bootstrap else ():
        click.echo(
            f"toolchain {tc.arch}: {len(tc.packages)} packages "
            f"({tc.converted} converted now, the rest cached) in {tc.seconds:.1f}s"
        )
    click.echo(f"farm up: registry {env.registry}, buildkitd {' '.join(env.buildkit_addrs)}")
    click.echo(f"base image {env.base_image}")
    if env.tls_ca_cert:
        click.echo(
            f"daemons serve TLS; client certificate {env.tls_cert}, key {env.tls_key}, "
            f"CA {env.tls_ca_cert}"
        )
    if "POSTGRES_DSN" in env.extra:
        click.echo(f"PostgreSQL {env.extra['POSTGRES_DSN']} (log: {farm.postgres.log_file})")
    servers = env.melange_servers
    if len(servers) > 1 or "POSTGRES_DSN" in env.extra:
        for n, url in enumerate(servers):
            click.echo(
                f"melange-server replica {n} {url} (log: {farm.root}/logs/melange-server-{n}.log)"
            )
    elif env.melange_server:
        click.echo(
            f"melange-server {env.melange_server} (log: {farm.root}/logs/melange-server.log)"
        )
    click.echo(f"environment in {farm.env_file} (source it: `. {os.path.relpath(farm.env_file)}`)")


@cli.command()
@click.pass_obj
def down(obj: tuple[str, str]) -> None:
    """Stop every farm process and clear its mounts and lock files."""
    stopped = _farm(*obj).down()
    click.echo(f"farm down: stopped {', '.join(stopped)}" if stopped else "farm was not running")


@cli.command()
@click.pass_obj
def status(obj: tuple[str, str]) -> None:
    """Show which farm processes run (each server replica, PostgreSQL) and .farm/env."""
    farm = _farm(*obj)
    running = farm.running_services()
    if not running:
        click.echo("farm is not running")
        sys.exit(1)
    click.echo(f"running: {', '.join(running)}")
    if farm.env_file.exists():
        click.echo(farm.env_file.read_text().rstrip())


@cli.command()
@click.pass_obj
def smoke(obj: tuple[str, str]) -> None:
    """Build on every daemon and platform of the running farm, and show the results."""
    farm = _farm(*obj)
    if not farm.env_file.exists():
        raise click.ClickException("the farm is not running: `make farm-up` first")
    env = FarmEnv.load(farm.env_file)
    results = asyncio.run(run_smoke(env))
    table = Table(title="smoke build: a step on each daemon and platform")
    for col in ("daemon", "arch", "uname -m in the step", "result image"):
        table.add_column(col)
    for r in results:
        table.add_row(r.daemon, r.arch, r.uname, r.image)
    Console().print(table)
    bad = [r for r in results if r.uname != r.arch]
    if bad:
        raise click.ClickException(f"{len(bad)} smoke builds ran on the wrong platform")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except FarmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


main()
