"""``melange-server``: the build service (REST API, build store, event-driven scheduler).

Flags are the reference's (api.md) plus ours; ``CACHE_REGISTRY``, ``CACHE_MODE`` and
``SECRET_ENV_<NAME>`` (secrets every build step gets as ``<NAME>``) come from the
environment. SIGINT/SIGTERM: stop accepting requests, finish in-flight
ones (up to 10 s), stop the scheduler, exit; running packages resume at the next start.

If the scheduler's loop or the health probes stop (the store failing as a whole, a
bug), ``/healthz`` answers 503 with the reason, submissions are refused, and two
seconds later the server shuts down the same way and exits with status 3, for its
service manager to restart it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, cast

import click
import uvicorn

from melange2.cli.tls import tls_from_flags, tls_options
from melange2.errors import FarmError
from melange2.server_tokens import check_store, store_options, tokens
from melange2.service.secrets import secret_env
from melange2.service.settings import ServerSettings
from melange2.storage import StorageSpec, open_storage
from melange2.store import StoreKind, open_store


class JsonFormatter(logging.Formatter):
    """Structured logs: one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


#: the exit status when a side task (the scheduler, the health probes) stopped
FATAL_EXIT = 3
#: seconds /healthz answers 503 before the server shuts down after such a stop
FATAL_GRACE_S = 2.0


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise click.BadParameter(f"{listen!r}: expected [host]:port", param_hint="--listen-addr")
    return host or "0.0.0.0", int(port)


class _ServerGroup(click.Group):
    """``melange-server [FLAGS]`` runs the server (as it always has: ``serve`` is
    implied); ``melange-server tokens ...`` manages its API tokens."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.list_commands(ctx):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


@click.command(name="serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen-addr", default=":8080", show_default=True, help="HTTP listen address.")
@click.option(
    "--advertise-url",
    default="",
    help="Where the other replicas on the same database reach this server's API (a log "
    "followed through one of them is proxied here), e.g. http://10.0.0.7:8080. Default: "
    "http://<host>:<port> of --listen-addr, a wildcard host (':8080', 0.0.0.0) being this "
    "machine's host name (the server itself speaks plain HTTP).",
)
@click.option("--buildkit-addr", help="One BuildKit backend (single-backend mode).")
@tls_options(envvars=False, what="the --buildkit-addr daemon")
@click.option(
    "--backends-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Backends YAML (multi-backend mode).",
)
@click.option("--default-arch", default="x86_64", show_default=True, help="Default architecture.")
@click.option(
    "--output-dir",
    default="/var/lib/melange/output",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Local storage: packages, logs, the published repository (<output-dir>/repo).",
)
@click.option("--gcs-bucket", help="Keep logs, artifacts and the repository in this GCS bucket.")
@click.option(
    "--gcs-endpoint",
    envvar="STORAGE_EMULATOR_HOST",
    help="GCS endpoint URL (an emulator; env STORAGE_EMULATOR_HOST).  [default: Google]",
)
@click.option("--gcs-project", default="", help="GCS project (for credentials that need one).")
@click.option(
    "--s3-bucket", help="Keep logs, artifacts and the repository in this S3(-compatible) bucket."
)
@click.option("--s3-endpoint", help="S3-compatible endpoint URL.  [default: AWS]")
@click.option("--s3-region", default="", help="S3 region.")
@click.option(
    "--s3-path-style", is_flag=True, help="Path-style S3 addressing (MinIO, most emulators)."
)
@click.option("--storage-prefix", default="", help="Key prefix inside the bucket.")
@click.option(
    "--memory-storage",
    is_flag=True,
    help="Keep logs, artifacts and the repository in memory (tests; lost on exit).",
)
@click.option(
    "--max-log-bytes",
    default=64 * 1024 * 1024,
    show_default=True,
    help="A package log stops growing here, with a marker where it was cut.",
)
@click.option(
    "--source-cache",
    default="",
    help="melange's source cache, shared by every backend: a directory, gs://bucket[/prefix] "
    "or s3://bucket[/prefix] (the --gcs-*/--s3-* endpoint flags apply). Files named "
    "sha256:<hex>; a build's fetch uses the one its expected-sha256 names. Uploads: PUT "
    "/api/v1/sources/sha256:<hex>.  [default: <data-dir>/sources]",
)
@click.option(
    "--max-source-bytes",
    default=4 * 1024 * 1024 * 1024,
    show_default=True,
    help="Largest upload to the source cache (413 above).",
)
@store_options
@click.option(
    "--registry",
    envvar="REGISTRY",
    required=True,
    help="host:port of the registry the daemons pull from and push to (env REGISTRY).",
)
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The farm's RSA key (made on first start).  [default: <data-dir>/melange2.rsa]",
)
@click.option(
    "--repository",
    "repositories",
    multiple=True,
    help="An APK repository every build environment may install from (repeatable).",
)
@click.option("--keyring", "keyrings", multiple=True, help="A public key for those (repeatable).")
@click.option(
    "--schedule",
    type=click.Choice(["critical-path", "fifo"]),
    default="critical-path",
    show_default=True,
    help="Order among ready packages.",
)
@click.option(
    "--max-attempts", default=3, show_default=True, help="Tries per package on backend faults."
)
@click.option(
    "--plan-workers",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Processes that parse a large dry run's configs (0: one per core; 1: in the server).",
)
@click.option(
    "--lease-ttl",
    default=15.0,
    show_default=True,
    help="Seconds a running package's lease lasts (renewed every third of it); a server "
    "that cannot renew its leases for that long stops.",
)
@click.option(
    "--max-body-bytes",
    default=64 * 1024 * 1024,
    show_default=True,
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--probe-interval",
    default=5.0,
    show_default=True,
    help="Seconds between health probes of each backend.",
)
@click.option(
    "--fetch-allow",
    "fetch_allow",
    multiple=True,
    metavar="PATTERN",
    help="Repository and keyring URLs configs may make the server fetch (repeatable): a "
    "glob over the whole URL if it has '://' (https://packages.wolfi.dev/os*), else over "
    "the host or host:port (packages.wolfi.dev, *.example.com). None by default; local "
    "paths a config names are never read.",
)
@click.option(
    "--fetch-timeout",
    default=30.0,
    show_default=True,
    help="Seconds for each connect, read and write of such a fetch.",
)
@click.option(
    "--git-allow-local",
    is_flag=True,
    help="Let git_source clone local paths and file:// URLs (tests, trusted clients).",
)
@click.option(
    "--git-allow",
    "git_allow",
    multiple=True,
    metavar="HOST_GLOB",
    help="Hosts git_source may clone from (repeatable): a glob over the host "
    "(github.com, *.example.org, '*' for any) or, with a colon, over host:port "
    "(git.example.org:2222). None by default.",
)
@click.option("--git-jobs", default=2, show_default=True, help="git_source clones at once.")
@click.option(
    "--git-timeout",
    default=120.0,
    show_default=True,
    help="Seconds a git_source clone may take, waiting for a free slot included.",
)
@click.option(
    "--git-connect-timeout",
    default=20.0,
    show_default=True,
    help="Seconds git may spend connecting (ssh) or receiving nothing (http).",
)
@click.option(
    "--package-timeout",
    default=36000.0,
    show_default=True,
    help="Seconds a package's attempt may run (wall clock) before it fails 'timed out' and "
    "its solve is cancelled: the default of a build's timeout_s and a config's "
    "package.timeout, and the most either may ask. 0: no limit.",
)
@click.option(
    "--max-silent",
    default=7200.0,
    show_default=True,
    help="Seconds a package's build may go without writing any output before it fails "
    "'timed out' and its solve is cancelled (as Hydra's maxSilentTime). 0: no limit.",
)
@click.option(
    "--parse-cache-bytes",
    default=256 * 1024 * 1024,
    show_default=True,
    help="Memory for parsed configs kept for resubmissions (estimated).",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="No tokens: anyone who reaches the server may submit, cancel and manage "
    "backends (logged as a warning at start). Default: every request but /healthz "
    "and /repo needs a token (melange-server tokens create).",
)
@click.option(
    "--public-read",
    is_flag=True,
    help="Anonymous callers may read builds, packages, logs and artifacts.",
)
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line (time, level, logger, message).",
)
def serve(
    listen_addr: str,
    advertise_url: str,
    buildkit_addr: str | None,
    backends_config: Path | None,
    default_arch: str,
    output_dir: Path,
    gcs_bucket: str | None,
    gcs_endpoint: str | None,
    gcs_project: str,
    s3_bucket: str | None,
    s3_endpoint: str | None,
    s3_region: str,
    s3_path_style: bool,
    storage_prefix: str,
    memory_storage: bool,
    max_log_bytes: int,
    source_cache: str,
    max_source_bytes: int,
    data_dir: Path,
    store: str,
    postgres_dsn: str,
    registry: str,
    signing_key: Path | None,
    repositories: tuple[str, ...],
    keyrings: tuple[str, ...],
    schedule: str,
    max_attempts: int,
    plan_workers: int,
    lease_ttl: float,
    max_body_bytes: int,
    probe_interval: float,
    fetch_allow: tuple[str, ...],
    fetch_timeout: float,
    git_allow_local: bool,
    git_allow: tuple[str, ...],
    git_jobs: int,
    git_timeout: float,
    git_connect_timeout: float,
    package_timeout: float,
    max_silent: float,
    parse_cache_bytes: int,
    no_auth: bool,
    public_read: bool,
    log_level: str,
    log_format: str,
    **tls_flags: Any,
) -> None:
    """Run the melange2 build service.

    Environment: CACHE_REGISTRY and CACHE_MODE (a BuildKit registry cache for every
    solve); SECRET_ENV_<NAME>=value gives every build step the secret <NAME> as an
    environment variable (a BuildKit secret: in no LLB and no digest, masked as *** in
    logs, never shown by the API).

    API tokens: `melange-server tokens create|list|revoke` (see `melange-server tokens
    --help`), with the same --data-dir, --store and --postgres-dsn.
    """
    chosen = [n for n, v in (("--gcs-bucket", gcs_bucket), ("--s3-bucket", s3_bucket)) if v]
    if memory_storage:
        chosen.append("--memory-storage")
    if len(chosen) > 1:
        raise click.UsageError(f"choose one storage: {' or '.join(chosen)}")
    storage = StorageSpec(kind="local", path=output_dir.resolve())
    if gcs_bucket:
        storage = StorageSpec(
            kind="gcs",
            bucket=gcs_bucket,
            prefix=storage_prefix,
            endpoint_url=gcs_endpoint or "",
            project=gcs_project,
        )
    elif s3_bucket:
        storage = StorageSpec(
            kind="s3",
            bucket=s3_bucket,
            prefix=storage_prefix,
            endpoint_url=s3_endpoint or "",
            region=s3_region,
            path_style=s3_path_style,
        )
    elif memory_storage:
        storage = StorageSpec(kind="memory")
    if max_log_bytes < 1024:
        raise click.BadParameter("at least 1024", param_hint="--max-log-bytes")
    if not buildkit_addr and backends_config is None:
        raise click.UsageError("give --buildkit-addr or --backends-config")
    if git_jobs < 1:
        raise click.BadParameter("at least 1", param_hint="--git-jobs")
    for value, flag in (
        (lease_ttl, "--lease-ttl"),
        (fetch_timeout, "--fetch-timeout"),
        (git_timeout, "--git-timeout"),
        (git_connect_timeout, "--git-connect-timeout"),
    ):
        if value <= 0:
            raise click.BadParameter("must be positive", param_hint=flag)
    for value, flag in ((package_timeout, "--package-timeout"), (max_silent, "--max-silent")):
        if value < 0:
            raise click.BadParameter("must not be negative (0: no limit)", param_hint=flag)
    buildkit_tls = tls_from_flags(tls_flags)
    if buildkit_tls is not None and not buildkit_addr:
        raise click.UsageError(
            "the TLS flags are for --buildkit-addr; give a backend's TLS settings under its "
            "`tls:` in the backends config"
        )
    check_store(store, postgres_dsn)
    if store == "memory" and not no_auth:
        raise click.UsageError(
            "--store memory keeps no tokens anyone could have made: give --no-auth, or "
            "keep the store in SQLite or PostgreSQL (melange-server tokens create)"
        )
    if advertise_url and not advertise_url.startswith(("http://", "https://")):
        raise click.BadParameter(
            f"{advertise_url!r}: expected an http:// or https:// URL", param_hint="--advertise-url"
        )
    settings = ServerSettings(
        listen_addr=listen_addr,
        advertise_url=advertise_url.rstrip("/"),
        buildkit_addr=buildkit_addr,
        buildkit_tls=buildkit_tls,
        backends_config=backends_config,
        default_arch=default_arch,
        output_dir=output_dir.resolve(),
        data_dir=data_dir.resolve(),
        store=cast(StoreKind, store),  # one of click.Choice's
        postgres_dsn=postgres_dsn if store == "postgres" else "",
        registry=registry,
        signing_key=signing_key,
        repositories=repositories,
        keyrings=keyrings,
        schedule="fifo" if schedule == "fifo" else "critical-path",
        max_attempts=max_attempts,
        plan_workers=plan_workers,
        lease_ttl=lease_ttl,
        max_body_bytes=max_body_bytes,
        probe_interval=probe_interval,
        cache_registry=os.environ.get("CACHE_REGISTRY", ""),
        cache_mode=os.environ.get("CACHE_MODE", "min"),
        storage=storage,
        max_log_bytes=max_log_bytes,
        source_cache=source_cache,
        source_cache_spec=_source_cache_spec(
            source_cache,
            gcs_endpoint=gcs_endpoint or "",
            gcs_project=gcs_project,
            s3_endpoint=s3_endpoint or "",
            s3_region=s3_region,
            s3_path_style=s3_path_style,
        ),
        max_source_bytes=max_source_bytes,
        fetch_allow=fetch_allow,
        fetch_timeout=fetch_timeout,
        git_allow_local=git_allow_local,
        git_allow=git_allow,
        git_jobs=git_jobs,
        git_timeout=git_timeout,
        git_connect_timeout=git_connect_timeout,
        parse_cache_bytes=parse_cache_bytes,
        secret_env=secret_env(os.environ),
        package_timeout=package_timeout,
        max_silent=max_silent,
        auth=not no_auth,
        public_read=public_read,
    )
    asyncio.run(_check_storage(storage))  # a missing bucket or bad credentials: refuse now
    if store == "postgres":  # an unreachable database: one line and exit 3, not a traceback
        asyncio.run(_check_postgres(data_dir.resolve(), postgres_dsn))
    from melange2.api.app import create_app, pool_config

    pool = pool_config(settings)  # a bad backends config or TLS file: refuse now, naming it

    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level.upper(), handlers=[handler], force=True)
    host, port = _host_port(listen_addr)
    from melange2 import tracing

    tracing.configure_from_env()  # OTEL_* variables: traces exported with OTLP
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)

        def stop() -> None:
            if server is not None:
                server.should_exit = True  # the same graceful shutdown as SIGTERM

        # /healthz answers 503 (with the reason) a moment before the server goes
        asyncio.get_running_loop().call_later(FATAL_GRACE_S, stop)

    config = uvicorn.Config(
        create_app(settings, pool=pool, on_fatal=on_fatal),
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers go through the handler above
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        tracing.shutdown()
    if fatal:
        click.echo(f"melange-server: stopped: {fatal[0]}", err=True)
        sys.exit(FATAL_EXIT)


def _source_cache_spec(
    location: str,
    *,
    gcs_endpoint: str,
    gcs_project: str,
    s3_endpoint: str,
    s3_region: str,
    s3_path_style: bool,
) -> StorageSpec | None:
    """The endpoint and credentials of a bucket source cache (from the storage flags)."""
    if location.startswith("gs://"):
        return StorageSpec(kind="gcs", endpoint_url=gcs_endpoint, project=gcs_project)
    if location.startswith("s3://"):
        return StorageSpec(
            kind="s3", endpoint_url=s3_endpoint, region=s3_region, path_style=s3_path_style
        )
    if "://" in location:
        raise click.BadParameter(
            f"{location!r}: expected a directory, gs://bucket[/prefix] or s3://bucket[/prefix]",
            param_hint="--source-cache",
        )
    return None


@click.group(cls=_ServerGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """melange-server: run the build service (the flags of `serve`, the default), or
    manage its API tokens (`tokens`)."""


cli.add_command(serve)
cli.add_command(tokens)


async def _check_storage(spec: StorageSpec) -> None:
    storage = open_storage(spec)
    try:
        await storage.check()
    finally:
        await storage.aclose()


async def _check_postgres(data_dir: Path, dsn: str) -> None:
    """Open (and migrate) the PostgreSQL store once before the server starts."""
    async with open_store("postgres", data_dir=data_dir, dsn=dsn):
        pass


def main() -> None:
    try:
        cli()
    except FarmError as exc:
        click.echo(f"melange-server: {exc}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
