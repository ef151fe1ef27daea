"""``melange2 remote …``: submit builds to a build server and watch, list and cancel them;
manage its BuildKit backends. The HTTP calls live in ``melange2.cli.remote_client``."""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn, TypeVar

import click
import httpx
from click.core import ParameterSource
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from melange2.cli.context import CliContext
from melange2.cli.remote_client import DEFAULT_SERVER, RemoteClient, RemoteError, RequestRejected
from melange2.cli.tls import tls_from_flags, tls_options
from melange2.errors import ConfigError, FarmError
from melange2.jobs import BuildStatus, PackageStatus
from melange2.wire import (
    AddBackendRequest,
    BackendTLS,
    Base64Content,
    BuildEventOut,
    BuildList,
    BuildOut,
    BuildSummary,
    CreateBuildRequest,
    GitSource,
    PackageEventOut,
    PackageOut,
    PlanOut,
    SourceContent,
)

EXIT_BUILD_FAILED = 1
#: consecutive failed polls before a wait gives up
_WATCH_RETRIES = 5
_F = TypeVar("_F", bound=Callable[..., Any])

_TERMINAL_BUILD = frozenset(
    {BuildStatus.SUCCESS, BuildStatus.FAILED, BuildStatus.PARTIAL, BuildStatus.CANCELLED}
)


@dataclass(kw_only=True)
class RemoteContext(CliContext):
    """What ``remote`` commands get: the consoles, and the transport to the server.

    ``transport`` is None for the network; tests pass ``httpx.MockTransport(handler)``::

        ctx = RemoteContext(console=..., err_console=..., transport=httpx.MockTransport(fake))
        CliRunner().invoke(cli, ["remote", "list"], obj=ctx)
    """

    #: how requests reach the server (None: httpx's default, the network)
    transport: httpx.BaseTransport | None = None
    #: the API token (``--token`` or MELANGE_TOKEN); None: anonymous
    token: str | None = None

    def client(self, server: str) -> RemoteClient:
        return RemoteClient(server, transport=self.transport, token=self.token)


pass_remote = click.make_pass_decorator(RemoteContext)


# errors and exit codes


def _show_error(console: Console, exc: FarmError) -> None:
    console.print(Text(f"error: {exc.message}"), highlight=False, soft_wrap=True)
    details = exc.details if isinstance(exc, RemoteError) else None
    if details is None or details == {} or details == []:
        return
    lines: list[str] = []
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "message" in item:
                where = item.get("field") or item.get("loc") or ""
                lines.append(f"{where}: {item['message']}" if where else str(item["message"]))
            else:
                lines.append(str(item))
    elif isinstance(details, dict):
        # each invalid config is already a line of the message
        lines.extend(f"{k}: {v}" for k, v in details.items() if k != "configs")
    else:
        lines.append(str(details))
    for line in lines:
        console.print(Text(f"  {line}"), highlight=False, soft_wrap=True)


class _RemoteGroup(click.Group):
    """Every ``remote`` command's errors end here: a clean message and the exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FarmError as exc:
            found = ctx.find_object(CliContext)
            _show_error(found.err_console if found else Console(stderr=True), exc)
            # sys.exit, not ctx.exit: the code must survive ``cli(standalone_mode=False)``
            sys.exit(exc.exit_code)


@click.group(cls=_RemoteGroup)
@click.pass_context
def remote(ctx: click.Context) -> None:
    """Build on a build server (melange-server) instead of a local daemon.

    Every command takes --server (default http://localhost:8080, env MELANGE_SERVER)
    and --token (an API token, env MELANGE_TOKEN).

    \b
    Exit codes:
      0  success (with --wait or `wait`: the build succeeded)
      1  the build failed, was partial or was cancelled; or the server failed (5xx)
      2  bad usage or invalid input, including a request the server refused (4xx)
      3  the server cannot be reached
    """
    if not isinstance(ctx.obj, RemoteContext):
        base = ctx.find_object(CliContext)
        ctx.obj = RemoteContext(
            console=base.console if base else Console(),
            err_console=base.err_console if base else Console(stderr=True),
        )


# shared options


def _check_server(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _keep_token(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    token = (value or "").strip()
    if token and (token != value or any(c.isspace() or ord(c) < 0x20 for c in token)):
        raise click.BadParameter("a token is one word, without spaces or control characters")
    remote_ctx = ctx.find_object(RemoteContext)
    if remote_ctx is not None:
        remote_ctx.token = token or None


def server_option(f: _F) -> _F:
    """``--server``, and ``--token`` with it (every command that talks to a server)."""
    f = click.option(
        "--token",
        envvar="MELANGE_TOKEN",
        metavar="TOKEN",
        expose_value=False,
        callback=_keep_token,
        help="An API token for the server (env MELANGE_TOKEN); without one, only what "
        "the server lets anyone do.",
    )(f)
    return click.option(
        "--server",
        envvar="MELANGE_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        callback=_check_server,
        help="The build server's URL (env MELANGE_SERVER).",
    )(f)


def output_option(f: _F) -> _F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Tables for people, or JSON (the API's field names) for scripts.",
    )(f)


def poll_option(f: _F) -> _F:
    return click.option(
        "--poll-interval",
        type=click.FloatRange(min=0),
        default=2.0,
        show_default=True,
        help="Seconds between status polls while waiting, when the server has no events "
        "stream (an older server) or it dropped.",
    )(f)


def _pairs(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    """Repeated ``K=V`` options as a dict (the last one wins)."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value
    return pairs


# rendering


def _print_json(console: Console, data: BaseModel | dict[str, Any]) -> None:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    console.out(json.dumps(data, indent=2), highlight=False)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _duration(pkg: PackageOut) -> str:
    if pkg.duration is not None:
        return _seconds(pkg.duration)
    if pkg.started_at is not None and pkg.finished_at is not None:
        return _seconds((pkg.finished_at - pkg.started_at).total_seconds())
    if pkg.started_at is not None:
        started = pkg.started_at
        if started.tzinfo is None:
            started = started.replace(tzinfo=UTC)
        return _seconds(max(0.0, (datetime.now(UTC) - started).total_seconds())) + " so far"
    return "-"


def _arch(build: BuildOut) -> str:
    if build.spec.arch:
        return build.spec.arch
    arches = sorted({p.arch for p in build.packages if p.arch})
    return ", ".join(arches) or "-"


def _packages_table(packages: Iterable[PackageOut]) -> Table:
    packages = list(packages)
    with_reason = any(p.reason for p in packages)
    table = Table("NAME", "STATUS", "DURATION", "ERROR", *(["REASON"] if with_reason else []))
    for p in packages:
        status = f"{p.status} (cached)" if p.cached else p.status
        row = [Text(p.name), Text(status), Text(_duration(p)), Text(p.error or "")]
        if with_reason:
            row.append(Text(p.reason or ""))
        table.add_row(*row)
    return table


def _render_build(console: Console, build: BuildOut) -> None:
    header = Table.grid(padding=(0, 2))
    header.add_column(style="bold")
    header.add_column()
    for label, value in (
        ("Build ID:", build.id),
        ("Status:", build.status),
        ("Created:", _when(build.created_at)),
        ("Arch:", _arch(build)),
        ("Started:", _when(build.started_at)),
        ("Finished:", _when(build.finished_at)),
        ("Submitted by:", build.submitted_by or "-"),
        *([("Commit:", build.source_commit)] if build.source_commit else []),
    ):
        header.add_row(label, Text(value))
    console.print(header)
    console.print(_packages_table(build.packages))


def _render_plan(console: Console, plan: PlanOut) -> None:
    console.print(
        Text(f"Plan: {len(plan.packages)} packages on {plan.slots} slots (dry run)"),
        highlight=False,
    )
    table = Table("#", "NAME", "DEPENDENCIES", "PRIORITY", title="Build order")
    for n, p in enumerate(plan.packages, 1):
        table.add_row(
            str(n), Text(p.name), Text(", ".join(p.dependencies) or "-"), f"{p.priority:g}"
        )
    console.print(table)
    cut = ", ".join(f"{a} -> {b}" for a, b in plan.cut_edges) or "none"
    lines = [
        f"Cut edges:          {cut}",
        f"Critical path:      {' -> '.join(plan.critical_path) or '-'}"
        f" ({_seconds(plan.critical_path_s)})",
        f"Total work:         {_seconds(plan.total_work_s)}",
        f"Lower bound:        {_seconds(plan.lower_bound_s)}",
        f"Estimated makespan: {_seconds(plan.estimated_makespan_s)}",
    ]
    for line in lines:
        console.print(Text(line), highlight=False, soft_wrap=True)
    if plan.unplaceable:
        console.print(
            Text(f"Never placed ({len(plan.unplaceable)}): no backend could run them"),
            highlight=False,
        )
        for name, why in plan.unplaceable.items():
            console.print(Text(f"  {name}: {why}"), highlight=False, soft_wrap=True)


def _status_line(pkg: PackageOut | PackageEventOut) -> str:
    status = pkg.status
    backend = pkg.backend.addr if isinstance(pkg, PackageOut) and pkg.backend else ""
    if isinstance(pkg, PackageEventOut):
        backend = pkg.backend
    attempts = len(pkg.attempts) if isinstance(pkg, PackageOut) else pkg.attempt
    took = pkg.duration if isinstance(pkg, PackageOut) else None
    if isinstance(pkg, PackageEventOut) and pkg.started_at and pkg.finished_at:
        took = (pkg.finished_at - pkg.started_at).total_seconds()
    if status in (PackageStatus.FAILED, PackageStatus.SKIPPED) and pkg.error:
        return f"{status}: {pkg.error}"
    if status in (PackageStatus.BLOCKED, PackageStatus.PENDING) and pkg.reason:
        return f"{status} ({pkg.reason})"
    if status == PackageStatus.RUNNING and backend:
        return f"{status} on {backend}"
    if status == PackageStatus.SUCCESS and pkg.cached:
        how = "reused at submission" if not attempts else f"in {_seconds(took or 0)}"
        return f"{status}, cached: {how} (inputs unchanged since an earlier build)"
    if status == PackageStatus.SUCCESS and took is not None:
        return f"{status} in {_seconds(took)}"
    return status


class _Seen:
    """What a wait has printed: one line per package whenever its status changes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.status: dict[str, str] = {}
        self.width = 0

    def show(self, pkg: PackageOut | PackageEventOut) -> None:
        if self.status.get(pkg.name) == pkg.status:
            return
        self.status[pkg.name] = pkg.status
        stamp = datetime.now().strftime("%H:%M:%S")
        line = f"{stamp}  {pkg.name:<{self.width}}  {_status_line(pkg)}"
        self.console.print(Text(line), highlight=False, soft_wrap=True)

    def build(self, build: BuildOut) -> None:
        self.width = max((len(p.name) for p in build.packages), default=0)
        for p in build.packages:
            self.show(p)


class _StreamEnded(Exception):
    """The events stream is not there (an older server) or stopped: poll instead."""


def _watch(client: RemoteClient, build_id: str, poll: float, console: Console) -> BuildOut:
    """Follow the build until it ends, printing a line whenever a package changes state:
    from the server's events stream, or by polling when the server has none (an older
    server answers 404) or the stream drops."""
    seen = _Seen(console)
    try:
        return _watch_events(client, build_id, seen)
    except _StreamEnded:
        pass
    except RequestRejected as exc:
        if exc.status != 404:
            raise
    except RemoteError as exc:  # the server failed: carry on by polling, which retries
        console.print(Text(f"warning: {exc.message}; retrying"), highlight=False, soft_wrap=True)
    return _poll(client, build_id, poll, seen)


def _watch_events(client: RemoteClient, build_id: str, seen: _Seen) -> BuildOut:
    for message in client.events(build=build_id):
        if message.event in ("hello", "resync"):
            # subscribed (or events were missed): the state now, then the changes after it
            build = client.get_build(build_id)
            seen.build(build)
            if build.status in _TERMINAL_BUILD:
                return build
        elif isinstance(message.data, PackageEventOut):
            seen.show(message.data)
        elif isinstance(message.data, BuildEventOut) and message.data.status in _TERMINAL_BUILD:
            build = client.get_build(build_id)
            seen.build(build)
            return build
    raise _StreamEnded()


def _poll(client: RemoteClient, build_id: str, poll: float, seen: _Seen) -> BuildOut:
    """Poll the build until it ends. The server failing or unreachable is retried
    (``_WATCH_RETRIES`` times in a row)."""
    failures = 0
    while True:
        try:
            build = client.get_build(build_id)
        except RequestRejected:
            raise
        except RemoteError as exc:  # a restart or a blip must not end an hour-long wait
            failures += 1
            if failures >= _WATCH_RETRIES:
                raise
            seen.console.print(
                Text(f"warning: {exc.message}; retrying"), highlight=False, soft_wrap=True
            )
            time.sleep(max(poll, 0.5 * failures) if poll else 0)
            continue
        failures = 0
        seen.build(build)
        if build.status in _TERMINAL_BUILD:
            return build
        time.sleep(poll)


def _finish(ctx: RemoteContext, build: BuildOut, output: str) -> NoReturn:
    """Show the finished build and exit: 0 on success, 1 otherwise."""
    if output == "json":
        _print_json(ctx.console, build)
    else:
        _render_build(ctx.console, build)
        counts: dict[str, int] = {}
        for p in build.packages:
            counts[p.status] = counts.get(p.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        cached = sum(1 for p in build.packages if p.cached)
        if cached:
            summary += f"; {cached} cached"
        ctx.console.print(
            Text(f"Build {build.id}: {build.status} ({summary})"), highlight=False, soft_wrap=True
        )
    sys.exit(0 if build.status == BuildStatus.SUCCESS else EXIT_BUILD_FAILED)


# the upload convention: ./pipelines/ and ./<package-name>/ beside each config


def _tree_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its POSIX path relative to ``root``.

    Symlinks are followed while they stay inside ``root``; one that leads out of it, or
    nowhere, or round in a loop is refused (``ConfigError``)."""
    top = root.resolve()
    files: dict[str, bytes] = {}

    def visit(directory: Path, rel: PurePosixPath, seen: frozenset[Path]) -> None:
        for entry in sorted(directory.iterdir()):
            name = rel / entry.name
            real = entry.resolve()
            if entry.is_symlink():
                if not real.is_relative_to(top):
                    raise ConfigError(f"{entry}: symlink leads outside {root} (to {real})")
                if not real.exists():
                    raise ConfigError(f"{entry}: dangling symlink")
            if real.is_dir():
                if real in seen:
                    raise ConfigError(f"{entry}: symlink loop")
                visit(entry, name, seen | {real})
            elif real.is_file():
                files[str(name)] = real.read_bytes()

    try:
        visit(root, PurePosixPath(), frozenset({top}))
    except OSError as exc:
        raise ConfigError(f"cannot read {root}: {exc}") from exc
    return files


def _package_name(path: Path, text: str) -> str:
    from ruamel.yaml import YAML  # submit only: not loaded for status, list ...
    from ruamel.yaml.error import YAMLError

    try:
        data: Any = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    package = data.get("package") if isinstance(data, dict) else None
    name = package.get("name") if isinstance(package, dict) else None
    if not name or not isinstance(name, str | int | float):
        raise ConfigError(f"{path}: no package.name")
    return str(name)


@dataclass(kw_only=True)
class Upload:
    """What the configs bring along, in the shapes ``CreateBuildRequest`` wants."""

    configs: list[str]
    #: ``{"relative/path.yaml": text}`` from each config's ./pipelines/
    pipelines: dict[str, str]
    #: ``{"pkgname": {"relative/path": {"base64": ...}}}`` from each ./<package-name>/
    source_files: dict[str, dict[str, SourceContent]]


def collect_upload(paths: Sequence[Path]) -> Upload:
    upload = Upload(configs=[], pipelines={}, source_files={})
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        upload.configs.append(text)
        name = _package_name(path, text)
        pipelines_dir = path.parent / "pipelines"
        if pipelines_dir.is_dir():
            for rel, data in _tree_files(pipelines_dir).items():
                if PurePosixPath(rel).suffix not in (".yaml", ".yml"):
                    continue
                try:
                    pipeline = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{pipelines_dir / rel}: not UTF-8 text") from exc
                if upload.pipelines.get(rel, pipeline) != pipeline:
                    raise ConfigError(f"two different pipelines/{rel} beside the configs")
                upload.pipelines[rel] = pipeline
        source_dir = path.parent / name
        if source_dir.is_dir():
            files = upload.source_files.setdefault(name, {})
            for rel, data in _tree_files(source_dir).items():
                files[rel] = Base64Content(base64=base64.b64encode(data).decode("ascii"))
    return upload


# builds


@remote.command()
@click.argument("configs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@server_option
@click.option("--arch", help="Target architecture  [default: the server's].")
@click.option("--test", "with_test", is_flag=True, help="Also run the configs' tests.")
@click.option("--debug", is_flag=True, help="Verbose build logs.")
@click.option(
    "--wait", is_flag=True, help="Follow the build until it ends; exit 1 unless it succeeds."
)
@poll_option
@click.option(
    "--backend-selector",
    multiple=True,
    callback=_pairs,
    metavar="K=V",
    help="Only backends with this label (repeatable; every pair must match).",
)
@click.option(
    "--mode",
    type=click.Choice(["flat", "dag"]),
    default="flat",
    show_default=True,
    help="flat: no ordering; dag: dependencies first.",
)
@click.option(
    "--env",
    multiple=True,
    callback=_pairs,
    metavar="K=V",
    help="Build environment variable (repeatable).",
)
@click.option(
    "--secret",
    "secret_names",
    multiple=True,
    metavar="NAME",
    help="Give every step the secret NAME, its value taken from this shell's environment "
    "variable NAME (repeatable; a BuildKit secret: masked in logs, never shown back).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    help="Seconds each package may run before it fails 'timed out'  "
    "[default: the config's package.timeout, else the server's --package-timeout].",
)
@click.option("--git-repo", help="Build the configs of this git repository instead of files.")
@click.option("--git-ref", help="Branch, tag or commit of --git-repo.")
@click.option("--git-pattern", default="*.yaml", show_default=True, help="Configs in --git-repo.")
@click.option("--git-path", help="Directory of --git-repo to look in.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (order, critical path, makespan); build nothing.",
)
@click.option(
    "--cycle-policy",
    type=click.Choice(["error", "break"]),
    default="error",
    show_default=True,
    help="A dependency cycle is an error, or is broken at the cheapest edge.",
)
@click.option(
    "--schedule",
    type=click.Choice(["critical-path", "fifo"]),
    help="Order ready packages by critical path or by submission  [default: the server's].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Rebuild even packages whose inputs did not change; their steps run again "
    "(BuildKit's cache does not answer for them).",
)
@click.option(
    "--publish",
    type=click.Choice(["package", "build"]),
    default="package",
    show_default=True,
    help="Into the farm's repository as each package succeeds, or once the whole build has.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Let this build replace packages the farm's repository holds under the same "
    "name, version and epoch with other content (refused otherwise; each replacement is "
    "logged).",
)
@output_option
@pass_remote
def submit(
    ctx: RemoteContext,
    configs: tuple[Path, ...],
    server: str,
    arch: str | None,
    with_test: bool,
    debug: bool,
    wait: bool,
    poll_interval: float,
    backend_selector: dict[str, str],
    mode: str,
    env: dict[str, str],
    secret_names: tuple[str, ...],
    timeout_s: float | None,
    git_repo: str | None,
    git_ref: str | None,
    git_pattern: str,
    git_path: str | None,
    dry_run: bool,
    cycle_policy: str,
    schedule: str | None,
    force: bool,
    publish: str,
    replace: bool,
    output: str,
) -> None:
    """Submit melange configs (or a git repository's) to the build server.

    ./pipelines/ and ./<package-name>/ beside each config are uploaded when present:
    the pipelines for `uses:`, the directory as the package's sources (bytes intact).
    """
    git_given = git_ref is not None or git_path is not None
    pattern_src = click.get_current_context().get_parameter_source("git_pattern")
    git_given = git_given or pattern_src == ParameterSource.COMMANDLINE
    if configs and git_repo:
        raise click.UsageError("give config files or --git-repo, not both")
    if not configs and not git_repo:
        raise click.UsageError("nothing to build: give config files or --git-repo")
    if git_given and not git_repo:
        raise click.UsageError("--git-ref, --git-pattern and --git-path need --git-repo")
    if dry_run and wait:
        raise click.UsageError("--dry-run builds nothing: there is nothing to --wait for")

    missing = [n for n in secret_names if n not in os.environ]
    if missing:
        raise click.UsageError(f"--secret {missing[0]}: no such environment variable here")
    secrets = {n: os.environ[n] for n in secret_names}

    source: dict[str, Any]
    if git_repo:
        source = {
            "git_source": GitSource(
                repository=git_repo, ref=git_ref or "", pattern=git_pattern, path=git_path or ""
            )
        }
    else:
        upload = collect_upload(configs)
        texts = upload.configs
        source = {"config_yaml": texts[0]} if len(texts) == 1 else {"configs": texts}
        source.update(pipelines=upload.pipelines, source_files=upload.source_files)
    try:
        # validated by the server's own model: what it would refuse, we refuse first
        request = CreateBuildRequest.model_validate(
            {
                **source,
                "arch": arch,
                "backend_selector": backend_selector,
                "mode": mode,
                "with_test": with_test,
                "debug": debug,
                "env": env,
                "secrets": secrets,
                "timeout_s": timeout_s,
                "cycle_policy": cycle_policy,
                "dry_run": dry_run,
                "schedule": schedule,
                "force": force,
                "publish": publish,
                "replace": replace,
            }
        )
    except ValidationError as exc:  # without the input: it may hold --secret values
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid build request: {problems}") from None

    with ctx.client(server) as client:
        result = client.submit(request)
        if isinstance(result, PlanOut):
            if output == "json":
                _print_json(ctx.console, result)
            else:
                _render_plan(ctx.console, result)
            return
        if not wait:
            if output == "json":
                _print_json(ctx.console, result)
            else:
                ctx.console.print(
                    Text(f"Build {result.id} submitted: {len(result.packages)} packages"),
                    highlight=False,
                )
                ctx.console.print(
                    Text(f"Build order: {', '.join(result.packages)}"), highlight=False
                )
                if result.cut_edges:
                    cut = ", ".join(f"{a} -> {b}" for a, b in result.cut_edges)
                    ctx.console.print(
                        Text(f"Cycle edges cut (built against the published repository): {cut}"),
                        highlight=False,
                    )
            return
        progress = ctx.err_console if output == "json" else ctx.console
        progress.print(
            Text(f"Build {result.id} submitted, waiting"), highlight=False, soft_wrap=True
        )
        build = _watch(client, result.id, poll_interval, progress)
    _finish(ctx, build, output)


@remote.command()
@click.argument("build_id")
@server_option
@output_option
@pass_remote
def status(ctx: RemoteContext, build_id: str, server: str, output: str) -> None:
    """Show a build and its packages."""
    with ctx.client(server) as client:
        build = client.get_build(build_id)
    if output == "json":
        _print_json(ctx.console, build)
    else:
        _render_build(ctx.console, build)


@remote.command(name="list")
@server_option
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Builds per page."
)
@click.option("--status", type=click.Choice([s.value for s in BuildStatus]), help="Only these.")
@click.option("--cursor", help="Start at this page (a previous page's next_cursor).")
@click.option("--all", "all_pages", is_flag=True, help="Follow the pages to the oldest build.")
@output_option
@pass_remote
def list_builds(
    ctx: RemoteContext,
    server: str,
    limit: int,
    status: str | None,
    cursor: str | None,
    all_pages: bool,
    output: str,
) -> None:
    """List builds, newest first."""
    with ctx.client(server) as client:
        if all_pages:
            builds: list[BuildSummary] = list(
                client.iter_builds(limit=limit, cursor=cursor, status=status)
            )
            page = BuildList(builds=builds, next_cursor=None)
        else:
            page = client.list_builds(limit=limit, cursor=cursor, status=status)
    if output == "json":
        _print_json(ctx.console, page)
        return
    table = Table("ID", "STATUS", "PACKAGES", "BY STATUS", "CREATED", "SUBMITTED BY")
    for b in page.builds:
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(b.counts.items()))
        table.add_row(
            Text(b.id),
            Text(b.status),
            str(b.packages),
            Text(by_status),
            _when(b.created_at),
            Text(b.submitted_by or "-"),
        )
    ctx.console.print(table)
    if page.next_cursor:
        ctx.err_console.print(
            Text(f"more builds: --cursor {page.next_cursor} (or --all)"), highlight=False
        )


@remote.command()
@click.argument("build_id")
@server_option
@poll_option
@output_option
@pass_remote
def wait(ctx: RemoteContext, build_id: str, server: str, poll_interval: float, output: str) -> None:
    """Wait for a build to end: exit 0 if it succeeded, 1 if it failed, was partial or
    was cancelled."""
    progress = ctx.err_console if output == "json" else ctx.console
    with ctx.client(server) as client:
        build = _watch(client, build_id, poll_interval, progress)
    _finish(ctx, build, output)


@remote.command()
@click.argument("build_id")
@click.argument("package")
@server_option
@click.option(
    "--download",
    "download_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Download them into this directory (as <arch>/<file>).",
)
@output_option
@pass_remote
def artifacts(
    ctx: RemoteContext,
    build_id: str,
    package: str,
    server: str,
    download_dir: Path | None,
    output: str,
) -> None:
    """List a package's built files (APKs, index), or download them."""
    with ctx.client(server) as client:
        found = client.artifacts(build_id, package)
        if download_dir is not None:
            for item in found.artifacts:
                size = client.download(build_id, package, item.path, download_dir / item.path)
                ctx.console.print(
                    Text(f"{download_dir / item.path}  {size} bytes"), highlight=False
                )
            return
    if output == "json":
        _print_json(ctx.console, found)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("PATH", "SIZE", "LOCATION"):
        table.add_column(column)
    for item in found.artifacts:
        table.add_row(item.path, str(item.size), item.location)
    ctx.console.print(table)


@remote.command()
@click.argument("build_id")
@click.argument("package")
@server_option
@click.option("-f", "--follow", is_flag=True, help="Stream the log until the package ends.")
@pass_remote
def logs(ctx: RemoteContext, build_id: str, package: str, server: str, follow: bool) -> None:
    """Print a package's build log."""
    out = ctx.console.file
    with ctx.client(server) as client:
        if not follow:
            out.write(client.logs(build_id, package).decode("utf-8", errors="replace"))
            out.flush()
            return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in client.follow_logs(build_id, package):
            out.write(decoder.decode(chunk))
            out.flush()
        out.write(decoder.decode(b"", final=True))
        out.flush()


@remote.command()
@click.argument("build_id")
@server_option
@output_option
@pass_remote
def cancel(ctx: RemoteContext, build_id: str, server: str, output: str) -> None:
    """Cancel a build: running packages are stopped, waiting ones never start."""
    with ctx.client(server) as client:
        build = client.cancel(build_id)
    if output == "json":
        _print_json(ctx.console, build)
    else:
        ctx.console.print(
            Text(f"Build {build.id}: {build.status}"), highlight=False, soft_wrap=True
        )
        ctx.console.print(_packages_table(build.packages))


# backends


@remote.group()
def backends() -> None:
    """The server's BuildKit backends."""


@backends.command(name="list")
@server_option
@click.option("--arch", help="Only backends of this architecture.")
@output_option
@pass_remote
def list_backends(ctx: RemoteContext, server: str, arch: str | None, output: str) -> None:
    """The architectures served, then each backend."""
    with ctx.client(server) as client:
        found = client.backends(arch=arch)
    if output == "json":
        _print_json(ctx.console, found)
        return
    ctx.console.print(
        Text(f"Architectures: {', '.join(found.architectures) or '-'}"), highlight=False
    )
    table = Table("ADDR", "ARCH", "LABELS")
    for b in found.backends:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(b.labels.items()))
        table.add_row(Text(b.addr), Text(b.arch), Text(labels))
    ctx.console.print(table)


@backends.command(name="add")
@server_option
@click.option("--addr", required=True, help="tcp://host:port of the BuildKit daemon.")
@click.option("--arch", required=True, help="Its architecture (x86_64, aarch64).")
@click.option(
    "--label", multiple=True, callback=_pairs, metavar="K=V", help="A label (repeatable)."
)
@click.option(
    "--max-jobs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Concurrent jobs (0: the server's default).",
)
@click.option(
    "--cpu",
    help="The machine's cores, a Kubernetes quantity (8, 7500m); packages are placed "
    "by what they ask (package.resources). Absent: not declared, unlimited.",
)
@click.option(
    "--memory",
    help="The machine's memory, a Kubernetes quantity (32Gi, 64G). Absent: unlimited.",
)
@tls_options(envvars=False, what="the backend")
@output_option
@pass_remote
def add_backend(
    ctx: RemoteContext,
    /,
    server: str,
    addr: str,
    arch: str,
    label: dict[str, str],
    max_jobs: int,
    cpu: str | None,
    memory: str | None,
    output: str,
    **tls_flags: Any,
) -> None:
    """Add a backend; the server refuses an address it already has. With the TLS
    flags the server reaches it over TLS: the files are read here and their contents
    sent to the server, which keeps them (and never shows them back)."""
    tls = tls_from_flags(tls_flags)
    try:
        request = AddBackendRequest(
            addr=addr,
            arch=arch,
            labels=label,
            maxJobs=max_jobs,
            cpu=cpu,
            memory=memory,
            tls=None
            if tls is None
            else BackendTLS(
                caCert=tls.ca_cert.decode() if tls.ca_cert else None,
                cert=tls.cert.decode() if tls.cert else None,
                key=tls.key.decode() if tls.key else None,
                serverName=tls.server_name,
            ),
        )
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    with ctx.client(server) as client:
        added = client.add_backend(request)
    if output == "json":
        _print_json(ctx.console, added)
    else:
        ctx.console.print(
            Text(f"Added backend {added.addr} ({added.arch})"), highlight=False, soft_wrap=True
        )


@backends.command(name="remove")
@server_option
@click.option("--addr", required=True, help="The backend to remove.")
@pass_remote
def remove_backend(ctx: RemoteContext, server: str, addr: str) -> None:
    """Remove a backend; the server refuses to remove the last one."""
    if not addr:
        raise click.BadParameter("must not be empty", param_hint="--addr")
    with ctx.client(server) as client:
        client.remove_backend(addr)
    ctx.console.print(Text(f"Removed backend {addr}"), highlight=False, soft_wrap=True)


@backends.command(name="status")
@server_option
@output_option
@pass_remote
def backend_status(ctx: RemoteContext, server: str, output: str) -> None:
    """Each backend's health: circuit state, jobs, failures, last probe, version."""
    with ctx.client(server) as client:
        found = client.backend_status()
    if output == "json":
        _print_json(ctx.console, found)
        return
    table = Table(
        "ADDR", "ARCH", "STATE", "ACTIVE/MAX", "CPU", "MEMORY", "FAILURES", "LAST PROBE", "VERSION"
    )
    for b in found.backends:
        state = b.circuitState or ("open" if b.circuitOpen else "closed")
        if b.draining:
            state += ", draining"
        if b.reservedFor:
            state += f", kept for {b.reservedFor}"
        probe = _when(b.lastProbe)
        if b.lastProbeResult:
            probe += f" {b.lastProbeResult}"
        table.add_row(
            Text(b.addr),
            Text(b.arch),
            Text(state),
            f"{b.activeJobs}/{b.maxJobs}",
            f"{b.cpuInUse}/{b.cpu}" if b.cpu else "-",
            f"{b.memoryInUse}/{b.memory}" if b.memory else "-",
            str(b.failures),
            Text(probe),
            Text(b.buildkitVersion or "-"),
        )
    ctx.console.print(table)


@remote.group()
def sources() -> None:
    """The server's source cache: the files fetch steps use instead of downloading."""


@sources.command(name="add")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@server_option
@output_option
@pass_remote
def add_sources(ctx: RemoteContext, files: tuple[Path, ...], server: str, output: str) -> None:
    """Upload FILES to the source cache, each under its sha256 (what a config's fetch
    names as expected-sha256); files the cache already holds are not sent again."""
    results = []
    with ctx.client(server) as client:
        for path in files:
            digest = "sha256:" + _sha256(path)
            if client.has_source(digest):
                results.append({"file": str(path), "digest": digest, "uploaded": False})
                if output != "json":
                    ctx.console.print(  # one line per file, however long its path
                        Text(f"{digest}  {path}: already in the source cache"),
                        highlight=False,
                        soft_wrap=True,
                    )
                continue
            added = client.add_source(path, digest)
            results.append({"file": str(path), "digest": digest, "uploaded": True})
            if output != "json":
                ctx.console.print(
                    Text(f"{digest}  {path}: added ({added.size} bytes)"),
                    highlight=False,
                    soft_wrap=True,
                )
    if output == "json":
        _print_json(ctx.console, {"sources": results})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
