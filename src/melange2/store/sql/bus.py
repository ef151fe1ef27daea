"""Replicas on one PostgreSQL database: :class:`PostgresReplicas`, the
:class:`~melange2.scheduler.replicas.Replicas` of a
:class:`~melange2.store.sql.postgres.PostgresStore` (the design is in
:mod:`melange2.scheduler.replicas`).

Events are ``NOTIFY`` on one channel (:data:`CHANNEL`), small JSON payloads
(:func:`~melange2.scheduler.replicas.encode_events`: under 8000 bytes, what
PostgreSQL takes), one statement per batch through the store's autocommit pool. They
are heard by ``LISTEN`` on a dedicated psycopg 3 async connection in autocommit (not
one of SQLAlchemy's pools: a listening connection is never returned to a pool). When
that connection fails, it is opened again with backoff (0.1 s doubling to 5 s), and
then the scheduler resynchronises from the store, since notifications sent while
nobody listened are lost.

Starts and build ends are the store's (:meth:`PostgresStore.start_many`,
:meth:`PostgresStore.build_end_lock`: advisory locks per backend and per build).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import sql

from melange2.ids import BuildId
from melange2.jobs import PackageJob
from melange2.scheduler.replicas import EventHandler, ReplicaEvent, decode_events, encode_events
from melange2.store.slots import Full, SlotStart
from melange2.store.sql.postgres import PostgresStore

__all__ = ["CHANNEL", "PostgresReplicas"]

_log = logging.getLogger(__name__)

#: the one channel every replica of a database listens on
CHANNEL = "melange2_events"


class PostgresReplicas:
    """Several schedulers on one PostgreSQL database (see the module's docstring)."""

    shared = True

    def __init__(
        self,
        store: PostgresStore,
        *,
        owner: str,
        channel: str = CHANNEL,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.store = store
        self.owner = owner
        self.channel = channel
        self.backoff = backoff
        self._conninfo = store.conninfo()
        #: the listening connection while one is open (tests break it to see a resync)
        self.connection: psycopg.AsyncConnection[Any] | None = None

    async def publish(self, events: Sequence[ReplicaEvent]) -> None:
        payloads = encode_events(events, origin=self.owner)
        await self.store.notify(self.channel, payloads)

    async def listen(
        self,
        on_events: EventHandler,
        on_resync: Callable[[], Awaitable[None]],
        ready: Callable[[], None],
    ) -> None:
        delay = self.backoff[0]
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except (psycopg.Error, OSError) as exc:
                _log.warning("cannot listen for replica events (again in %.1f s): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            try:
                async with conn:
                    self.connection = conn
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    if first:
                        first = False
                        ready()
                    else:
                        _log.info("listening for replica events again: resynchronising")
                        await self._resync(on_resync)
                    delay = self.backoff[0]
                    async for notify in conn.notifies():
                        await self._hear(notify.payload, on_events, on_resync)
            except (psycopg.Error, OSError) as exc:
                _log.warning("lost the replica events connection (again in %.1f s): %s", delay, exc)
            finally:
                self.connection = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _hear(
        self, payload: str, on_events: EventHandler, on_resync: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            events = decode_events(payload)
        except ValueError:
            _log.warning("ignoring a notification on %s", self.channel, exc_info=True)
            return
        events = [e for e in events if e.origin != self.owner]
        if not events:
            return
        try:
            await on_events(events)
        except Exception:  # the store failed while applying: start again from it
            _log.exception("applying replica events; resynchronising")
            await self._resync(on_resync)

    async def _resync(self, on_resync: Callable[[], Awaitable[None]]) -> None:
        try:
            await on_resync()
        except Exception:
            _log.exception("resynchronising from the store")

    async def read_packages(self, build_id: BuildId, names: Sequence[str]) -> Sequence[PackageJob]:
        return await self.store.read_packages(build_id, names)

    async def start_many(self, starts: Sequence[SlotStart]) -> Sequence[PackageJob | Full | None]:
        return await self.store.start_many(starts)

    def ending(
        self, build_id: BuildId, *, wait: bool = True
    ) -> AbstractAsyncContextManager[bool | None]:
        return self.store.build_end_lock(build_id, wait=wait)
