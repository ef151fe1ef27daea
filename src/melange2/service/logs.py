"""Live build logs: a size-capped writer, and the wake-ups followers wait on.

A package's log is written to a local file while it builds (in local storage that file
is its final place; with a bucket it is uploaded when the package ends). Readers that
follow it (``logs?follow=true``) wait on :class:`LogHub` instead of polling: every
write and every end of a package wakes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from typing import BinaryIO

from melange2.service.secrets import SecretMask


class LogHub:
    """Per-log wake-ups. ``event(key)`` before reading, then wait on it: a write that
    happens between the read and the wait is not missed. An event lives only as long as
    a follower holds it (a follower of a log that never changes again leaves nothing
    behind)."""

    def __init__(self) -> None:
        self._events: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    def event(self, key: str) -> asyncio.Event:
        ev = self._events.get(key)
        if ev is None:
            ev = self._events[key] = asyncio.Event()
        return ev

    def notify(self, key: str) -> None:
        ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    @staticmethod
    async def wait(ev: asyncio.Event, seconds: float) -> None:
        """Until ``ev`` is set or ``seconds`` pass."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await ev.wait()


def cut_marker(limit: int) -> bytes:
    return (
        f"\n[melange2: log cut here: it reached the limit of {limit} bytes "
        "(--max-log-bytes); later output of this attempt was dropped]\n"
    ).encode()


class CappedLog:
    """A binary log file that stops growing at ``limit`` bytes, with a marker where it
    was cut. :meth:`write_final` (the error summary) is written even past the cap.
    ``on_write`` runs after each write (it wakes followers). With ``mask`` every byte
    written goes through it first (the build's secrets become ``***``)."""

    def __init__(
        self,
        out: BinaryIO,
        limit: int,
        on_write: Callable[[], None] | None = None,
        *,
        mask: SecretMask | None = None,
    ) -> None:
        self.out = out
        self.limit = limit
        self.written = 0
        self.dropped = 0
        self.reported = 0  #: dropped bytes already told by write_final
        self.on_write = on_write
        self.mask = mask if mask else None

    def write(self, data: bytes) -> int:
        size = len(data)
        if self.mask is not None:
            data = self.mask.feed(data)
        self._write(data)
        return size

    def _write(self, data: bytes) -> None:
        room = self.limit - self.written
        if room <= 0:
            self.dropped += len(data)
            return
        part = data[:room]
        self.out.write(part)
        self.written += len(part)
        if len(part) < len(data):
            self.dropped += len(data) - len(part)
            self.out.write(cut_marker(self.limit))
        self._wrote()

    def write_final(self, data: bytes) -> None:
        if self.mask is not None:
            self._write(self.mask.drain())
            data = self.mask.mask(data)
        if self.dropped > self.reported:
            self.out.write(f"[melange2: {self.dropped} bytes of output dropped]\n".encode())
            self.reported = self.dropped
        self.out.write(data)
        self._wrote()

    def flush(self) -> None:
        self.out.flush()

    def _wrote(self) -> None:
        self.out.flush()
        if self.on_write is not None:
            self.on_write()
