"""The SQL stores: Core tables, one function per query, one transaction runner per
database (:class:`SqliteStore`, :class:`PostgresStore`)."""

from __future__ import annotations

from melange2.store.sql.postgres import PostgresStore
from melange2.store.sql.sqlite import SqliteStore
from melange2.store.sql.store import SqlStore

__all__ = ["PostgresStore", "SqlStore", "SqliteStore"]
