"""The :class:`~melange2.store.base.ReplicaStore` contract: the replica registry and
named locks. :class:`~melange2.testenv.contracts.store.StoreContract` includes it; what
only a store shared by several processes does (a lock that holds across two stores on
one database) is tested beside that store (``tests/contract/test_store.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from melange2.errors import StoreError
from melange2.store.base import JobStore, Replica

__all__ = ["ReplicaStoreContract", "make_replica"]

T0 = datetime(2026, 12, 1, 15, 0, 0, 250_000, tzinfo=UTC)
_PLUS2 = timezone(timedelta(hours=2))


def make_replica(replica_id: str, *, started: datetime = T0, url: str = "") -> Replica:
    return Replica(
        id=replica_id,
        url=url or f"http://{replica_id}.test:8080",
        started_at=started,
        heartbeat_at=started,
    )


class ReplicaStoreContract:
    """Every store passes these."""

    pytestmark = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        raise NotImplementedError("override the store fixture")
        yield  # pragma: no cover

    # the registry

    async def test_replicas_register_list_oldest_first_and_replace_by_id(
        self, store: JobStore
    ) -> None:
        assert await store.list_replicas() == []
        await store.register_replica(make_replica("server-b", started=T0))
        await store.register_replica(make_replica("server-a", started=T0))
        later = (T0 + timedelta(minutes=1)).astimezone(_PLUS2)
        await store.register_replica(make_replica("server-0", started=later))
        listed = await store.list_replicas()
        assert [r.id for r in listed] == ["server-a", "server-b", "server-0"]
        assert listed[2].started_at == later and listed[2].started_at.tzinfo == UTC
        assert listed[0] == make_replica("server-a", started=T0)
        # a second registration of one id replaces it (a restart with the same id)
        moved = make_replica("server-a", started=T0, url="https://a.test:9443")
        await store.register_replica(moved)
        assert await store.get_replica("server-a") == moved
        assert len(await store.list_replicas()) == 3
        assert await store.get_replica("server-none") is None

    async def test_a_heartbeat_moves_only_its_replica_and_says_when_it_is_gone(
        self, store: JobStore
    ) -> None:
        await store.register_replica(make_replica("server-a"))
        await store.register_replica(make_replica("server-b"))
        beat = T0 + timedelta(seconds=30, microseconds=125_000)
        assert await store.heartbeat_replica("server-a", beat) is True
        a, b = await store.get_replica("server-a"), await store.get_replica("server-b")
        assert a is not None and a.heartbeat_at == beat and a.started_at == T0
        assert b is not None and b.heartbeat_at == T0
        await store.remove_replica("server-a")
        assert await store.heartbeat_replica("server-a", beat) is False
        assert await store.get_replica("server-a") is None
        await store.remove_replica("server-a")  # absent: no error
        assert [r.id for r in await store.list_replicas()] == ["server-b"]

    async def test_replicas_refuse_naive_times(self, store: JobStore) -> None:
        naive = datetime(2026, 12, 1, 15, 0)
        with pytest.raises(ValueError):
            await store.register_replica(make_replica("server-a", started=naive))
        await store.register_replica(make_replica("server-a"))
        with pytest.raises(ValueError):
            await store.heartbeat_replica("server-a", naive)

    # named locks

    async def test_a_named_lock_has_one_holder_at_a_time(self, store: JobStore) -> None:
        inside = 0
        most = 0
        order: list[int] = []

        async def hold(n: int) -> None:
            nonlocal inside, most
            async with store.hold_lock("publish:repo/x86_64"):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                order.append(n)
                inside -= 1

        await asyncio.wait_for(asyncio.gather(*(hold(n) for n in range(5))), 30)
        assert most == 1 and sorted(order) == list(range(5))

    async def test_locks_of_other_names_are_held_at_once(self, store: JobStore) -> None:
        both = asyncio.Event()
        entered = 0

        async def hold(name: str) -> None:
            nonlocal entered
            async with store.hold_lock(name):
                entered += 1
                if entered == 2:
                    both.set()
                await asyncio.wait_for(both.wait(), 10)

        await asyncio.wait_for(asyncio.gather(hold("a:x86_64"), hold("a:aarch64")), 30)

    async def test_a_lock_is_free_again_after_an_error_or_a_cancelled_wait(
        self, store: JobStore
    ) -> None:
        with pytest.raises(RuntimeError):
            async with store.hold_lock("l"):
                raise RuntimeError("inside")
        held = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with store.hold_lock("l"):
                held.set()
                await release.wait()

        task = asyncio.create_task(holder())
        await asyncio.wait_for(held.wait(), 10)

        async def waiter() -> None:
            async with store.hold_lock("l"):
                raise AssertionError("the lock was held")

        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await asyncio.wait_for(task, 10)
        async with asyncio.timeout(10), store.hold_lock("l"):
            pass

    async def test_a_closed_store_refuses_locks_and_replicas(self, store: JobStore) -> None:
        await store.aclose()
        with pytest.raises(StoreError):
            async with store.hold_lock("l"):
                pass
        with pytest.raises(StoreError):
            await store.list_replicas()
