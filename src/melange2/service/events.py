"""Live events: build and package state changes, fanned out to every follower
(``GET /api/v1/events``, the pages, ``melange2 remote wait``).

The scheduler reports each change it writes (:class:`~melange2.scheduler.loop.StateChange`);
:func:`event_of` makes it a wire-neutral :data:`LiveEvent`; an :class:`EventSource`
numbers it and hands it to its subscribers. The seam is small on purpose: today
:class:`LocalEvents` (one process); with several replicas (PostgreSQL ``LISTEN/NOTIFY``)
a source fed by ``NOTIFY`` replaces it, numbering events from the database instead::

    events = LocalEvents()
    async with events.subscribe(build="bld-1") as sub:   # before reading the state
        ...                                               # read the build from the store
        async for delivery in sub:                        # then every change after it
            if isinstance(delivery, Resync):
                ...                                       # missed some: read the state again
            else:
                print(delivery.id, delivery.event.status)

**Slow followers** cost bounded memory: each subscription queues at most ``queue_size``
events; when a follower falls that far behind its queue is dropped and it gets one
:class:`Resync` instead (drop-and-resync: it stays connected, re-reads the state, and
goes on with the events after the drop). A follower never blocks the publisher.

**Reconnecting** with the last id seen (SSE ``Last-Event-ID``) replays what was missed,
from the last ``history`` events kept; an id from before that, or from another process
(a restart: ids carry the process's epoch), gets a :class:`Resync` first.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Literal, Protocol

from melange2.jobs import BuildStatus, PackageStatus
from melange2.scheduler.loop import StateChange

__all__ = [
    "BuildEvent",
    "Delivery",
    "EventSource",
    "LiveEvent",
    "LocalEvents",
    "PackageEvent",
    "Resync",
    "Subscription",
    "event_of",
]


@dataclass(frozen=True, kw_only=True)
class PackageEvent:
    """A package moved from ``previous`` to ``status``."""

    kind: Literal["package"] = "package"
    build_id: str
    name: str
    status: PackageStatus
    previous: PackageStatus
    at: datetime
    #: the build's package counts per status after the move, and its status then
    counts: Mapping[str, int]
    build_status: BuildStatus
    backend: str = ""
    attempt: int = 0
    reason: str = ""
    error: str = ""
    cached: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class BuildEvent:
    """A build was submitted (``previous`` ``None``) or its status moved."""

    kind: Literal["build"] = "build"
    build_id: str
    status: BuildStatus
    previous: BuildStatus | None
    at: datetime
    counts: Mapping[str, int]


LiveEvent = PackageEvent | BuildEvent


def event_of(change: StateChange) -> LiveEvent:
    """The event for one of the scheduler's changes."""
    counts = {s.value: n for s, n in sorted(change.counts.items())}
    job = change.job
    if job is None:
        previous = change.previous
        return BuildEvent(
            build_id=change.build_id,
            status=change.build_status,
            previous=previous if isinstance(previous, BuildStatus) else None,
            at=change.at,
            counts=counts,
        )
    assert isinstance(change.previous, PackageStatus)
    return PackageEvent(
        build_id=change.build_id,
        name=job.name,
        status=job.status,
        previous=change.previous,
        at=change.at,
        counts=counts,
        build_status=change.build_status,
        backend=job.backend.addr if job.backend is not None else "",
        attempt=len(job.attempts),
        reason=job.reason,
        error=job.error,
        cached=job.cached,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One event as a subscriber gets it, with the id to reconnect from."""

    id: str
    event: LiveEvent


@dataclass(frozen=True, kw_only=True)
class Resync:
    """Events were missed (the follower fell behind, or reconnected from an id no longer
    kept): read the state again; the deliveries after this one are the changes since
    (some may already show in what was read: applying them again is harmless)."""

    #: the latest id when the events were missed (reconnect from here)
    id: str
    reason: str


class Subscription(Protocol):
    """What :meth:`EventSource.subscribe` returns: an async context manager and an
    async iterator of deliveries (it ends only when the source closes)."""

    #: the id of the latest event when the subscription began
    start_id: str

    async def __aenter__(self) -> Subscription: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[Delivery | Resync]: ...

    async def get(self) -> Delivery | Resync | None:
        """The next delivery, waiting for one (wrap it in ``asyncio.timeout`` to send
        keep-alives); ``None`` once the source is closed."""

    @property
    def closed(self) -> bool:
        """The source closed: nothing more will come."""


class EventSource(Protocol):
    """Where live events come from: one process's (:class:`LocalEvents`), or later a
    database's shared by several replicas."""

    def publish(self, event: LiveEvent) -> None:
        """Number ``event`` and hand it to every matching subscriber; never blocks."""

    def subscribe(self, *, build: str | None = None, last_id: str | None = None) -> Subscription:
        """Events of ``build`` (every build's when ``None``) from now on, or from after
        ``last_id`` (a :class:`Delivery`'s id) as far as they are kept."""

    @property
    def last_id(self) -> str:
        """The id of the last event published: a page rendered now subscribes from it,
        so that what happens between its render and its subscription is not lost."""

    def close(self) -> None:
        """End every subscription (the server is stopping)."""


@dataclass(eq=False, kw_only=True)
class _Follower:
    build: str | None
    limit: int
    queue: deque[Delivery | Resync] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    dropped: int = 0  #: times this follower fell behind (observability, tests)

    def offer(self, item: Delivery | Resync) -> None:
        if len(self.queue) >= self.limit:
            # drop-and-resync: the queue goes, one marker stands for it and for this one
            self.queue.clear()
            self.dropped += 1
            item = Resync(id=item.id, reason="fell behind: events were dropped")
        self.queue.append(item)
        self.wake.set()

    def wants(self, event: LiveEvent) -> bool:
        return self.build is None or event.build_id == self.build


class _LocalSubscription:
    def __init__(self, source: LocalEvents, follower: _Follower, start_id: str) -> None:
        self._source = source
        self._follower = follower
        self.start_id = start_id

    async def __aenter__(self) -> _LocalSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._source._followers.discard(self._follower)

    @property
    def dropped(self) -> int:
        return self._follower.dropped

    @property
    def closed(self) -> bool:
        return self._follower.closed and not self._follower.queue

    def __aiter__(self) -> AsyncIterator[Delivery | Resync]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery | Resync]:
        while (item := await self.get()) is not None:
            yield item

    async def get(self) -> Delivery | Resync | None:
        f = self._follower
        while not f.queue:
            if f.closed:
                return None
            f.wake.clear()
            await f.wake.wait()
        return f.queue.popleft()


class LocalEvents:
    """The in-process :class:`EventSource`: ids ``<epoch>-<n>``, the last ``history``
    events kept for reconnects, at most ``queue_size`` queued per subscriber."""

    def __init__(self, *, history: int = 10_000, queue_size: int = 2_000) -> None:
        self.epoch = secrets.token_hex(4)
        self.queue_size = queue_size
        self._seq = 0
        self._recent: deque[tuple[int, LiveEvent]] = deque(maxlen=history)
        self._followers: set[_Follower] = set()

    def _id(self, seq: int) -> str:
        return f"{self.epoch}-{seq}"

    @property
    def last_id(self) -> str:
        return self._id(self._seq)

    @property
    def followers(self) -> int:
        return len(self._followers)

    def publish(self, event: LiveEvent) -> None:
        self._seq += 1
        self._recent.append((self._seq, event))
        if not self._followers:
            return
        delivery = Delivery(id=self._id(self._seq), event=event)
        for f in self._followers:
            if f.wants(event):
                f.offer(delivery)

    def subscribe(
        self, *, build: str | None = None, last_id: str | None = None
    ) -> _LocalSubscription:
        follower = _Follower(build=build, limit=self.queue_size)
        if last_id is not None:
            self._replay(follower, last_id)
        self._followers.add(follower)
        return _LocalSubscription(self, follower, self.last_id)

    def _replay(self, follower: _Follower, last_id: str) -> None:
        epoch, _, raw = last_id.partition("-")
        seq = int(raw) if raw.isdigit() else -1
        oldest = self._recent[0][0] if self._recent else self._seq + 1
        if epoch != self.epoch or seq < 0 or seq > self._seq:
            follower.offer(Resync(id=self.last_id, reason="unknown event id (a restart?)"))
            return
        if seq < oldest - 1:
            follower.offer(Resync(id=self.last_id, reason="event id no longer kept"))
            return
        for n, event in self._recent:
            if n > seq and follower.wants(event):
                follower.offer(Delivery(id=self._id(n), event=event))

    def close(self) -> None:
        for f in self._followers:
            f.closed = True
            f.wake.set()
