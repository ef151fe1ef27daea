"""``melange-server tokens create|list|revoke``: the farm's API tokens, managed where
its store is (the server need not run; a running one sees a change at its next
request). They take the server's own store flags (``--data-dir``, ``--store``,
``--postgres-dsn``), defined here for both.

``create`` prints the token's secret as its last line: the only time it is shown (the
store keeps its SHA-256)::

    TOKEN=$(melange-server tokens create --name ci --role submit --data-dir /srv/m | tail -1)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from click.core import ParameterSource

from melange2.auth import Role, Token, parse_expiry
from melange2.errors import ConfigError, FarmError
from melange2.store import JobStore, StoreKind, open_store
from melange2.store.sql.postgres import postgres_url

__all__ = ["check_store", "store_options", "tokens"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


def store_options(f: _F) -> _F:
    """``--data-dir``, ``--store`` and ``--postgres-dsn``, as the server takes them."""
    for option in reversed(
        [
            click.option(
                "--data-dir",
                default="/var/lib/melange/data",
                show_default=True,
                type=click.Path(file_okay=False, path_type=Path),
                help="The build store (SQLite), submitted files, caches, the signing key.",
            ),
            click.option(
                "--store",
                type=click.Choice(["sqlite", "postgres", "memory"]),
                default="sqlite",
                show_default=True,
                help="Where builds are kept: SQLite in --data-dir, PostgreSQL at "
                "--postgres-dsn, or memory (lost on exit).",
            ),
            click.option(
                "--postgres-dsn",
                envvar="POSTGRES_DSN",
                default="",
                help="The database of --store postgres: postgresql://user[:password]@host"
                "[:port]/db (a unix socket: ?host=/run/postgresql). Migrated at start. "
                "(env POSTGRES_DSN)",
            ),
        ]
    ):
        f = option(f)
    return f


def check_store(store: str, dsn: str) -> None:
    """``--store postgres`` needs a valid DSN; a DSN on the command line needs it too
    (POSTGRES_DSN in the environment is read only by ``--store postgres``)."""
    ctx = click.get_current_context()
    if store == "postgres":
        if not dsn:
            raise click.UsageError("--store postgres needs --postgres-dsn (or POSTGRES_DSN)")
        try:
            postgres_url(dsn)
        except ConfigError as exc:
            raise click.BadParameter(exc.message, param_hint="--postgres-dsn") from None
    elif dsn and ctx.get_parameter_source("postgres_dsn") is ParameterSource.COMMANDLINE:
        raise click.UsageError(f"--postgres-dsn needs --store postgres (not --store {store})")


def _with_store(
    data_dir: Path, store: str, dsn: str, work: Callable[[JobStore], Awaitable[_T]]
) -> _T:
    check_store(store, dsn)
    if store == "memory":
        raise click.UsageError(
            "--store memory lives inside the server process: its tokens cannot be made "
            "here (run the server with --store sqlite or postgres, or with --no-auth)"
        )

    where = data_dir.resolve()

    async def run() -> _T:
        async with open_store(cast(StoreKind, store), data_dir=where, dsn=dsn or None) as opened:
            return await work(opened)

    try:
        return asyncio.run(run())
    except FarmError as exc:
        click.echo(f"melange-server tokens: {exc}", err=True)
        sys.exit(exc.exit_code)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state(token: Token, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.valid_at(now) else "expired"


def _json(token: Token, now: datetime) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role.value,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
        "state": _state(token, now),
    }


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def tokens() -> None:
    """Create, list and revoke API tokens, in the server's store.

    \b
    Roles:
      read    read builds, logs, artifacts, backends, metrics
      submit  also submit builds, cancel its own, see their env values
      admin   also manage backends and tokens, cancel any build

    A token goes in each request as `Authorization: Bearer <token>` (melange2 remote
    --token or MELANGE_TOKEN). The store keeps only its SHA-256: a lost token cannot be
    shown again; revoke it and make another.
    """


@tokens.command()
@click.option("--name", required=True, help="Who or what holds it (ci, alice@example.org).")
@click.option(
    "--role", required=True, type=click.Choice([r.value for r in Role]), help="What it may do."
)
@click.option(
    "--expires",
    metavar="WHEN",
    help="A duration (90d, 12h, 30m, 2w) or an ISO 8601 date or time.  [default: never]",
)
@store_options
def create(
    name: str, role: str, expires: str | None, data_dir: Path, store: str, postgres_dsn: str
) -> None:
    """Make a token; its secret is the last line printed (shown this once)."""
    from melange2.service.tokens import issue_token

    now = datetime.now(UTC)
    try:
        expires_at = parse_expiry(expires, now) if expires else None
    except FarmError as exc:
        raise click.BadParameter(exc.message, param_hint="--expires") from None
    issued = _with_store(
        data_dir,
        store,
        postgres_dsn,
        lambda s: issue_token(s, name=name, role=Role(role), expires_at=expires_at, now=now),
    )
    token = issued.token
    until = f", expires {_when(token.expires_at)}" if token.expires_at else ""
    click.echo(f"created token {token.id} {token.name!r} (role {token.role}{until}):", err=True)
    click.echo(issued.secret)


@tokens.command(name="list")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="A table, or JSON for scripts.",
)
@store_options
def list_tokens(output: str, data_dir: Path, store: str, postgres_dsn: str) -> None:
    """Every token, oldest first: id, name, role, state, times. Never a secret."""
    found = _with_store(data_dir, store, postgres_dsn, lambda s: s.list_tokens())
    now = datetime.now(UTC)
    if output == "json":
        click.echo(json.dumps({"tokens": [_json(t, now) for t in found]}, indent=2))
        return
    rows = [("ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES", "REVOKED")]
    rows += [
        (
            t.id,
            t.name,
            t.role.value,
            _state(t, now),
            _when(t.created_at),
            _when(t.expires_at),
            _when(t.revoked_at),
        )
        for t in found
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@tokens.command()
@click.argument("token")
@store_options
def revoke(token: str, data_dir: Path, store: str, postgres_dsn: str) -> None:
    """Revoke TOKEN (its id, or the name of the token not revoked): it is refused from
    then on."""
    from melange2.service.tokens import revoke_token

    revoked = _with_store(data_dir, store, postgres_dsn, lambda s: revoke_token(s, token))
    click.echo(f"revoked token {revoked.id} {revoked.name!r} (role {revoked.role})")
