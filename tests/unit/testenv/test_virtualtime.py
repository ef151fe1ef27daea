"""The virtual-time event loop: timers jump instead of waiting, and what the clock
cannot account for (threads, a loop with nothing left to wake it) is an error."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from melange2.testenv.virtualtime import EPOCH, SimulationError, VirtualClock, VirtualTimeLoop

T = TypeVar("T")


def simulate(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def test_sleeps_jump_to_the_next_timer_in_order() -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        woke.append((name, asyncio.get_running_loop().time()))

    async def main() -> float:
        await asyncio.gather(sleeper("day", 86_400), sleeper("hour", 3600), sleeper("now", 0))
        return asyncio.get_running_loop().time()

    assert simulate(main()) == 86_400.0  # a virtual day (a real one would time the test out)
    assert woke == [("now", 0.0), ("hour", 3600.0), ("day", 86_400.0)]


def test_timeouts_and_call_later_follow_the_virtual_clock() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        loop.call_later(30, lambda: fired.append(loop.time()))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 90)
        return loop.time(), fired

    assert simulate(main()) == (90.0, [30.0])


def test_ready_work_runs_without_moving_the_clock() -> None:
    async def main() -> float:
        for _ in range(1000):
            await asyncio.sleep(0)
        queue: asyncio.Queue[int] = asyncio.Queue()
        queue.put_nowait(1)
        await queue.get()
        return asyncio.get_running_loop().time()

    assert simulate(main()) == 0.0


def test_a_thread_would_escape_the_clock_and_is_refused() -> None:
    async def main() -> None:
        await asyncio.to_thread(sum, [1, 2])

    with pytest.raises(SimulationError, match="sum would run on a thread"):
        simulate(main())


def test_waiting_on_what_can_never_happen_is_a_deadlock_not_a_hang() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(SimulationError, match="deadlock"):
        simulate(main())


def test_the_clock_reads_loop_time_as_wall_time_from_the_epoch() -> None:
    clock = VirtualClock()

    async def main() -> tuple[float, object]:
        await asyncio.sleep(90.5)
        return clock.monotonic(), clock.now()

    assert simulate(main()) == (90.5, EPOCH + timedelta(seconds=90.5))
