"""Publication into APK repositories kept in storage: the farm's published repository
(``repo/`` of the farm's storage) and each build's staging repository.

* **Incremental**: an arch's index records are read once (from the stored index, not
  from the APKs) and kept; a publication computes records for its new APKs only. A
  package file published again under the same name replaces its record.
* **Atomic**: APKs are stored first, then the index in one write (a rename locally, one
  object upload in a bucket): readers see the old index or the new one.
* **Batched, nothing lost**: concurrent publications into one arch queue up; whoever
  holds the arch's lock writes one index for every publication waiting (group commit),
  and each caller returns once an index listing its packages is stored.

One process writes a repository; several servers must not share one storage prefix.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from melange2.apk.index import IndexRecord, read_index_tar_gz, write_index_tar_gz
from melange2.apk.signing import Signer
from melange2.repo.repository import LoadedIndex, Repository
from melange2.storage import Storage, StorageNotFound

INDEX_NAME = "APKINDEX.tar.gz"


@dataclass
class _Arch:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: by file name; None until read from the stored index
    records: dict[str, IndexRecord] | None = None
    waiting: list[tuple[list[IndexRecord], asyncio.Future[None]]] = field(default_factory=list)
    writes: int = 0  #: index writes so far (observability, tests)
    #: the records as a loaded index, and the records it was made from
    snapshot: LoadedIndex | None = None
    snapshot_of: Mapping[str, IndexRecord] | None = None


class RepoPublisher:
    """Publishes into the repository at ``prefix`` of ``storage`` (``<prefix>/<arch>/``)."""

    def __init__(
        self, storage: Storage, prefix: str, signer: Signer, *, description: str = "melange2"
    ) -> None:
        self.storage = storage
        self.prefix = prefix.strip("/")
        self.signer = signer
        self.description = description
        self._arches: dict[str, _Arch] = {}

    def key(self, arch: str, filename: str) -> str:
        return f"{self.prefix}/{arch}/{filename}" if self.prefix else f"{arch}/{filename}"

    def index_writes(self, arch: str) -> int:
        state = self._arches.get(arch)
        return state.writes if state is not None else 0

    async def records(self, arch: str) -> dict[str, IndexRecord]:
        """The arch's current records by file name (read from storage the first time)."""
        return dict(await self.current(arch))

    async def current(self, arch: str) -> Mapping[str, IndexRecord]:
        """The arch's records themselves (not a copy: thousands of ``has`` per build)."""
        state = self._arches.setdefault(arch, _Arch())
        if state.records is None:
            async with state.lock:
                if state.records is None:
                    state.records = await self._load(arch)
        return state.records

    async def _load(self, arch: str) -> dict[str, IndexRecord]:
        try:
            data = await self.storage.read_bytes(self.key(arch, INDEX_NAME))
        except StorageNotFound:
            return {}
        index = await asyncio.to_thread(read_index_tar_gz, io.BytesIO(data))
        return {r.filename: r for r in index.records}

    async def snapshot(self, repository: Repository, arch: str) -> LoadedIndex | None:
        """The arch's index as stored, from memory (an :class:`IndexSnapshot` for
        ``repository``, which must be this publisher's); ``None`` while it is empty."""
        records = await self.current(arch)
        if not records:
            return None
        state = self._arches[arch]
        held = state.snapshot
        if held is None or held.repository is not repository or state.snapshot_of is not records:
            held = state.snapshot = LoadedIndex(
                repository=repository,
                arch=arch,
                description=self.description,
                records=tuple(sorted(records.values(), key=_index_order)),
                signed_by=self.signer.key_name,
            )
            state.snapshot_of = records
        return held

    async def has(self, arch: str, record: IndexRecord) -> bool:
        """Is exactly this package (same file name and checksum) published?"""
        current = (await self.current(arch)).get(record.filename)
        return current is not None and current.checksum == record.checksum

    async def publish(
        self, apks: Sequence[Path], arch: str, *, records: Sequence[IndexRecord] | None = None
    ) -> None:
        """Store ``apks`` under ``<arch>/`` and list them in the arch's signed index.
        ``records`` (the APKs' index records, in order) saves reading them again."""
        if not apks:
            return
        recs = list(records) if records is not None else await asyncio.to_thread(_records, apks)
        todo = [
            (apk, rec) for apk, rec in zip(apks, recs, strict=True) if not await self.has(arch, rec)
        ]
        if not todo:
            return  # already published, byte for byte (checksums match)
        await asyncio.gather(
            *(self.storage.put_file(apk, self.key(arch, apk.name)) for apk, _ in todo)
        )
        state = self._arches.setdefault(arch, _Arch())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiting.append(([rec for _, rec in todo], done))
        async with state.lock:
            if not done.done():
                batch, state.waiting = state.waiting, []
                try:
                    await self._write(arch, state, [r for recs_, _ in batch for r in recs_])
                except BaseException as exc:
                    for _, fut in batch:
                        if fut is not done and not fut.done():
                            fut.set_exception(exc)
                    raise
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        await done

    async def _write(self, arch: str, state: _Arch, new: Sequence[IndexRecord]) -> None:
        if state.records is None:
            state.records = await self._load(arch)
        merged = dict(state.records)
        for rec in new:
            merged[rec.filename] = rec
        data = await asyncio.to_thread(self._render, merged)
        await self.storage.put_bytes(self.key(arch, INDEX_NAME), data)
        state.records = merged
        state.writes += 1

    def _render(self, records: dict[str, IndexRecord]) -> bytes:
        out = io.BytesIO()
        ordered = sorted(records.values(), key=_index_order)
        write_index_tar_gz(ordered, self.signer, out, description=self.description)
        return out.getvalue()


def _index_order(r: IndexRecord) -> tuple[str, str, str]:
    return (r.name, r.version, r.filename)


def _records(apks: Sequence[Path]) -> list[IndexRecord]:
    return [IndexRecord.from_apk(p) for p in apks]
