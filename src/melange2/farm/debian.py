"""Debian's archive through apt's own tools: resolve a set of packages, describe them,
download their ``.deb`` files, and read what a ``.deb`` holds.

apt decides the closure: ``apt-get --simulate install`` against an empty package
database (``Dir::State::status``) and the target architecture as the only one
(``APT::Architecture``), without Recommends, gives every package and version a
fresh Debian system with those packages would have. ``apt-cache show NAME=VERSION``
describes them (parsed with python-debian), ``apt-get download`` fetches them::

    archive = AptArchive("amd64")
    pins = archive.resolve(["gcc", "make"])
    records = archive.records(pins)
    debs = archive.download(records, Path("~/.cache/melange2/toolchain/debs"))

Nothing here writes an APK; :mod:`melange2.farm.toolchain` does.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Packages, PkgRelation

from melange2.errors import FarmProcessError

#: deb architecture -> APK architecture
DEB_ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
_INST = re.compile(r"^Inst (?P<name>\S+) (?:\[\S+\] )?\((?P<version>\S+) .*\[(?P<arch>[^\]]+)\]")


class DebianError(FarmProcessError):
    """apt or dpkg-deb failed."""

    code = "debian_error"


@dataclass(frozen=True, kw_only=True)
class DebRelation:
    """One alternative of a Debian dependency: ``name (op version)``."""

    name: str
    op: str | None = None  #: ``=``, ``>=``, ``<=``, ``<<``, ``>>``
    version: str | None = None


@dataclass(frozen=True, kw_only=True)
class DebRecord:
    """A binary package as the archive describes it."""

    name: str
    version: str  #: Debian's, ``[epoch:]upstream[-revision]``
    arch: str  #: ``amd64``, ``arm64`` or ``all``
    source: str
    #: Pre-Depends and Depends: groups of alternatives (``a | b, c`` is ``((a, b), (c,))``)
    depends: tuple[tuple[DebRelation, ...], ...]
    provides: tuple[str, ...]
    description: str
    homepage: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        """The name ``apt-get download`` gives the file."""
        # apt escapes an epoch's colon, nothing else a Debian version may hold
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


class AptArchive:
    """apt's view of Debian for one architecture, as if it were the only one."""

    def __init__(self, deb_arch: str) -> None:
        if deb_arch not in DEB_ARCHES:
            raise DebianError(f"unsupported Debian architecture {deb_arch!r}")
        self.deb_arch = deb_arch
        self._empty = tempfile.NamedTemporaryFile(prefix="melange2-dpkg-status-")  # noqa: SIM115

    def close(self) -> None:
        self._empty.close()

    def _options(self) -> list[str]:
        return [
            "-o",
            f"APT::Architecture={self.deb_arch}",
            "-o",
            f"APT::Architectures::={self.deb_arch}",
            "-o",
            f"Dir::State::status={self._empty.name}",
            "-o",
            "Debug::NoLocking=1",
        ]

    def _run(self, argv: Sequence[str], cwd: Path | None = None) -> str:
        try:
            done = subprocess.run(list(argv), check=False, capture_output=True, text=True, cwd=cwd)
        except OSError as exc:
            raise DebianError(f"cannot run {argv[0]}: {exc}") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise DebianError(f"{' '.join(argv[:2])} failed ({done.returncode}): {tail}")
        return done.stdout

    def resolve(self, names: Iterable[str]) -> list[tuple[str, str]]:
        """``(name, version)`` of every package installing ``names`` takes, per apt."""
        wanted = sorted(set(names))
        out = self._run(
            [
                "apt-get",
                *self._options(),
                "--simulate",
                "--no-install-recommends",
                "--quiet",
                "install",
                *wanted,
            ]
        )
        pins = []
        for line in out.splitlines():
            m = _INST.match(line)
            if m:
                pins.append((m["name"], m["version"]))
        if not pins:
            raise DebianError(f"apt resolved nothing for {', '.join(wanted)}")
        return pins

    def records(self, pins: Iterable[tuple[str, str]]) -> list[DebRecord]:
        """The archive's description of each pinned package."""
        pins = list(pins)
        out = self._run(["apt-cache", *self._options(), "show", *(f"{n}={v}" for n, v in pins)])
        found: dict[tuple[str, str], DebRecord] = {}
        for para in Packages.iter_paragraphs(io.StringIO(out), use_apt_pkg=False):
            record = _record(para)
            found.setdefault((record.name, record.version), record)
        missing = [f"{n}={v}" for n, v in pins if (n, v) not in found]
        if missing:
            raise DebianError(f"apt-cache knows no {', '.join(missing)}")
        return [found[pin] for pin in pins]

    def download(self, records: Sequence[DebRecord], dest: Path) -> dict[str, Path]:
        """Each record's ``.deb`` in ``dest`` (downloaded when missing or not matching
        its sha256), by package name."""
        dest.mkdir(parents=True, exist_ok=True)
        paths = {r.name: dest / r.filename for r in records}
        need = [r for r in records if not _matches(paths[r.name], r.sha256)]
        if need:
            # apt downloads as its own unprivileged user: into a directory it may write
            with tempfile.TemporaryDirectory(prefix="melange2-debs-", dir=dest) as tmp:
                os.chmod(tmp, 0o777)
                self._run(
                    [
                        "apt-get",
                        *self._options(),
                        "--quiet",
                        "download",
                        *(f"{r.name}={r.version}" for r in need),
                    ],
                    cwd=Path(tmp),
                )
                for r in need:
                    got = Path(tmp) / r.filename
                    if not _matches(got, r.sha256):
                        raise DebianError(
                            f"{r.name} {r.version}: the downloaded {r.filename} does not match "
                            f"the archive's sha256 {r.sha256}"
                        )
                    shutil.move(got, paths[r.name])
        return paths


def _matches(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _record(para: Packages) -> DebRecord:
    groups: list[tuple[DebRelation, ...]] = []
    for field in ("Pre-Depends", "Depends"):
        if not para.get(field, "").strip():
            continue
        for group in PkgRelation.parse_relations(para[field]):
            alts = []
            for alt in group:
                if not alt.get("name"):
                    continue
                version = alt.get("version")
                op, ver = (version[0], version[1]) if version else (None, None)
                alts.append(DebRelation(name=str(alt["name"]), op=op, version=ver))
            if alts:
                groups.append(tuple(alts))
    provides = [
        str(alt["name"])
        for group in (PkgRelation.parse_relations(para["Provides"]) if para.get("Provides") else [])
        for alt in group
        if alt.get("name")
    ]
    source = para.get("Source", para["Package"]).split(" ", 1)[0]
    return DebRecord(
        name=para["Package"],
        version=para["Version"],
        arch=para["Architecture"],
        source=source,
        depends=tuple(groups),
        provides=tuple(provides),
        description=para.get("Description", "").split("\n", 1)[0].strip(),
        homepage=para.get("Homepage", ""),
        sha256=para.get("SHA256", ""),
        size=int(para.get("Size", "0")),
    )


def extract(deb: Path, dest: Path) -> None:
    """Unpack a ``.deb``'s files into ``dest`` (``dpkg-deb --extract``: modes, owners
    and links as packaged)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["dpkg-deb", "--extract", str(deb), str(dest)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = (getattr(exc, "stderr", b"") or b"").decode(errors="replace").strip()
        raise DebianError(f"{deb.name}: dpkg-deb cannot extract it: {detail or exc}") from exc


def control_files(deb: Path) -> dict[str, bytes]:
    """The control archive's files (``control``, ``postinst``, ...), by name."""
    try:
        raw = subprocess.run(
            ["dpkg-deb", "--ctrl-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise DebianError(
            f"{deb.name}: not a readable .deb: {detail.decode(errors='replace').strip() or exc}"
        ) from exc
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None:
                files[member.name.removeprefix("./")] = f.read()
    return files


_APK_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)*(?:[a-z](?![a-z]))?")


def apk_version(deb_version: str) -> tuple[str, int]:
    """Debian's ``[epoch:]upstream[-revision]`` as an APK version and ``-rN``: the
    leading dotted number of the upstream part (``1:1.2.13.dfsg-1`` is ``1.2.13``,
    ``r1``; ``2.36-9+deb12u4`` is ``2.36``, ``r9``)."""
    rest = deb_version.split(":", 1)[-1]
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "")
    m = _APK_VERSION.match(upstream)
    version = m.group(0) if m else "0"
    r = re.match(r"[0-9]+", revision)
    return version, int(r.group(0)) if r else 0
