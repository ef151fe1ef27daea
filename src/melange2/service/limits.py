"""Time limits of a package's attempt: wall clock, and silence (as Hydra's maxSilentTime).

* **Wall clock**: the build's ``timeout_s``, else its config's ``package.timeout``
  (melange's per-config limit), else the server's ``--package-timeout``; never more
  than ``--package-timeout`` (a build may ask for less, not for more).
* **Silence**: ``--max-silent`` seconds without a step starting, ending or writing
  output, once the solve has begun (planning, which writes nothing while it composes
  an environment, is under the wall clock only).

:class:`Watchdog` watches both: it is a step sink (each event is a sign of life) and
:meth:`Watchdog.guard` wraps the attempt in one ``asyncio.timeout`` rescheduled to the
nearer deadline. Over either, the attempt's task is cancelled (which cancels the
``Solve`` call, so the daemon stops the build and kills its processes) and
:class:`~melange2.errors.TimedOut` says ``timed out after … in step '…'``: a package
failure, which never counts against the backend's circuit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from melange2.errors import TimedOut


def wall_limit(cap: float, asked: float | None) -> tuple[float, str]:
    """The wall-clock limit of a build's packages before their configs are read, and
    what set it: ``(seconds, "timeout_s")`` (the build's spec asked, within the cap) or
    ``(cap, "--package-timeout")``; 0: none."""
    if asked is not None and asked > 0 and (not cap or asked <= cap):
        return float(asked), "timeout_s"
    return cap, "--package-timeout"


def _seconds(value: float) -> str:
    return f"{value:g} s"


class Watchdog:
    """The time limits of one attempt (see the module's docstring)."""

    def __init__(self, *, limit: float, source: str, silent: float = 0.0) -> None:
        self._loop = asyncio.get_running_loop()
        self.began = self._loop.time()
        self.limit = limit  #: seconds, 0: none
        self.source = source  #: what set ``limit``
        self.silent = silent  #: seconds, 0: none
        self._armed = False  # silence is watched once the solve begins
        self._last = self.began
        self._running: list[str] = []
        self._timeout: asyncio.Timeout | None = None

    # -- what the runner tells ------------------------------------------------------------

    def tighten(self, seconds: float | None, source: str) -> None:
        """A lower limit (a config's ``package.timeout``), unless the build set its own."""
        if not seconds or self.source == "timeout_s":
            return
        if not self.limit or seconds < self.limit:
            self.limit, self.source = seconds, source
            self._reschedule()

    def watch_silence(self) -> None:
        """The solve begins: from now on, silence counts."""
        self._armed = True
        self._alive()

    # -- StepSink: every event is a sign of life --------------------------------------------

    def started(self, step: str) -> None:
        self._running.append(step)
        self._alive()

    def output(self, step: str, data: bytes) -> None:
        self._alive()

    def finished(self, step: str, *, seconds: float, cached: bool, error: str) -> None:
        with contextlib.suppress(ValueError):
            self._running.remove(step)
        self._alive()

    # -- the deadline -----------------------------------------------------------------------

    def _deadlines(self) -> dict[str, float]:
        out = {}
        if self.limit:
            out["limit"] = self.began + self.limit
        if self._armed and self.silent:
            out["silent"] = self._last + self.silent
        return out

    def _deadline(self) -> float | None:
        deadlines = self._deadlines()
        return min(deadlines.values()) if deadlines else None

    def _alive(self) -> None:
        self._last = self._loop.time()
        if self.silent:
            self._reschedule()

    def _reschedule(self) -> None:
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(self._deadline())

    def reason(self) -> str:
        """Why the attempt was stopped: ``timed out after … in step '…'``."""
        deadlines = self._deadlines()
        which = min(deadlines, key=lambda k: deadlines[k]) if deadlines else "limit"
        if which == "silent":
            message = f"timed out after {_seconds(self.silent)} without output (--max-silent)"
        else:
            message = f"timed out after {_seconds(self.limit)} ({self.source})"
        if self._running:
            message += f" in step {self._running[-1]!r}"
        elif not self._armed:
            message += " before its build began (planning)"
        return message

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run the attempt under the limits; past one, raise :class:`TimedOut`."""
        try:
            async with asyncio.timeout_at(self._deadline()) as timeout:
                self._timeout = timeout
                yield
        except TimeoutError as exc:
            if self._timeout is not None and self._timeout.expired():
                raise TimedOut(self.reason()) from exc
            raise
        finally:
            self._timeout = None
