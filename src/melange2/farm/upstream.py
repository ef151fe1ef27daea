"""Upstream release tarballs for examples/, taken from Debian's source archive
(``apt-get source --download-only``: a source package's ``.orig.tar.*`` is the
upstream tarball, sometimes repacked) into a source cache, under melange's names
(``sha256:<hex>``), so configs that ``fetch`` the upstream URL build offline.

Each tarball is pinned by its sha256, the same digest the config's ``expected-sha256``
names; a download with another digest is refused. Downloads are kept in the toolchain
cache (``<cache>/sources/``), so a farm that starts again fetches nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from melange2.farm.debian import DebianError, file_sha256
from melange2.fsutil import link_atomic


@dataclass(frozen=True, kw_only=True)
class UpstreamTarball:
    """A tarball an example fetches, and where Debian keeps it."""

    source: str  #: Debian source package (``apt-get source NAME=VERSION``)
    version: str  #: its Debian version
    filename: str  #: the ``.orig.tar.*`` file
    sha256: str
    #: what it is: the pristine upstream file, or what Debian made of it
    note: str


TARBALLS: tuple[UpstreamTarball, ...] = (
    UpstreamTarball(
        source="hello",
        version="2.10-3",
        filename="hello_2.10.orig.tar.gz",
        sha256="31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b",
        note="GNU hello 2.10's own hello-2.10.tar.gz (Debian keeps its signature, .asc)",
    ),
    UpstreamTarball(
        source="zlib",
        version="1:1.2.13.dfsg-1",
        filename="zlib_1.2.13.dfsg.orig.tar.bz2",
        sha256="71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1",
        note="Debian's repack of zlib 1.2.13 (dfsg: parts of contrib/ and some ports "
        "removed, bzip2), not zlib.net's zlib-1.2.13.tar.gz",
    ),
)


def fetch_tarball(tarball: UpstreamTarball, cache: Path) -> Path:
    """The tarball in ``cache`` (downloaded with apt the first time)."""
    target = cache / tarball.filename
    if target.is_file() and file_sha256(target) == tarball.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apt-source-", dir=cache) as tmp:
        os.chmod(tmp, 0o777)  # apt downloads as its own user
        done = subprocess.run(
            [
                "apt-get",
                "source",
                "--download-only",
                "--quiet",
                f"{tarball.source}={tarball.version}",
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        got = Path(tmp) / tarball.filename
        # apt fails the whole command when one file of the source package is missing;
        # the tarball may still have come
        if not got.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-4:])
            raise DebianError(
                f"apt-get source {tarball.source}={tarball.version} did not fetch "
                f"{tarball.filename} (is a deb-src line configured? `make setup` adds one): "
                f"{tail}"
            )
        digest = file_sha256(got)
        if digest != tarball.sha256:
            raise DebianError(
                f"{tarball.filename}: sha256 {digest}, expected {tarball.sha256}: not used"
            )
        shutil.move(got, target)
    return target


def fill_source_cache(
    source_cache: Path, download_cache: Path
) -> list[tuple[UpstreamTarball, str]]:
    """Put every :data:`TARBALLS` entry into the source cache directory; return
    ``(tarball, problem)`` for those that could not be had (the others are there)."""
    source_cache.mkdir(parents=True, exist_ok=True)
    problems = []
    for tarball in TARBALLS:
        dest = source_cache / f"sha256:{tarball.sha256}"
        if dest.is_file() and file_sha256(dest) == tarball.sha256:
            continue
        try:
            path = fetch_tarball(tarball, download_cache)
        except DebianError as exc:
            problems.append((tarball, str(exc)))
            continue
        link_atomic(path, dest)
    return problems
