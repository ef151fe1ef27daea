"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def all_of(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await every one concurrently, results in order. When one fails the others are
    cancelled and its exception is raised as itself (a :class:`asyncio.TaskGroup`
    would wrap it in an :class:`ExceptionGroup`, which callers mapping errors by type
    would not recognise)."""

    async def wrap(aw: Awaitable[T]) -> T:
        return await aw

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(wrap(aw)) for aw in awaitables]
    except* Exception as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]
