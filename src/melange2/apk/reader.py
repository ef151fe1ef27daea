"""Read an APK v2 package: split its gzip streams, parse ``.PKGINFO``, verify it.

:func:`read_apk` reads a package once, front to back, keeping only the small
signature and control streams in memory: the data stream is hashed (its sha256
is the ``datahash``) and its tar entries listed as it goes by, each regular
file's content checked against its ``APK-TOOLS.checksum.SHA1`` PAX record::

    package = read_apk(Path("hello-2.12-r0.apk"))
    package.verify(load_public_keys([Path("/etc/apk/keys")]))
    package.info.pkgver, package.checksum, [e.path for e in package.entries]

Verification follows apk-tools ``extract_v2.c``: a signature entry names its
key; the key with that name must verify it over the control stream's compressed
bytes, and the data stream must hash to the ``datahash`` in ``.PKGINFO``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from melange2.apk._stream import (
    CHUNK_SIZE,
    ByteSource,
    GzipMemberReader,
    Sink,
    read_tar_segment,
    tee,
)
from melange2.apk.errors import ApkFormatError, ApkIntegrityError, ApkSignatureError
from melange2.apk.pkginfo import PackageInfo, parse_pkginfo
from melange2.apk.signing import PublicKeys, SignatureAlgorithm, verify

__all__ = [
    "ApkPackage",
    "DataEntry",
    "EntryKind",
    "Signature",
    "read_apk",
    "read_signatures",
    "split_streams",
    "verify_signatures",
]

CHECKSUM_PAX_KEY = "APK-TOOLS.checksum.SHA1"
#: Signature and control streams are small; refuse to inflate more than this.
SMALL_STREAM_LIMIT = 16 << 20
_SCRIPT_NAMES = frozenset(
    {
        ".trigger",
        ".pre-install",
        ".post-install",
        ".pre-deinstall",
        ".post-deinstall",
        ".pre-upgrade",
        ".post-upgrade",
    }
)


class EntryKind(StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    OTHER = "other"


@dataclass(frozen=True, kw_only=True)
class DataEntry:
    """One tar entry of the data stream."""

    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    size: int
    #: symlink target or hard link source
    linkname: str = ""
    #: hex SHA-1 from the ``APK-TOOLS.checksum.SHA1`` PAX record, if any
    checksum: str | None = None


@dataclass(frozen=True, kw_only=True)
class Signature:
    """A ``.SIGN.<ALGORITHM>.<KEY NAME>`` entry."""

    algorithm: SignatureAlgorithm
    key_name: str
    value: bytes = field(repr=False)

    @property
    def entry_name(self) -> str:
        return self.algorithm.entry_name(self.key_name)


@dataclass(frozen=True, kw_only=True)
class ApkPackage:
    """A package as read by :func:`read_apk`."""

    info: PackageInfo
    signatures: tuple[Signature, ...]
    #: the control gzip stream, compressed, exactly as in the file
    control: bytes = field(repr=False)
    #: scriptlets by file name (``.post-install`` ...)
    scripts: Mapping[str, bytes]
    entries: tuple[DataEntry, ...]
    #: hex sha256 of the data gzip stream as found in the file
    data_sha256: str
    #: bytes in the file
    size: int

    @property
    def checksum(self) -> bytes:
        """SHA-1 of the control stream: the package identity (APKINDEX ``C:``)."""
        return hashlib.sha1(self.control).digest()

    def verify(self, keys: PublicKeys) -> Signature:
        """Check the data against ``datahash`` and the control stream against a trusted key.

        Returns the signature that verified; raises :class:`ApkIntegrityError` or
        :class:`ApkSignatureError`.
        """
        if not self.info.datahash:
            raise ApkIntegrityError("package has no datahash; only datahash packages are supported")
        if self.info.datahash != self.data_sha256:
            raise ApkIntegrityError("data stream does not match the datahash in .PKGINFO")
        return verify_signatures(self.signatures, self.control, keys)


def verify_signatures(
    signatures: tuple[Signature, ...], signed: bytes, keys: PublicKeys
) -> Signature:
    """The first of ``signatures`` whose named key is in ``keys`` and verifies ``signed``."""
    if not signatures:
        raise ApkSignatureError("not signed")
    failures: list[str] = []
    for signature in signatures:
        key = keys.get(signature.key_name)
        if key is None:
            failures.append(f"{signature.key_name}: untrusted key")
            continue
        try:
            verify(signature.value, signed, key, algorithm=signature.algorithm)
        except ApkSignatureError:
            failures.append(f"{signature.key_name}: does not verify")
            continue
        return signature
    raise ApkSignatureError("no valid signature (" + "; ".join(failures) + ")")


def read_signatures(entries: list[tuple[tarfile.TarInfo, bytes]]) -> tuple[Signature, ...]:
    """The signatures among a signature stream's entries (unknown algorithms skipped)."""
    signatures: list[Signature] = []
    for info, data in entries:
        parsed = SignatureAlgorithm.parse_entry_name(info.name)
        if parsed is not None and info.isreg():
            algorithm, key_name = parsed
            signatures.append(Signature(algorithm=algorithm, key_name=key_name, value=data))
    return tuple(signatures)


def read_apk(
    source: Path | BinaryIO,
    *,
    verify_checksums: bool = True,
    on_data_raw: Sink | None = None,
    on_data_plain: Sink | None = None,
    inflate_data: bool = True,
) -> ApkPackage:
    """Read a package from a path or a binary stream positioned at its start.

    With ``verify_checksums`` every regular file and symlink with a
    ``APK-TOOLS.checksum.SHA1`` record is checked (:class:`ApkIntegrityError`).
    Signatures are not checked here: call :meth:`ApkPackage.verify`.

    ``on_data_raw`` and ``on_data_plain`` receive the data stream as it is read,
    compressed and decompressed (an environment layer is both, with one inflation).

    Without ``inflate_data`` the data stream is hashed as it lies in the file (the rest
    of the file after the control stream: ``data_sha256``) but not inflated: no
    ``entries``, no checksums checked. What :meth:`ApkPackage.verify` and a fetch need
    (the control stream, ``.PKGINFO``, the datahash to compare) at a fraction of the cost.
    """
    sinks = _DataSinks(raw=on_data_raw, plain=on_data_plain, inflate=inflate_data)
    if isinstance(source, Path):
        with source.open("rb") as raw:
            return _read(raw, verify_checksums, sinks)
    return _read(source, verify_checksums, sinks)


@dataclass(frozen=True, slots=True)
class _DataSinks:
    raw: Sink | None = None
    plain: Sink | None = None
    inflate: bool = True


def split_streams(data: bytes) -> list[bytes]:
    """The gzip streams (members) of ``data``, compressed, in order."""
    source = ByteSource(io.BytesIO(data))
    streams: list[bytes] = []
    while not source.at_eof():
        raw = bytearray()
        GzipMemberReader(source, on_raw=raw.extend).drain()
        streams.append(bytes(raw))
    return streams


def _read(raw: BinaryIO, verify_checksums: bool, sinks: _DataSinks) -> ApkPackage:
    source = ByteSource(raw)
    first_raw = bytearray()
    first = GzipMemberReader(source, on_raw=first_raw.extend)
    first_entries = read_tar_segment(first.read_all_limited(SMALL_STREAM_LIMIT))
    size = first.raw_size
    if first_entries and all(info.name.startswith(".SIGN.") for info, _ in first_entries):
        signatures = read_signatures(first_entries)
        control_raw = bytearray()
        control = GzipMemberReader(source, on_raw=control_raw.extend)
        control_entries = read_tar_segment(control.read_all_limited(SMALL_STREAM_LIMIT))
        size += control.raw_size
    else:
        signatures = ()
        control_raw, control_entries = first_raw, first_entries
    info, scripts = _read_control(control_entries)

    data_hash = hashlib.sha256()
    on_raw = data_hash.update if sinks.raw is None else tee(data_hash.update, sinks.raw)
    entries: tuple[DataEntry, ...] = ()
    if sinks.inflate:
        data = GzipMemberReader(source, on_raw=on_raw, on_plain=sinks.plain)
        entries = _read_data(data, verify_checksums)
        data.drain()
        size += data.raw_size
        if not source.at_eof():
            raise ApkFormatError("unexpected bytes after the data stream")
    else:
        while chunk := source.read(CHUNK_SIZE):
            on_raw(chunk)
            size += len(chunk)
    return ApkPackage(
        info=info,
        signatures=signatures,
        control=bytes(control_raw),
        scripts=scripts,
        entries=entries,
        data_sha256=data_hash.hexdigest(),
        size=size,
    )


def _read_control(
    entries: list[tuple[tarfile.TarInfo, bytes]],
) -> tuple[PackageInfo, dict[str, bytes]]:
    pkginfo: bytes | None = None
    scripts: dict[str, bytes] = {}
    for info, data in entries:
        if not info.name.startswith(".") or "/" in info.name:
            raise ApkFormatError(f"unexpected entry in the control stream: {info.name!r}")
        if info.name == ".PKGINFO":
            pkginfo = data
        elif info.name in _SCRIPT_NAMES:
            scripts[info.name] = data
    if pkginfo is None:
        raise ApkFormatError("the control stream has no .PKGINFO")
    return parse_pkginfo(pkginfo), scripts


def _read_data(data: GzipMemberReader, verify_checksums: bool) -> tuple[DataEntry, ...]:
    entries: list[DataEntry] = []
    try:
        with tarfile.open(fileobj=io.BufferedReader(data, CHUNK_SIZE), mode="r|") as archive:
            for info in archive:
                checksum = info.pax_headers.get(CHECKSUM_PAX_KEY)
                kind = _kind(info)
                if verify_checksums and checksum is not None:
                    actual = None
                    if kind is EntryKind.FILE:
                        extracted = archive.extractfile(info)
                        assert extracted is not None
                        digest = hashlib.sha1()
                        while chunk := extracted.read(CHUNK_SIZE):
                            digest.update(chunk)
                        actual = digest.hexdigest()
                    elif kind is EntryKind.SYMLINK:
                        actual = hashlib.sha1(os.fsencode(info.linkname)).hexdigest()
                    if actual is not None and actual != checksum.lower():
                        raise ApkIntegrityError(f"{info.name}: content does not match its checksum")
                entries.append(
                    DataEntry(
                        path=info.name,
                        kind=kind,
                        mode=info.mode,
                        uid=info.uid,
                        gid=info.gid,
                        uname=info.uname,
                        gname=info.gname,
                        mtime=int(info.mtime),
                        size=info.size,
                        linkname=info.linkname,
                        checksum=checksum,
                    )
                )
    except tarfile.TarError as exc:
        raise ApkFormatError(f"corrupt data stream: {exc}") from exc
    return tuple(entries)


def _kind(info: tarfile.TarInfo) -> EntryKind:
    if info.isreg():
        return EntryKind.FILE
    if info.isdir():
        return EntryKind.DIRECTORY
    if info.issym():
        return EntryKind.SYMLINK
    if info.islnk():
        return EntryKind.HARDLINK
    return EntryKind.OTHER
