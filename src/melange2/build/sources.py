"""A build's source directory: how it reaches the workspace, and what of it is an input.

Builds read it as a ``local://`` source through the solve's session (the daemon asks
this process for the files, :mod:`melange2.buildkit.filesync`; BuildKit keeps the last
transfer per package and asks only for what changed); the copy into ``/home/build``
gives every entry owner ``0:0`` and time 0, so what a step sees depends on the names,
modes and contents alone. Those are what :func:`source_digest` hashes for the input
digest (the LLB names the directory, not its contents).

:func:`push_sources` is the way this took before (a one-layer image, pushed, that the
build copied in): kept for ``bench/export_bench.py --sources``, which compares the two.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

from melange2.oci.image import ImageRef, entries_from_directory, make_config, make_layer
from melange2.oci.image import make_manifest as _make_manifest
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform

SOURCES_REPO = "melange2/sources"


async def push_sources(directory: Path, platform: Platform, registry: RegistryClient) -> ImageRef:
    """Push ``directory`` as an image whose root holds its files; return it by digest."""
    layer = await asyncio.to_thread(lambda: make_layer(entries_from_directory(directory)))
    config = make_config(platform, [layer], env=[], cmd=[])
    manifest = _make_manifest(config, [layer])
    key = hashlib.sha256(manifest.data).hexdigest()
    tag = f"src-{key[:48]}"
    await registry.push_blob(SOURCES_REPO, layer.blob)
    await registry.push_blob(SOURCES_REPO, config)
    digest = await registry.push_manifest(SOURCES_REPO, tag, manifest)
    return ImageRef(host=registry.host, repo=SOURCES_REPO, tag=tag, digest=digest)


#: the name of the ``local://`` source the build's sources come through
SOURCES_NAME = "sources"
_CHUNK = 1 << 20


def source_digest(directory: Path) -> str:
    """``sha256:<hex>`` over every entry under ``directory``: its path, kind and mode
    bits, a file's contents, a symlink's target (not owners or times, which the copy into
    the workspace replaces). Hard links count as the files they name."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort(key=os.fsencode)
        base = Path(dirpath)
        for name in sorted([*dirnames, *filenames], key=os.fsencode):
            path = base / name
            rel = os.fsencode(path.relative_to(directory).as_posix())
            st = path.lstat()
            h.update(b"%s\0%o\0" % (rel, st.st_mode))
            if stat.S_ISLNK(st.st_mode):
                h.update(os.fsencode(os.readlink(path)))
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256()
                with path.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        content.update(chunk)
                h.update(content.digest())
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                h.update(b"%d" % st.st_rdev)
            h.update(b"\n")
    return "sha256:" + h.hexdigest()
