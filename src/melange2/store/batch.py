"""Group commit of package moves: the guarded moves that callers make at about the same
time go to the store together, in one :meth:`~melange2.store.base.JobStore.apply`.

The store stays the truth: each caller still awaits its own move's answer (the package
as it moved, or ``None`` where the compare-and-set refused it) before it changes
anything in memory. While one batch is being written, the moves that arrive queue, and
go as the next batch when it is done: a lone move waits for nothing (no timer), and a
burst (every package of a dispatch round finishing at once) costs one transaction, not
one each.

A batch the store fails as a whole (it is down, or refuses one move's value) is made
again one move at a time, so each caller gets its own move's error and the others still
land::

    moves = MoveBatcher(store)
    job = await moves.move(Move(build_id=b, name="x", to=PackageStatus.SUCCESS))
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

from melange2 import tracing
from melange2.jobs import PackageJob
from melange2.store.base import JobStore, Move

__all__ = ["MoveBatcher"]

#: what one queued move is answered with
_Answer = asyncio.Future[PackageJob | None]


class MoveBatcher:
    """Queues moves and writes them in batches, one store transaction per batch."""

    def __init__(self, store: JobStore, *, max_batch: int = 1000) -> None:
        self.store = store
        #: the most moves in one transaction (a huge burst becomes several)
        self.max_batch = max_batch
        self._queue: list[tuple[Move, _Answer]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def move(self, move: Move) -> PackageJob | None:
        """Make ``move``: the package as it moved, or ``None`` where it did not (see
        :meth:`~melange2.store.base.JobStore.apply`). Raises what the store raised for
        it. Cancelling the caller does not take the move back once queued."""
        with tracing.child_span("store.move", {"melange2.package": move.name}):
            answer = self._enqueue(move)
            return await asyncio.shield(answer)

    async def many(self, moves: Sequence[Move]) -> list[PackageJob | BaseException | None]:
        """Make ``moves`` (in one batch where they fit): per move, its answer, or the
        exception the store raised for it."""
        answers = [self._enqueue(m) for m in moves]
        if answers:
            await asyncio.wait(answers)
        return [_outcome(a) for a in answers]

    def _enqueue(self, move: Move) -> _Answer:
        answer: _Answer = asyncio.get_running_loop().create_future()
        self._queue.append((move, answer))
        if self._drainer is None:
            # a context of its own: a batch is nobody's work in particular (each caller's
            # trace has its own ``store.move`` span), and it must not carry the first
            # caller's context into the others' writes
            self._drainer = asyncio.create_task(
                self._drain(), name="store moves", context=contextvars.Context()
            )
        return answer

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._write(batch)
        finally:
            self._drainer = None
            for _move, answer in self._queue:  # cancelled with moves queued
                answer.cancel("the store writer stopped")
            self._queue.clear()

    async def _write(self, batch: list[tuple[Move, _Answer]]) -> None:
        try:
            results = await self.store.apply([m for m, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            for one in batch:  # each caller gets its own move's error
                await self._write([one])
            return
        except BaseException:
            for _move, answer in batch:
                answer.cancel("the store writer stopped")
            raise
        for (_move, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)


def _settle(answer: _Answer, exc: BaseException) -> None:
    if not answer.done():
        answer.set_exception(exc)


def _outcome(answer: _Answer) -> PackageJob | BaseException | None:
    if answer.cancelled():
        return asyncio.CancelledError("the store writer stopped")
    return answer.exception() or answer.result()
