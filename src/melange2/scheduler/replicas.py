"""Several scheduler replicas on one store: the seam (:class:`Replicas`), the events they
tell each other (:class:`ReplicaEvent`) and the one-process case (:class:`LocalReplicas`).

Any number of ``melange-server`` processes on one PostgreSQL database serve one farm;
:class:`~melange2.store.sql.bus.PostgresReplicas` is the implementation there, chosen
automatically when the store ``supports_listen_notify``. On SQLite and the memory
store there is one process: :class:`LocalReplicas` tells nobody anything, starts a
package with a plain guarded transition and ends a build without a lock, so the
scheduler is one code path either way.

What is shared, and how (the scheduler's side is in
:class:`~melange2.scheduler.loop.Scheduler`, section *replicas*):

* **claims**: the store is the truth and every move a compare-and-set there. Of two
  replicas starting one package, one guarded update wins; the loser re-reads the row
  and gives its slot back. Running packages hold a lease their replica renews; every
  replica's lease loop requeues expired leases (``FOR UPDATE SKIP LOCKED``: they split
  the rows), so the packages of a replica that died run again elsewhere.
* **events** (:class:`ReplicaEvent`, no polling): a build submitted, packages moved
  (each replica's own writes, batched: whatever was written between two publications
  goes out together), a cancel, a build ended, the runtime backends changed. A replica
  hearing one reads the rows named from the store and applies them to its graph as if
  it had written them: a success releases dependents, a failure cascades, a package
  that becomes ``pending`` is queued, one that runs on another replica is booked on the
  local pool (so least-loaded placement sees the real load). After the event
  connection is lost and back, a replica resynchronises from the store (what was
  notified meanwhile is lost); so does one whose lease loop requeued another replica's
  packages (that one died, perhaps between a write and its notification: events are
  sent after the write commits, not in its transaction).
* **slots**: the local pool picks a backend; :meth:`Replicas.start_many` then checks the
  backend's limits (``maxJobs``, declared cpu and memory) against every replica's
  running packages in the same transaction as the guarded update. A backend full on
  the others' account keeps the package queued; it is tried again when a slot frees
  anywhere (that package's end is an event).
* **circuit breakers and probes are not shared**: each replica probes every daemon and
  keeps its own breaker, so a daemon failing for one replica is avoided by that one
  first, and the others follow within a probe period (their own probes or failures).
* **a build ends once**: :meth:`Replicas.ending` (a lock per build; the build's status
  read under it) lets one replica publish and write the final status; the others find
  it ended. A replica that sees a build's last package end on another replica leaves
  the ending to that one for :data:`END_GRACE` seconds, and ends it itself only if it
  is still unfinished then and no replica holds its lock (that one died meanwhile;
  one still publishing is left alone, and asked again a grace later).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from melange2.errors import InvalidTransition, NotFound
from melange2.ids import BuildId
from melange2.jobs import PackageJob, PackageStatus
from melange2.pool.config import BackendSpec
from melange2.store.base import JobStore, StoredBackend
from melange2.store.slots import Full, SlotStart

__all__ = [
    "END_GRACE",
    "MAX_PAYLOAD_BYTES",
    "EventKind",
    "LocalReplicas",
    "ReplicaEvent",
    "Replicas",
    "backend_spec",
    "decode_events",
    "encode_events",
]

#: seconds a replica leaves a build's end to the replica that saw its last package end
END_GRACE = 1.0
#: the most a payload takes (PostgreSQL refuses NOTIFY payloads of 8000 bytes or more)
MAX_PAYLOAD_BYTES = 7000

EventKind = Literal["submitted", "moved", "cancelled", "ended", "backends"]
_KINDS: frozenset[str] = frozenset(get_args(EventKind))


@dataclass(frozen=True, kw_only=True)
class ReplicaEvent:
    """What one replica tells the others. ``moved``: the packages ``names`` of the build
    moved (read them; no names: read the whole build); ``submitted``, ``cancelled``,
    ``ended``: of the build; ``backends``: the runtime backends changed (reload them)."""

    kind: EventKind
    build_id: BuildId | None = None
    names: tuple[str, ...] = ()
    #: the replica that sent it (its lease owner name); set by :func:`decode_events`
    origin: str = ""


def encode_events(
    events: Sequence[ReplicaEvent], *, origin: str, limit: int = MAX_PAYLOAD_BYTES
) -> list[str]:
    """The events as JSON payloads of at most ``limit`` bytes each, in order: moves of
    one build in a row are merged into one event (names once each), and what does not
    fit one payload goes into the next."""
    merged: list[tuple[str, str | None, list[str]]] = []
    for event in events:
        last = merged[-1] if merged else None
        if (
            event.kind == "moved"
            and last is not None
            and last[0] == "moved"
            and last[1] == event.build_id
            and last[2]
            and event.names
        ):
            last[2].extend(n for n in event.names if n not in last[2])
            continue
        merged.append((event.kind, event.build_id, list(dict.fromkeys(event.names))))
    payloads: list[str] = []
    batch: list[list[Any]] = []

    def dump(items: list[list[Any]]) -> str:
        return json.dumps({"o": origin, "e": items}, separators=(",", ":"))

    def put(item: list[Any]) -> None:
        if len(dump([*batch, item]).encode()) <= limit:
            batch.append(item)
            return
        if batch:
            payloads.append(dump(batch))
            batch.clear()
        if len(dump([item]).encode()) <= limit:
            batch.append(item)
        elif item[0] == "moved" and len(item[2]) > 1:  # split its names
            half = len(item[2]) // 2
            put([item[0], item[1], item[2][:half]])
            put([item[0], item[1], item[2][half:]])
        else:  # one name too long: the receivers read the whole build
            batch.append([item[0], item[1], []])

    for kind, build_id, names in merged:
        put([kind, build_id, names])
    if batch:
        payloads.append(dump(batch))
    return payloads


def decode_events(payload: str) -> list[ReplicaEvent]:
    """The events of one payload (:func:`encode_events`); ``ValueError`` if it is not
    one."""
    try:
        data = json.loads(payload)
        origin = data["o"]
        items = data["e"]
        if not isinstance(origin, str) or not isinstance(items, list):
            raise TypeError("not an event payload")
        events = []
        for kind, build_id, names in items:
            if kind not in _KINDS or not isinstance(names, list):
                raise TypeError(f"unknown event {kind!r}")
            events.append(
                ReplicaEvent(
                    kind=kind,
                    build_id=None if build_id is None else BuildId(str(build_id)),
                    names=tuple(str(n) for n in names),
                    origin=origin,
                )
            )
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"not a replica event payload: {payload[:200]!r}: {exc}") from None
    return events


def backend_spec(stored: StoredBackend) -> BackendSpec:
    """A runtime backend as the pool adds it."""
    return BackendSpec(
        addr=stored.addr,
        arch=stored.arch,
        labels=stored.labels,
        max_jobs=stored.max_jobs,
        tls=stored.tls,
        cpu=stored.cpu_millis,
        memory=stored.memory_bytes,
    )


#: what a replica does with the events it hears
EventHandler = Callable[[Sequence[ReplicaEvent]], Awaitable[None]]


class Replicas(Protocol):
    """How the scheduler shares a farm with other replicas on its store."""

    @property
    def shared(self) -> bool:
        """Whether other processes may schedule on this store (events are sent and
        heard; remote moves are applied)."""
        ...

    async def publish(self, events: Sequence[ReplicaEvent]) -> None:
        """Tell the other replicas (in order; the sender's own listener ignores them).
        Raises ``StoreError`` if they cannot be sent."""

    async def listen(
        self,
        on_events: EventHandler,
        on_resync: Callable[[], Awaitable[None]],
        ready: Callable[[], None],
    ) -> None:
        """Hear the others' events until cancelled: ``ready()`` once first listening,
        ``on_events`` for each batch, ``on_resync()`` after listening again once the
        connection was lost (what was sent meanwhile is lost). Never returns."""

    async def read_packages(self, build_id: BuildId, names: Sequence[str]) -> Sequence[PackageJob]:
        """The named packages as they stand in the store."""

    async def start_many(self, starts: Sequence[SlotStart]) -> Sequence[PackageJob | Full | None]:
        """Make ``starts`` (in one transaction where the store can), each only if what
        runs on its backend across replicas leaves room: per start, the package running,
        :data:`~melange2.store.slots.FULL` (nothing written) or ``None`` (the package
        moved meanwhile, e.g. another replica took it). ``StoreError`` writes none."""
        ...

    def ending(
        self, build_id: BuildId, *, wait: bool = True
    ) -> AbstractAsyncContextManager[bool | None]:
        """Held while this replica ends the build: ``True`` if it is this one's to end
        (publish, write the final status, inside the block); ``False`` if another
        replica ended it. ``wait=False``: ``None`` at once if another replica is ending
        it right now (instead of waiting for it)."""
        ...


class LocalReplicas:
    """One process alone on its store (SQLite, memory): nothing to tell, nothing to
    hear, starts are plain guarded transitions and every build end is this one's."""

    shared = False

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def publish(self, events: Sequence[ReplicaEvent]) -> None:
        return None

    async def listen(
        self,
        on_events: EventHandler,
        on_resync: Callable[[], Awaitable[None]],
        ready: Callable[[], None],
    ) -> None:
        raise RuntimeError("a single process has no other replicas to listen to")

    async def read_packages(self, build_id: BuildId, names: Sequence[str]) -> Sequence[PackageJob]:
        wanted = set(names)
        build = await self.store.get_build(build_id)
        return [j for j in build.packages if j.name in wanted]

    async def start_many(self, starts: Sequence[SlotStart]) -> Sequence[PackageJob | Full | None]:
        results: list[PackageJob | Full | None] = []
        for start in starts:  # alone on the store: the pool's books are the whole truth
            try:
                job = await self.store.transition(
                    start.build_id,
                    start.name,
                    PackageStatus.RUNNING,
                    expect=start.expect,
                    **start.fields,
                )
            except (InvalidTransition, NotFound):
                results.append(None)
            else:
                results.append(job)
        return results

    def ending(
        self, build_id: BuildId, *, wait: bool = True
    ) -> AbstractAsyncContextManager[bool | None]:
        return _always()


@asynccontextmanager
async def _always() -> AsyncIterator[bool | None]:
    yield True
