"""``melange2``: build melange packages on BuildKit, locally or on a build farm.

Exit codes: 0 success; 1 a build or request failed; 2 bad usage or invalid input;
130 cancelled.
"""

from __future__ import annotations

import sys

import click
from rich.console import Console

from melange2 import __version__
from melange2.cli.commands.build import build, test
from melange2.cli.commands.daemon import daemon
from melange2.cli.commands.keygen import keygen
from melange2.cli.commands.remote import remote
from melange2.cli.context import CliContext
from melange2.errors import FarmError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="melange2")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Build APK packages described as melange YAML on BuildKit daemons."""
    if ctx.obj is None:
        ctx.obj = CliContext(console=Console(), err_console=Console(stderr=True))


cli.add_command(build)
cli.add_command(test)
cli.add_command(daemon)
cli.add_command(keygen)
cli.add_command(remote)


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
