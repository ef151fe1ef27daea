"""``melange2 daemon info``: ask a BuildKit daemon what it is and what it can run."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.table import Table

from melange2.buildkit.client import BuildkitClient, DaemonInfo, WorkerInfo
from melange2.buildkit.tls import ClientTLS
from melange2.cli.context import CliContext, pass_cli
from melange2.cli.tls import tls_from_flags, tls_options


@click.group()
def daemon() -> None:
    """Inspect BuildKit daemons."""


async def _query(addr: str, tls: ClientTLS | None) -> tuple[DaemonInfo, list[WorkerInfo]]:
    async with BuildkitClient(addr, tls=tls) as bk:
        return await bk.info(), await bk.list_workers()


@daemon.command()
@click.option(
    "--buildkit-addr",
    envvar="BUILDKIT_ADDR",
    required=True,
    help="tcp://host:port or unix:///path of the daemon (env BUILDKIT_ADDR).",
)
@tls_options()
@pass_cli
def info(ctx: CliContext, /, buildkit_addr: str, **tls: Any) -> None:
    """Show the daemon's BuildKit version and its workers' platforms."""
    version, workers = asyncio.run(_query(buildkit_addr, tls_from_flags(tls)))
    ctx.console.print(f"{buildkit_addr}: {version.package} {version.version}")
    table = Table("worker", "platforms")
    for w in workers:
        table.add_row(w.id, ", ".join(str(p) for p in w.platforms))
    ctx.console.print(table)
