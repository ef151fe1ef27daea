"""``melange2``: build melange packages on BuildKit, locally or on a build farm.

Exit codes: 0 success; 1 a build or request failed; 2 bad usage or invalid input;
130 cancelled.

The commands are imported when one of them runs, not to list them: ``melange2 --help``
loads click and this module only, none of the heavy dependencies (gRPC, protobuf, httpx,
pydantic, rich, cryptography, ruamel.yaml), so it answers in a fraction of the time (see
docs/performance.md; ``tests/unit/cli/test_startup.py`` keeps it so).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any

import click

from melange2 import __version__
from melange2.cli.context import CliContext
from melange2.errors import FarmError

#: each top-level command: where it lives, and its one-line summary (the first paragraph
#: of its help, shown by ``melange2 --help`` without importing it; a test checks they
#: agree)
COMMANDS: Mapping[str, tuple[str, str]] = {
    "build": (
        "melange2.cli.commands.build:build",
        "Build CONFIG (a melange YAML file) on one BuildKit daemon into APKs.",
    ),
    "daemon": ("melange2.cli.commands.daemon:daemon", "Inspect BuildKit daemons."),
    "keygen": (
        "melange2.cli.commands.keygen:keygen",
        "Write NAME (private key, mode 0600) and NAME.pub (public key) for signing.",
    ),
    "remote": (
        "melange2.cli.commands.remote:remote",
        "Build on a build server (melange-server) instead of a local daemon.",
    ),
    "test": (
        "melange2.cli.commands.build:test",
        "Run CONFIG's test pipelines against packages already built in --out-dir.",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands in ``lazy`` (name -> ``("module:attribute", summary)``)
    are imported on first use; its help lists them from their summaries."""

    def __init__(
        self,
        name: str | None = None,
        *,
        lazy: Mapping[str, tuple[str, str]] | None = None,
        **attrs: Any,
    ) -> None:
        super().__init__(name, **attrs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy[cmd_name][0].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name][0]} is not a click command")
        self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but a command not imported yet shows its summary."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            # not imported yet: a stand-in with its summary, shortened as click does
            command = self.commands.get(name) or click.Command(name, help=self.lazy[name][1])
            if not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="melange2")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Build APK packages described as melange YAML on BuildKit daemons."""
    if ctx.obj is None:
        from rich.console import Console  # a command runs: it prints

        ctx.obj = CliContext(console=Console(), err_console=Console(stderr=True))


def main() -> None:
    """The console script's entry point: farm errors become a message and an exit code."""
    try:
        code = cli(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C: asyncio.run has cancelled the running task, and with it the daemon's solve
        click.echo("cancelled", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FarmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
