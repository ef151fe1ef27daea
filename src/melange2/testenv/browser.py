"""A real browser for the dashboard's tests and benchmarks: Debian's Chromium driven by
Playwright (no browser download is possible here), headless, in a fresh profile, with
the background networking that misbehaves on a closed network turned off.

::

    with chromium() as browser:
        page = browser.new_page()
        page.goto(url)

Where Chromium is missing, tests skip with the reason, or fail under
``REQUIRE_REAL_PARTS=1`` (:func:`require_chromium`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

#: where scripts/setup-system.sh installs it (Debian's ``chromium`` package)
CHROMIUM = os.environ.get("MELANGE2_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def missing_chromium() -> list[str]:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (Debian's chromium: scripts/setup-system.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (the dev dependencies)")
    return missing


def require_chromium() -> None:
    """Skip (or fail under REQUIRE_REAL_PARTS=1) when there is no browser."""
    missing = missing_chromium()
    if missing:
        from melange2.testenv.require import require_real_part

        require_real_part("drive a browser", missing)


@contextlib.contextmanager
def chromium(*, width: int = 1280, height: int = 900) -> Iterator[BrowserContext]:
    """A headless Chromium context in a new profile, removed afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="melange2-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=list(FLAGS),
                viewport={"width": width, "height": height},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
