"""File trees over the session: fsutil's DiffCopy packet protocol, both ways.

BuildKit moves trees with ``github.com/tonistiigi/fsutil`` (``send.go``/``receive.go``),
one ``fsutil.types.Packet`` per gRPC message:

1. The sender walks its tree depth-first in byte order of names and sends one ``STAT``
   per entry (path relative to the root, *Go* ``os.FileMode`` bits, uid/gid as numbers,
   size, mtime in ns, symlink target or, for a regular file, the first path of its hard
   link group, device numbers, xattrs); an empty ``STAT`` ends the list. Every ``STAT``
   counts as one id, from 0.
2. The receiver sends ``REQ{ID}`` for each regular file (not hard links) whose contents it
   wants; the sender answers with ``DATA{ID, data}`` chunks and an empty ``DATA{ID}`` at the
   end of each file (up to four files interleaved).
3. When the receiver has everything it sends ``FIN``; the sender answers ``FIN`` and the
   stream closes. Either side reports a failure with ``ERR{data: message}``.

Two services use it: ``moby.filesync.v1.FileSend/DiffCopy`` (the daemon sends a ``local``
exporter's result to the client; the exporter's index in ``SolveRequest.Exporters`` is in
the ``buildkit-attachable-exporter-id`` metadata; the messages are declared as
``BytesMessage`` but are fsutil packets on the wire) and ``moby.filesync.v1.FileSync/DiffCopy``
(the client sends the directory named by the ``dir-name`` metadata to a ``local://`` source).

:class:`TreeReceiver` writes what it receives exactly: modes (setuid, setgid, sticky
included), owners as numbers (when running as root, as ``tarfile`` does), symlinks, hard
links, devices and fifos, xattrs and mtimes; directories get their modes and times last.
Paths are checked: nothing absolute, no ``..``, and every parent must be a directory made
by this transfer, so a symlink sent earlier cannot redirect a later write.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat as st
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from melange2.buildkit._proto.fsutil.types import stat_pb2, wire_pb2
from melange2.buildkit.h2grpc import GrpcError, Handler, MessageStream, ServerCall

FILE_SEND = "/moby.filesync.v1.FileSend/DiffCopy"
FILE_SYNC = "/moby.filesync.v1.FileSync/DiffCopy"
EXPORTER_ID_KEY = "buildkit-attachable-exporter-id"
DIR_NAME_KEY = "dir-name"
_CHUNK = 32 * 1024  # fsutil's sender uses 32 KiB buffers too

# Go's os.FileMode bits (io/fs): the type and special bits above the permission bits.
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_DEVICE = 1 << 26
GO_NAMED_PIPE = 1 << 25
GO_SOCKET = 1 << 24
GO_SETUID = 1 << 23
GO_SETGID = 1 << 22
GO_CHAR_DEVICE = 1 << 21
GO_STICKY = 1 << 20
GO_IRREGULAR = 1 << 19
GO_TYPE = (
    GO_DIR | GO_SYMLINK | GO_NAMED_PIPE | GO_SOCKET | GO_DEVICE | GO_CHAR_DEVICE | GO_IRREGULAR
)

Packet = wire_pb2.Packet


def unix_mode(go_mode: int) -> int:
    """The POSIX ``st_mode`` for a Go ``os.FileMode``."""
    mode = go_mode & 0o777
    if go_mode & GO_SETUID:
        mode |= st.S_ISUID
    if go_mode & GO_SETGID:
        mode |= st.S_ISGID
    if go_mode & GO_STICKY:
        mode |= st.S_ISVTX
    if go_mode & GO_DIR:
        mode |= st.S_IFDIR
    elif go_mode & GO_SYMLINK:
        mode |= st.S_IFLNK
    elif go_mode & GO_DEVICE:
        mode |= st.S_IFCHR if go_mode & GO_CHAR_DEVICE else st.S_IFBLK
    elif go_mode & GO_CHAR_DEVICE:
        mode |= st.S_IFCHR
    elif go_mode & GO_NAMED_PIPE:
        mode |= st.S_IFIFO
    elif go_mode & GO_SOCKET:
        mode |= st.S_IFSOCK
    else:
        mode |= st.S_IFREG
    return mode


def go_mode(unix: int) -> int:
    """The Go ``os.FileMode`` for a POSIX ``st_mode`` (the inverse of :func:`unix_mode`)."""
    mode = unix & 0o777
    if unix & st.S_ISUID:
        mode |= GO_SETUID
    if unix & st.S_ISGID:
        mode |= GO_SETGID
    if unix & st.S_ISVTX:
        mode |= GO_STICKY
    fmt = st.S_IFMT(unix)
    mode |= {
        st.S_IFDIR: GO_DIR,
        st.S_IFLNK: GO_SYMLINK,
        st.S_IFBLK: GO_DEVICE,
        st.S_IFCHR: GO_DEVICE | GO_CHAR_DEVICE,
        st.S_IFIFO: GO_NAMED_PIPE,
        st.S_IFSOCK: GO_SOCKET,
    }.get(fmt, 0)
    return mode


def _check_path(path: str) -> str:
    if (
        not path
        or path.startswith("/")
        or "\x00" in path
        or posixpath.normpath(path) != path
        or path == ".."
        or path.startswith("../")
    ):
        raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"refusing path {path!r} in transfer")
    return path


def _remove(full: Path) -> None:
    if full.is_dir() and not full.is_symlink():
        shutil.rmtree(full)
    else:
        full.unlink(missing_ok=True)


class TreeReceiver:
    """Receives one fsutil transfer into ``dest`` (created if missing; entries already
    there are replaced by those received)."""

    def __init__(self, call: MessageStream, dest: Path) -> None:
        self.call = call
        self.dest = dest
        self.chown = os.geteuid() == 0
        self._dirs: set[str] = {""}
        self._files: set[str] = set()
        self._pending: dict[int, tuple[Path, stat_pb2.Stat]] = {}
        self._open: dict[int, int] = {}
        self._dir_meta: list[tuple[Path, stat_pb2.Stat]] = []
        self._stats_done = False
        self._fin_sent = False
        self.bytes_received = 0
        self.entries = 0
        #: every entry's owner as sent (path relative to ``dest`` -> (uid, gid)), kept
        #: whether or not this process may ``chown``: packages must carry them
        self.owners: dict[str, tuple[int, int]] = {}

    async def run(self) -> None:
        try:
            self.dest.mkdir(parents=True, exist_ok=True)
            await self._loop()
        except GrpcError as exc:
            with contextlib.suppress(GrpcError):
                await self._send(Packet(type=Packet.PACKET_ERR, data=exc.message.encode()))
            raise
        except OSError as exc:
            message = f"writing the exported tree: {exc}"
            with contextlib.suppress(GrpcError):
                await self._send(Packet(type=Packet.PACKET_ERR, data=message.encode()))
            raise GrpcError(grpc.StatusCode.INTERNAL, message) from exc
        finally:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()

    async def _send(self, packet: wire_pb2.Packet) -> None:
        await self.call.send(packet.SerializeToString())

    async def _loop(self) -> None:
        index = 0
        while True:
            raw = await self.call.recv()
            if raw is None:
                raise GrpcError(grpc.StatusCode.DATA_LOSS, "transfer ended before FIN")
            packet = Packet.FromString(raw)
            if packet.type == Packet.PACKET_STAT:
                if not packet.HasField("stat"):
                    self._stats_done = True
                else:
                    if self._stats_done:
                        raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "STAT after the last")
                    if self._entry(index, packet.stat):
                        await self._send(Packet(type=Packet.PACKET_REQ, ID=index))
                    index += 1
            elif packet.type == Packet.PACKET_DATA:
                self._data(packet.ID, packet.data)
            elif packet.type == Packet.PACKET_FIN:
                if not self._fin_sent:
                    raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, "FIN before ours")
                while await self.call.recv() is not None:
                    pass
                return
            elif packet.type == Packet.PACKET_ERR:
                raise GrpcError(
                    grpc.StatusCode.ABORTED,
                    "error from sender: " + packet.data.decode("utf-8", "replace"),
                )
            if self._stats_done and not self._pending and not self._fin_sent:
                # the sender is done once it has our FIN (the daemon may end the stream
                # right after), so the tree must be complete before it goes
                self._finish_dirs()
                self._fin_sent = True
                await self._send(Packet(type=Packet.PACKET_FIN))

    def _entry(self, index: int, stat: stat_pb2.Stat) -> bool:
        """Make the entry; True if its contents are to be requested."""
        path = _check_path(stat.path)
        parent = posixpath.dirname(path)
        if parent not in self._dirs:
            raise GrpcError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{path!r}: its parent is not a directory of this transfer",
            )
        full = self.dest / path
        kind = stat.mode & GO_TYPE
        self.entries += 1
        self.owners[path] = (stat.uid, stat.gid)
        if kind & GO_DIR:
            if full.is_symlink() or (full.exists() and not full.is_dir()):
                full.unlink()
            if not full.is_dir():
                os.mkdir(full, 0o700)
            self._dirs.add(path)
            self._dir_meta.append((full, stat))
            return False
        if os.path.lexists(full):
            _remove(full)
        if kind & GO_SYMLINK:
            os.symlink(stat.linkname, full)
            self._metadata(full, stat, symlink=True)
        elif kind == 0 and stat.linkname:  # a hard link to a file sent before
            target = _check_path(stat.linkname)
            if target not in self._files:
                raise GrpcError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{path!r}: hard link to {target!r}, not a file of this transfer",
                )
            os.link(self.dest / target, full)
            self._files.add(path)
        elif kind == 0:
            os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            self._files.add(path)
            self._pending[index] = (full, stat)
            return True
        elif kind & (GO_DEVICE | GO_CHAR_DEVICE | GO_NAMED_PIPE):
            device = os.makedev(stat.devmajor, stat.devminor) if kind & GO_DEVICE else 0
            os.mknod(full, st.S_IFMT(unix_mode(stat.mode)) | 0o600, device)
            self._metadata(full, stat)
        # sockets (and Go's "irregular" files) cannot be recreated: skipped, as fsutil does
        return False

    def _data(self, file_id: int, data: bytes) -> None:
        entry = self._pending.get(file_id)
        if entry is None:
            raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"DATA for unrequested id {file_id}")
        full, stat = entry
        if data:
            fd = self._open.get(file_id)
            if fd is None:
                fd = self._open[file_id] = os.open(full, os.O_WRONLY | os.O_APPEND)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            self.bytes_received += len(data)
            return
        fd = self._open.pop(file_id, None)
        if fd is not None:
            os.close(fd)
        del self._pending[file_id]
        self._metadata(full, stat)

    def _metadata(self, full: Path, stat: stat_pb2.Stat, *, symlink: bool = False) -> None:
        """Owner, then mode (chown clears setuid), then xattrs, then times."""
        if self.chown:
            os.lchown(full, stat.uid, stat.gid)
        if not symlink:
            os.chmod(full, st.S_IMODE(unix_mode(stat.mode)))
        for key, value in stat.xattrs.items():
            try:
                os.setxattr(full, key, value, follow_symlinks=False)
            except OSError:
                if not symlink:
                    raise
        os.utime(full, ns=(stat.modTime, stat.modTime), follow_symlinks=False)

    def _finish_dirs(self) -> None:
        for full, stat in reversed(self._dir_meta):
            self._metadata(full, stat)


class FileSendTarget:
    """``FileSend/DiffCopy``: the daemon's ``local`` exporters write here. ``targets`` maps
    an exporter's index in the solve request to its directory."""

    def __init__(self, targets: Mapping[int, Path]) -> None:
        self.targets = dict(targets)
        self.received: dict[int, TreeReceiver] = {}

    async def diff_copy(self, call: ServerCall) -> None:
        raw = call.info.get(EXPORTER_ID_KEY) or "0"
        try:
            exporter_id = int(raw)
        except ValueError:
            exporter_id = 0
        dest = self.targets.get(exporter_id)
        if dest is None:
            raise GrpcError(grpc.StatusCode.NOT_FOUND, f"exporter {exporter_id} not found")
        receiver = TreeReceiver(call, dest)
        self.received[exporter_id] = receiver
        await receiver.run()

    def handlers(self) -> dict[str, Handler]:
        return {FILE_SEND: self.diff_copy}


@dataclass(frozen=True, kw_only=True)
class _Entry:
    path: str
    full: Path
    stat: stat_pb2.Stat


def _walk(root: Path) -> Iterator[_Entry]:
    """``root``'s entries depth-first in byte order of names, as fsutil's sender walks,
    with hard links after the first naming the first path."""
    seen: dict[tuple[int, int], str] = {}

    def visit(directory: Path, prefix: str) -> Iterator[_Entry]:
        names = sorted(os.listdir(directory), key=os.fsencode)
        for name in names:
            full = directory / name
            path = f"{prefix}{name}"
            info = os.lstat(full)
            stat = stat_pb2.Stat(
                path=path,
                mode=go_mode(info.st_mode) & ~GO_SOCKET,
                uid=info.st_uid,
                gid=info.st_gid,
                modTime=info.st_mtime_ns,
            )
            if st.S_ISLNK(info.st_mode):
                stat.linkname = os.readlink(full)
                stat.size = info.st_size
            elif st.S_ISREG(info.st_mode):
                stat.size = info.st_size
                key = (info.st_dev, info.st_ino)
                if info.st_nlink > 1 and key in seen:
                    stat.linkname = seen[key]
                    stat.size = 0
                else:
                    seen[key] = path
            elif st.S_ISBLK(info.st_mode) or st.S_ISCHR(info.st_mode):
                stat.devmajor = os.major(info.st_rdev)
                stat.devminor = os.minor(info.st_rdev)
            with contextlib.suppress(OSError):
                for key_name in os.listxattr(full, follow_symlinks=False):
                    stat.xattrs[key_name] = os.getxattr(full, key_name, follow_symlinks=False)
            yield _Entry(path=path, full=full, stat=stat)
            if st.S_ISDIR(info.st_mode):
                yield from visit(full, path + "/")

    yield from visit(root, "")


def _chunks(full: Path) -> Iterator[bytes]:
    with open(full, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


class FileSyncSource:
    """``FileSync/DiffCopy``: sends the named local directory to a ``local://`` source.

    The tree is walked and its STATs sent first; then requested files are sent whole, one
    at a time, in 32 KiB chunks. Include/exclude patterns and follow-paths (which our LLB
    never sets) are refused rather than silently ignored."""

    def __init__(self, dirs: Mapping[str, Path]) -> None:
        self.dirs = dict(dirs)

    async def diff_copy(self, call: ServerCall) -> None:
        name = call.info.get(DIR_NAME_KEY) or ""
        root = self.dirs.get(name)
        if root is None:
            raise GrpcError(grpc.StatusCode.NOT_FOUND, f"no access allowed to dir {name!r}")
        for key in ("include-patterns", "exclude-patterns", "followpaths"):
            if call.info.metadata.get(key):
                raise GrpcError(grpc.StatusCode.UNIMPLEMENTED, f"local source option {key}")
        await send_tree(call, root)

    def handlers(self) -> dict[str, Handler]:
        return {FILE_SYNC: self.diff_copy}


async def send_tree(call: MessageStream, root: Path) -> None:
    """Send ``root`` as fsutil's sender does (the other side of :class:`TreeReceiver`)."""
    files: dict[int, Path] = {}
    for index, entry in enumerate(_walk(root)):
        if entry.stat.mode & GO_TYPE == 0:
            files[index] = entry.full
        await call.send(Packet(type=Packet.PACKET_STAT, stat=entry.stat).SerializeToString())
    await call.send(Packet(type=Packet.PACKET_STAT).SerializeToString())
    while True:
        raw = await call.recv()
        if raw is None:
            raise GrpcError(grpc.StatusCode.DATA_LOSS, "transfer ended before FIN")
        packet = Packet.FromString(raw)
        if packet.type == Packet.PACKET_REQ:
            full = files.pop(packet.ID, None)
            if full is None:
                raise GrpcError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid file id {packet.ID}")
            await _send_file(call, packet.ID, full)
        elif packet.type == Packet.PACKET_FIN:
            await call.send(Packet(type=Packet.PACKET_FIN).SerializeToString())
            return
        elif packet.type == Packet.PACKET_ERR:
            raise GrpcError(
                grpc.StatusCode.ABORTED,
                "error from receiver: " + packet.data.decode("utf-8", "replace"),
            )


async def _send_file(call: MessageStream, file_id: int, full: Path) -> None:
    for chunk in _chunks(full):
        await call.send(Packet(type=Packet.PACKET_DATA, ID=file_id, data=chunk).SerializeToString())
    await call.send(Packet(type=Packet.PACKET_DATA, ID=file_id).SerializeToString())
