"""The storage contract, against every kind (local, memory, gcs on fake-gcs-server, s3
on moto), and the start check's refusals (missing bucket, unreachable endpoint, bad
credentials)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem  # type: ignore[import-untyped]

from melange2.farm.processes import free_port
from melange2.storage import (
    ObjectInfo,
    Storage,
    StorageConfigError,
    StorageError,
    StorageNotFound,
    StorageSpec,
    open_storage,
)
from melange2.testenv.emulators import FakeGcsServer, MotoS3Server
from tests.storage_fixtures import BUCKET_PREFIX, new_bucket_name

pytestmark = pytest.mark.anyio

BAD_KEYS = ["../x", "/abs", "a//b", "a/./b", "a\\b", "a\x00b", "", "a/", "a/../b", "a b", "é"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the contract -------------------------------------------------------------------


async def test_bytes_roundtrip_and_overwrite(storage: Storage) -> None:
    await storage.put_bytes("repo/x86_64/APKINDEX.tar.gz", b"one")
    assert await storage.read_bytes("repo/x86_64/APKINDEX.tar.gz") == b"one"
    await storage.put_bytes("repo/x86_64/APKINDEX.tar.gz", b"two, longer")
    assert await storage.read_bytes("repo/x86_64/APKINDEX.tar.gz") == b"two, longer"
    await storage.put_bytes("empty", b"")
    assert await storage.read_bytes("empty") == b""
    assert await storage.size("empty") == 0


async def test_file_roundtrip_big_binary(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks and read blocks' worth
    src = tmp_path / "src.apk"
    src.write_bytes(data)
    await storage.put_file(src, "pkgs/x86_64/big-1.0-r0.apk")
    assert await storage.size("pkgs/x86_64/big-1.0-r0.apk") == len(data)

    dest = tmp_path / "down" / "deeper" / "big.apk"  # parents made
    await storage.get_file("pkgs/x86_64/big-1.0-r0.apk", dest)
    assert sha256(dest.read_bytes()) == sha256(data)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["big.apk"]  # no temp left

    chunks = [c async for c in storage.iter_chunks("pkgs/x86_64/big-1.0-r0.apk")]
    assert all(0 < len(c) <= 1 << 16 for c in chunks)
    assert sha256(b"".join(chunks)) == sha256(data)


async def test_large_file_goes_in_parts(storage: Storage, tmp_path: Path) -> None:
    """Above 16 MiB: a multipart upload on s3, a resumable one on gcs (8 MiB parts)."""
    data = os.urandom(17 * 1024 * 1024 + 5)
    src = tmp_path / "large.apk"
    await asyncio.to_thread(src.write_bytes, data)
    await storage.put_file(src, "large.apk")
    assert await storage.size("large.apk") == len(data)
    await storage.get_file("large.apk", tmp_path / "back.apk")
    assert sha256(await asyncio.to_thread((tmp_path / "back.apk").read_bytes)) == sha256(data)
    digest = hashlib.sha256()
    async for chunk in storage.iter_chunks("large.apk", 1 << 20, 1000):
        digest.update(chunk)
    assert digest.hexdigest() == sha256(data[1000:])


async def test_iter_chunks_offset_and_size(storage: Storage) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    await storage.put_bytes("logs/1.log", data)

    chunks = [c async for c in storage.iter_chunks("logs/1.log", 1000, 500)]
    assert [len(c) for c in chunks[:-1]] == [1000] * (len(chunks) - 1)
    assert b"".join(chunks) == data[500:]
    assert b"".join([c async for c in storage.iter_chunks("logs/1.log", 4096, 10239)]) == data[-1:]
    assert [c async for c in storage.iter_chunks("logs/1.log", offset=len(data))] == []
    assert [c async for c in storage.iter_chunks("logs/1.log", offset=len(data) + 5)] == []

    # stopping early is fine (the reader is closed)
    stream = storage.iter_chunks("logs/1.log", 100)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]


async def test_exists_size_list_delete(storage: Storage) -> None:
    keys = ["a/b/c.apk", "a/b/d/e.apk", "a/bc.apk", "a/z", "b/y", "top"]
    for n, key in enumerate(reversed(keys)):
        await storage.put_bytes(key, b"x" * n)
    sizes = {key: len(keys) - 1 - n for n, key in enumerate(keys)}

    assert await storage.exists("a/b/c.apk")
    assert not await storage.exists("a/b")  # a "directory" is not an object
    assert not await storage.exists("nothing/here")
    assert await storage.size("a/bc.apk") == sizes["a/bc.apk"]

    def infos(*names: str) -> list[ObjectInfo]:
        return [ObjectInfo(key=k, size=sizes[k]) for k in names]

    assert await storage.list("a/b") == infos("a/b/c.apk", "a/b/d/e.apk")  # not a/bc.apk
    assert await storage.list("a/b/") == infos("a/b/c.apk", "a/b/d/e.apk")
    assert await storage.list("a") == infos("a/b/c.apk", "a/b/d/e.apk", "a/bc.apk", "a/z")
    assert await storage.list("") == infos(*sorted(keys))
    assert await storage.list("nothing") == []
    assert await storage.list("top") == []  # an object, not a prefix of others

    await storage.delete("a/b/c.apk")
    await storage.delete("a/b/c.apk")  # missing is fine
    await storage.delete("never/was")
    assert not await storage.exists("a/b/c.apk")
    assert await storage.list("a/b") == infos("a/b/d/e.apk")


async def test_missing_key_is_not_found(storage: Storage, tmp_path: Path) -> None:
    await storage.put_bytes("dir/file", b"x")
    for key in ("missing", "dir"):  # nothing there / only a "directory"
        with pytest.raises(StorageNotFound, match=key):
            await storage.read_bytes(key)
        with pytest.raises(StorageNotFound):
            await storage.size(key)
        with pytest.raises(StorageNotFound):
            await storage.get_file(key, tmp_path / "out" / "f")
        with pytest.raises(StorageNotFound):
            await storage.iter_chunks(key).__anext__()
    out = tmp_path / "out"
    assert not out.exists() or not list(out.iterdir())  # no temp file left
    with pytest.raises(FileNotFoundError):  # what callers of fsspec would catch
        await storage.read_bytes("missing")


async def test_copy_inside_the_storage(storage: Storage) -> None:
    data = os.urandom(70_000)
    await storage.put_bytes("builds/a/x86_64/p.apk", data)
    await storage.put_bytes("builds/b/x86_64/p.apk", b"old")
    await storage.copy("builds/a/x86_64/p.apk", "builds/b/x86_64/p.apk")
    await storage.copy("builds/a/x86_64/p.apk", "builds/c/x86_64/p.apk")
    for key in ("builds/b/x86_64/p.apk", "builds/c/x86_64/p.apk"):
        assert sha256(await storage.read_bytes(key)) == sha256(data)
    # the copy is an object of its own: replacing the source leaves it as it was
    await storage.put_bytes("builds/a/x86_64/p.apk", b"new")
    assert sha256(await storage.read_bytes("builds/c/x86_64/p.apk")) == sha256(data)
    assert [o.key for o in await storage.list("builds/c")] == ["builds/c/x86_64/p.apk"]
    with pytest.raises(StorageNotFound):
        await storage.copy("builds/missing.apk", "builds/d/x86_64/p.apk")
    assert not await storage.exists("builds/d/x86_64/p.apk")


async def test_many_at_once(storage: Storage) -> None:
    keys = [f"cache/x86_64/{i}.json" for i in range(5)]
    for i, key in enumerate(keys[:3]):
        await storage.put_bytes(key, f"record {i}".encode())
    assert await storage.read_many(keys) == [b"record 0", b"record 1", b"record 2", None, None]
    assert await storage.exists_many(keys) == [True, True, True, False, False]
    assert await storage.read_many([]) == [] and await storage.exists_many([]) == []
    await storage.copy_many([(keys[0], "b/one"), (keys[1], "b/two")])
    assert await storage.read_many(["b/one", "b/two"]) == [b"record 0", b"record 1"]
    with pytest.raises(StorageNotFound):
        await storage.copy_many([(keys[2], "b/three"), (keys[4], "b/five")])


async def test_overwrite_is_atomic_for_readers(storage: Storage, tmp_path: Path) -> None:
    versions = [bytes([n]) * (256 * 1024) + os.urandom(64) for n in range(4)]
    digests = {sha256(v) for v in versions}
    files = []
    for n, data in enumerate(versions):
        files.append(tmp_path / f"v{n}")
        files[-1].write_bytes(data)
    await storage.put_bytes("repo/APKINDEX.tar.gz", versions[0])
    done = asyncio.Event()
    seen: list[str] = []

    async def write() -> None:
        for round_ in range(2):
            for n in range(1, len(versions)):
                if (n + round_) % 2:
                    await storage.put_bytes("repo/APKINDEX.tar.gz", versions[n])
                else:
                    await storage.put_file(files[n], "repo/APKINDEX.tar.gz")
                await asyncio.sleep(0)
        done.set()

    async def read(n: int) -> None:
        copy = tmp_path / f"copy{n}"
        while not done.is_set():
            seen.append(sha256(await storage.read_bytes("repo/APKINDEX.tar.gz")))
            streamed = [c async for c in storage.iter_chunks("repo/APKINDEX.tar.gz")]
            seen.append(sha256(b"".join(streamed)))
            await storage.get_file("repo/APKINDEX.tar.gz", copy)
            seen.append(sha256(await asyncio.to_thread(copy.read_bytes)))

    await asyncio.gather(write(), read(1), read(2))
    assert seen
    assert set(seen) <= digests


async def test_invalid_keys_are_refused(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for key in BAD_KEYS:
        calls: list[Callable[[], Awaitable[object]]] = [
            partial(storage.put_bytes, key, b"x"),
            partial(storage.put_file, src, key),
            partial(storage.get_file, key, tmp_path / "g"),
            partial(storage.read_bytes, key),
            partial(storage.exists, key),
            partial(storage.size, key),
            partial(storage.delete, key),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="invalid storage key"):
                await call()
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.iter_chunks(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.url(key)
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.local_path(key)
    for prefix in ("../x", "/abs", "a//b", "a\\b"):
        with pytest.raises(ValueError, match="invalid storage key"):
            await storage.list(prefix)
    assert await storage.list("") == []  # nothing was written


async def test_a_key_on_disk_stores_fetches_and_leaves_no_scratch(
    storage: Storage, tmp_path: Path
) -> None:
    # a tree written where on_disk says, stored under the key; then a file read back
    scratch = tmp_path / "scratch"
    out = storage.on_disk("bld-1-a/artifacts", scratch / "out")
    assert out.in_place is (storage.kind == "local")
    await asyncio.to_thread((out.path / "x86_64").mkdir, parents=True)
    await asyncio.to_thread((out.path / "x86_64" / "a-1-r0.apk").write_bytes, b"apk")
    await asyncio.to_thread((out.path / "x86_64" / "APKINDEX.tar.gz").write_bytes, b"idx")
    await out.store()
    listed = sorted(o.key for o in await storage.list("bld-1-a/artifacts"))
    assert listed == [
        "bld-1-a/artifacts/x86_64/APKINDEX.tar.gz",
        "bld-1-a/artifacts/x86_64/a-1-r0.apk",
    ]
    assert await asyncio.to_thread(out.path.exists)  # until discarded
    await out.discard()
    assert await asyncio.to_thread(out.path.exists) is out.in_place  # scratch removed
    log = storage.on_disk("bld-1-a/logs/build.log", scratch / "build.log")
    await asyncio.to_thread(log.path.parent.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(log.path.write_bytes, b"line\n")
    await log.store()
    await log.discard()
    assert await storage.read_bytes("bld-1-a/logs/build.log") == b"line\n"
    await storage.on_disk("never/written.log", scratch / "none.log").store()  # nothing
    assert not await storage.exists("never/written.log")
    got = storage.on_disk("bld-1-a/artifacts/x86_64/a-1-r0.apk", scratch / "got.apk")
    assert await asyncio.to_thread((await got.fetch()).read_bytes) == b"apk"
    await got.discard()
    assert await storage.read_bytes("bld-1-a/artifacts/x86_64/a-1-r0.apk") == b"apk"
    assert not await asyncio.to_thread(scratch.joinpath("got.apk").exists)


async def test_url_and_local_path(storage: Storage, tmp_path: Path) -> None:
    key = "repo/x86_64/foo-1.0-r0.apk"
    url = storage.url(key)
    if storage.kind == "local":
        assert url == str(tmp_path / "storage" / key)
        assert storage.local_path(key) == tmp_path / "storage" / key
        await storage.put_bytes(key, b"x")
        assert await asyncio.to_thread(Path(url).read_bytes) == b"x"
        return
    assert storage.local_path(key) is None
    if storage.kind == "memory":
        assert url.startswith("memory:///melange2-")
        assert url.endswith(f"/{key}")
    else:
        scheme = {"gcs": "gs", "s3": "s3"}[storage.kind]
        assert url == f"{scheme}://{storage.bucket}/{BUCKET_PREFIX}/{key}"


async def test_concurrent_puts_are_all_listed(storage: Storage) -> None:
    keys = [f"many/{n % 5}/k{n:02d}" for n in range(50)]
    await asyncio.gather(*(storage.put_bytes(k, k.encode()) for k in keys))
    listed = await storage.list("many")
    assert listed == sorted((ObjectInfo(key=k, size=len(k)) for k in keys), key=lambda o: o.key)


async def test_closed_storage_refuses_calls(storage: Storage) -> None:
    await storage.aclose()
    await storage.aclose()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        await storage.read_bytes("x")


async def test_memory_storages_are_apart() -> None:
    async with (
        open_storage(StorageSpec(kind="memory")) as one,
        open_storage(StorageSpec(kind="memory")) as two,
    ):
        await one.put_bytes("k", b"1")
        assert not await two.exists("k")
        assert await two.list("") == []
        root = one.url("k").removeprefix("memory://").removesuffix("/k")
    store = MemoryFileSystem.store  # process-wide: closing dropped the objects
    assert not [path for path in store if path.startswith(root + "/")]


# -- the start check ----------------------------------------------------------------


async def test_check_local_refuses_a_file_as_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    storage = open_storage(StorageSpec(kind="local", path=tmp_path / "file", retry_wait=0))
    with pytest.raises(StorageConfigError, match=str(tmp_path / "file")):
        await storage.check()


def test_open_refuses_incomplete_specs() -> None:
    with pytest.raises(StorageConfigError, match="path"):
        open_storage(StorageSpec(kind="local"))
    with pytest.raises(StorageConfigError, match="needs a bucket"):
        open_storage(StorageSpec(kind="s3"))
    with pytest.raises(StorageConfigError, match="invalid bucket name"):
        open_storage(StorageSpec(kind="gcs", bucket="Bad/Name", token="anon"))
    with pytest.raises(StorageConfigError, match="invalid prefix"):
        open_storage(StorageSpec(kind="s3", bucket="fine", prefix="a/../b"))


@pytest.fixture(params=["gcs", "s3"])
def bucket_server(request: pytest.FixtureRequest) -> FakeGcsServer | MotoS3Server:
    server: FakeGcsServer | MotoS3Server = request.getfixturevalue(
        {"gcs": "fake_gcs", "s3": "moto_s3"}[request.param]
    )
    return server


async def test_check_missing_bucket(bucket_server: FakeGcsServer | MotoS3Server) -> None:
    bucket = new_bucket_name()  # never created
    async with open_storage(bucket_server.storage_spec(bucket)) as storage:
        with pytest.raises(StorageConfigError, match=f"bucket '{bucket}'.*does not exist"):
            await storage.check()


async def test_check_unreachable_endpoint(bucket_server: FakeGcsServer | MotoS3Server) -> None:
    spec = bucket_server.storage_spec("some-bucket")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    spec = dataclasses.replace(spec, endpoint_url=endpoint, connect_timeout=2.0)
    started = time.monotonic()
    async with open_storage(spec) as storage:
        with pytest.raises(StorageConfigError, match=f"cannot reach .*{endpoint}"):
            await storage.check()
    assert time.monotonic() - started < 10


async def test_check_s3_bad_credentials(moto_s3_auth: MotoS3Server) -> None:
    async with open_storage(moto_s3_auth.storage_spec("some-bucket")) as storage:
        with pytest.raises(StorageConfigError, match=r"access denied.*credentials"):
            await storage.check()


async def test_check_passes_and_leaves_nothing(storage: Storage) -> None:
    await storage.check()  # the fixture checked once already
    assert await storage.list("") == []


async def test_version_changes_when_an_object_is_written_again(storage: Storage) -> None:
    assert await storage.version("repo/x86_64/APKINDEX.tar.gz") is None
    await storage.put_bytes("repo/x86_64/APKINDEX.tar.gz", b"one")
    first = await storage.version("repo/x86_64/APKINDEX.tar.gz")
    assert first is not None
    assert await storage.version("repo/x86_64/APKINDEX.tar.gz") == first  # a stat only
    await storage.put_bytes("repo/x86_64/APKINDEX.tar.gz", b"two")  # same size
    second = await storage.version("repo/x86_64/APKINDEX.tar.gz")
    assert second is not None and second != first
