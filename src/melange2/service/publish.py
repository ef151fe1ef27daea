"""Publication into directory repositories (the per-build staging repository and the
farm's published one): APKs copied in, the signed index rewritten, one writer per
``<repo>/<arch>`` at a time so concurrent publications never lose an entry."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from melange2.apk.signing import Signer
from melange2.repo.directory import index_directory, publish_apk


class Publisher:
    def __init__(self, signer: Signer, *, description: str = "melange2") -> None:
        self.signer = signer
        self.description = description
        self._locks: dict[Path, asyncio.Lock] = {}

    async def publish(self, apks: Sequence[Path], repo: Path, arch: str) -> None:
        arch_dir = (repo / arch).resolve()
        lock = self._locks.setdefault(arch_dir, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self._publish, apks, arch_dir)

    def _publish(self, apks: Sequence[Path], arch_dir: Path) -> None:
        for apk in apks:
            publish_apk(apk, arch_dir)
        index_directory(arch_dir, self.signer, description=self.description)
