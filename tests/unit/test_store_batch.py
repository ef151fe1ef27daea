"""The group commit of package moves (:class:`~melange2.store.batch.MoveBatcher`): moves
made together are one store transaction, each caller gets its own answer, and one bad
move fails only its caller. On the memory store, counted by a subclass (a fake, unit
test only)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

import pytest

from melange2.jobs import PackageJob, PackageStatus
from melange2.store.base import Move
from melange2.store.batch import MoveBatcher
from melange2.store.memory import MemoryStore
from melange2.testenv.contracts.store import make_build

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingStore(MemoryStore):
    """The memory store, keeping the size of every ``apply`` it was asked."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.writing = asyncio.Event()

    async def apply(self, moves: Sequence[Move]) -> Sequence[PackageJob | None]:
        self.batches.append(len(moves))
        self.writing.set()
        await asyncio.sleep(0)  # a store answers later: moves made meanwhile queue
        return await super().apply(moves)


def _run(name: str, **fields: object) -> Move:
    return Move(
        build_id=make_build().id,
        name=name,
        to=PackageStatus.RUNNING,
        expect=frozenset({PackageStatus.PENDING}),
        fields=fields,
    )


async def test_moves_made_together_are_one_transaction_each_answered() -> None:
    store = CountingStore()
    await store.create_build(make_build(names=("a", "b", "c", "d")))
    moves = MoveBatcher(store)

    first = await moves.move(_run("a"))  # alone: waits for nothing
    answers = await asyncio.gather(
        moves.move(_run("b")), moves.move(_run("c")), moves.move(_run("a")), moves.move(_run("d"))
    )

    assert first is not None and first.status is PackageStatus.RUNNING
    assert [a.name if a is not None else None for a in answers] == ["b", "c", None, "d"]
    assert store.batches == [1, 4]


async def test_moves_queued_while_a_batch_is_written_go_in_the_next() -> None:
    store = CountingStore()
    await store.create_build(make_build(names=("a", "b", "c")))
    moves = MoveBatcher(store)

    one = asyncio.ensure_future(moves.move(_run("a")))
    await store.writing.wait()  # the first batch is being written
    rest = await moves.many([_run("b"), _run("c")])

    assert (await one) is not None
    assert [j.name for j in rest if isinstance(j, PackageJob)] == ["b", "c"]
    assert store.batches == [1, 2]


async def test_a_bad_move_fails_its_caller_only() -> None:
    store = CountingStore()
    build = make_build(names=("a", "b", "c"))
    await store.create_build(build)
    moves = MoveBatcher(store)

    answers = await moves.many(
        [_run("a"), _run("b", started_at=datetime(2025, 1, 1)), _run("c")]  # naive: refused
    )

    assert isinstance(answers[1], ValueError)
    assert [a.name for a in answers if isinstance(a, PackageJob)] == ["a", "c"]
    # the batch failed whole, then each move went alone
    assert store.batches == [3, 1, 1, 1]
    got = {j.name: j.status for j in (await store.get_build(build.id)).packages}
    assert got == {"a": "running", "b": "pending", "c": "running"}


async def test_a_cancelled_caller_does_not_take_its_move_back() -> None:
    store = CountingStore()
    build = make_build(names=("a",))
    await store.create_build(build)
    moves = MoveBatcher(store)

    caller = asyncio.ensure_future(moves.move(_run("a")))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(5):
        await asyncio.sleep(0)

    assert (await store.get_build(build.id)).packages[0].status is PackageStatus.RUNNING
