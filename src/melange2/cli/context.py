"""What every command gets: the console to print on (injected, never global)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # rich is imported when a command runs, not for --help
    from rich.console import Console


@dataclass(kw_only=True)
class CliContext:
    console: Console
    err_console: Console


pass_cli = click.make_pass_decorator(CliContext)
