"""The SQL store: Core tables, one function per query, dialect set-up per database."""

from __future__ import annotations

from melange2.store.sql.sqlite import SqliteStore

__all__ = ["SqliteStore"]
