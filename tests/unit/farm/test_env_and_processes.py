"""The farm's env file and process bookkeeping, without starting a farm."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from melange2.farm import processes
from melange2.farm.local import FarmEnv


def test_env_file_round_trips_and_is_shell_sourceable(tmp_path: Path) -> None:
    env = FarmEnv(
        registry="127.0.0.1:5000",
        buildkit_addrs=("tcp://127.0.0.1:1", "tcp://127.0.0.1:2"),
        base_image="127.0.0.1:5000/melange2/base:busybox@sha256:" + "c" * 64,
        extra={"BOOTSTRAP_REPO": "/path with space/repo"},
    )
    path = tmp_path / "env"
    path.write_text(env.render())
    assert FarmEnv.load(path) == env
    shown = subprocess.run(
        ["bash", "-c", f'. {path} && printf "%s\\n" "$BUILDKIT_ADDRS" "$BOOTSTRAP_REPO"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert shown == ["tcp://127.0.0.1:1 tcp://127.0.0.1:2", "/path with space/repo"]


def test_start_and_stop_a_detached_process(tmp_path: Path) -> None:
    pid_file, log = tmp_path / "p.pid", tmp_path / "p.log"
    pid = processes.start(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        pid_file=pid_file,
        log_file=log,
    )
    assert processes.read_pid(pid_file) == pid and processes.pid_alive(pid)
    for _ in range(100):
        if log.read_text().strip() == "up":
            break
        time.sleep(0.05)
    assert log.read_text().strip() == "up"
    assert processes.stop(pid_file) is True
    assert not processes.pid_alive(pid)
    assert not pid_file.exists()
    assert processes.stop(pid_file) is False


def test_free_port_is_bindable() -> None:
    import socket

    port = processes.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_no_mounts_under_a_fresh_dir(tmp_path: Path) -> None:
    assert processes.mounts_under(tmp_path) == []
