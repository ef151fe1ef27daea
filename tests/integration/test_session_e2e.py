"""End to end on real buildkitd: the session we serve from Python (secrets, the local
exporter's file-send target, a local source), checked against the registry path."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
import tracemalloc
from pathlib import Path

import pytest

from melange2.build.outputs import unpack_image
from melange2.buildkit import llb
from melange2.buildkit.client import (
    BuildkitClient,
    Progress,
    Session,
    SolveResult,
    local_export,
    push_image,
)
from melange2.errors import SolveCancelled, SolveFailed
from melange2.farm.local import FarmEnv
from melange2.oci.registry import RegistryClient

pytestmark = pytest.mark.e2e
X86 = llb.Platform.from_arch("x86_64")
SECRET = b"s3cr3t-value-\x00-with-bytes\n"


async def _solve(
    farm: FarmEnv, state: llb.State, dest: Path, session: Session | None = None
) -> SolveResult:
    async with BuildkitClient(farm.buildkit_addrs[0]) as bk:
        return await bk.solve(llb.marshal(state), exporters=[local_export(dest)], session=session)


def test_secret_reaches_env_and_mount_but_not_the_llb(farm: FarmEnv, tmp_path: Path) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        [
            "/bin/sh",
            "-c",
            'printf %s "$TOKEN" | sha256sum | cut -d" " -f1 > /out/env.sha256;'
            " sha256sum < /run/secrets/tok | cut -d' ' -f1 > /out/mount.sha256;"
            " stat -c '%u:%g:%a' /run/secrets/tok > /out/mount.stat",
        ],
        mounts=[
            llb.Mount(dest="/out"),
            llb.secret_mount("/run/secrets/tok", "tok", uid=1000, gid=1000, mode=0o440),
        ],
        secret_env={"TOKEN": "env-token"},
        name="read secrets",
        ignore_cache=True,
    )
    env_value = b"env-secret-value"
    definition = llb.marshal(step.output("/out")).SerializeToString()
    assert SECRET not in definition and env_value not in definition
    asyncio.run(
        _solve(
            farm,
            step.output("/out"),
            tmp_path,
            Session(secrets={"tok": SECRET, "env-token": env_value}),
        )
    )
    assert (tmp_path / "env.sha256").read_text().strip() == hashlib.sha256(env_value).hexdigest()
    assert (tmp_path / "mount.sha256").read_text().strip() == hashlib.sha256(SECRET).hexdigest()
    assert (tmp_path / "mount.stat").read_text().strip() == "1000:1000:440"
    # the secret is not part of the output either
    for path in tmp_path.rglob("*"):
        assert SECRET not in path.read_bytes()


def test_unknown_secret_fails_the_step_clearly(farm: FarmEnv, tmp_path: Path) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "echo $TOKEN > /out/x"],
        mounts=[llb.Mount(dest="/out")],
        secret_env={"TOKEN": "nope"},
        name="needs a secret",
        ignore_cache=True,
    )
    with pytest.raises(SolveFailed, match="nope"):
        asyncio.run(_solve(farm, step.output("/out"), tmp_path, Session(secrets={"x": b"y"})))
