"""The replica registry: each server process on one database registers itself (its
scheduler's lease owner id and the URL other replicas reach it at) and renews a
heartbeat; the others read it to reach the replica running a package (a log followed
through another replica is proxied to it) and ``GET /api/v1/replicas`` lists them.

A replica is *alive* while its heartbeat is younger than ``ttl`` (the lease TTL: a
replica that cannot renew for that long stops anyway, its leases expire). The heartbeat
runs every third of it; a failed one is logged and tried again at the next tick (the
store being away is what the scheduler's lease renewal reacts to, not this). A replica
that stops cleanly removes its row; one that dies leaves it, and it ages out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from melange2.errors import StoreError
from melange2.store.base import JobStore, Replica

__all__ = ["ReplicaRegistry", "ReplicaView", "advertise_url"]

_log = logging.getLogger(__name__)


def advertise_url(listen_addr: str, *, tls: bool = False) -> str:
    """The default ``--advertise-url``: ``http://host:port`` of ``--listen-addr``; a
    wildcard host (``:8080``, ``0.0.0.0``, ``::``) becomes this machine's host name."""
    host, _, port = listen_addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass(frozen=True, kw_only=True)
class ReplicaView:
    """A replica as ``GET /api/v1/replicas`` shows it."""

    replica: Replica
    alive: bool
    #: this process
    me: bool


class ReplicaRegistry:
    """This replica's row in the store and a view of the others'."""

    def __init__(
        self,
        store: JobStore,
        *,
        replica_id: str,
        url: str,
        ttl: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.id = replica_id
        self.url = url.rstrip("/")
        self.ttl = ttl
        self.now = now
        self._started = now()
        self._stop = asyncio.Event()

    def _row(self, at: datetime) -> Replica:
        return Replica(id=self.id, url=self.url, started_at=self._started, heartbeat_at=at)

    async def register(self) -> None:
        await self.store.register_replica(self._row(self.now()))

    async def run(self) -> None:
        """Renew the heartbeat every third of ``ttl`` until :meth:`stop`."""
        interval = max(0.05, self.ttl / 3)
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self._stop.wait()
                return
            except TimeoutError:
                pass
            try:
                if not await self.store.heartbeat_replica(self.id, self.now()):
                    _log.warning("replica %s was not registered any more: registering", self.id)
                    await self.register()
            except StoreError as exc:
                _log.warning("replica %s: heartbeat failed (tried again): %s", self.id, exc)

    async def stop(self) -> None:
        """End :meth:`run` and remove this replica's row (best effort)."""
        self._stop.set()
        try:
            await self.store.remove_replica(self.id)
        except StoreError as exc:
            _log.warning("replica %s: could not remove its row (it ages out): %s", self.id, exc)

    def alive(self, replica: Replica) -> bool:
        return self.now() - replica.heartbeat_at < timedelta(seconds=self.ttl)

    async def list(self) -> Sequence[ReplicaView]:
        return [
            ReplicaView(replica=r, alive=self.alive(r), me=r.id == self.id)
            for r in await self.store.list_replicas()
        ]

    async def peer(self, owner: str) -> Replica | None:
        """The live replica ``owner`` (a package's ``lease_owner``) if it is another
        one and alive; ``None`` otherwise (this one, gone, or its heartbeat too old)."""
        if not owner or owner == self.id:
            return None
        found = await self.store.get_replica(owner)
        if found is None or not self.alive(found) or not found.url:
            return None
        return found
