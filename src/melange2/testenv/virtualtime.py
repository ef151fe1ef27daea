"""An asyncio event loop on a virtual clock, for simulations and tests of timing.

:class:`VirtualTimeLoop` is the standard selector loop with two changes:

* ``loop.time()`` is a virtual clock, starting at 0.0 (seconds);
* when nothing is ready to run, the loop does not block until the next timer: it
  polls the selector without waiting and, if no I/O is ready either, moves the clock
  forward to that timer. So ``await asyncio.sleep(3600)`` returns at once in real
  time, an hour later in loop time, and everything built on the loop's timers
  (``call_later``, ``wait_for`` timeouts, ``asyncio.timeout``) follows.

What the clock does not cover is refused rather than silently wrong: the simulated
code must not wait on threads or real I/O while the clock jumps, so
``run_in_executor`` (``asyncio.to_thread``, ``getaddrinfo``) raises
:class:`SimulationError`, and a loop with nothing ready, no timer and no I/O (every
task waits on something that can never happen) raises :class:`SimulationError` instead
of hanging. Code that reads wall time (``datetime.now``) needs its own seam:
:class:`VirtualClock` gives a loop's time as an aware UTC ``datetime`` from a fixed
epoch, for :class:`melange2.scheduler.loop.Clock`.

Example::

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(asyncio.sleep(86_400))  # a virtual day, in microseconds of real time
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

__all__ = ["EPOCH", "SimulationError", "VirtualClock", "VirtualTimeLoop"]

_T = TypeVar("_T")

#: what loop time 0.0 reads as in :meth:`VirtualClock.now`
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class SimulationError(RuntimeError):
    """The simulated code did something the virtual clock cannot account for."""


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0


class _JumpingSelector(selectors.DefaultSelector):
    """Never waits: ready I/O is returned at once, else the clock moves by ``timeout``."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise SimulationError(
                "deadlock: nothing to run, no timer and no I/O ready on the virtual clock"
            )
        self._clock.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and jumps to the next timer."""

    def __init__(self) -> None:
        self._virtual = _Clock()
        super().__init__(_JumpingSelector(self._virtual))

    def time(self) -> float:
        return self._virtual.now

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        target: object = func
        if isinstance(func, functools.partial):  # asyncio.to_thread: partial(ctx.run, f)
            target = func.args[0] if func.args else func.func
        raise SimulationError(
            f"{getattr(target, '__qualname__', target)!s} would run on a thread while the "
            "virtual clock jumps; keep simulated code on the loop (e.g. the memory store)"
        )


class VirtualClock:
    """A :class:`melange2.scheduler.loop.Clock` reading the running loop's time: with a
    :class:`VirtualTimeLoop`, ``now()`` is :data:`EPOCH` plus the virtual seconds."""

    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.monotonic())

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()
