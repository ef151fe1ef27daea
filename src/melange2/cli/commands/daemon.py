"""``melange2 daemon info``: ask a BuildKit daemon what it is and what it can run."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table

from melange2.buildkit.client import BuildkitClient, DaemonInfo, WorkerInfo
from melange2.cli.context import CliContext, pass_cli


@click.group()
def daemon() -> None:
    """Inspect BuildKit daemons."""


async def _query(addr: str) -> tuple[DaemonInfo, list[WorkerInfo]]:
    async with BuildkitClient(addr) as bk:
        return await bk.info(), await bk.list_workers()


@daemon.command()
@click.option(
    "--buildkit-addr",
    envvar="BUILDKIT_ADDR",
    required=True,
    help="tcp://host:port or unix:///path of the daemon (env BUILDKIT_ADDR).",
)
@pass_cli
def info(ctx: CliContext, buildkit_addr: str) -> None:
    """Show the daemon's BuildKit version and its workers' platforms."""
    version, workers = asyncio.run(_query(buildkit_addr))
    ctx.console.print(f"{buildkit_addr}: {version.package} {version.version}")
    table = Table("worker", "platforms")
    for w in workers:
        table.add_row(w.id, ", ".join(str(p) for p in w.platforms))
    ctx.console.print(table)
