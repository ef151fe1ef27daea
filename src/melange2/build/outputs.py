"""Results come back through the registry: the image the build exported is pulled and
its layers unpacked into a local directory, refusing paths that leave it. The owners
the layers record are returned too: extracting as a non-root user cannot keep them on
disk, and packages must carry them."""

from __future__ import annotations

import asyncio
import gzip
import io
import shutil
import tarfile
from pathlib import Path

from melange2.oci.registry import RegistryClient


def _keep_modes(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """tarfile's ``tar`` filter (no absolute paths, no escaping links) with the original
    mode bits kept: packages may carry setuid binaries and group-writable dirs."""
    checked = tarfile.tar_filter(member, dest)
    if checked is None:
        return None
    return checked.replace(mode=member.mode, deep=False)


def _apply_whiteouts(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    members = []
    for member in tar.getmembers():
        name = Path(member.name)
        if name.name.startswith(".wh."):
            target = dest / name.parent / name.name.removeprefix(".wh.")
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            continue
        members.append(member)
    return members


#: relative path -> (uid, gid), as the image's layers record them
Owners = dict[str, tuple[int, int]]


async def unpack_image(registry: RegistryClient, repo: str, digest: str, dest: Path) -> Owners:
    """Unpack every layer of the image ``repo@digest`` into ``dest``, in order; return
    the owner of every path the layers hold (a later layer's entry wins)."""
    manifest = await registry.image_manifest(repo, digest)
    owners: Owners = {}
    for layer in manifest["layers"]:
        data = await registry.get_blob(repo, layer["digest"])
        owners.update(await asyncio.to_thread(_unpack_layer, data, dest))
    return owners


def _unpack_layer(data: bytes, dest: Path) -> Owners:
    dest.mkdir(parents=True, exist_ok=True)
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = _apply_whiteouts(tar, dest)
        tar.extractall(dest, members=members, numeric_owner=True, filter=_keep_modes)
    return {m.name.removeprefix("./").rstrip("/"): (m.uid, m.gid) for m in members}
