"""A repository whose index its writer in this process holds (the farm's own) is
resolved from that snapshot, in order with repositories read from files; a snapshot
signed with a key the keyring does not trust is refused, like a file would be."""

from __future__ import annotations

from pathlib import Path

import pytest

from melange2.apk.index import IndexRecord
from melange2.repo.repository import (
    LoadedIndex,
    Repository,
    UntrustedIndexError,
    load_indexes,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _record(name: str) -> IndexRecord:
    return IndexRecord(
        name=name, version="1.0-r0", arch="x86_64", size=1, installed_size=1, checksum=b"\x01" * 20
    )


class _Held:
    """A fake writer (unit test only): serves one snapshot and counts the calls."""

    def __init__(self, records: tuple[IndexRecord, ...], signed_by: str) -> None:
        self.records, self.signed_by, self.calls = records, signed_by, 0

    async def __call__(self, repository: Repository, arch: str) -> LoadedIndex | None:
        self.calls += 1
        if not self.records:
            return None
        return LoadedIndex(
            repository=repository,
            arch=arch,
            description="held",
            records=self.records,
            signed_by=self.signed_by,
        )


async def test_snapshots_keep_their_place_and_empty_ones_are_skipped(tmp_path: Path) -> None:
    key = tmp_path / "farm.rsa.pub"
    key.write_text("not read: snapshots are not verified again")
    first = _Held((_record("a"),), "farm.rsa.pub")
    empty = _Held((), "farm.rsa.pub")
    last = _Held((_record("b"), _record("c")), "farm.rsa.pub")
    repos = [
        Repository(location=str(tmp_path / "one"), snapshot=first),
        Repository(location=str(tmp_path / "two"), snapshot=empty),
        Repository(location=str(tmp_path / "three"), snapshot=last),
    ]
    loaded = await load_indexes(repos, "x86_64", keyring={"farm.rsa.pub": b""})  # type: ignore[dict-item]
    assert [i.repository.location for i in loaded] == [repos[0].location, repos[2].location]
    assert [r.name for i in loaded for r in i.records] == ["a", "b", "c"]
    assert (first.calls, empty.calls, last.calls) == (1, 1, 1)


async def test_a_snapshot_signed_by_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    held = _Held((_record("a"),), "other.rsa.pub")
    repo = Repository(location=str(tmp_path / "r"), snapshot=held)
    with pytest.raises(UntrustedIndexError, match=r"other\.rsa\.pub"):
        await load_indexes([repo], "x86_64", keyring={"farm.rsa.pub": b""})  # type: ignore[dict-item]
    assert await load_indexes([repo], "x86_64", keyring={}, allow_untrusted=True)
