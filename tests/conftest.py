"""Session fixtures: a real local farm (loopback registry with the base image, buildkitd
daemons) for end-to-end tests, torn down at the end even when tests fail.

Where this host cannot run BuildKit the end-to-end tests skip with the reason, unless
``REQUIRE_BUILDKIT=1`` (as ``.ci/run`` sets): then they fail.
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

pytest_plugins = ["tests.storage_fixtures"]

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
    """Skip (or fail under REQUIRE_BUILDKIT=1) when the host lacks what the farm needs."""
    missing = _missing_parts()
    if not missing:
        return
    message = "cannot run BuildKit here: missing " + "; ".join(missing)
    if os.environ.get("REQUIRE_BUILDKIT") == "1":
        pytest.fail(message + " (REQUIRE_BUILDKIT=1)", pytrace=False)
    pytest.skip(message)  # only without REQUIRE_BUILDKIT=1 (CI sets it: then it fails)


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
