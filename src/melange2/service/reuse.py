"""Reuse records: which build produced the packages for an input digest.

A successful build writes ``cache/<arch>/<digest>.json`` (see :mod:`.layout`) naming
where its packages are kept, with their index records (so reuse reads no APK). A later
package with the same digest finds the record, checks the files are all still there,
and reuses them instead of building.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from melange2.apk.errors import ApkFormatError
from melange2.apk.index import IndexRecord, build_index, parse_index
from melange2.service.layout import Layout
from melange2.storage import Storage, StorageNotFound


@dataclass(frozen=True, kw_only=True)
class ReuseRecord:
    input_digest: str
    arch: str
    build_id: str
    package: str
    #: storage prefix of the producing build's artifacts (``<prefix>/<arch>/<file>``)
    artifacts: str
    #: the packages' index records, in file order
    records: tuple[IndexRecord, ...]

    def files(self) -> list[str]:
        return [f"{self.arch}/{r.filename}" for r in self.records]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "input_digest": self.input_digest,
                "arch": self.arch,
                "build_id": self.build_id,
                "package": self.package,
                "artifacts": self.artifacts,
                "index": build_index(self.records).decode(),
            },
            indent=1,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ReuseRecord:
        raw = json.loads(data)
        return cls(
            input_digest=raw["input_digest"],
            arch=raw["arch"],
            build_id=raw["build_id"],
            package=raw["package"],
            artifacts=raw["artifacts"],
            records=parse_index(raw["index"]),
        )


class ReuseIndex:
    def __init__(self, storage: Storage, layout: Layout) -> None:
        self.storage = storage
        self.layout = layout

    async def find(self, arch: str, digest: str) -> ReuseRecord | None:
        """The record for ``digest`` if every package it names is still stored."""
        return await self._read(self.layout.reuse_record(arch, digest))

    async def find_quick(self, arch: str, quick: str) -> ReuseRecord | None:
        """The record a quick digest led to, if every package it names is still stored."""
        return await self._read(self.layout.quick_record(arch, quick))

    async def remember_quick(self, quick: str, record: ReuseRecord) -> None:
        await self.storage.put_bytes(self.layout.quick_record(record.arch, quick), record.encode())

    @staticmethod
    def decode(data: bytes | None) -> ReuseRecord | None:
        """A stored record; ``None`` if missing or unreadable (the package is then built
        again, and its build rewrites the record)."""
        if data is None:
            return None
        try:
            return ReuseRecord.decode(data)
        except (ValueError, KeyError, ApkFormatError):
            return None

    async def _read(self, key: str) -> ReuseRecord | None:
        try:
            data = await self.storage.read_bytes(key)
        except StorageNotFound:
            return None
        record = self.decode(data)
        if record is None:
            return None
        for name in record.files():
            if not await self.storage.exists(f"{record.artifacts}/{name}"):
                return None
        return record

    async def remember(
        self,
        *,
        arch: str,
        digest: str,
        build_id: str,
        package: str,
        artifacts: str,
        records: Sequence[IndexRecord],
    ) -> ReuseRecord:
        record = ReuseRecord(
            input_digest=digest,
            arch=arch,
            build_id=build_id,
            package=package,
            artifacts=artifacts,
            records=tuple(records),
        )
        await self.storage.put_bytes(self.layout.reuse_record(arch, digest), record.encode())
        return record


def settle_reuse(
    candidates: Iterable[str],
    *,
    packages: Iterable[str],
    deps: Mapping[str, Sequence[str]],
    installs: Mapping[str, Set[str]],
    outputs: Mapping[str, Set[str]],
) -> set[str]:
    """Which of a build's ``candidates`` (packages whose inputs, resolved at submission,
    match an earlier build's) can really be reused without building.

    A candidate is reused only if every dependency of it in the build is reused too,
    and if nothing it installs (``installs``: the names and origins of its resolved
    environment) is made by a package of the build that will be built again
    (``outputs``: each package's own and subpackages' names): that package's new
    output could change the environment it would get at build time."""
    cached = set(candidates)
    every = set(packages)
    while True:
        rebuilt = every - cached
        made_again = set().union(*(outputs.get(p, set()) for p in rebuilt))
        keep = {
            p
            for p in cached
            if all(d in cached for d in deps.get(p, ()) if d in every)
            and installs.get(p, set()).isdisjoint(made_again)
        }
        if keep == cached:
            return cached
        cached = keep
