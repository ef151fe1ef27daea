"""``melange-server`` refuses a bad backends config before it serves anything: one line
naming the file, the backend and the field, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from melange2.errors import ConfigError
from melange2.server import cli


def args(tmp_path: Path, *more: str) -> list[str]:
    return ["--registry", "127.0.0.1:1", "--memory-storage", "--data-dir", str(tmp_path), *more]


def backends(tmp_path: Path, tls: str = "") -> Path:
    config = tmp_path / "backends.yaml"
    config.write_text(
        "backends:\n  - addr: tcp://b:1\n    arch: x86_64\n" + (f"    tls: {tls}\n" if tls else "")
    )
    return config


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ("{caCert: /nonexistent/ca.pem}", "tls.caCert: cannot read /nonexistent/ca.pem"),
        ("{caCert: backends.yaml}", "tls.caCert: not PEM"),
    ],
)
def test_a_bad_tls_file_is_refused_before_serving(tmp_path: Path, tls: str, message: str) -> None:
    config = backends(tmp_path, tls)
    result = CliRunner().invoke(cli, args(tmp_path, "--backends-config", str(config)))
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith(f"{config}: backends[0] (tcp://b:1).{message}")


def test_the_server_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    config = backends(tmp_path, "{key: /nonexistent/key.pem}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "melange2.server",
            *args(tmp_path, "--backends-config", str(config)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"melange-server: {config}: backends[0] (tcp://b:1).tls.key: "
        "cannot read /nonexistent/key.pem: No such file or directory"
    )


def test_tls_flags_are_for_buildkit_addr(tmp_path: Path) -> None:
    config = backends(tmp_path)
    result = CliRunner().invoke(
        cli, args(tmp_path, "--backends-config", str(config), "--tlsservername", "bk")
    )
    assert result.exit_code == 2
    assert "the TLS flags are for --buildkit-addr" in result.output
    result = CliRunner().invoke(
        cli, args(tmp_path, "--buildkit-addr", "tcp://b:1", "--tlscacert", str(config))
    )
    assert result.exit_code == 2
    assert "Invalid value for --tlscacert: not PEM" in result.output


def test_bad_backend_resources_are_refused_before_serving(tmp_path: Path) -> None:
    config = tmp_path / "backends.yaml"
    config.write_text("backends:\n  - addr: tcp://b:1\n    arch: x86_64\n    cpu: four\n")
    result = CliRunner().invoke(cli, args(tmp_path, "--backends-config", str(config)))
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == (
        f"{config}: backends[0].cpu: 'four' is not a quantity (use e.g. 4, 500m, 1.5, 16Gi, "
        "512Mi, 8G)"
    )
