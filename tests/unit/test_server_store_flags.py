"""``melange-server``'s store flags are checked before anything starts: ``--store
postgres`` needs a DSN that is a PostgreSQL URL, and a DSN on the command line needs
``--store postgres``; the messages name the flag and never echo a password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from melange2.server import cli

BASE = ["--buildkit-addr", "tcp://127.0.0.1:1", "--registry", "127.0.0.1:1"]


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*BASE, *args], env=env or {})
    return result.exit_code, result.output


def test_help_lists_the_store_flags() -> None:
    code, out = run("--help")
    assert code == 0
    assert "[sqlite|postgres|memory]" in out
    assert "--postgres-dsn" in out and "POSTGRES_DSN" in out


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--store", "postgres"], {}, "--store postgres needs --postgres-dsn"),
        (["--store", "postgres", "--postgres-dsn", "mysql://u@h/db"], {}, "postgresql://"),
        (["--store", "postgres"], {"POSTGRES_DSN": "not a url"}, "must be a URL"),
        (["--store", "postgres", "--postgres-dsn", "postgresql://h"], {}, "names no database"),
        (["--postgres-dsn", "postgresql://u@h/db"], {}, "needs --store postgres"),
    ],
)
def test_bad_store_flags_are_usage_errors(args: list[str], env: dict[str, str], says: str) -> None:
    code, out = run(*args, env=env)
    assert code == 2, out
    assert says in out


def test_a_password_in_a_dsn_is_not_echoed() -> None:
    code, out = run("--store", "postgres", "--postgres-dsn", "postgresql://u:s3cret@h")
    assert code == 2
    assert "s3cret" not in out and "***" in out


def test_an_unreachable_database_is_one_line_before_the_server_starts(tmp_path: Path) -> None:
    """Not uvicorn's startup traceback: the store is opened (and migrated) first."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from melange2.server import main; main()",
            *BASE,
            "--data-dir",
            str(tmp_path),
            "--listen-addr",
            "127.0.0.1:1",
            "--store",
            "postgres",
            "--postgres-dsn",
            "postgresql://u:s3cret@127.0.0.1:1/db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "database unavailable" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "Started server" not in proc.stderr
    assert "s3cret" not in proc.stderr


def test_advertise_url_is_in_help_and_must_be_an_http_url() -> None:
    code, out = run("--help")
    assert code == 0 and "--advertise-url" in out
    code, out = run("--advertise-url", "farm.example.org:8080", "--no-auth")
    assert code == 2, out
    assert "--advertise-url" in out and "http://" in out
