"""One Ctrl-C always ends ``melange2 build``: a teardown that hangs after the cancel is
cut short (exit 130) once the grace period has passed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SCRIPT = """
import asyncio, sys, time
from melange2.cli.commands import build
build.INTERRUPT_GRACE_S = 1.0
async def main():
    build._bound_teardown_after_interrupt()
    try:
        print("ready", flush=True)
        await asyncio.sleep(100)
    except asyncio.CancelledError:
        await asyncio.to_thread(time.sleep, {teardown})
        raise
try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(7)
"""


def _interrupt(teardown: float) -> tuple[int, str, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(teardown=teardown)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, time.monotonic() - start


def test_a_teardown_that_hangs_is_cut_short() -> None:
    code, _, err, took = _interrupt(teardown=100)
    assert code == 130
    assert "cancelled (teardown took over 1 s: exiting)" in err
    assert took < 30


def test_a_quick_teardown_ends_as_asyncio_run_ends_it() -> None:
    code, out, err, _ = _interrupt(teardown=0)
    assert code == 7 and "interrupted" in out  # the KeyboardInterrupt main() reports
    assert "teardown took" not in err
