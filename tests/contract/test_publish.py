"""Publication into a repository kept in each storage backend (local, memory, GCS on
fake-gcs-server, S3 on moto): incremental, atomic, nothing lost under concurrency."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from melange2.apk.index import IndexRecord, read_index_tar_gz
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import PublicKeys, Signer, generate_key, load_public_keys
from melange2.apk.writer import write_apk
from melange2.errors import PublishConflict
from melange2.repo.repository import Repository, load_indexes
from melange2.service.publish import INDEX_NAME, Origin, RepoPublisher
from melange2.storage import Storage

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


def make_apks(root: Path, names: list[str], signer: Signer, version: str = "1.0.0") -> list[Path]:
    apks = []
    for name in names:
        tree = root / "trees" / name
        (tree / "usr" / "share" / name).mkdir(parents=True, exist_ok=True)
        (tree / "usr" / "share" / name / "marker").write_text(f"{name} {version}\n")
        info = PackageInfo(name=name, version=version, epoch=0, arch="x86_64", description=name)
        out = root / "apks" / info.filename
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("wb") as f:
            write_apk(tree, info, signer, f, source_date_epoch=0)
        apks.append(out)
    return apks


async def _index(storage: Storage, keys: PublicKeys) -> list[IndexRecord]:
    data = await storage.read_bytes(f"repo/x86_64/{INDEX_NAME}")
    return list(read_index_tar_gz(io.BytesIO(data), keys=keys).records)  # signature verified


async def test_fifty_concurrent_publications_are_all_listed_with_a_valid_signature(
    storage: Storage, keys: tuple[Signer, PublicKeys], tmp_path: Path
) -> None:
    signer, public = keys
    apks = make_apks(tmp_path, [f"pkg{i:02d}" for i in range(50)], signer)
    publisher = RepoPublisher(storage, "repo", signer)
    await asyncio.gather(*(publisher.publish([apk], "x86_64") for apk in apks))
    records = await _index(storage, public)
    assert sorted(r.name for r in records) == [f"pkg{i:02d}" for i in range(50)]
    for apk in apks:
        assert await storage.size(f"repo/x86_64/{apk.name}") == apk.stat().st_size
    # concurrent publications were batched: fewer index writes than publications
    assert 1 <= publisher.index_writes("x86_64") <= 50


async def test_a_new_publisher_continues_the_stored_index_without_reading_apks(
    storage: Storage, keys: tuple[Signer, PublicKeys], tmp_path: Path
) -> None:
    signer, public = keys
    first = make_apks(tmp_path / "a", ["alpha", "beta"], signer)
    await RepoPublisher(storage, "repo", signer).publish(first, "x86_64")
    # the earlier APKs vanish from the store: a publisher that re-read APKs would fail
    for apk in first:
        await storage.delete(f"repo/x86_64/{apk.name}")
    later = RepoPublisher(storage, "repo", signer)  # e.g. after a restart
    await later.publish(make_apks(tmp_path / "b", ["gamma"], signer), "x86_64")
    assert sorted(r.name for r in await _index(storage, public)) == ["alpha", "beta", "gamma"]


async def test_republishing_identical_packages_writes_nothing_and_a_new_build_replaces(
    storage: Storage, keys: tuple[Signer, PublicKeys], tmp_path: Path
) -> None:
    signer, public = keys
    publisher = RepoPublisher(storage, "repo", signer)
    apks = make_apks(tmp_path / "one", ["same"], signer)
    await publisher.publish(apks, "x86_64")
    await publisher.publish(apks, "x86_64")
    assert publisher.index_writes("x86_64") == 1
    newer = make_apks(tmp_path / "two", ["same"], signer, version="1.0.1")
    await publisher.publish(newer, "x86_64")
    versions = sorted(r.version for r in await _index(storage, public))
    assert versions == ["1.0.0-r0", "1.0.1-r0"]


async def test_the_snapshot_is_the_stored_index_without_reading_it(
    storage: Storage, keys: tuple[Signer, PublicKeys], tmp_path: Path
) -> None:
    signer, public = keys
    publisher = RepoPublisher(storage, "repo", signer)
    repo = Repository(location="farm-repo", reader=None, snapshot=publisher.snapshot)
    assert await publisher.snapshot(repo, "x86_64") is None  # nothing published yet
    await publisher.publish(make_apks(tmp_path / "a", ["beta", "alpha"], signer), "x86_64")
    one = await publisher.snapshot(repo, "x86_64")
    assert one is not None and one.repository is repo
    assert one.records == tuple(await _index(storage, public))  # the stored index, same order
    assert one.signed_by == signer.key_name
    assert await publisher.snapshot(repo, "x86_64") is one  # unchanged: the same object
    await publisher.publish(make_apks(tmp_path / "b", ["gamma"], signer), "x86_64")
    two = await publisher.snapshot(repo, "x86_64")
    assert two is not one and two is not None
    assert [r.name for r in two.records] == ["alpha", "beta", "gamma"]
    loaded = await load_indexes([repo], "x86_64", keyring=public)
    assert loaded == [two]


async def test_an_immutable_repository_refuses_other_bytes_under_a_published_name(
    storage: Storage, keys: tuple[Signer, PublicKeys], tmp_path: Path
) -> None:
    signer, public = keys
    publisher = RepoPublisher(storage, "repo", signer, immutable=True)
    first = make_apks(tmp_path / "one", ["fixed"], signer)
    await publisher.publish(first, "x86_64", origin=Origin(build_id="bld-1", package="fixed"))
    stored = await storage.read_bytes("repo/x86_64/fixed-1.0.0-r0.apk")
    # the same name, version and epoch, other content (one more file)
    (tmp_path / "two" / "trees" / "fixed").mkdir(parents=True)
    (tmp_path / "two" / "trees" / "fixed" / "extra").write_text("changed\n")
    other = make_apks(tmp_path / "two", ["fixed"], signer)
    with pytest.raises(PublishConflict, match=r"published by build bld-1 \(package fixed\)"):
        await publisher.publish(other, "x86_64", origin=Origin(build_id="bld-2", package="fixed"))
    assert await storage.read_bytes("repo/x86_64/fixed-1.0.0-r0.apk") == stored  # untouched
    assert publisher.index_writes("x86_64") == 1
    # after a restart too: who published it is kept beside the index
    later = RepoPublisher(storage, "repo", signer, immutable=True)
    with pytest.raises(PublishConflict, match="bld-1"):
        await later.check("x86_64", [IndexRecord.from_apk(other[0])])
    # the same bytes again: a no-op, not a conflict
    assert await later.publish(first, "x86_64") == []
    # replace: allowed, and reported with both checksums
    replaced = await later.publish(
        other, "x86_64", origin=Origin(build_id="bld-3", package="fixed"), replace=True
    )
    old, new = IndexRecord.from_apk(first[0]), IndexRecord.from_apk(other[0])
    assert [(r.filename, r.old, r.new) for r in replaced] == [
        ("fixed-1.0.0-r0.apk", old.checksum_field, new.checksum_field)
    ]
    assert replaced[0].old_origin == Origin(build_id="bld-1", package="fixed")
    assert [r.checksum for r in await _index(storage, public)] == [new.checksum]
    assert (await later.origins("x86_64"))["fixed-1.0.0-r0.apk"].build_id == "bld-3"


async def test_two_publications_of_other_bytes_under_one_name_cannot_both_pass(
    storage: Storage, keys: tuple[Signer, PublicKeys], tmp_path: Path
) -> None:
    signer, public = keys
    publisher = RepoPublisher(storage, "repo", signer, immutable=True)
    a = make_apks(tmp_path / "a", ["race"], signer)
    (tmp_path / "b" / "trees" / "race").mkdir(parents=True)
    (tmp_path / "b" / "trees" / "race" / "other").write_text("b\n")
    b = make_apks(tmp_path / "b", ["race"], signer)
    results = await asyncio.gather(
        publisher.publish(a, "x86_64", origin=Origin(build_id="bld-a", package="race")),
        publisher.publish(b, "x86_64", origin=Origin(build_id="bld-b", package="race")),
        return_exceptions=True,
    )
    conflicts = [r for r in results if isinstance(r, PublishConflict)]
    assert len(conflicts) == 1 and "being published now" in str(conflicts[0])
    winner = a if results[0] == [] else b
    (record,) = await _index(storage, public)
    assert record.checksum == IndexRecord.from_apk(winner[0]).checksum
    assert await storage.size("repo/x86_64/race-1.0.0-r0.apk") == winner[0].stat().st_size
