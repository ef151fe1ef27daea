"""What the command line loads to start: ``melange2 --help`` imports none of the heavy
dependencies (its commands are imported when one runs), a remote command only what
talking to a server needs, and the help lists every command as its own help says.
Behaviour checks (``sys.modules`` of a fresh interpreter), not timers: the timings are
``bench/cli_bench.py``'s, in docs/performance.md."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import click
import pytest
from click.testing import CliRunner

from melange2.cli.main import COMMANDS, LazyGroup, cli

#: never needed to print help; each costs tens to hundreds of milliseconds to import
HEAVY = (
    "grpc",
    "google.protobuf",
    "fastapi",
    "starlette",
    "sqlalchemy",
    "cryptography",
    "rich",
    "httpx",
    "pydantic",
    "ruamel.yaml",
    "melange2.buildkit",
    "melange2.build",
)

_RUN = """
import json, sys
sys.argv = ["melange2", *json.loads(sys.argv[1])]
from melange2.cli.main import main
try:
    main()
except SystemExit as exc:
    code = exc.code
modules = sorted(name for name, module in sys.modules.items() if module is not None)
sys.stderr.write("\\n" + json.dumps({"code": code, "modules": modules}))
"""


def run_cli(args: Sequence[str]) -> tuple[int, str, set[str]]:
    """``melange2 ARGS`` in a fresh interpreter: exit code, stdout, modules imported."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps(list(args))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(proc.stderr.rsplit("\n", 1)[-1])
    return report["code"], proc.stdout, set(report["modules"])


def loaded(modules: set[str], package: str) -> bool:
    return package in modules or any(m.startswith(package + ".") for m in modules)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"]])
def test_help_imports_no_heavy_module(args: list[str]) -> None:
    code, out, modules = run_cli(args)
    assert code == 0
    assert "Commands:" in out or "melange2, version" in out
    assert [h for h in HEAVY if loaded(modules, h)] == []
    assert not loaded(modules, "melange2.cli.commands")


def test_a_remote_command_imports_what_talking_to_a_server_needs_only() -> None:
    # nothing listens on port 9 of loopback: the command fails as unreachable (exit 3)
    code, _, modules = run_cli(
        ["remote", "status", "bld-0000000000000001", "--server", "http://127.0.0.1:9"]
    )
    assert code == 3
    assert loaded(modules, "httpx") and loaded(modules, "pydantic")
    for heavy in (
        "grpc",
        "google.protobuf",
        "fastapi",
        "sqlalchemy",
        "cryptography",
        "ruamel.yaml",
    ):
        assert not loaded(modules, heavy), heavy
    assert not loaded(modules, "melange2.cli.commands.build")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_summary_is_the_commands_own(name: str) -> None:
    """The listing shows, unimported, what the command itself would show."""
    real = LazyGroup(lazy=COMMANDS).get_command(click.Context(cli), name)
    assert real is not None and real.name == name
    stand_in = click.Command(name, help=COMMANDS[name][1])
    for limit in (20, 45, 64, 200):
        assert stand_in.get_short_help_str(limit) == real.get_short_help_str(limit)


def test_help_lists_every_command_and_each_still_runs() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["--help"])
    assert listing.exit_code == 0
    names = [line.split()[0] for line in listing.output.split("Commands:")[1].splitlines() if line]
    assert names == sorted(COMMANDS)
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert f"Usage: cli {name}" in result.output or f"Usage: melange2 {name}" in result.output
    assert runner.invoke(cli, ["no-such-command"]).exit_code == 2
