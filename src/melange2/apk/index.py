"""APKINDEX: the repository index apk-tools and apko download.

``APKINDEX`` is text, one record per package, records separated by a blank line.
Each line is ``<letter>:<value>``; the letters and their order are those of the
index writer melange v0.34.0 uses (apko's ``apkIndexTemplate``), empty fields left out
except ``T:`` and ``t:``::

    C:Q1<base64 SHA-1 of the package's control gzip stream>
    P:name            V:version-rN     A:arch
    S:apk file size   I:installed size
    T:description     U:url            L:license
    o:origin          m:maintainer     t:build time    c:commit
    D:depends (space separated)        i:install_if    p:provides
    k:provider priority

``APKINDEX.tar.gz`` is a gzip stream holding a tar archive (``APKINDEX`` then
``DESCRIPTION``, with the end-of-archive blocks), as melange writes it; signing puts a
signature gzip stream in front, signing the index stream's compressed bytes
(``.SIGN.RSA256.<key>``, as melange's ``SignIndex``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Self

from melange2.apk._stream import (
    END_OF_ARCHIVE,
    ByteSource,
    GzipMemberReader,
    gzip_member,
    read_tar_segment,
    tar_small_file,
)
from melange2.apk.errors import ApkFormatError
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.reader import (
    Signature,
    read_apk,
    read_signatures,
    verify_signatures,
)
from melange2.apk.signing import PublicKeys, Signer, signature_stream

__all__ = [
    "ApkIndex",
    "IndexRecord",
    "build_index",
    "parse_index",
    "read_index_tar_gz",
    "write_index_tar_gz",
]

INDEX_LIMIT = 256 << 20


@dataclass(frozen=True, kw_only=True)
class IndexRecord:
    """One package in APKINDEX."""

    #: SHA-1 of the control gzip stream (rendered ``C:Q1`` + base64)
    checksum: bytes
    name: str
    #: full ``VERSION-rN``
    version: str
    arch: str
    #: size of the .apk file
    size: int
    installed_size: int
    description: str = ""
    url: str = ""
    license: str = ""
    origin: str = ""
    maintainer: str = ""
    build_time: int = 0
    commit: str = ""
    provider_priority: int | None = None
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    install_if: tuple[str, ...] = ()
    #: lines with letters this model does not know, kept in order
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if len(self.checksum) != 20:
            raise ApkFormatError("checksum must be a 20-byte SHA-1 digest")
        for attr in ("name", "version", "arch"):
            value = getattr(self, attr)
            if not value or any(c.isspace() for c in value):
                raise ApkFormatError(f"{attr} must be non-empty without whitespace: {value!r}")
        for attr in ("description", "url", "license", "origin", "maintainer", "commit"):
            if "\n" in getattr(self, attr):
                raise ApkFormatError(f"{attr} must be a single line")
        for attr in ("depends", "provides", "install_if"):
            for item in getattr(self, attr):
                if not item or any(c.isspace() for c in item):
                    raise ApkFormatError(f"{attr} entries must be words: {item!r}")
        for letter, value in self.extra:
            if len(letter) != 1 or letter in _KNOWN_LETTERS or letter in "\n:" or "\n" in value:
                raise ApkFormatError(f"invalid extra APKINDEX field {letter!r}")

    @classmethod
    def from_package(cls, info: PackageInfo, *, checksum: bytes, size: int) -> Self:
        """The record for a package with metadata ``info`` and an .apk of ``size`` bytes."""
        return cls(
            checksum=checksum,
            name=info.name,
            version=info.pkgver,
            arch=info.arch,
            size=size,
            installed_size=info.installed_size,
            description=info.description,
            url=info.url,
            license=info.license,
            origin=info.origin,
            maintainer=info.maintainer,
            build_time=info.build_date,
            commit=info.commit,
            provider_priority=info.provider_priority,
            depends=info.depends,
            provides=info.provides,
            install_if=info.install_if,
        )

    @classmethod
    def from_apk(cls, source: Path | BinaryIO) -> Self:
        """Read an .apk (once, streaming) and describe it. Signatures are not checked."""
        package = read_apk(source, verify_checksums=False)
        return cls.from_package(package.info, checksum=package.checksum, size=package.size)

    @property
    def checksum_field(self) -> str:
        return "Q1" + base64.b64encode(self.checksum).decode()

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.apk"

    def evolve(self, **changes: Any) -> Self:
        return replace(self, **changes)

    def render(self) -> str:
        """The record's lines, each ending in a newline (no blank separator line)."""
        lines = [f"C:{self.checksum_field}", f"P:{self.name}", f"V:{self.version}"]
        for letter, value in (
            ("A", self.arch),
            ("S", self.size),
            ("I", self.installed_size),
        ):
            if value:
                lines.append(f"{letter}:{value}")
        lines.append(f"T:{self.description}")
        for letter, value in (("U", self.url), ("L", self.license), ("o", self.origin)):
            if value:
                lines.append(f"{letter}:{value}")
        if self.maintainer:
            lines.append(f"m:{self.maintainer}")
        # apko writes t: unless the time is Go's zero time: a build date of 0 is 1970
        lines.append(f"t:{self.build_time}")
        if self.commit:
            lines.append(f"c:{self.commit}")
        for letter, items in (("D", self.depends), ("i", self.install_if), ("p", self.provides)):
            if items:
                lines.append(f"{letter}:{' '.join(items)}")
        if self.provider_priority:
            lines.append(f"k:{self.provider_priority}")
        lines.extend(f"{letter}:{value}" for letter, value in self.extra)
        return "".join(line + "\n" for line in lines)


_KNOWN_LETTERS = frozenset("CPVASITULomtckDpi")


def build_index(records: Iterable[IndexRecord]) -> bytes:
    """The ``APKINDEX`` text: records sorted by name, version and checksum, each followed
    by a blank line (as ``apk index`` writes them)."""
    ordered = sorted(records, key=lambda r: (r.name, r.version, r.arch, r.checksum))
    return "".join(record.render() + "\n" for record in ordered).encode()


def parse_index(data: bytes | str) -> tuple[IndexRecord, ...]:
    """Parse ``APKINDEX`` text into records, in file order."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError as exc:
            raise ApkFormatError(f"APKINDEX is not UTF-8: {exc}") from exc
    records: list[IndexRecord] = []
    current: list[str] = []
    for number, line in enumerate(data.split("\n"), start=1):
        if not line:
            if current:
                records.append(_parse_record(current))
                current = []
            continue
        if len(line) < 2 or line[1] != ":":
            raise ApkFormatError(f"APKINDEX line {number}: expected 'X:value', got {line!r}")
        current.append(line)
    if current:
        records.append(_parse_record(current))
    return tuple(records)


def _parse_record(lines: list[str]) -> IndexRecord:
    values: dict[str, Any] = {}
    extra: list[tuple[str, str]] = []
    for line in lines:
        letter, value = line[0], line[2:]
        try:
            match letter:
                case "C":
                    if not value.startswith("Q1"):
                        raise ApkFormatError(f"unsupported checksum {value!r}")
                    values["checksum"] = base64.b64decode(value[2:], validate=True)
                case "P" | "V" | "A" | "T" | "U" | "L" | "o" | "m" | "c":
                    values[_TEXT_FIELDS[letter]] = value
                case "S" | "I" | "t" | "k":
                    values[_INT_FIELDS[letter]] = int(value)
                case "D" | "p" | "i":
                    values[_LIST_FIELDS[letter]] = tuple(value.split())
                case _:
                    extra.append((letter, value))
        except ApkFormatError:
            raise
        except ValueError as exc:
            raise ApkFormatError(f"APKINDEX field {letter}: bad value {value!r}") from exc
    missing = [name for name in ("checksum", "name", "version") if name not in values]
    if missing:
        raise ApkFormatError(f"APKINDEX record lacks {', '.join(missing)}")
    values.setdefault("arch", "noarch")
    values.setdefault("size", 0)
    values.setdefault("installed_size", 0)
    return IndexRecord(**values, extra=tuple(extra))


_TEXT_FIELDS = {
    "P": "name",
    "V": "version",
    "A": "arch",
    "T": "description",
    "U": "url",
    "L": "license",
    "o": "origin",
    "m": "maintainer",
    "c": "commit",
}
_INT_FIELDS = {"S": "size", "I": "installed_size", "t": "build_time", "k": "provider_priority"}
_LIST_FIELDS = {"D": "depends", "p": "provides", "i": "install_if"}


@dataclass(frozen=True, kw_only=True)
class ApkIndex:
    """The content of an ``APKINDEX.tar.gz``."""

    description: str
    records: tuple[IndexRecord, ...]
    signatures: tuple[Signature, ...] = ()


def write_index_tar_gz(
    records: Iterable[IndexRecord],
    signer: Signer | None,
    out: BinaryIO,
    *,
    description: str = "",
    source_date_epoch: int = 0,
) -> int:
    """Write ``APKINDEX.tar.gz`` for ``records`` to ``out``; return the bytes written.

    The index stream is a tar of ``APKINDEX`` and ``DESCRIPTION`` (empty when not given),
    mode 0644, root-owned, mtime ``source_date_epoch``, as melange writes it; with a
    ``signer`` a signature stream over its compressed bytes goes first. Deterministic,
    like :func:`melange2.apk.write_apk`.
    """
    if "\n" in description:
        raise ApkFormatError("the index description must be a single line")
    archive = tar_small_file("APKINDEX", build_index(records), mode=0o644, mtime=source_date_epoch)
    archive += tar_small_file(
        "DESCRIPTION", description.encode(), mode=0o644, mtime=source_date_epoch
    )
    index_stream = gzip_member(archive + END_OF_ARCHIVE, level=9)
    signature = b""
    if signer is not None:
        signature = signature_stream(signer, index_stream, mtime=source_date_epoch)
    out.write(signature)
    out.write(index_stream)
    return len(signature) + len(index_stream)


def read_index_tar_gz(source: Path | BinaryIO, *, keys: PublicKeys | None = None) -> ApkIndex:
    """Read an ``APKINDEX.tar.gz``. With ``keys``, a signature by one of them must verify
    (:class:`melange2.apk.ApkSignatureError` otherwise)."""
    if isinstance(source, Path):
        with source.open("rb") as raw:
            return _read_index(raw, keys)
    return _read_index(source, keys)


def _read_index(raw: BinaryIO, keys: PublicKeys | None) -> ApkIndex:
    stream = ByteSource(raw)
    streams: list[tuple[bytes, list[Any]]] = []
    while not stream.at_eof():
        if len(streams) == 2:
            raise ApkFormatError("APKINDEX.tar.gz has more than two gzip streams")
        compressed = bytearray()
        member = GzipMemberReader(stream, on_raw=compressed.extend)
        entries = read_tar_segment(member.read_all_limited(INDEX_LIMIT))
        streams.append((bytes(compressed), entries))
    if not streams:
        raise ApkFormatError("empty APKINDEX.tar.gz")
    signatures: tuple[Signature, ...] = ()
    if len(streams) == 2:
        if not all(info.name.startswith(".SIGN.") for info, _ in streams[0][1]):
            raise ApkFormatError("the first stream of APKINDEX.tar.gz is not a signature")
        signatures = read_signatures(streams[0][1])
    index_compressed, entries = streams[-1]
    if keys is not None:
        verify_signatures(signatures, index_compressed, keys)
    description = ""
    text: bytes | None = None
    for info, data in entries:
        if info.name == "DESCRIPTION":
            description = data.decode(errors="replace")
        elif info.name == "APKINDEX":
            text = data
        elif not info.name.startswith(".SIGN."):
            raise ApkFormatError(f"unexpected entry in APKINDEX.tar.gz: {info.name!r}")
    if text is None:
        raise ApkFormatError("APKINDEX.tar.gz has no APKINDEX")
    return ApkIndex(description=description, records=parse_index(text), signatures=signatures)
