"""The log cap and wake-ups, and the storage layout's key checks."""

from __future__ import annotations

import asyncio
import io

import pytest

from melange2.service.layout import Layout, check_name, log_name
from melange2.service.logs import CappedLog, LogHub, cut_marker

pytestmark = pytest.mark.anyio


def test_log_under_the_cap_is_written_whole() -> None:
    out = io.BytesIO()
    woken: list[int] = []
    log = CappedLog(out, 100, on_write=lambda: woken.append(1))
    log.write(b"hello\n")
    log.write(b"world\n")
    assert out.getvalue() == b"hello\nworld\n"
    assert len(woken) == 2


def test_log_over_the_cap_is_cut_with_a_marker_and_the_final_line_kept() -> None:
    out = io.BytesIO()
    log = CappedLog(out, 10)
    log.write(b"0123456789abcdef")
    log.write(b"more output that is lost")
    log.write_final(b"error: step failed\n")
    data = out.getvalue()
    assert data.startswith(b"0123456789" + cut_marker(10))
    assert b"abcdef" not in data and b"is lost" not in data
    assert b"[melange2: 30 bytes of output dropped]" in data
    assert data.endswith(b"error: step failed\n")


def test_a_write_exactly_at_the_cap_leaves_no_marker() -> None:
    out = io.BytesIO()
    log = CappedLog(out, 4)
    log.write(b"abcd")
    assert out.getvalue() == b"abcd"
    log.write(b"e")
    assert out.getvalue() == b"abcd"  # nothing more, and the marker was written once before
    assert log.dropped == 1


async def test_hub_wakes_a_follower_on_write_and_never_misses_one() -> None:
    hub = LogHub()
    ev = hub.event("b/p")
    hub.notify("b/p")  # a write between taking the event and waiting
    await asyncio.wait_for(hub.wait(ev, 5.0), 1.0)
    assert ev.is_set()
    fresh = hub.event("b/p")
    assert not fresh.is_set()
    waiter = asyncio.create_task(hub.wait(fresh, 5.0))
    await asyncio.sleep(0)
    hub.notify("b/p")
    await asyncio.wait_for(waiter, 1.0)


async def test_hub_wait_gives_up_after_its_time() -> None:
    hub = LogHub()
    ev = hub.event("x")
    await hub.wait(ev, 0.01)
    assert not ev.is_set()


def test_layout_local_and_bucket() -> None:
    local, bucket = Layout(), Layout(bucket=True)
    assert local.log("bld-00ff", "hello", 1) == "bld-00ff-hello/logs/build.log"
    assert bucket.log("bld-00ff", "hello", 2) == "builds/bld-00ff-hello/logs/build.attempt-2.log"
    assert local.artifacts("bld-00ff", "hello") == "bld-00ff-hello"
    assert bucket.artifacts("bld-00ff", "hello") == "builds/bld-00ff-hello/artifacts"
    assert local.repo_file("x86_64", "a-1-r0.apk") == "repo/x86_64/a-1-r0.apk"
    digest = "sha256:" + "ab" * 32
    assert bucket.reuse_record("aarch64", digest) == f"cache/aarch64/{'ab' * 32}.json"
    assert log_name(3) == "build.attempt-3.log"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a..b", "x\x00", "a b", "é"])
def test_names_that_could_escape_their_place_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot name a file"):
        check_name("package name", bad)


def test_build_ids_and_digests_are_checked() -> None:
    with pytest.raises(ValueError, match="invalid build id"):
        Layout().package("../etc", "x")
    with pytest.raises(ValueError, match="invalid input digest"):
        Layout().reuse_record("x86_64", "sha256:../../x")
    assert check_name("package name", "py3.12-foo_bar+x") == "py3.12-foo_bar+x"
