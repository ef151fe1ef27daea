"""fsutil's DiffCopy protocol in Python: our sender and receiver against each other over a
fake in-memory message pipe (the e2e suite runs the receiver against buildkitd's real
sender), path safety against a hostile sender, and Go <-> POSIX mode bits."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import grpc
import pytest

from melange2.buildkit._proto.fsutil.types import stat_pb2, wire_pb2
from melange2.buildkit.filesync import (
    GO_DIR,
    GO_SETUID,
    GO_SYMLINK,
    TreeReceiver,
    go_mode,
    send_tree,
    unix_mode,
)
from melange2.buildkit.h2grpc import GrpcError

Packet = wire_pb2.Packet


class FakeMessagePipe:
    """One end of an in-memory message pipe (a fake of one gRPC call's two directions)."""

    def __init__(self, inbound: asyncio.Queue[bytes | None], outbound: asyncio.Queue[bytes | None]):
        self.inbound, self.outbound = inbound, outbound

    async def recv(self) -> bytes | None:
        return await self.inbound.get()

    async def send(self, message: bytes) -> None:
        await self.outbound.put(message)

    def close(self) -> None:
        self.outbound.put_nowait(None)


def _pipe() -> tuple[FakeMessagePipe, FakeMessagePipe]:
    a: asyncio.Queue[bytes | None] = asyncio.Queue()
    b: asyncio.Queue[bytes | None] = asyncio.Queue()
    return FakeMessagePipe(a, b), FakeMessagePipe(b, a)


async def _transfer(src: Path, dest: Path) -> TreeReceiver:
    sender, receiver_end = _pipe()
    receiver = TreeReceiver(receiver_end, dest)

    async def send() -> None:
        await send_tree(sender, src)
        sender.close()

    await asyncio.wait_for(asyncio.gather(send(), receiver.run()), 10)
    return receiver


def _describe(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            info = full.lstat()
            extra: object = None
            if stat.S_ISREG(info.st_mode):
                extra = (full.read_bytes(), info.st_nlink)
            elif stat.S_ISLNK(info.st_mode):
                extra = os.readlink(full)
            mtime = info.st_mtime_ns if not stat.S_ISLNK(info.st_mode) else None
            rel = str(full.relative_to(root))
            out[rel] = (info.st_mode, info.st_uid, info.st_gid, mtime, extra)
    return out


def test_a_tree_round_trips_exactly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "lib" / "deep").mkdir(parents=True)
    (src / "bin" / "su").write_bytes(b"setuid")
    (src / "bin" / "su").chmod(0o4755)
    (src / "lib" / "deep" / "data").write_bytes(os.urandom(200_000))
    os.link(src / "lib" / "deep" / "data", src / "bin" / "hard")
    os.symlink("../lib/deep/data", src / "bin" / "soft")
    os.symlink("/nowhere", src / "dangling")
    (src / "empty").touch()
    (src / "empty").chmod(0o604)
    os.mkfifo(src / "fifo", 0o640)
    (src / "lib" / "deep").chmod(0o2750)
    (src / "ro").mkdir()
    (src / "ro" / "f").write_text("x")
    (src / "ro").chmod(0o555)
    if os.geteuid() == 0:
        os.chown(src / "lib" / "deep" / "data", 1234, 5678)
        os.lchown(src / "dangling", 7, 8)
    dest = tmp_path / "dest"
    receiver = asyncio.run(_transfer(src, dest))
    assert _describe(dest) == _describe(src)
    assert receiver.bytes_received == 200_000 + len(b"setuid") + 1
    assert (dest / "bin" / "hard").stat().st_ino == (dest / "lib" / "deep" / "data").stat().st_ino
    # the owners as sent, every entry (kept also where this process cannot chown)
    assert receiver.owners == {rel: (info[1], info[2]) for rel, info in _describe(src).items()}


def test_paths_from_a_hostile_sender_are_refused(tmp_path: Path) -> None:
    def stats(*entries: stat_pb2.Stat) -> list[bytes]:
        return [Packet(type=Packet.PACKET_STAT, stat=s).SerializeToString() for s in entries]

    cases = {
        "escape": stats(stat_pb2.Stat(path="../evil", mode=0o644)),
        "absolute": stats(stat_pb2.Stat(path="/etc/evil", mode=0o644)),
        "unclean": stats(stat_pb2.Stat(path="a/../b", mode=0o644)),
        "through a symlink": stats(
            stat_pb2.Stat(path="link", mode=GO_SYMLINK | 0o777, linkname=str(tmp_path)),
            stat_pb2.Stat(path="link/evil", mode=0o644),
        ),
        "orphan": stats(stat_pb2.Stat(path="nodir/evil", mode=0o644)),
        "hard link out": stats(stat_pb2.Stat(path="h", mode=0o644, linkname="../../etc/passwd")),
        "hard link unknown": stats(stat_pb2.Stat(path="h", mode=0o644, linkname="other")),
    }

    async def attempt(messages: list[bytes], dest: Path) -> GrpcError:
        sender, receiver_end = _pipe()
        for m in messages:
            await sender.send(m)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(TreeReceiver(receiver_end, dest).run(), 5)
        # the sender is told why
        reply = await asyncio.wait_for(sender.recv(), 1)
        err = Packet.FromString(reply or b"")
        assert err.type == Packet.PACKET_ERR and err.data
        return info.value

    for name, messages in cases.items():
        dest = tmp_path / name.replace(" ", "_")
        err = asyncio.run(attempt(messages, dest))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, name
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path.parent / "evil").exists()


def test_an_error_from_the_sender_and_a_short_stream_fail(tmp_path: Path) -> None:
    async def go(messages: list[bytes | None]) -> GrpcError:
        sender, receiver_end = _pipe()
        for m in messages:
            sender.outbound.put_nowait(m)
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(TreeReceiver(receiver_end, tmp_path / "dest").run(), 5)
        return info.value

    err = asyncio.run(
        go([Packet(type=Packet.PACKET_ERR, data=b"disk on fire").SerializeToString()])
    )
    assert "disk on fire" in err.message
    short = asyncio.run(go([None]))
    assert short.code == grpc.StatusCode.DATA_LOSS


@pytest.mark.parametrize(
    "mode",
    [
        stat.S_IFREG | 0o644,
        stat.S_IFREG | 0o4755,
        stat.S_IFREG | 0o2711,
        stat.S_IFDIR | 0o1777,
        stat.S_IFDIR | 0o2775,
        stat.S_IFLNK | 0o777,
        stat.S_IFIFO | 0o640,
        stat.S_IFCHR | 0o620,
        stat.S_IFBLK | 0o660,
    ],
)
def test_go_and_posix_modes_convert_both_ways(mode: int) -> None:
    assert unix_mode(go_mode(mode)) == mode


def test_go_mode_bits_are_gos() -> None:
    # values from Go's io/fs: ModeDir 1<<31, ModeSymlink 1<<27, ModeSetuid 1<<23
    assert go_mode(stat.S_IFDIR | 0o755) == GO_DIR | 0o755 == 0x800001ED
    assert go_mode(stat.S_IFREG | 0o4755) == GO_SETUID | 0o755
    assert go_mode(stat.S_IFLNK | 0o777) == GO_SYMLINK | 0o777
