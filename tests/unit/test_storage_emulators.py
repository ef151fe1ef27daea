"""The emulator process harness, with stand-in commands: a server that dies early and
one that never answers both raise with their output, and leave no process behind."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from melange2.errors import FarmProcessError
from melange2.farm.processes import pid_alive
from melange2.testenv.emulators import Emulator


class ShellEmulator(Emulator):
    """An "emulator" that runs a shell script instead of a server."""

    name = "shell-emulator"

    def __init__(self, script: str, **kwargs: float) -> None:
        super().__init__(Path("/bin/sh"), **kwargs)
        self.script = script

    def argv(self, port: int) -> list[str]:
        return [str(self.binary), "-c", self.script]


def test_a_server_that_exits_early_raises_with_its_output() -> None:
    emulator = ShellEmulator("echo 'bind: address in use'; exit 3")
    with pytest.raises(FarmProcessError, match="exited with 3") as info:
        emulator.start(tries=2)
    assert "bind: address in use" in str(info.value)


def test_a_server_that_never_answers_times_out_and_is_killed() -> None:
    emulator = ShellEmulator("echo listening, honest; exec sleep 30")
    emulator.start_timeout = 0.3
    with pytest.raises(FarmProcessError, match=r"did not answer .* within 0\.3s") as info:
        emulator.start()
    assert "listening, honest" in str(info.value)


class HttpServerEmulator(Emulator):
    """Python's http.server: it answers, like a real emulator."""

    name = "http.server"

    def argv(self, port: int) -> list[str]:
        return [str(self.binary), "-m", "http.server", "--bind", "127.0.0.1", str(port)]


def test_a_started_server_answers_and_is_stopped_on_exit() -> None:
    with HttpServerEmulator(Path(sys.executable)) as emulator:
        assert httpx.get(emulator.url + "/").status_code == 200
        proc = emulator._proc
        assert proc is not None
    assert not pid_alive(proc.pid)
    with pytest.raises(FarmProcessError, match="not running"):
        emulator.url  # noqa: B018
