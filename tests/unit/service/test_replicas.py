"""The replica registry over the memory store: registration, heartbeats, who is alive,
and which replica a follower is passed to; the default advertised URL."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta

import pytest

from melange2.service.replicas import ReplicaRegistry, advertise_url
from melange2.store.base import Replica
from melange2.store.memory import MemoryStore

pytestmark = pytest.mark.anyio
T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


async def test_a_peer_is_another_live_replica_with_a_url() -> None:
    store, clock = MemoryStore(), Clock()
    me = ReplicaRegistry(store, replica_id="server-me", url="http://me:8080/", ttl=15, now=clock)
    await me.register()
    assert me.url == "http://me:8080"
    other = Replica(id="server-b", url="http://b:8080", started_at=T0, heartbeat_at=T0)
    await store.register_replica(other)
    assert await me.peer("server-b") == other
    assert await me.peer("server-me") is None  # this one: served here
    assert await me.peer("") is None and await me.peer("server-gone") is None
    clock.at = T0 + timedelta(seconds=15)  # its heartbeat is a lease TTL old: dead
    assert await me.peer("server-b") is None
    views = {v.replica.id: v for v in await me.list()}
    assert views["server-b"].alive is False and views["server-b"].me is False
    assert views["server-me"].me is True and views["server-me"].alive is False
    await store.heartbeat_replica("server-b", clock.at)
    assert await me.peer("server-b") is not None


async def test_the_heartbeat_renews_re_registers_and_stop_removes_the_row() -> None:
    store, clock = MemoryStore(), Clock()
    me = ReplicaRegistry(store, replica_id="server-me", url="http://me:8080", ttl=0.3, now=clock)
    await me.register()
    task = asyncio.create_task(me.run())
    clock.at = T0 + timedelta(seconds=5)
    async with asyncio.timeout(10):
        while store.replicas["server-me"].heartbeat_at != clock.at:  # noqa: ASYNC110 (a store)
            await asyncio.sleep(0.02)
    await store.remove_replica("server-me")  # someone removed it: registered again
    async with asyncio.timeout(10):
        while "server-me" not in store.replicas:  # noqa: ASYNC110 (the store has no event)
            await asyncio.sleep(0.02)
    assert store.replicas["server-me"].started_at == T0  # the same start
    await me.stop()
    await asyncio.wait_for(task, 10)
    assert "server-me" not in store.replicas


def test_the_default_advertised_url_comes_from_the_listen_address() -> None:
    assert advertise_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert advertise_url(":8080") == f"http://{socket.gethostname()}:8080"
    assert advertise_url("0.0.0.0:9000") == f"http://{socket.gethostname()}:9000"
    assert advertise_url("[::1]:8080") == "http://[::1]:8080"
    assert advertise_url("farm.example.org:443", tls=True) == "https://farm.example.org:443"
