"""Named locks held within one process: what :meth:`JobStore.hold_lock` is for the
memory and SQLite stores (one process owns their data). PostgreSQL's store holds an
advisory lock instead (:mod:`melange2.store.sql.postgres`), which holds across processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

__all__ = ["LocalLocks"]


@dataclass
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class LocalLocks:
    """One :class:`asyncio.Lock` per name, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, _Held] = {}

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        held = self._locks.setdefault(name, _Held())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0 and self._locks.get(name) is held:
                del self._locks[name]

    def held(self, name: str) -> bool:
        """Whether someone holds ``name`` now (tests, observability)."""
        entry = self._locks.get(name)
        return entry is not None and entry.lock.locked()
