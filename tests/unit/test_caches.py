"""Every cache the server keeps between requests is bounded by size, and what follows
logs or times the queue leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from melange2.cache import SizedCache
from melange2.ids import BuildId
from melange2.jobs import PackageStatus
from melange2.repo.repository import RECORD_BYTES, IndexCache, LoadedIndex
from melange2.scheduler.loop import SchedulerEvent
from melange2.service.logs import LogHub
from melange2.service.metrics import Metrics
from melange2.service.submit import Submitter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_sized_cache_evicts_the_least_recently_used_by_size() -> None:
    cache: SizedCache[str, str] = SizedCache(100, len)
    cache.put("a", "x" * 40)
    cache.put("b", "y" * 40)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", "z" * 40)  # over 100: b goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    assert cache.bytes <= 100
    cache.put("huge", "h" * 101)  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 2


def test_the_index_cache_is_bounded_by_records() -> None:
    cache = IndexCache(max_bytes=10 * RECORD_BYTES)

    class _Index:  # only its records are weighed
        def __init__(self, n: int) -> None:
            self.records = tuple(range(n))

    for i in range(5):
        cache.put(("repo", i), cast(LoadedIndex, _Index(4)))
    kept = [i for i in range(5) if cache.get(("repo", i)) is not None]
    assert kept == [3, 4]  # two of four records each fit in ten


def test_the_parse_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    submitter = Submitter(
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        parse_cache_bytes=1024 * 1024,
    )
    texts = [f"package: {{name: p{i}, version: 1}}\n# {'x' * 10_000}\n" for i in range(200)]
    parsed = submitter._parse(
        [(f"configs[{i}]", t) for i, t in enumerate(texts)],
        "x86_64",
        tmp_path / "no-pipelines",
        cast(Any, None),
        "",
    )
    assert len(parsed) == 200
    assert submitter._parsed.bytes <= 1024 * 1024
    assert len(submitter._parsed) < 10  # ~120 kB each: a handful fit


async def _follow_once(hub: LogHub, key: str) -> None:
    ev = hub.event(key)  # a follower of a log nobody writes any more
    await hub.wait(ev, 0)


async def test_log_followers_leave_no_event_behind() -> None:
    hub = LogHub()
    for n in range(1000):
        await _follow_once(hub, f"bld-x/p{n}")
    await asyncio.sleep(0.01)  # the loop drops its last timer handle
    gc.collect()
    assert len(hub._events) == 0


def test_queue_wait_timers_are_dropped_for_packages_that_never_start() -> None:
    metrics = Metrics()
    for n in range(100):
        for kind, status in (("ready", PackageStatus.PENDING), ("finished", PackageStatus.FAILED)):
            metrics.scheduler_event(
                SchedulerEvent(
                    kind=kind,  # type: ignore[arg-type]
                    build_id=BuildId("bld-1"),
                    name=f"p{n}",
                    at=datetime.now(UTC).timestamp(),
                    status=status,
                )
            )
    assert metrics._ready_at == {}
