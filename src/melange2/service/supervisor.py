"""The server's side tasks (the scheduler's loop, the backends' health probes), watched.

A background task that dies silently makes a server that lies: ``/healthz`` says ok and
submissions are accepted while nothing is dispatched any more. Every side task runs
under one :class:`Supervisor`; the first that ends while the server is not stopping
(with an exception or not) marks the server failed with the reason, which ``/healthz``
answers (503) and submissions are refused with, and ``on_failure`` is called once:
``melange-server`` then shuts down and exits non-zero, for its service manager to
restart it (the store resumes every build).

Usage (an app's lifespan; the same with an ``AsyncExitStack`` or a ``TaskGroup``
around it)::

    supervisor = Supervisor(on_failure=request_shutdown)
    supervisor.start("scheduler", scheduler.run())
    supervisor.start("health probes", prober.run())
    try:
        yield
    finally:
        await supervisor.aclose(prober.stop, scheduler.shutdown)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

_log = logging.getLogger(__name__)

__all__ = ["Supervisor"]


class Supervisor:
    def __init__(self, *, on_failure: Callable[[str], None] | None = None) -> None:
        self.on_failure = on_failure
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._failure: str | None = None
        self._stopping = False

    @property
    def failure(self) -> str | None:
        """Why the server is failed (a side task ended), or ``None`` while all run."""
        return self._failure

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as the side task ``name``; it should run until stopped."""
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._ended(name, t))

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self._stopping or self._failure is not None:
            return
        if task.cancelled():
            reason = f"{name} was cancelled"
        elif (exc := task.exception()) is not None:
            reason = f"{name} failed: {_describe(exc)}"
            _log.critical("%s", reason, exc_info=exc)
        else:
            reason = f"{name} stopped"
        self._failure = reason
        _log.critical("the server cannot work any more: %s; shutting down", reason)
        if self.on_failure is not None:
            self.on_failure(reason)

    async def aclose(
        self, *stops: Callable[[], Awaitable[object] | object], grace: float = 10.0
    ) -> None:
        """Stop: call each of ``stops`` in order (awaiting those that return an
        awaitable), give the tasks ``grace`` seconds to end, then cancel the rest. A task
        ending now is no failure."""
        self._stopping = True
        for stop in stops:
            result = stop()
            if inspect.isawaitable(result):
                await result
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in self._tasks.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                _log.warning("%s ended with %s", task.get_name(), _describe(task.exception()))


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if exc is not None else "?"
