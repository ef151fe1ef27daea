"""Session fixtures: a real local farm (loopback registry with the base image, buildkitd
daemons) for end-to-end tests, torn down at the end even when tests fail; the storage
emulators (``storage_fixtures``) and a PostgreSQL cluster (``postgres_fixtures``).

Where this host cannot run a real part the tests that need it skip with the reason,
unless ``REQUIRE_REAL_PARTS=1`` or ``REQUIRE_BUILDKIT=1`` (as ``.ci/run`` sets): then
they fail (:mod:`melange2.testenv.require`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange2.farm.local import REGISTRY_BINARY, FarmEnv, LocalFarm
from melange2.farm.toolchain import default_cache_dir
from melange2.testenv.require import require_real_part

pytest_plugins = ["tests.storage_fixtures", "tests.postgres_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"


def _missing_parts() -> list[str]:
    missing = []
    if not (TOOLS / "bin" / "buildkitd").exists():
        missing.append(f"{TOOLS}/bin/buildkitd (run `make setup`)")
    if shutil.which("runc") is None:
        missing.append("runc")
    if not Path(REGISTRY_BINARY).exists():
        missing.append(REGISTRY_BINARY)
    for arch in ("amd64", "arm64"):
        if not (TOOLS / "debs" / f"busybox-static_{arch}.deb").exists():
            missing.append(f"busybox-static {arch} .deb (run `make setup`)")
    if os.geteuid() != 0:
        missing.append("root (buildkitd's OCI worker runs rootful here)")
    return missing


def require_real_parts() -> None:
    """Skip (or fail under REQUIRE_REAL_PARTS=1 / REQUIRE_BUILDKIT=1) when the host lacks
    what the farm needs."""
    missing = _missing_parts()
    if missing:
        require_real_part("run BuildKit", missing)


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmEnv]:
    """A running farm: two buildkitd daemons, the loopback registry with base images, and
    the bootstrap repository with the toolchain (converted from Debian once per machine:
    the conversions are kept in ~/.cache/melange2/toolchain)."""
    require_real_parts()
    local = LocalFarm(
        tmp_path_factory.mktemp("farm"),
        tools_dir=TOOLS,
        daemons=2,
        toolchain_cache=default_cache_dir(),
    )
    try:
        env = asyncio.run(local.up())
        yield env
    finally:
        local.down()


@pytest.fixture(scope="session")
def buildkit_addr(farm: FarmEnv) -> str:
    """The address of one real buildkitd."""
    return farm.buildkit_addrs[0]


@pytest.fixture(scope="session")
def registry_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmEnv]:
    """A farm without daemons: the loopback registry with the base image, and the
    bootstrap repository (busybox), for in-process tests on a fake BuildKit."""
    require_real_parts()
    local = LocalFarm(tmp_path_factory.mktemp("registry-farm"), tools_dir=TOOLS, daemons=0)
    try:
        env = asyncio.run(local.up())
        yield env
    finally:
        local.down()
