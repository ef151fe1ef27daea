"""Gzip members and tar blocks: the two layers every APK v2 file is built from.

An APK v2 package (and a signed ``APKINDEX.tar.gz``) is a concatenation of gzip
*members*. Each member holds tar blocks; all but the last member hold a tar
*segment* (entries without the two zero end-of-archive blocks), so that
``gunzip | tar -t`` sees one continuous archive while apk-tools can still tell
the members apart and hash each one's compressed bytes.

Writing: :class:`GzipMemberWriter` emits one member with a fixed header (no
name, mtime 0), so the same input always gives the same bytes.
Reading: :class:`GzipMemberReader` decompresses exactly one member from a
:class:`ByteSource` and hands back whatever follows it, reporting the member's
own compressed bytes to a callback (for hashes and signatures).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

from melange2.apk.errors import ApkFormatError

BLOCK_SIZE = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK_SIZE)
CHUNK_SIZE = 1 << 20

#: Bytes out of a writer or a reader: a ``write``/``update`` bound method or a fan-out of them.
Sink = Callable[[bytes], object]

_GZIP_MAGIC = b"\x1f\x8b"
_OS_UNKNOWN = 255


def tee(*sinks: Sink) -> Sink:
    """One sink that forwards every chunk to each of ``sinks`` in order."""

    def write(data: bytes) -> None:
        for sink in sinks:
            sink(data)

    return write


class GzipMemberWriter:
    """Compress into exactly one gzip member, deterministically.

    The header carries no file name and an mtime of 0, so output depends only on the
    input bytes, the level and the zlib build::

        with io.BytesIO() as buf:
            member = GzipMemberWriter(buf.write, level=9)
            member.write(b"hello")
            member.close()
    """

    def __init__(self, sink: Sink, *, level: int = 9) -> None:
        self._sink = sink
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._closed = False
        extra_flags = 2 if level == 9 else 4 if level == 1 else 0
        # ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL OS
        sink(_GZIP_MAGIC + b"\x08\x00" + b"\0\0\0\0" + bytes((extra_flags, _OS_UNKNOWN)))

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("gzip member already closed")
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        compressed = self._compressor.compress(data)
        if compressed:
            self._sink(compressed)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        trailer = struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF)
        self._sink(self._compressor.flush() + trailer)


def gzip_member(data: bytes, *, level: int = 9) -> bytes:
    """``data`` compressed as one deterministic gzip member."""
    out = bytearray()
    member = GzipMemberWriter(out.extend, level=level)
    member.write(data)
    member.close()
    return bytes(out)


def tar_header(info: tarfile.TarInfo) -> bytes:
    """The header blocks for ``info``: a PAX ``x`` header first when needed, then ustar."""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_padding(size: int) -> bytes:
    """Zero bytes that pad ``size`` bytes of entry data to a whole tar block."""
    return b"\0" * (-size % BLOCK_SIZE)


def tar_small_file(name: str, data: bytes, *, mode: int, mtime: int) -> bytes:
    """A complete tar entry for an in-memory file owned by root:root."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.size = len(data)
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return tar_header(info) + data + tar_padding(len(data))


class ByteSource:
    """A forward-only byte stream that can take back bytes read too far."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pushed = b""

    def read(self, size: int) -> bytes:
        if self._pushed:
            data, self._pushed = self._pushed[:size], self._pushed[size:]
            return data
        return self._raw.read(size)

    def unread(self, data: bytes) -> None:
        self._pushed = data + self._pushed

    def at_eof(self) -> bool:
        data = self.read(1)
        if data:
            self.unread(data)
            return False
        return True


class GzipMemberReader(io.RawIOBase):
    """Decompress one gzip member from ``source``, leaving the rest of ``source`` unread.

    ``on_raw`` receives the member's compressed bytes, header and trailer included,
    exactly once each and in order; ``on_plain`` its decompressed bytes, in order, as
    they are inflated (whether or not they are read). Output is produced at most
    ``CHUNK_SIZE`` bytes at a time, so a small member that inflates hugely does not land
    in memory at once.
    """

    def __init__(
        self, source: ByteSource, *, on_raw: Sink | None = None, on_plain: Sink | None = None
    ) -> None:
        super().__init__()
        self._source = source
        self._on_raw = on_raw
        self._on_plain = on_plain
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = bytearray()
        self._current = b""  # raw chunk still (partly) being inflated, not yet reported
        self._started = False
        self.finished = False
        self.raw_size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._pending and not self.finished:
            self._fill()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        del self._pending[:n]
        return n

    def read_all_limited(self, limit: int) -> bytes:
        """The rest of the member's content; :class:`ApkFormatError` past ``limit`` bytes."""
        out = bytearray()
        while True:
            chunk = self.read(CHUNK_SIZE)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limit:
                raise ApkFormatError(f"gzip stream inflates beyond {limit} bytes")

    def drain(self) -> None:
        """Read (and discard) up to the end of the member."""
        while self.read(CHUNK_SIZE):
            pass

    def _fill(self) -> None:
        tail = self._inflater.unconsumed_tail
        if tail:
            data = tail
        else:
            data = self._source.read(CHUNK_SIZE)
            if not data:
                if not self._started:
                    raise ApkFormatError("expected a gzip stream, found end of file")
                raise ApkFormatError("truncated gzip stream")
            if not self._started and not data.startswith(_GZIP_MAGIC[: len(data)]):
                raise ApkFormatError("not a gzip stream")
            self._started = True
            self._current = data
        try:
            plain = self._inflater.decompress(data, CHUNK_SIZE)
        except zlib.error as exc:
            raise ApkFormatError(f"corrupt gzip stream: {exc}") from exc
        if plain and self._on_plain is not None:
            self._on_plain(plain)
        self._pending += plain
        if self._inflater.eof:
            unused = self._inflater.unused_data
            self._report(self._current[: len(self._current) - len(unused)])
            if unused:
                self._source.unread(unused)
            self.finished = True
        elif not self._inflater.unconsumed_tail:
            self._report(self._current)

    def _report(self, raw: bytes) -> None:
        self._current = b""
        self.raw_size += len(raw)
        if self._on_raw is not None and raw:
            self._on_raw(raw)


def read_tar_segment(content: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    """Entries of an in-memory tar segment or archive, each with its data."""
    entries: list[tuple[tarfile.TarInfo, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as archive:
            for info in archive:
                data = b""
                if info.isreg():
                    extracted = archive.extractfile(info)
                    assert extracted is not None
                    data = extracted.read()
                entries.append((info, data))
    except tarfile.TarError as exc:
        raise ApkFormatError(f"corrupt tar stream: {exc}") from exc
    return entries
