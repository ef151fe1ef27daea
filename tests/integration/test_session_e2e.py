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
    SolveResult,
    local_export,
    push_image,
)
from melange2.buildkit.session import Session
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


# A tree with what packages carry: nested dirs, odd modes, setuid/setgid/sticky, owners
# other than root, symlinks (relative, absolute, dangling, to a dir), a hard link group of
# three, an empty file, a fifo, a read-only dir with contents, a file with an xattr.
_TREE_SCRIPT = r"""
set -e
cd /out
mkdir -p usr/bin usr/lib/pkg/deep/er etc/ro var/tmp
printf 'binary' > usr/bin/tool
chmod 4755 usr/bin/tool
printf 'group tool' > usr/bin/gtool
chmod 2711 usr/bin/gtool
chmod 1777 var/tmp
chmod 2775 usr/lib/pkg
printf 'lib' > usr/lib/pkg/libx.so.1.2
ln -s libx.so.1.2 usr/lib/pkg/libx.so.1
ln -s /usr/lib/pkg/libx.so.1 usr/lib/pkg/libx.so
ln -s ../nowhere usr/lib/pkg/dangling
ln -s pkg usr/lib/pkgdir
printf 'shared' > usr/lib/pkg/deep/a
ln usr/lib/pkg/deep/a usr/lib/pkg/deep/er/b
ln usr/lib/pkg/deep/a usr/bin/c
: > etc/empty
chmod 0604 etc/empty
printf 'conf' > etc/ro/conf
chmod 0400 etc/ro/conf
chmod 0555 etc/ro
chown -R 1234:5678 usr/lib/pkg/deep
chown 1000:1000 etc/empty
chown -h 42:43 usr/lib/pkg/libx.so
mkfifo var/fifo
chmod 0640 var/fifo
printf 'x%.0s' $(seq 1 70000) > usr/lib/pkg/biggish
"""


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry: type and mode bits, owner, size, content digest or link target; and
    the hard link groups (by inode) as sets of paths."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            info = full.lstat()
            what: object = None
            if stat.S_ISREG(info.st_mode):
                what = hashlib.sha256(full.read_bytes()).hexdigest()
                inodes.setdefault(info.st_ino, []).append(rel)
            elif stat.S_ISLNK(info.st_mode):
                what = os.readlink(full)
            size = info.st_size if not stat.S_ISDIR(info.st_mode) else 0
            out[rel] = (oct(info.st_mode), info.st_uid, info.st_gid, size, what)
    links = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    out["<hard links>"] = tuple(tuple(g) for g in links)
    return out


def test_local_export_equals_the_registry_path(farm: FarmEnv, tmp_path: Path) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", _TREE_SCRIPT],
        mounts=[llb.Mount(dest="/out")],
        name="make an odd tree",
    )
    state = step.output("/out")
    local_dir, registry_dir = tmp_path / "local", tmp_path / "registry"

    async def go() -> None:
        async with BuildkitClient(farm.buildkit_addrs[0]) as bk:
            result = await bk.solve(
                llb.marshal(state), exporters=[push_image(f"{farm.registry}/e2e/tree:latest")]
            )
            await bk.solve(llb.marshal(state), exporters=[local_export(local_dir)])
        async with RegistryClient(farm.registry) as reg:
            digest = result.exporter_response["containerimage.digest"]
            await unpack_image(reg, "e2e/tree", digest, registry_dir)

    asyncio.run(go())
    local, registry = _snapshot(local_dir), _snapshot(registry_dir)
    assert local == registry
    # and it is the tree the script made (not two equal wrong trees)
    assert local["usr/bin/tool"][0] == oct(stat.S_IFREG | 0o4755)
    assert local["usr/bin/gtool"][0] == oct(stat.S_IFREG | 0o2711)
    assert local["var/tmp"][0] == oct(stat.S_IFDIR | 0o1777)
    assert local["usr/lib/pkg"][0] == oct(stat.S_IFDIR | 0o2775)
    assert local["etc/ro"][0] == oct(stat.S_IFDIR | 0o555)
    assert local["etc/empty"][:4] == (oct(stat.S_IFREG | 0o604), 1000, 1000, 0)
    assert local["var/fifo"][0] == oct(stat.S_IFIFO | 0o640)
    assert local["usr/lib/pkg/deep/a"][1:3] == (1234, 5678)
    assert local["usr/lib/pkg/libx.so"][1:] == (42, 43, 22, "/usr/lib/pkg/libx.so.1")
    assert local["usr/lib/pkg/dangling"][4] == "../nowhere"
    assert local["<hard links>"] == (("usr/bin/c", "usr/lib/pkg/deep/a", "usr/lib/pkg/deep/er/b"),)
    assert local["usr/lib/pkg/biggish"][3] == 70000


def test_a_large_file_streams_in_bounded_memory(farm: FarmEnv, tmp_path: Path) -> None:
    size = 48 * 1024 * 1024
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", f"head -c {size} /dev/urandom > /out/big; sha256sum /out/big > /out/sum"],
        mounts=[llb.Mount(dest="/out")],
        name="a large file",
        ignore_cache=True,
    )
    tracemalloc.start()
    try:
        asyncio.run(_solve(farm, step.output("/out"), tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    digest = hashlib.sha256((tmp_path / "big").read_bytes()).hexdigest()
    assert (tmp_path / "sum").read_text().split()[0] == digest
    assert (tmp_path / "big").stat().st_size == size
    # the receive window bounds what is in flight: far less than the file
    assert peak < size / 4, f"peak Python allocations {peak} bytes"


def test_cancelling_mid_solve_tears_the_session_down(farm: FarmEnv, tmp_path: Path) -> None:
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", 'echo started; sleep 120; echo "$TOKEN" > /out/t'],
        mounts=[llb.Mount(dest="/out")],
        secret_env={"TOKEN": "tok"},
        name="long step with a secret",
        ignore_cache=True,
    )

    async def go() -> float:
        started = asyncio.Event()

        def on_progress(p: Progress) -> None:
            if any(chunk.data == b"started\n" for chunk in p.logs):
                started.set()

        before = set(asyncio.all_tasks())
        async with BuildkitClient(farm.buildkit_addrs[1]) as bk:
            task = asyncio.create_task(
                bk.solve(
                    llb.marshal(step.output("/out")),
                    exporters=[local_export(tmp_path)],
                    session=Session(secrets={"tok": b"v"}),
                    on_progress=on_progress,
                )
            )
            await asyncio.wait_for(started.wait(), 60)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises((asyncio.CancelledError, SolveCancelled)):
                await task
            elapsed = time.monotonic() - t0
            # nothing of the session is left running here (grpc's own bookkeeping of the
            # cancelled calls may take a few turns of the loop on a loaded machine)
            leftover = set(asyncio.all_tasks()) - before - {asyncio.current_task()}
            if leftover:
                await asyncio.wait(leftover, timeout=2.0)
            assert not [t for t in leftover if not t.done()]
            # the daemon is fine: the next solve with a session goes through
            quick = llb.run(
                llb.image(farm.base_image, platform=X86),
                ["/bin/sh", "-c", 'echo "$TOKEN" > /out/t'],
                mounts=[llb.Mount(dest="/out")],
                secret_env={"TOKEN": "tok"},
                name="after cancel",
                ignore_cache=True,
            )
            await bk.solve(
                llb.marshal(quick.output("/out")),
                exporters=[local_export(tmp_path / "after")],
                session=Session(secrets={"tok": b"again"}),
            )
        return elapsed

    assert asyncio.run(go()) < 30
    assert (tmp_path / "after" / "t").read_text() == "again\n"
    assert not (tmp_path / "t").exists()


def test_a_failing_local_target_fails_the_solve(farm: FarmEnv, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "echo x > /out/x"],
        mounts=[llb.Mount(dest="/out")],
        name="small output",
    )
    with pytest.raises(SolveFailed, match="exported tree"):
        asyncio.run(_solve(farm, step.output("/out"), blocker / "sub"))


def test_local_source_reaches_a_step(farm: FarmEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "hello.txt").write_text("hello from the client\n")
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("sub/hello.txt", src / "link")
    (src / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        [
            "/bin/sh",
            "-c",
            "cd /src && cat link > /out/hello && ./run.sh > /out/ran"
            " && sha256sum big | cut -d' ' -f1 > /out/big.sha256",
        ],
        mounts=[
            llb.Mount(dest="/out"),
            llb.Mount(dest="/src", source=llb.local("src"), readonly=True),
        ],
        name="read a local source",
        ignore_cache=True,
    )
    out = tmp_path / "out"
    asyncio.run(_solve(farm, step.output("/out"), out, Session(local_dirs={"src": src})))
    assert (out / "hello").read_text() == "hello from the client\n"
    assert (out / "ran").read_text() == "ran\n"
    expected = hashlib.sha256((src / "big").read_bytes()).hexdigest()
    assert (out / "big.sha256").read_text().strip() == expected


def test_a_session_outlives_the_daemons_health_checks(farm: FarmEnv, tmp_path: Path) -> None:
    """buildkitd checks the session's health every 5 s and drops it after two failures:
    an export after 12 s of work only arrives if our health service answered."""
    step = llb.run(
        llb.image(farm.base_image, platform=X86),
        ["/bin/sh", "-c", "sleep 12; echo late > /out/late"],
        mounts=[llb.Mount(dest="/out")],
        name="outlast the health checks",
        ignore_cache=True,
    )
    asyncio.run(_solve(farm, step.output("/out"), tmp_path))
    assert (tmp_path / "late").read_text() == "late\n"
