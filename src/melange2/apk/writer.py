"""Write an APK v2 package from a directory tree.

The file is three gzip streams, written in this order but computed back to front::

    signature  tar segment: .SIGN.RSA256.<key>.rsa.pub = RSA(SHA-256(control stream))
    control    tar segment: .PKGINFO (with datahash), then the other control files
               (.melange.yaml, scriptlets) in byte order of their names, as melange
    data       tar archive of the tree, ending in two zero blocks; every regular file
               and symlink carries a PAX record APK-TOOLS.checksum.SHA1

The data stream is spooled to a temporary file (in memory while small) because its
sha256 must be in ``.PKGINFO`` before the control stream can be signed. Files are
read in chunks, never whole.

Same tree, same :class:`PackageInfo`, same key and same ``source_date_epoch`` give
byte-identical output: entries are sorted by name, gzip headers carry no name or
time, every mtime is ``source_date_epoch`` (as melange's tar writer sets them), owners
default to root and owner names come from the maps the caller passes.

The installed size (``size``) is computed as melange computes it: the sum of the
``lstat`` sizes of every path of the tree, the tree's root and its directories
included (so it depends on the filesystem the tree is on, as melange's does).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from melange2.apk._stream import (
    CHUNK_SIZE,
    END_OF_ARCHIVE,
    GzipMemberWriter,
    gzip_member,
    tar_header,
    tar_padding,
    tar_small_file,
    tee,
)
from melange2.apk.errors import ApkFormatError, ApkIntegrityError
from melange2.apk.index import IndexRecord
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer, signature_stream

__all__ = [
    "ApkResult",
    "DataStream",
    "Owner",
    "Scriptlet",
    "control_stream",
    "finish_info",
    "write_apk",
    "write_data",
]

CHECKSUM_PAX_KEY = "APK-TOOLS.checksum.SHA1"
_SPOOL_IN_MEMORY = 16 << 20


class Scriptlet(StrEnum):
    """Install scripts, by their control-stream file name."""

    TRIGGER = ".trigger"
    PRE_INSTALL = ".pre-install"
    POST_INSTALL = ".post-install"
    PRE_DEINSTALL = ".pre-deinstall"
    POST_DEINSTALL = ".post-deinstall"
    PRE_UPGRADE = ".pre-upgrade"
    POST_UPGRADE = ".post-upgrade"


#: owner names apk sees when the caller gives none: root's
ROOT_NAMES: Mapping[int, str] = {0: "root"}


@dataclass(frozen=True, kw_only=True)
class Owner:
    """Numeric owner of a packaged path."""

    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, kw_only=True)
class ApkResult:
    """What :func:`write_apk` wrote."""

    #: the metadata as written: ``installed_size``, ``datahash`` and ``build_date`` filled in
    info: PackageInfo
    #: bytes written (``S:`` in APKINDEX)
    size: int
    #: SHA-1 of the control gzip stream: the package identity (``C:Q1...`` in APKINDEX)
    checksum: bytes
    #: hex sha256 of the whole file
    sha256: str
    #: name of the signature entry, ``None`` when unsigned
    signature_name: str | None

    def index_record(self) -> IndexRecord:
        """The APKINDEX record for this package, without reading it back."""
        return IndexRecord.from_package(self.info, checksum=self.checksum, size=self.size)


@dataclass
class _DataStats:
    installed_size: int = 0
    keep_hardlinks: bool = False
    entries: int = 0
    hardlinks: dict[tuple[int, int], str] = field(default_factory=dict)


def write_apk(
    rootdir: Path,
    info: PackageInfo,
    signer: Signer | None,
    out: BinaryIO,
    *,
    source_date_epoch: int,
    scripts: Mapping[Scriptlet, bytes] | None = None,
    control_files: Mapping[str, bytes] | None = None,
    owners: Mapping[str, Owner] | None = None,
    preserve_owners: bool = False,
    uid_map: Mapping[int, int] | None = None,
    gid_map: Mapping[int, int] | None = None,
    user_names: Mapping[int, str] = ROOT_NAMES,
    group_names: Mapping[int, str] = ROOT_NAMES,
    keep_hardlinks: bool = False,
    compresslevel: int = 9,
) -> ApkResult:
    """Package the tree under ``rootdir`` as an APK v2 written to ``out``.

    ``info`` describes the package; its ``installed_size`` and ``datahash`` are computed
    here, and a ``build_date`` of 0 becomes ``source_date_epoch``. Regular files,
    directories and symlinks are packaged (hard links as tar hard links); anything
    else is an :class:`ApkFormatError`. Every path is owned by root:root unless
    ``preserve_owners`` takes the owners from the tree (ids first mapped through
    ``uid_map``/``gid_map``, as melange maps its build user to root) or ``owners`` names
    one for a relative path such as ``"var/lib/app"``. Owner names are looked up in
    ``user_names``/``group_names`` (melange takes them from the build environment's
    ``/etc/passwd`` and ``/etc/group``); an id without a name gets none.
    ``control_files`` are extra control-stream files (``.melange.yaml``), mode 0644.
    Hard-linked files are written whole at each path, as melange v0.34.0 writes them
    (its in-memory filesystem hides link counts); ``keep_hardlinks`` writes tar hard
    links instead.
    With ``signer`` ``None`` the package is unsigned (``apk add --allow-untrusted``
    territory).

    Example::

        with open("out/hello-2.12-r0.apk", "wb") as out:
            result = write_apk(
                Path("melange-out/hello"),
                PackageInfo(name="hello", version="2.12", arch="x86_64"),
                Signer.from_files(Path("melange.rsa")),
                out,
                source_date_epoch=1700000000,
            )
    """
    if source_date_epoch < 0:
        raise ApkFormatError("source_date_epoch must not be negative")
    if not rootdir.is_dir():
        raise ApkFormatError(f"{rootdir} is not a directory")
    scripts = dict(scripts or {})
    if Scriptlet.TRIGGER in scripts and not info.triggers:
        raise ApkFormatError("a .trigger script needs the paths it watches in info.triggers")
    control = {name.value: (data, 0o755) for name, data in scripts.items()}
    for name, data in (control_files or {}).items():
        if not name.startswith(".") or "/" in name or name == ".PKGINFO" or name in control:
            raise ApkFormatError(f"invalid control file name {name!r}")
        control[name] = (data, 0o644)
    names = _Names(
        uid_map=uid_map or {}, gid_map=gid_map or {}, users=user_names, groups=group_names
    )

    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        written = _write_data(
            rootdir,
            spool,
            source_date_epoch,
            owners,
            preserve_owners,
            names,
            keep_hardlinks,
            compresslevel,
        )
        final = finish_info(info, written, source_date_epoch=source_date_epoch)
        control_gz = _control(final, control, source_date_epoch, compresslevel)

        whole = hashlib.sha256()
        size = 0

        def emit(data: bytes) -> None:
            nonlocal size
            out.write(data)
            whole.update(data)
            size += len(data)

        if signer is not None:
            emit(signature_stream(signer, control_gz, mtime=source_date_epoch))
        emit(control_gz)
        spool.seek(0)
        while chunk := spool.read(CHUNK_SIZE):
            emit(chunk)

    return ApkResult(
        info=final,
        size=size,
        checksum=hashlib.sha1(control_gz).digest(),
        sha256=whole.hexdigest(),
        signature_name=signer.signature_name if signer is not None else None,
    )


@dataclass(frozen=True, kw_only=True)
class DataStream:
    """What :func:`write_data` wrote: the facts ``.PKGINFO`` needs about the data."""

    installed_size: int
    datahash: str  #: hex sha256 of the data gzip stream


def write_data(
    rootdir: Path,
    out: BinaryIO,
    *,
    source_date_epoch: int,
    owners: Mapping[str, Owner] | None = None,
    preserve_owners: bool = False,
    keep_hardlinks: bool = False,
    compresslevel: int = 9,
) -> DataStream:
    """Write only the data stream of an APK (the tree under ``rootdir``, as
    :func:`write_apk` writes it) to ``out``: the part of a package that does not depend
    on its metadata, so it can be kept and given a control stream and a signature later
    (:func:`finish_info`, :func:`control_stream`)."""
    if not rootdir.is_dir():
        raise ApkFormatError(f"{rootdir} is not a directory")
    names = _Names(uid_map={}, gid_map={}, users=ROOT_NAMES, groups=ROOT_NAMES)
    return _write_data(
        rootdir,
        out,
        source_date_epoch,
        owners,
        preserve_owners,
        names,
        keep_hardlinks,
        compresslevel,
    )


def finish_info(info: PackageInfo, data: DataStream, *, source_date_epoch: int) -> PackageInfo:
    """``info`` with what the data stream decides: installed size, datahash and (when
    ``info`` has none) the build date."""
    return info.evolve(
        installed_size=data.installed_size,
        datahash=data.datahash,
        build_date=info.build_date or source_date_epoch,
    )


def control_stream(info: PackageInfo, *, source_date_epoch: int, compresslevel: int = 9) -> bytes:
    """The control gzip stream of a package with no scriptlets: its ``.PKGINFO``
    (``info`` as :func:`finish_info` left it). Its SHA-1 is the package's identity; a
    signature signs it."""
    return _control(info, {}, source_date_epoch, compresslevel)


def _write_data(
    rootdir: Path,
    out: Any,
    source_date_epoch: int,
    owners: Mapping[str, Owner] | None,
    preserve_owners: bool,
    names: _Names,
    keep_hardlinks: bool,
    compresslevel: int,
) -> DataStream:
    datahash = hashlib.sha256()
    member = GzipMemberWriter(tee(out.write, datahash.update), level=compresslevel)
    stats = _DataStats(installed_size=rootdir.lstat().st_size, keep_hardlinks=keep_hardlinks)
    for rel, path, st in _walk(rootdir):
        owner = _owner(rel, st, owners or {}, preserve_owners, names)
        _write_entry(member, rel, path, st, owner, source_date_epoch, stats, names)
    member.write(END_OF_ARCHIVE)
    member.close()
    return DataStream(installed_size=stats.installed_size, datahash=datahash.hexdigest())


def _control(
    final: PackageInfo,
    control: Mapping[str, tuple[bytes, int]],
    source_date_epoch: int,
    compresslevel: int,
) -> bytes:
    control_tar = tar_small_file(".PKGINFO", final.render(), mode=0o644, mtime=source_date_epoch)
    for name in sorted(control, key=os.fsencode):
        data, mode = control[name]
        control_tar += tar_small_file(name, data, mode=mode, mtime=source_date_epoch)
    return gzip_member(control_tar, level=compresslevel)


@dataclass(frozen=True, kw_only=True)
class _Names:
    uid_map: Mapping[int, int]
    gid_map: Mapping[int, int]
    users: Mapping[int, str]
    groups: Mapping[int, str]


def _walk(root: Path) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(relative path, path, lstat)`` depth first, siblings in byte order of their names."""

    def walk(directory: str, prefix: str) -> Iterator[tuple[str, str, os.stat_result]]:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: os.fsencode(entry.name))
        for entry in entries:
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            yield rel, entry.path, st
            if stat.S_ISDIR(st.st_mode):
                yield from walk(entry.path, rel + "/")

    yield from walk(os.fspath(root), "")


def _owner(
    rel: str,
    st: os.stat_result,
    owners: Mapping[str, Owner],
    preserve_owners: bool,
    names: _Names,
) -> Owner:
    if rel in owners:
        return owners[rel]
    if preserve_owners:
        return Owner(
            uid=names.uid_map.get(st.st_uid, st.st_uid), gid=names.gid_map.get(st.st_gid, st.st_gid)
        )
    return Owner()


def _write_entry(
    member: GzipMemberWriter,
    rel: str,
    path: str,
    st: os.stat_result,
    owner: Owner,
    mtime: int,
    stats: _DataStats,
    names: _Names,
) -> None:
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = mtime
    info.uid, info.gid = owner.uid, owner.gid
    # apk-tools resolves owners by name first: a name only where the user database has one
    info.uname = names.users.get(owner.uid, "")
    info.gname = names.groups.get(owner.gid, "")
    stats.entries += 1
    # melange's installed size: every path's lstat size (directories and links included)
    stats.installed_size += st.st_size

    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        member.write(tar_header(info))
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        info.pax_headers = {CHECKSUM_PAX_KEY: hashlib.sha1(os.fsencode(target)).hexdigest()}
        member.write(tar_header(info))
    elif stat.S_ISREG(st.st_mode):
        inode = (st.st_dev, st.st_ino)
        if stats.keep_hardlinks and st.st_nlink > 1 and inode in stats.hardlinks:
            info.type = tarfile.LNKTYPE
            info.linkname = stats.hardlinks[inode]
            member.write(tar_header(info))
            return
        if st.st_nlink > 1:
            stats.hardlinks[inode] = rel
        digest = _sha1_file(path)
        info.type = tarfile.REGTYPE
        info.size = st.st_size
        info.pax_headers = {CHECKSUM_PAX_KEY: digest}
        member.write(tar_header(info))
        _copy_file(member, rel, path, st.st_size, digest)
    else:
        raise ApkFormatError(
            f"{rel}: unsupported file type (only files, directories and symlinks are packaged)"
        )


def _sha1_file(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_file(member: GzipMemberWriter, rel: str, path: str, size: int, sha1: str) -> None:
    digest = hashlib.sha1()
    copied = 0
    with open(path, "rb") as src:
        while copied < size and (chunk := src.read(min(CHUNK_SIZE, size - copied))):
            digest.update(chunk)
            member.write(chunk)
            copied += len(chunk)
    if copied != size or digest.hexdigest() != sha1:
        raise ApkIntegrityError(f"{rel} changed while it was being packaged")
    member.write(tar_padding(size))
