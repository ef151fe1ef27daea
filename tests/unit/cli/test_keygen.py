"""`melange2 keygen` writes a usable key pair and never overwrites one."""

from __future__ import annotations

import io
import stat
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from melange2.apk.signing import Signer, load_public_key, verify
from melange2.cli.context import CliContext
from melange2.cli.main import cli


def _run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    ctx = CliContext(console=Console(file=out, width=100), err_console=Console(file=out))
    result = CliRunner().invoke(cli, args, obj=ctx)
    return result.exit_code, out.getvalue() + result.output


def test_keygen_writes_a_signing_pair(tmp_path: Path) -> None:
    key = tmp_path / "farm.rsa"
    code, output = _run(["keygen", str(key), "--key-size", "1024"])
    assert code == 0, output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signer = Signer.from_files(key)
    assert signer.key_name == "farm.rsa.pub"
    verify(signer.sign(b"data"), b"data", load_public_key(tmp_path / "farm.rsa.pub"))


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "farm.rsa"
    key.write_text("precious")
    code, output = _run(["keygen", str(key), "--key-size", "1024"])
    assert code == 1
    assert "refusing to overwrite" in output
    assert key.read_text() == "precious"
