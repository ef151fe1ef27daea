"""`make farm-up` / `farm-down` through the same entry point (`python -m melange2.farm`):
the daemons offer linux/amd64 and linux/arm64, a second `up` changes nothing, and `down`
leaves no process, mount or lock file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from melange2.apk import load_public_keys, read_apk, read_index_tar_gz
from melange2.farm import processes
from melange2.farm.local import FarmEnv
from tests.conftest import TOOLS, require_real_parts

pytestmark = pytest.mark.e2e


def _farm(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melange2.farm", "--root", str(root), "--tools", str(TOOLS), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pids(root: Path) -> dict[str, int]:
    found = {}
    for pid_file in (root / "pids").glob("*.pid"):
        pid = processes.read_pid(pid_file)
        assert pid is not None
        found[pid_file.stem] = pid
    return found


def test_farm_up_twice_then_down_leaves_nothing(tmp_path: Path) -> None:
    require_real_parts()
    root = tmp_path / "farm"
    try:
        first = _farm(root, "up")
        assert first.returncode == 0, first.stderr
        env = FarmEnv.load(root / "env")
        assert len(env.buildkit_addrs) == 2
        assert "@sha256:" in env.base_image
        assert env.registry.startswith("127.0.0.1:")
        pids = _pids(root)
        assert set(pids) == {"registry", "buildkitd-0", "buildkitd-1", "melange-server"}
        # the server answers, with the farm's two backends: x86_64 and (emulated) aarch64
        backends = httpx.get(f"{env.melange_server}/api/v1/backends", timeout=10).json()
        assert backends["architectures"] == ["aarch64", "x86_64"]
        for name in pids:
            assert (root / "logs" / f"{name}.log").exists()

        # buildctl, BuildKit's own client, sees an OCI worker with both platforms
        for addr in env.buildkit_addrs:
            workers = subprocess.run(
                [str(TOOLS / "bin" / "buildctl"), "--addr", addr, "debug", "workers", "-v"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            assert "org.mobyproject.buildkit.worker.executor:\t\toci" in workers
            platforms = next(line for line in workers.splitlines() if line.startswith("Platforms:"))
            assert "linux/amd64" in platforms and "linux/arm64" in platforms

        # the bootstrap repository: a signed index listing busybox for both arches
        keys = load_public_keys([Path(env.extra["BOOTSTRAP_KEY"])])
        for arch in ("x86_64", "aarch64"):
            arch_dir = Path(env.extra["BOOTSTRAP_REPO"]) / arch
            index = read_index_tar_gz(arch_dir / "APKINDEX.tar.gz", keys=keys)
            assert [(r.name, r.arch) for r in index.records] == [("busybox", arch)]
            apk = read_apk(arch_dir / index.records[0].filename)
            apk.verify(keys)
            assert any(e.path == "bin/sh" for e in apk.entries)

        # the registry listens on loopback only
        config = (root / "registry" / "config.yml").read_text()
        assert f"addr: {env.registry}" in config

        # a second farm-up says so and changes nothing
        env_text = (root / "env").read_text()
        second = _farm(root, "up")
        assert second.returncode == 0
        assert "already running" in second.stdout
        assert _pids(root) == pids
        assert (root / "env").read_text() == env_text

        smoke = _farm(root, "smoke")
        assert smoke.returncode == 0, smoke.stderr + smoke.stdout
        assert "aarch64" in smoke.stdout
    finally:
        down = _farm(root, "down")
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        assert not processes.pid_alive(pid)
    assert processes.mounts_under(root) == []
    assert list(root.glob("buildkitd-*/root/buildkitd.lock")) == []
    assert not (root / "env").exists()
    status = _farm(root, "status")
    assert status.returncode == 1
    assert "not running" in status.stdout


def test_farm_down_when_not_running_is_harmless(tmp_path: Path) -> None:
    result = _farm(tmp_path / "never-started", "down")
    assert result.returncode == 0
    assert "not running" in result.stdout
    assert not os.path.exists(tmp_path / "never-started" / "env")
