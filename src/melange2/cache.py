"""In-memory caches bounded by size, for everything the server keeps between requests.

A cache that grows with what clients send (parsed configs, indexes of the repositories
they name, environment images, downloaded keys) is a way to fill the server's memory;
each of those is a :class:`SizedCache`: least recently used entries go first once the
entries' estimated sizes add up to ``max_bytes`` (cachetools' ``LRUCache`` with a size
function), and an entry larger than the whole cache is simply not kept.

Thread-safe: parsing and resolution run in worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["SizedCache"]


class SizedCache(Generic[K, V]):
    """``get``/``put`` over an LRU map whose entries weigh ``size(value)`` bytes."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._entries: LRUCache[K, V] = LRUCache(maxsize=max_bytes, getsizeof=self._weigh)
        self._lock = threading.Lock()

    def _weigh(self, value: V) -> int:
        return max(1, self._size(value))

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` (evicting the least recently used); not kept if too large."""
        with self._lock:
            if self._weigh(value) > self.max_bytes:
                self._entries.pop(key, None)
                return
            self._entries[key] = value

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def bytes(self) -> int:
        """The estimated size of what is kept now."""
        with self._lock:
            return int(self._entries.currsize)
