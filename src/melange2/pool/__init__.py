"""The BuildKit backend pool: routing by architecture and labels, least-loaded choice,
per-backend job limits, and a circuit breaker that counts only backend faults."""

from __future__ import annotations

from melange2.pool.breaker import BreakerState, CircuitBreaker
from melange2.pool.config import BackendSpec, PoolConfig, load_pool_config
from melange2.pool.pool import BackendPool, BackendSlot, NoBackend, PoolBackend

__all__ = [
    "BackendPool",
    "BackendSlot",
    "BackendSpec",
    "BreakerState",
    "CircuitBreaker",
    "NoBackend",
    "PoolBackend",
    "PoolConfig",
    "load_pool_config",
]
