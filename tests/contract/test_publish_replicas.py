"""Two replicas publishing into one repository: two publishers, each with its own store
on one real PostgreSQL database (the lock across them) and its own storage client on
one shared storage (a directory, and a bucket on fake-gcs-server / moto)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from melange2.apk.index import IndexRecord, read_index_tar_gz
from melange2.apk.signing import PublicKeys, Signer, generate_key, load_public_keys
from melange2.errors import PublishConflict
from melange2.repo.repository import Repository
from melange2.service.publish import INDEX_NAME, Origin, RepoPublisher
from melange2.storage import Storage, open_storage
from melange2.store import PostgresStore
from tests.contract.test_publish import make_apks
from tests.storage_fixtures import storage_spec

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, PublicKeys]:
    root = tmp_path_factory.mktemp("keys")
    key = root / "farm.rsa"
    generate_key(key, key_size=2048)
    return Signer.from_files(key), load_public_keys([root / "farm.rsa.pub"])


@pytest.fixture(params=["local", "gcs", "s3"])
async def shared(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two storage clients (two processes' worth) on one storage."""
    spec = storage_spec(request.param, request, tmp_path)
    first, second = open_storage(spec), open_storage(spec)
    try:
        await first.check()
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


@pytest.fixture
async def stores(postgres_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    first = await PostgresStore.open(postgres_dsn)
    second = await PostgresStore.open(postgres_dsn)
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


async def _index(storage: Storage, keys: PublicKeys) -> list[IndexRecord]:
    data = await storage.read_bytes(f"repo/x86_64/{INDEX_NAME}")
    return list(read_index_tar_gz(io.BytesIO(data), keys=keys).records)  # signature verified


async def test_two_replicas_publishing_fifty_packages_at_once_lose_none(
    shared: tuple[Storage, Storage],
    stores: tuple[PostgresStore, PostgresStore],
    keys: tuple[Signer, PublicKeys],
    tmp_path: Path,
) -> None:
    signer, public = keys
    names = [f"pkg{i:02d}" for i in range(50)]
    apks = make_apks(tmp_path, names, signer)
    publishers = [
        RepoPublisher(storage, "repo", signer, immutable=True, lock=store.hold_lock)
        for storage, store in zip(shared, stores, strict=True)
    ]
    for publisher in publishers:  # each has read the (empty) index before the others wrote
        assert await publisher.records("x86_64") == {}

    async def one(i: int, apk: Path) -> None:
        await asyncio.sleep((i % 7) * 0.002)  # interleave the two replicas' batches
        publisher = publishers[i % 2]
        await publisher.publish([apk], "x86_64", origin=Origin(build_id=f"b{i}", package=apk.name))

    await asyncio.gather(*(one(i, apk) for i, apk in enumerate(apks)))
    records = await _index(shared[0], public)
    assert sorted(r.name for r in records) == names
    # both wrote, each read what the other wrote before writing over it
    assert all(p.index_writes("x86_64") >= 1 for p in publishers)
    assert sum(p.index_reloads("x86_64") for p in publishers) >= 1
    # the origins, written with the index, name every package too
    origins = await RepoPublisher(shared[1], "repo", signer, immutable=True).origins("x86_64")
    assert sorted(origins) == sorted(apk.name for apk in apks)


async def test_a_replicas_snapshot_follows_what_another_replica_published(
    shared: tuple[Storage, Storage],
    stores: tuple[PostgresStore, PostgresStore],
    keys: tuple[Signer, PublicKeys],
    tmp_path: Path,
) -> None:
    signer, _ = keys
    a = RepoPublisher(shared[0], "repo", signer, immutable=True, lock=stores[0].hold_lock)
    b = RepoPublisher(shared[1], "repo", signer, immutable=True, lock=stores[1].hold_lock)
    repo = Repository(location="repo", snapshot=b.snapshot)
    first, second = make_apks(tmp_path, ["dep", "lib"], signer)
    await a.publish([first], "x86_64")
    seen = await b.snapshot(repo, "x86_64")
    assert seen is not None and [r.name for r in seen.records] == ["dep"]
    assert await b.snapshot(repo, "x86_64") is seen  # nothing changed: the same, no read
    reads = b.index_reloads("x86_64")
    await a.publish([second], "x86_64")  # another replica publishes
    fresh = await b.snapshot(repo, "x86_64")
    assert fresh is not None and [r.name for r in fresh.records] == ["dep", "lib"]
    assert b.index_reloads("x86_64") == reads + 1
    # and b's conflict check sees what a published meanwhile: other bytes under a
    # name a holds are refused, naming a's build
    third = make_apks(tmp_path / "third", ["tool"], signer)
    await a.publish([third[0]], "x86_64", origin=Origin(build_id="bld-a", package="tool"))
    assert "tool" not in {r.name for r in (await b.current("x86_64")).values()}  # memory
    assert "tool" in {r.name for r in (await b.fresh("x86_64")).values()}  # one stat more
    rec = IndexRecord.from_apk(third[0])
    other = dataclasses.replace(rec, checksum=bytes(20))
    with pytest.raises(PublishConflict, match="bld-a"):
        await b.check("x86_64", [other])
