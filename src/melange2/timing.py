"""Where a package's time went: named phases, measured with a monotonic clock.

Example::

    timer = PhaseTimer()
    with timer.phase("plan"):
        ...
    timer.summary()  # 'plan 0.120 s'
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from melange2 import tracing


class PhaseTimer:
    """Seconds per phase, in the order phases first ran (a phase run twice adds up).
    Each phase is also a span when tracing is on (:mod:`melange2.tracing`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with tracing.span(name, {"melange2.phase": name}):
                yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        return ", ".join(f"{name} {s:.3f} s" for name, s in self.seconds.items())
