"""The bootstrap APK repository: offline there is no distribution to install busybox
from, so the farm packages Debian's busybox-static as ``busybox`` for x86_64 and
aarch64 with our own APK writer and signs the repository with a key of its own.

Configs then list ``busybox`` in ``environment.contents.packages`` exactly as real ones
do. Layout::

    <root>/keys/melange2-bootstrap.rsa(.pub)
    <root>/repo/<arch>/busybox-<version>-r0.apk, APKINDEX.tar.gz
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer, generate_key
from melange2.apk.writer import write_apk
from melange2.farm.baseimage import DEB_ARCHES, applets, busybox_binary
from melange2.repo.directory import index_directory

KEY_NAME = "melange2-bootstrap.rsa"


@dataclass(frozen=True, kw_only=True)
class BootstrapRepo:
    repo: Path  #: the repository root (``<repo>/<arch>/APKINDEX.tar.gz``)
    public_key: Path


def deb_version(deb: Path) -> tuple[str, int]:
    """The upstream version of a .deb, as APK ``version`` and a fixed epoch 0."""
    raw = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], check=True, capture_output=True, text=True
    ).stdout.strip()
    upstream = raw.split(":", 1)[-1].split("-", 1)[0]
    return upstream, 0


def _busybox_tree(root: Path, busybox: bytes, applet_paths: list[str]) -> None:
    (root / "bin").mkdir(parents=True)
    exe = root / "bin" / "busybox"
    exe.write_bytes(busybox)
    exe.chmod(0o755)
    for rel in applet_paths:
        if rel == "bin/busybox":
            continue
        link = root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def build_bootstrap_repo(
    root: Path, debs: dict[str, Path], *, key_size: int = 4096
) -> BootstrapRepo:
    """Write (or reuse) the signing key, package busybox per architecture, index it."""
    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    private = keys / KEY_NAME
    if not private.exists():
        generate_key(private, key_size=key_size)
    signer = Signer.from_files(private)
    host_busybox = busybox_binary(debs["amd64"] if "amd64" in debs else next(iter(debs.values())))
    applet_paths = applets(host_busybox)
    for deb_arch, deb in sorted(debs.items()):
        arch = DEB_ARCHES[deb_arch]
        version, epoch = deb_version(deb)
        info = PackageInfo(
            name="busybox",
            version=version,
            epoch=epoch,
            arch=arch,
            description="Tiny versions of many common UNIX utilities (Debian's static build)",
            url="https://busybox.net/",
            license="GPL-2.0-only",
            origin="busybox",
            provides=(
                "/bin/sh",
                *sorted({f"cmd:{Path(a).name}={version}-r{epoch}" for a in applet_paths}),
            ),
        )
        arch_dir = root / "repo" / arch
        arch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            _busybox_tree(tree, busybox_binary(deb), applet_paths)
            target = arch_dir / info.filename
            with target.open("wb") as out:
                write_apk(tree, info, signer, out, source_date_epoch=_deb_epoch(deb))
        index_directory(arch_dir, signer, description="melange2 bootstrap repository")
    return BootstrapRepo(repo=root / "repo", public_key=keys / f"{KEY_NAME}.pub")


def _deb_epoch(deb: Path) -> int:
    """A reproducible build date: when Debian built the package (its busybox's mtime)."""
    fsys = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(fsys)) as tar:
        return max(int(m.mtime) for m in tar.getmembers())
