"""``melange2 build`` and ``melange2 test``: one config, one BuildKit daemon, no server."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from melange2.build.executor import Builder, BuildOptions, BuildResult, prepare
from melange2.build.progress import LiveSink, LogFileSink, PlainSink, StepSink, open_log
from melange2.build.source_cache import SourceCache
from melange2.buildkit.client import StepFailed
from melange2.cli.context import CliContext, pass_cli
from melange2.cli.tls import tls_from_flags, tls_options
from melange2.errors import ConfigError, LintFailed
from melange2.oci.registry import RegistryClient
from melange2.recipe import Config
from melange2.service.limits import Watchdog
from melange2.timing import parse_duration


def _read_env_file(path: Path | None) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines skipped), as melange reads them."""
    if path is None:
        return {}
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    return env


def _read_vars_file(path: Path | None) -> dict[str, str]:
    """A YAML mapping of variables that override the config's ``vars``."""
    if path is None:
        return {}
    try:
        data: Any = YAML(typ="safe").load(path.read_text())
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of variable names to values")
    return {str(k): "" if v is None else str(v) for k, v in data.items()}


def build_options(f: Any) -> Any:
    """The flags ``build`` and ``test`` share (melange's names where melange has them)."""
    options = [
        click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option("--arch", default="x86_64", show_default=True, help="Target architecture."),
        click.option(
            "--out-dir",
            default="packages",
            show_default=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Where APKs go: <out-dir>/<arch>/<name>-<version>-r<epoch>.apk.",
        ),
        click.option(
            "--source-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Sources placed in /home/build (default: ./<package-name>/ beside the config).",
        ),
        click.option(
            "--pipeline-dir",
            "pipeline_dirs",
            multiple=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Where `uses:` pipelines are looked up before ./pipelines/ and the built-ins.",
        ),
        click.option(
            "--signing-key",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="RSA private key (NAME.rsa, with NAME.rsa.pub beside it) to sign with.",
        ),
        click.option(
            "--repository-append",
            "repositories",
            multiple=True,
            help="An APK repository (directory or URL) for the build environment.",
        ),
        click.option(
            "--keyring-append",
            "keyrings",
            multiple=True,
            help="A public key (file or URL) trusted for the repositories.",
        ),
        click.option(
            "--env-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="KEY=VALUE lines exported to every step.",
        ),
        click.option(
            "--vars-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML mapping overriding the config's vars.",
        ),
        click.option(
            "--buildkit-addr",
            envvar="BUILDKIT_ADDR",
            required=True,
            help="The daemon: tcp://host:port or unix:///path (env BUILDKIT_ADDR).",
        ),
        click.option(
            "--registry",
            envvar="REGISTRY",
            required=True,
            help="host:port of the registry the daemon pulls from and pushes to (env REGISTRY).",
        ),
        click.option(
            "--base-image",
            envvar="BASE_IMAGE",
            help="Image to build in when the config installs no packages (env BASE_IMAGE).",
        ),
        click.option(
            "--network",
            type=click.Choice(["default", "none"]),
            default="default",
            show_default=True,
            help="Steps' network: the daemon's default (on), or none (hermetic).",
        ),
        click.option(
            "--cache-dir",
            default="./melange-cache/",
            show_default=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="melange's source cache: a fetch whose expected-sha256 names a file here "
            "(sha256:<hex>) uses it instead of downloading (mounted at /var/cache/melange).",
        ),
        click.option(
            "--apk-cache-dir",
            default=lambda: str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "melange2"),
            type=click.Path(file_okay=False, path_type=Path),
            help="Fetched packages and environment layers.  [default: ~/.cache/melange2]",
        ),
        click.option(
            "--log-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The full build log  [default: <out-dir>/logs/<name>-<arch>.log].",
        ),
        click.option(
            "--namespace",
            default="unknown",
            show_default=True,
            help="Distribution namespace: the packages' maintainer and the SBOM's supplier "
            "and package URLs (melange's flag).",
        ),
        click.option(
            "--git-commit",
            default="",
            help="Commit of the repository holding the config  [default: its HEAD, else "
            "'unknown'].",
        ),
        click.option(
            "--git-repo-url",
            default="",
            help="URL of the repository holding the config, for the SBOM.",
        ),
        click.option(
            "--license",
            "config_license",
            default="NOASSERTION",
            show_default=True,
            help="License of the config file itself, for the SBOM.",
        ),
        click.option(
            "--timeout",
            default="",
            metavar="DURATION",
            help="Fail the build 'timed out' after this long (a Go duration: 90s, 30m, 1h30m; "
            "as melange's, it overrides the config's package.timeout)  [default: the "
            "config's package.timeout, else none].",
        ),
        click.option("--plain", is_flag=True, help="Plain progress lines, even on a terminal."),
        click.option(
            "--debug", is_flag=True, help="Trace every command of every step (set -x) in the log."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return tls_options()(f)


def _options(kw: dict[str, Any], *, with_test: bool) -> BuildOptions:
    config: Path = kw["config"]
    return BuildOptions(
        config=config,
        arch=kw["arch"],
        buildkit_addr=kw["buildkit_addr"],
        buildkit_tls=tls_from_flags(kw),
        registry=kw["registry"],
        out_dir=kw["out_dir"],
        cache_dir=kw["apk_cache_dir"].expanduser(),
        source_cache=SourceCache.open(kw["cache_dir"]) if kw["cache_dir"].is_dir() else None,
        source_dir=kw["source_dir"],
        pipeline_dirs=kw["pipeline_dirs"],
        signing_key=kw["signing_key"],
        repositories=kw["repositories"],
        keyrings=kw["keyrings"],
        env=_read_env_file(kw["env_file"]),
        vars=_read_vars_file(kw["vars_file"]),
        base_image=kw["base_image"],
        network="none" if kw["network"] == "none" else "unset",
        with_test=with_test,
        source_date_epoch=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
        debug=bool(kw["debug"]),
        namespace=kw["namespace"],
        git_commit=kw["git_commit"],
        git_repo_url=kw["git_repo_url"],
        config_license=kw["config_license"],
    )


@contextlib.contextmanager
def _sinks(ctx: CliContext, log_path: Path, plain: bool) -> Iterator[list[StepSink]]:
    with open_log(log_path) as log:
        sinks: list[StepSink] = [LogFileSink(log)]
        if plain or not ctx.console.is_terminal:
            sinks.append(PlainSink(ctx.console))
            yield sinks
        else:
            with LiveSink(ctx.console) as live:
                sinks.append(live)
                yield sinks


async def _run(
    opts: BuildOptions, sinks: list[StepSink], test_only: bool, limit: tuple[float, str]
) -> BuildResult | int:
    watch = Watchdog(limit=limit[0], source=limit[1])
    async with RegistryClient(opts.registry) as registry, watch.guard():
        watch.watch_silence()
        builder = Builder(registry, opts.cache_dir)
        try:
            if test_only:
                config, _ = prepare(opts)
                return await builder.test(opts, config, [*sinks, watch])
            return await builder.build(opts, [*sinks, watch])
        finally:
            await builder.aclose()


def _limit(kw: dict[str, Any], config: Config) -> tuple[float, str]:
    """``--timeout``, else the config's ``package.timeout``, else none (0)."""
    if kw["timeout"]:
        try:
            return parse_duration(kw["timeout"]), "--timeout"
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--timeout") from None
    return config.package.timeout or 0.0, "package.timeout"


def _execute(ctx: CliContext, kw: dict[str, Any], *, with_test: bool, test_only: bool) -> None:
    opts = _options(kw, with_test=with_test)
    config, _ = prepare(opts)  # config errors before anything else, with file:line:field
    limit = _limit(kw, config)
    name = config.package.name
    if opts.source_dir is None:
        default_src = opts.config.parent / name
        if default_src.is_dir():
            opts = dataclasses.replace(opts, source_dir=default_src)
    log_path = kw["log_file"] or opts.out_dir / "logs" / f"{name}-{opts.arch}.log"
    try:
        with _sinks(ctx, log_path, kw["plain"]) as sinks:
            result = asyncio.run(_run(opts, sinks, test_only, limit))
    except StepFailed as exc:
        ctx.err_console.print(
            f"[red]error:[/] step [bold]{exc.step}[/] failed"
            + (f" with exit code {exc.step_exit_code}" if exc.step_exit_code is not None else "")
        )
        if exc.log_tail:
            ctx.err_console.print("last output:", highlight=False)
            ctx.err_console.print(exc.log_tail.rstrip(), markup=False, highlight=False)
        ctx.err_console.print(f"full log: {log_path}", highlight=False)
        raise SystemExit(1) from exc
    except LintFailed as exc:
        ctx.err_console.print("[red]error:[/] ", end="")
        ctx.err_console.print(str(exc), markup=False, highlight=False)
        ctx.err_console.print(f"full log: {log_path}", highlight=False)
        raise SystemExit(1) from exc
    if isinstance(result, int):
        ctx.console.print(f"{result} test plan(s) passed for {name}; log: {log_path}")
        return
    for pkg in result.packages:
        ctx.console.print(f"built {pkg.path}", highlight=False)
    ctx.console.print(f"index {result.index}; log: {log_path}", highlight=False)


@click.command()
@build_options
@click.option("--with-test", is_flag=True, help="Run the config's tests after building.")
@pass_cli
def build(ctx: CliContext, /, with_test: bool, **kw: Any) -> None:
    """Build CONFIG (a melange YAML file) on one BuildKit daemon into APKs."""
    _execute(ctx, kw, with_test=with_test, test_only=False)


@click.command()
@build_options
@pass_cli
def test(ctx: CliContext, /, **kw: Any) -> None:
    """Run CONFIG's test pipelines against packages already built in --out-dir."""
    _execute(ctx, kw, with_test=False, test_only=True)
