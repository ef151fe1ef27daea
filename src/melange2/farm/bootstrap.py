"""The bootstrap APK repository: offline there is no distribution to install from, so
the farm makes one, signed with a key of its own:

* ``busybox``: Debian's busybox-static packaged with our APK writer, for x86_64 and
  aarch64 (its applets as ``cmd:`` provides), when there is no toolchain;
* the toolchain (:mod:`melange2.farm.toolchain`): Debian bookworm's compilers and
  tools converted to APKs named as Wolfi names them (``build-base``, ``gcc``,
  ``glibc-dev``, ``autoconf``, ``python-3.11`` ...), all of them for x86_64 and the C
  toolchain for aarch64, and a ``busybox`` of its own: Debian's dynamically linked build,
  whose shell runs what PATH finds (the static build's prefers its own applets: ``tar``
  in a script would be busybox's even with GNU tar installed).

Configs then list these in ``environment.contents.packages`` exactly as real ones do.
Layout::

    <root>/keys/melange2-bootstrap.rsa(.pub)
    <root>/repo/<arch>/*.apk, APKINDEX.tar.gz

Everything is made before anything is written: a package that fails to convert leaves
the repository as it was (:class:`~melange2.farm.toolchain.ConversionError`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from melange2.apk.index import IndexRecord, write_index_tar_gz
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer, generate_key
from melange2.apk.writer import write_apk
from melange2.farm.baseimage import DEB_ARCHES, applets, busybox_binary
from melange2.farm.toolchain import ConversionCache, Toolchain, make_toolchain, publish
from melange2.fsutil import write_atomic
from melange2.repo.directory import INDEX_NAME

KEY_NAME = "melange2-bootstrap.rsa"
_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class BootstrapRepo:
    repo: Path  #: the repository root (``<repo>/<arch>/APKINDEX.tar.gz``)
    public_key: Path
    #: the toolchain of each architecture (empty when none was asked for)
    toolchains: Sequence[Toolchain] = field(default_factory=tuple)


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


def _busybox_apk(deb: Path, arch: str, applet_paths: list[str], signer: Signer) -> bytes:
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
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        _busybox_tree(tree, busybox_binary(deb), applet_paths)
        out = io.BytesIO()
        write_apk(tree, info, signer, out, source_date_epoch=_deb_epoch(deb))
        return out.getvalue()


def build_bootstrap_repo(
    root: Path,
    debs: dict[str, Path],
    *,
    key_size: int = 4096,
    toolchain_cache: Path | None = None,
    make: Callable[[str, ConversionCache], Toolchain] = make_toolchain,
) -> BootstrapRepo:
    """Write (or reuse) the signing key; package busybox per architecture and, with a
    ``toolchain_cache``, the toolchain (``make`` makes one architecture's); then write
    the packages and the indexes. Nothing is written until everything is made."""
    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    private = keys / KEY_NAME
    if not private.exists():
        generate_key(private, key_size=key_size)
    signer = Signer.from_files(private)
    busyboxes: dict[str, bytes] = {}
    toolchains: dict[str, Toolchain] = {}
    if toolchain_cache is None:
        host = debs["amd64"] if "amd64" in debs else next(iter(debs.values()))
        applet_paths = applets(busybox_binary(host))
        busyboxes = {
            deb_arch: _busybox_apk(deb, DEB_ARCHES[deb_arch], applet_paths, signer)
            for deb_arch, deb in sorted(debs.items())
        }
    else:
        # the toolchain has its own busybox (Debian's dynamic build, on its glibc)
        cache = ConversionCache(toolchain_cache)
        for deb_arch in sorted(debs):
            toolchains[deb_arch] = make(deb_arch, cache)
            tc = toolchains[deb_arch]
            _log.info(
                "toolchain %s: %d packages, %d converted now, %.1fs",
                tc.arch,
                len(tc.packages),
                tc.converted,
                tc.seconds,
            )
            for name, dropped in sorted(tc.dropped_depends.items()):
                _log.info(
                    "toolchain %s: %s: nothing provides %s (left out)",
                    tc.arch,
                    name,
                    " ".join(dropped),
                )
    # everything is made: now write
    for deb_arch in sorted(debs):
        arch_dir = root / "repo" / DEB_ARCHES[deb_arch]
        arch_dir.mkdir(parents=True, exist_ok=True)
        records = []
        if deb_arch in busyboxes:
            record = IndexRecord.from_apk(io.BytesIO(busyboxes[deb_arch]))
            write_atomic(arch_dir / record.filename, busyboxes[deb_arch], durable=False)
            records.append(record)
        if deb_arch in toolchains:
            records += publish(toolchains[deb_arch].packages, signer, arch_dir)
        keep = {r.filename for r in records}
        for stale in arch_dir.glob("*.apk"):
            if stale.name not in keep:
                stale.unlink()
        ordered = sorted(records, key=lambda r: r.name)
        index = io.BytesIO()
        write_index_tar_gz(ordered, signer, index, description="melange2 bootstrap repository")
        write_atomic(arch_dir / INDEX_NAME, index.getvalue())
    return BootstrapRepo(
        repo=root / "repo",
        public_key=keys / f"{KEY_NAME}.pub",
        toolchains=tuple(toolchains.values()),
    )


def _deb_epoch(deb: Path) -> int:
    """A reproducible build date: when Debian built the package (its busybox's mtime)."""
    fsys = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(fsys)) as tar:
        return max(int(m.mtime) for m in tar.getmembers())


def index_digest(repo: Path, arch: str) -> str:
    """sha256 of an architecture's index (what a second farm-up leaves unchanged)."""
    return hashlib.sha256((repo / arch / INDEX_NAME).read_bytes()).hexdigest()
