"""The minimal base build image: Debian's busybox-static as a two-platform OCI image.

Each platform's image is one layer: ``/bin/busybox``, a symlink per applet (``/bin/sh``,
``/usr/bin/awk``, ...), ``/tmp``, ``/root``, ``/home/build``, ``/etc/passwd`` and
``/etc/group`` for root. The layer is deterministic, so the same Debian package always
gives the same image digest.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from melange2.build.environment import ENV_PATH, skeleton_entries
from melange2.errors import FarmProcessError
from melange2.oci.image import (
    BuiltLayer,
    Entry,
    ImageRef,
    make_config,
    make_index,
    make_layer,
    make_manifest,
)
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform

#: deb architecture -> APK architecture
DEB_ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
BASE_REPO = "melange2/base"
BASE_TAG = "busybox"


def busybox_binary(deb: Path) -> bytes:
    """``/bin/busybox`` out of a busybox-static .deb (through ``dpkg-deb``)."""
    try:
        fsys = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise FarmProcessError(f"cannot read {deb}: {exc}") from exc
    with tarfile.open(fileobj=io.BytesIO(fsys)) as tar:
        for member in tar:
            if member.name in ("./bin/busybox", "bin/busybox"):
                f = tar.extractfile(member)
                if f is not None:
                    return f.read()
    raise FarmProcessError(f"{deb} has no bin/busybox")


def applets(host_busybox: bytes) -> list[str]:
    """Every applet path (``bin/sh``, ``usr/bin/awk``, ...), from a busybox this host runs."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "busybox"
        exe.write_bytes(host_busybox)
        exe.chmod(0o755)
        out = subprocess.run([str(exe), "--list-full"], check=True, capture_output=True, text=True)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


def rootfs_layer(busybox: bytes, applet_paths: list[str]) -> BuiltLayer:
    dirs = ("bin", "sbin", "usr", "usr/bin", "usr/sbin")
    entries = [Entry(path=d, kind="dir", mode=0o755) for d in dirs]
    entries += skeleton_entries()
    entries.append(Entry(path="bin/busybox", kind="file", mode=0o755, data=busybox))
    for path in applet_paths:
        if path != "bin/busybox":
            entries.append(Entry(path=path, kind="symlink", mode=0o777, target="/bin/busybox"))
    return make_layer(entries)


async def push_base_image(registry: str, debs: dict[str, Path]) -> ImageRef:
    """Build the base image for every deb architecture given and push it as one index.

    ``debs`` maps a deb architecture (``amd64``, ``arm64``) to its busybox-static .deb.
    Returns the image reference pinned by digest.
    """
    host_arch = _host_deb_arch()
    if host_arch not in debs:
        raise FarmProcessError(f"no busybox-static .deb for this host ({host_arch})")
    applet_paths = applets(busybox_binary(debs[host_arch]))
    manifests = []
    async with RegistryClient(registry) as reg:
        for deb_arch, deb in sorted(debs.items()):
            platform = Platform.from_arch(DEB_ARCHES[deb_arch])
            layer = rootfs_layer(busybox_binary(deb), applet_paths)
            config = make_config(platform, [layer], env=[ENV_PATH], cmd=["/bin/sh"])
            manifest = make_manifest(config, [layer])
            await reg.push_blob(BASE_REPO, layer.blob)
            await reg.push_blob(BASE_REPO, config)
            await reg.push_manifest(BASE_REPO, manifest.digest, manifest)
            manifests.append((platform, manifest))
        index = make_index(manifests)
        digest = await reg.push_manifest(BASE_REPO, BASE_TAG, index)
    return ImageRef(host=registry, repo=BASE_REPO, tag=BASE_TAG, digest=digest)


def _host_deb_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
