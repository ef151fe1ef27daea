"""The build store: builds, package jobs, leases, runtime backends and API tokens.

Open one with :func:`open_store`, an async context manager that closes it on exit::

    async with open_store("sqlite", data_dir=data_dir) as store:
        await store.create_build(build)

    async with open_store("postgres", dsn="postgresql://melange@db/melange") as store:
        ...

The implementations are async context managers too (``async with MemoryStore() as s``,
``async with await SqliteStore.open(path) as s``, ``await PostgresStore.open(dsn)``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import anyio

from melange2.errors import ConfigError
from melange2.store.base import BuildPage, JobStore, Move, StoredBackend, TokenStore
from melange2.store.memory import MemoryStore
from melange2.store.sql import PostgresStore, SqliteStore

__all__ = [
    "SQLITE_FILENAME",
    "BuildPage",
    "JobStore",
    "MemoryStore",
    "Move",
    "PostgresStore",
    "SqliteStore",
    "StoreKind",
    "StoredBackend",
    "TokenStore",
    "open_store",
]

#: the kinds :func:`open_store` opens
StoreKind = Literal["memory", "sqlite", "postgres"]

#: the database file ``open_store("sqlite", ...)`` keeps in the data dir
SQLITE_FILENAME = "melange2.db"


@asynccontextmanager
async def open_store(
    kind: StoreKind, *, data_dir: Path | None = None, dsn: str | None = None
) -> AsyncIterator[JobStore]:
    """An open store of ``kind``, closed (``aclose``) when the block exits.

    ``memory`` ignores ``data_dir`` and ``dsn``. ``sqlite`` keeps ``data_dir /
    "melange2.db"`` (creating the directory), migrated to the latest schema; it needs a
    ``data_dir``. ``postgres`` connects to ``dsn`` (a ``postgresql://`` URL) and
    migrates that database. Raises ``ConfigError`` for a missing ``data_dir`` or
    ``dsn``, a bad ``dsn`` or an unknown ``kind``; ``StoreUnavailable`` when the
    database cannot be reached.
    """
    store: JobStore
    if kind == "memory":
        store = MemoryStore()
    elif kind == "sqlite":
        if data_dir is None:
            raise ConfigError("the sqlite store needs a data directory")
        await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
        store = await SqliteStore.open(data_dir / SQLITE_FILENAME)
    elif kind == "postgres":
        if not dsn:
            raise ConfigError("the postgres store needs a DSN (--postgres-dsn or POSTGRES_DSN)")
        store = await PostgresStore.open(dsn)
    else:
        raise ConfigError(f"unknown store {kind!r} (expected memory, sqlite or postgres)")
    try:
        yield store
    finally:
        await store.aclose()
