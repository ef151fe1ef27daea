"""melange2.sca.pkgconfig against go-pkgconfig itself, the parser melange v0.34.0 uses:
``tools/melange/pcoracle`` is built from the module melange pins (offline, from the Go
module cache `make setup` filled), and both parse the host's .pc files and Hypothesis'
texts; they must agree on refusing a file and on its Requires names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.sca.pkgconfig import PcParseError, parse_pc

ROOT = Path(__file__).resolve().parent.parent.parent
MODULE = ROOT / "tools" / "melange"

Parsed = dict[str, object]


class Oracle:
    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def parse(self, text: str) -> Parsed:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(text) + "\n")
        self.proc.stdin.flush()
        result: dict[str, object] = json.loads(self.proc.stdout.readline())
        if result["err"]:
            return {"err": True}
        return {k: v if k == "err" else v or [] for k, v in result.items()}

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    if shutil.which("go") is None:
        pytest.fail("go is needed to build the go-pkgconfig oracle (run `make setup`)")
    binary = tmp_path_factory.mktemp("pcoracle") / "pcoracle"
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "GOPROXY": "off"}
    subprocess.run(
        ["go", "build", "-o", str(binary), "./pcoracle"],
        cwd=MODULE,
        env=env,
        check=True,
        timeout=600,
    )
    running = Oracle(binary)
    yield running
    running.close()


def ours(text: str) -> Parsed:
    try:
        pc = parse_pc(text)
    except PcParseError:
        return {"err": True}
    return {
        "err": False,
        "requires": [d.identifier for d in pc.requires],
        "requires_private": [d.identifier for d in pc.requires_private],
        "requires_internal": [d.identifier for d in pc.requires_internal],
    }


def test_the_hosts_pc_files(oracle: Oracle) -> None:
    files = sorted(
        {
            *Path("/usr/lib/x86_64-linux-gnu/pkgconfig").glob("*.pc"),
            *Path("/usr/share/pkgconfig").glob("*.pc"),
        }
    )
    assert files, "no .pc files on this host"
    for path in files:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        assert ours(text) == oracle.parse(text), path


FRAGMENTS = st.sampled_from(
    [
        "Name", "Requires", "Requires.private", "Requires.internal", "Provides", "requires",
        "prefix", "Libs", ":", "=", " ", "\t", "\n", "\n", "#", "# c", ",", ", ", ">=", "<=",
        "<", ">", "1.0", "foo", "bar-2.0", "${prefix}", "$", "x_y", "a.b", "\r", "\u00a0",
        "-", "!", "\u00e9", "\x1c",
    ]
)  # fmt: skip


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(FRAGMENTS, max_size=30).map("".join))
def test_grammar_shaped_texts(oracle: Oracle, text: str) -> None:
    assert ours(text) == oracle.parse(text)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=80))
def test_any_text(oracle: Oracle, text: str) -> None:
    assert ours(text) == oracle.parse(text)
