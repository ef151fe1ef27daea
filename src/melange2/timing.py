"""Where a package's time went: named phases, measured with a monotonic clock.

Example::

    timer = PhaseTimer()
    with timer.phase("plan"):
        ...
    timer.summary()  # 'plan 0.120 s'
"""

from __future__ import annotations

import contextlib
import re
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


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``time.ParseDuration``, as melange reads a config's
    ``timeout``): ``90s``, ``30m``, ``1h30m``, ``1.5h``, ``0``. Raises ``ValueError``."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 30m, 1h30m)")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 30m, 1h30m)")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total
