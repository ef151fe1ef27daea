"""The build store: builds, package jobs, leases and runtime backends.

Open one with :func:`open_store`, an async context manager that closes it on exit::

    async with open_store("sqlite", data_dir=data_dir) as store:
        await store.create_build(build)

The implementations are async context managers too (``async with MemoryStore() as s``,
``async with await SqliteStore.open(path) as s``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import anyio

from melange2.errors import ConfigError
from melange2.store.base import BuildPage, JobStore, StoredBackend
from melange2.store.memory import MemoryStore
from melange2.store.sql import SqliteStore

__all__ = [
    "SQLITE_FILENAME",
    "BuildPage",
    "JobStore",
    "MemoryStore",
    "SqliteStore",
    "StoredBackend",
    "open_store",
]

#: the database file ``open_store("sqlite", ...)`` keeps in the data dir
SQLITE_FILENAME = "melange2.db"


@asynccontextmanager
async def open_store(
    kind: Literal["memory", "sqlite"], *, data_dir: Path | None
) -> AsyncIterator[JobStore]:
    """An open store of ``kind``, closed (``aclose``) when the block exits.

    ``memory`` ignores ``data_dir``. ``sqlite`` keeps ``data_dir / "melange2.db"``
    (creating the directory), migrated to the latest schema; it needs a ``data_dir``.
    Raises ``ConfigError`` for a missing ``data_dir`` or an unknown ``kind``.
    """
    store: JobStore
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        if data_dir is None:
            raise ConfigError("the sqlite store needs a data directory")
        await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
        store = await SqliteStore.open(data_dir / SQLITE_FILENAME)
    else:
        raise ConfigError(f"unknown store {kind!r} (expected memory or sqlite)")
    try:
        yield store
    finally:
        await store.aclose()
