"""Reuse records: which build produced the packages for an input digest.

A successful build writes ``cache/<arch>/<digest>.json`` (see :mod:`.layout`) naming
where its packages are kept, with their index records (so reuse reads no APK). A later
package with the same digest finds the record, checks the files are all still there,
and reuses them instead of building.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
        try:
            data = await self.storage.read_bytes(self.layout.reuse_record(arch, digest))
        except StorageNotFound:
            return None
        try:
            record = ReuseRecord.decode(data)
        except (ValueError, KeyError, ApkFormatError):
            return None  # unreadable: build again, and the new build rewrites it
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
    ) -> None:
        record = ReuseRecord(
            input_digest=digest,
            arch=arch,
            build_id=build_id,
            package=package,
            artifacts=artifacts,
            records=tuple(records),
        )
        await self.storage.put_bytes(self.layout.reuse_record(arch, digest), record.encode())
