"""A circuit breaker per backend. Closed: jobs flow; ``failure_threshold`` consecutive
backend faults open it. Open: no jobs until ``recovery_timeout`` passes, then half-open.
Half-open: exactly one trial job; its success closes the circuit, its failure opens it
for another ``recovery_timeout``. Only backend faults are recorded here, never a
package's own failure."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(kw_only=True)
class CircuitBreaker:
    failure_threshold: int = 3
    recovery_timeout: float = 30.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    last_failure: datetime | None = None
    _opened_at: float | None = None
    _trial_in_flight: bool = False
    #: (old, new) state changes, for metrics
    on_change: Callable[[BreakerState, BreakerState], None] | None = field(default=None)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self._opened_at >= self.recovery_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def can_accept(self) -> bool:
        """Whether a job may start now (half-open: only while no trial runs)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return not self._trial_in_flight
        return False

    def started(self) -> None:
        """A job starts; in half-open it is the one trial."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_in_flight = True

    def record_success(self) -> None:
        old = self.state
        self.failures = 0
        self._opened_at = None
        self._trial_in_flight = False
        self._changed(old)

    def record_failure(self) -> None:
        """A backend fault: count it; open (or re-open) the circuit when due."""
        old = self.state
        self.failures += 1
        self.last_failure = datetime.now(UTC)
        if old is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self._opened_at = self.clock()
        self._trial_in_flight = False
        self._changed(old)

    def finished_without_verdict(self) -> None:
        """A job ended by its own failure or a cancel: it says nothing about the backend,
        but a half-open trial slot is free again."""
        self._trial_in_flight = False

    def _changed(self, old: BreakerState) -> None:
        new = self.state
        if new is not old and self.on_change is not None:
            self.on_change(old, new)
