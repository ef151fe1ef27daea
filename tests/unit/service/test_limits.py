"""Time limits of an attempt: the wall clock (timeout_s, package.timeout,
--package-timeout) and silence (--max-silent), on the real event loop with short limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from melange2.errors import PackageFailed, RecipeError, TimedOut
from melange2.recipe import load_config
from melange2.service.limits import Watchdog, wall_limit
from melange2.timing import parse_duration


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("1.5h", 5400), ("0", 0), ("250ms", 0.25)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "5 minutes", "h", "1hh"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_package_timeout_is_read_and_changes_no_digest_input(tmp_path: Path) -> None:
    base = "package:\n  name: t\n  version: 1.0.0\n"
    path = tmp_path / "t.yaml"
    path.write_text(base + "  timeout: 1h30m\n")
    timed = load_config(path, arch="x86_64")
    assert timed.package.timeout == 5400
    path.write_text(base)
    plain = load_config(path, arch="x86_64")
    assert plain.package.timeout is None
    assert repr(timed) == repr(plain)  # the input digest hashes repr(config)
    path.write_text(base + "  timeout: soon\n")
    with pytest.raises(RecipeError, match="timeout"):
        load_config(path, arch="x86_64")


def test_wall_limit_takes_the_builds_within_the_servers() -> None:
    assert wall_limit(100, None) == (100, "--package-timeout")
    assert wall_limit(100, 5) == (5, "timeout_s")
    assert wall_limit(100, 500) == (100, "--package-timeout")
    assert wall_limit(0, 500) == (500, "timeout_s")
    assert wall_limit(0, None) == (0, "--package-timeout")


@pytest.mark.anyio
async def test_wall_clock_limit_names_the_running_step() -> None:
    watch = Watchdog(limit=0.3, source="timeout_s")
    began = time.monotonic()
    with pytest.raises(TimedOut) as caught:
        async with watch.guard():
            watch.watch_silence()
            watch.started("sleep forever")
            await asyncio.sleep(30)
    assert time.monotonic() - began < 5
    assert str(caught.value) == "timed out after 0.3 s (timeout_s) in step 'sleep forever'"
    assert isinstance(caught.value, PackageFailed)


@pytest.mark.anyio
async def test_silence_limit_is_pushed_back_by_output() -> None:
    watch = Watchdog(limit=0, source="--package-timeout", silent=0.4)
    began = time.monotonic()
    with pytest.raises(TimedOut, match=r"after 0.4 s without output \(--max-silent\)"):
        async with watch.guard():
            watch.watch_silence()
            watch.started("chatty then quiet")
            for _ in range(6):  # 0.6 s of output every 0.1 s: no timeout yet
                await asyncio.sleep(0.1)
                watch.output("chatty then quiet", b"x")
            await asyncio.sleep(30)
    assert time.monotonic() - began >= 0.9


@pytest.mark.anyio
async def test_silence_is_not_watched_while_planning() -> None:
    watch = Watchdog(limit=0, source="--package-timeout", silent=0.1)
    async with watch.guard():
        await asyncio.sleep(0.3)  # planning: silent, yet no timeout


@pytest.mark.anyio
async def test_a_configs_timeout_tightens_unless_the_build_set_one() -> None:
    watch = Watchdog(limit=100, source="--package-timeout")
    with pytest.raises(TimedOut, match=r"after 0.2 s \(package.timeout\) before its build"):
        async with watch.guard():
            watch.tighten(0.2, "package.timeout")
            await asyncio.sleep(30)
    own = Watchdog(limit=50, source="timeout_s")
    own.tighten(0.2, "package.timeout")
    assert (own.limit, own.source) == (50, "timeout_s")


@pytest.mark.anyio
async def test_an_inner_timeout_error_is_not_a_time_limit() -> None:
    watch = Watchdog(limit=100, source="--package-timeout")
    with pytest.raises(TimeoutError) as caught:
        async with watch.guard():
            raise TimeoutError("a fetch timed out")
    assert not isinstance(caught.value, TimedOut)
