"""`make farm-up` / `farm-down` through the same entry point (`python -m melange2.farm`):
the daemons offer linux/amd64 and linux/arm64, a second `up` changes nothing, and `down`
leaves no process, mount or lock file behind; with ``--store postgres --replicas 3``
a PostgreSQL cluster and three servers on it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from melange2.apk import load_public_keys, read_apk, read_index_tar_gz
from melange2.farm import processes
from melange2.farm.local import FarmEnv
from melange2.testenv.postgres import missing_postgres
from melange2.testenv.require import require_real_part
from tests.conftest import TOOLS, require_real_parts

pytestmark = pytest.mark.e2e


def _farm(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "melange2.farm", "--root", str(root), "--tools", str(TOOLS), *args],
        capture_output=True,
        text=True,
        timeout=900,  # a first farm-up converts the toolchain
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
        # the server answers, with the farm's two backends: x86_64 and (emulated) aarch64;
        # to the admin token in env (mode 0600), not to anyone
        assert env.melange_token.startswith("mlg_")
        assert (root / "env").stat().st_mode & 0o777 == 0o600
        auth = {"Authorization": f"Bearer {env.melange_token}"}
        anonymous = httpx.get(f"{env.melange_server}/api/v1/backends", timeout=10)
        assert anonymous.status_code == 401, anonymous.text
        backends = httpx.get(
            f"{env.melange_server}/api/v1/backends", headers=auth, timeout=10
        ).json()
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

        # the bootstrap repository: a signed index with busybox and the toolchain, both arches
        keys = load_public_keys([Path(env.extra["BOOTSTRAP_KEY"])])
        indexes = {}
        for arch in ("x86_64", "aarch64"):
            arch_dir = Path(env.extra["BOOTSTRAP_REPO"]) / arch
            indexes[arch] = (arch_dir / "APKINDEX.tar.gz").read_bytes()
            index = read_index_tar_gz(arch_dir / "APKINDEX.tar.gz", keys=keys)
            assert {"busybox", "build-base", "gcc", "glibc", "make"} <= {
                r.name for r in index.records
            }
            assert {r.arch for r in index.records} == {arch}
            busybox = next(r for r in index.records if r.name == "busybox")
            apk = read_apk(arch_dir / busybox.filename)
            apk.verify(keys)
            assert any(e.path == "bin/sh" for e in apk.entries)
            assert f"toolchain {arch}:" in first.stdout
        assert Path(env.extra["SOURCE_CACHE"]).is_dir()

        # the registry listens on loopback only
        config = (root / "registry" / "config.yml").read_text()
        assert f"addr: {env.registry}" in config

        # an aarch64 build goes to the aarch64 backend and yields aarch64 binaries
        aarch64_binary_package(env)

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

        # down and up again: nothing is converted, the repository is the same
        assert _farm(root, "down").returncode == 0
        third = _farm(root, "up")
        assert third.returncode == 0, third.stderr
        for arch in ("x86_64", "aarch64"):
            assert f"toolchain {arch}:" in third.stdout
            line = next(x for x in third.stdout.splitlines() if f"toolchain {arch}:" in x)
            assert "(0 converted now" in line, line
            arch_dir = Path(FarmEnv.load(root / "env").extra["BOOTSTRAP_REPO"]) / arch
            assert (arch_dir / "APKINDEX.tar.gz").read_bytes() == indexes[arch]
        pids = _pids(root)
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


ARM_CONFIG = """\
package:
  name: arm-tool
  version: 1.0.0
  description: ships the environment's busybox binary
environment:
  contents:
    packages: [busybox]
pipeline:
  - name: install binary
    runs: |
      mkdir -p ${{targets.destdir}}/usr/bin
      cp /bin/busybox ${{targets.destdir}}/usr/bin/arm-tool
"""


def aarch64_binary_package(env: FarmEnv) -> None:
    auth = {"Authorization": f"Bearer {env.melange_token}"}
    with httpx.Client(base_url=env.melange_server, timeout=30, headers=auth) as client:
        resp = client.post("/api/v1/builds", json={"config_yaml": ARM_CONFIG, "arch": "aarch64"})
        assert resp.status_code == 201, resp.text
        build_id = resp.json()["id"]
        deadline = time.monotonic() + 180
        while (build := client.get(f"/api/v1/builds/{build_id}").json())["status"] in (
            "pending",
            "running",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert build["status"] == "success", build
        pkg = build["packages"][0]
        assert pkg["backend"]["arch"] == "aarch64"
        assert pkg["backend"]["addr"] == env.buildkit_addrs[1]
        apk = client.get("/repo/aarch64/arm-tool-1.0.0-r0.apk")
        assert apk.status_code == 200
    binary = subprocess.run(
        ["tar", "-xzOf", "-", "usr/bin/arm-tool"],
        input=apk.content,
        capture_output=True,
        check=True,
    ).stdout
    assert binary[:4] == b"\x7fELF"
    assert int.from_bytes(binary[18:20], "little") == 183  # e_machine: EM_AARCH64


def test_farm_down_when_not_running_is_harmless(tmp_path: Path) -> None:
    result = _farm(tmp_path / "never-started", "down")
    assert result.returncode == 0
    assert "not running" in result.stdout
    assert not os.path.exists(tmp_path / "never-started" / "env")


def test_farm_up_postgres_with_three_replicas(tmp_path: Path) -> None:
    """`make farm-up FARM_STORE=postgres FARM_REPLICAS=3`: a PostgreSQL cluster and three
    servers on one database and one storage; the admin token works on each, a build
    submitted to one is seen and served by the others; down stops all, PostgreSQL too."""
    require_real_parts()
    missing = missing_postgres()
    if missing:
        require_real_part("run PostgreSQL", missing)
    # PostgreSQL runs as an unprivileged user: it must reach the farm (pytest's tmp
    # directories are 0700)
    for parent in (tmp_path, *tmp_path.parents):
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    root = tmp_path / "farm"
    args = ("up", "--daemons", "1", "--no-toolchain", "--store", "postgres", "--replicas", "3")
    try:
        up = _farm(root, *args)
        assert up.returncode == 0, up.stderr + up.stdout
        env = FarmEnv.load(root / "env")
        servers = env.extra["MELANGE_SERVERS"].split()
        assert len(set(servers)) == 3
        assert env.melange_servers == tuple(servers)
        assert env.melange_server == servers[0]
        dsn = env.extra["POSTGRES_DSN"]
        assert dsn.startswith("postgresql://") and str(root / "postgres" / "run") in dsn
        pids = _pids(root)
        assert set(pids) == {
            "registry",
            "buildkitd-0",
            "melange-server-0",
            "melange-server-1",
            "melange-server-2",
        }
        status = _farm(root, "status")
        assert status.returncode == 0
        assert "postgres" in status.stdout and "melange-server-2" in status.stdout
        # one database: the one admin token works on every replica
        auth = {"Authorization": f"Bearer {env.melange_token}"}
        for url in servers:
            resp = httpx.get(f"{url}/api/v1/backends", headers=auth, timeout=10)
            assert resp.status_code == 200, (url, resp.text)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM tokens").fetchone() is not None
        # each advertises its own loopback URL, and every one sees the three
        listed = httpx.get(f"{servers[1]}/api/v1/replicas", headers=auth, timeout=10)
        assert listed.status_code == 200, listed.text
        assert sorted(r["url"].rstrip("/") for r in listed.json()) == sorted(servers)
        # a build through the third replica, read through the first, its package served
        # from the shared storage by the second
        with httpx.Client(base_url=servers[2], timeout=30, headers=auth) as client:
            resp = client.post("/api/v1/builds", json={"config_yaml": _FARM_CONFIG})
            assert resp.status_code == 201, resp.text
            build_id = resp.json()["id"]
        with httpx.Client(base_url=servers[0], timeout=30, headers=auth) as client:
            deadline = time.monotonic() + 180
            while (build := client.get(f"/api/v1/builds/{build_id}").json())["status"] in (
                "pending",
                "running",
            ):
                assert time.monotonic() < deadline, build
                time.sleep(0.2)
            assert build["status"] == "success", build
        apk = httpx.get(f"{servers[1]}/repo/x86_64/farm-pg-1.0.0-r0.apk", timeout=30)
        assert apk.status_code == 200
    finally:
        down = _farm(root, "down")
    assert down.returncode == 0, down.stderr
    assert "postgres" in down.stdout
    for pid in pids.values():
        assert not processes.pid_alive(pid)
    assert not (root / "env").exists()
    assert _farm(root, "status").returncode == 1


def test_farm_refuses_replicas_on_sqlite(tmp_path: Path) -> None:
    result = _farm(tmp_path / "farm", "up", "--replicas", "2")
    assert result.returncode != 0
    assert "--store postgres" in result.stderr
    assert not (tmp_path / "farm" / "pids").exists()


def test_farm_names_a_directory_postgres_cannot_enter(tmp_path: Path) -> None:
    """As root, PostgreSQL runs unprivileged: a farm under a 0700 directory fails at
    once, naming the directory, before anything starts."""
    if os.geteuid() != 0:
        require_real_part("hand PostgreSQL to an unprivileged user", ["root (euid 0)"])
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    result = _farm(closed / "farm", "up", "--store", "postgres", "--no-toolchain")
    assert result.returncode != 0
    assert f"cannot enter {closed}" in result.stderr
    assert _farm(closed / "farm", "status").returncode == 1


_FARM_CONFIG = """\
package:
  name: farm-pg
  version: 1.0.0
  description: built on the replicated farm
environment:
  contents:
    packages: [busybox]
pipeline:
  - runs: |
      mkdir -p ${{targets.destdir}}/usr/share/farm-pg
      echo hi > ${{targets.destdir}}/usr/share/farm-pg/hi
"""
