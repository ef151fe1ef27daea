"""The dashboard and the live events end to end: a real melange-server process on the
real farm, its pages in a real browser (Debian's Chromium through Playwright), and the
events stream read by a plain HTTP client.

Browser: the builds page lists a running build; the package page shows a step's output
appear while the step still runs; the build's progress moves to done without a reload;
cancel from the page stops a build; HTML in a log line or an error stays text. The
browser logs in at ``/login`` with the server's admin token first (an anonymous visitor
is sent there), and a read token's visitor sees no cancel button. The screenshots of
docs/dashboard.md are taken here (``docs/img/dashboard-*.png``).

Events: a client sees every state change of a 20-package build, in order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from melange2.farm.local import FarmEnv
from melange2.jobs import ALLOWED_TRANSITIONS, PackageStatus
from melange2.testenv.browser import chromium, require_chromium
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent.parent
SHOTS = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("dashboard"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _log_in(context: Any, server: Server, token: str, start: str = "/") -> None:
    """Log in as a person does: the page sends an anonymous visitor to /login, the
    token is given there once, and the cookie keeps it."""
    page = context.new_page()
    page.goto(server.url + start)
    assert page.url.startswith(f"{server.url}/login?next="), page.url
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_url(server.url + start)
    page.close()


@pytest.fixture(scope="module")
def browser(server: Server) -> Iterator[Any]:
    require_chromium()
    with chromium() as context:
        _log_in(context, server, server.token)
        yield context


def _ticker(name: str, ticks: int, pause: float, needs: tuple[str, ...] = ()) -> str:
    script = f'for i in $(seq 1 {ticks}); do echo "tick $i of {name}"; sleep {pause}; done'
    return config(name, needs=needs, script=script)


def _status(client: httpx.Client, build_id: str, name: str) -> str:
    status: str = by_name(client.get(f"/api/v1/builds/{build_id}").json())[name]["status"]
    return status


def _refuse(dialog: Any, seen: list[str]) -> None:
    """A page must not open dialogs (an ``alert`` would be injected script)."""
    seen.append(dialog.message)
    dialog.dismiss()


def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_pages_follow_a_running_build_to_the_end(server: Server, browser: Any) -> None:
    with server.client() as client:
        build_id = submit(
            client,
            configs=[
                _ticker("web-ticker", ticks=24, pause=0.5),
                config("web-after", needs=("web-ticker",)),
                config("web-side"),
            ],
            mode="dag",
        )
        _until(lambda: _status(client, build_id, "web-ticker") == "running", 120, "running")
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: _refuse(d, dialogs))

        # the builds page lists the running build
        page.goto(server.url + "/")
        row = page.locator(f'tr[data-build="{build_id}"]')
        assert row.count() == 1
        assert row.locator('[data-field="status"]').inner_text() == "running"
        page.screenshot(path=str(SHOTS / "dashboard-builds.png"))

        # the package page: the step's output appears while the step still runs
        page.goto(f"{server.url}/builds/{build_id}/packages/web-ticker")
        page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
        before = page.locator("#log").inner_text()
        shown = max((n for n in range(1, 25) if f"tick {n} of web-ticker" in before), default=0)
        later = f"tick {shown + 3} of web-ticker"
        page.wait_for_function(
            f"document.getElementById('log').textContent.includes({json.dumps(later)})",
            timeout=60_000,
        )
        assert _status(client, build_id, "web-ticker") == "running"  # still running
        page.screenshot(path=str(SHOTS / "dashboard-package.png"))
        # a reload shows what was printed so far, and goes on following
        page.reload()
        assert later in page.locator("#log").inner_text()
        if _status(client, build_id, "web-ticker") == "running":
            page.wait_for_function("document.getElementById('live-state').textContent === 'live'")

        # the build page: progress moves to done without a reload
        page.goto(f"{server.url}/builds/{build_id}")
        page.evaluate("window.__notReloaded = true")
        page.screenshot(path=str(SHOTS / "dashboard-build.png"), full_page=True)
        page.wait_for_function(
            "document.getElementById('build-status').textContent === 'success'",
            timeout=180_000,
        )
        assert page.evaluate("window.__notReloaded") is True
        assert page.locator("#done").inner_text() == page.locator("#total").inner_text() == "3"
        assert page.locator('#packages tr[data-pkg="web-after"] td.s').inner_text() == "success"
        assert page.locator("#cancel").count() == 0  # a finished build offers no cancel
        assert wait(client, build_id)["status"] == "success"
        assert dialogs == []

        page.goto(server.url + "/backends")
        assert page.locator("tr[data-backend]").count() == len(server.farm.buildkit_addrs)
        page.screenshot(path=str(SHOTS / "dashboard-backends.png"))
        page.goto(server.url + "/repository?q=web-")
        assert page.get_by_role("link", name="web-after").count() == 1
        page.screenshot(path=str(SHOTS / "dashboard-repository.png"))
        page.close()


def test_cancel_from_the_page_stops_the_build(server: Server, browser: Any) -> None:
    with server.client() as client:
        build_id = submit(
            client,
            configs=[
                config("web-sleeper", script="echo sleeping; sleep 300"),
                config("web-never", needs=("web-sleeper",)),
            ],
            mode="dag",
        )
        _until(lambda: _status(client, build_id, "web-sleeper") == "running", 120, "running")
        page = browser.new_page()
        page.on("dialog", lambda d: d.accept())  # "Cancel build …?"
        page.goto(f"{server.url}/builds/{build_id}")
        t0 = time.monotonic()
        cancel_url = f"{server.url}/builds/{build_id}/cancel"
        with page.expect_response(lambda r: r.url == cancel_url) as posted:
            page.locator("#cancel").click()  # the form's POST, then back to the page
        assert posted.value.status == 303, posted.value.text()
        page.wait_for_load_state()
        build = wait(client, build_id, timeout=60)
        page.wait_for_function(
            "document.getElementById('build-status').textContent === 'cancelled'",
            timeout=60_000,
        )
        assert time.monotonic() - t0 < 30
        assert build["status"] == "cancelled"
        assert {p["status"] for p in build["packages"]} == {"cancelled"}
        page.close()


def test_a_read_token_sees_no_cancel_and_a_bad_token_no_pages(server: Server, browser: Any) -> None:
    with server.client() as client:
        build_id = submit(client, configs=[config("web-reader", script="echo waiting; sleep 300")])
        _until(lambda: _status(client, build_id, "web-reader") == "running", 120, "running")
        browser.clear_cookies()  # a visitor who has not logged in (one browser per module)
        try:
            page = browser.new_page()
            page.goto(server.url + "/login")
            page.fill("#token", "mlg_" + "x" * 43)  # no such token
            page.click("#login-submit")
            assert "not valid" in page.locator("#login-error").inner_text()
            assert page.goto(server.url + "/") is not None and "/login" in page.url
            made = client.post("/api/v1/tokens", json={"name": "web-read", "role": "read"})
            reader: str = made.raise_for_status().json()["secret"]
            _log_in(browser, server, reader, f"/builds/{build_id}")
            page.goto(f"{server.url}/builds/{build_id}")
            page.wait_for_function("document.getElementById('live-state').textContent === 'live'")
            assert page.locator("#cancel").count() == 0
            assert page.locator("#who").inner_text().startswith("web-read (read)")
            refused = page.request.post(f"{server.url}/builds/{build_id}/cancel")
            assert refused.status == 403
            assert _status(client, build_id, "web-reader") == "running"
            page.click("#logout")
            page.wait_for_url(f"{server.url}/login")
            assert page.goto(f"{server.url}/builds/{build_id}") is not None
            assert "/login" in page.url
            page.close()
        finally:
            browser.clear_cookies()
            _log_in(browser, server, server.token)
        client.post(f"/api/v1/builds/{build_id}/cancel").raise_for_status()
        assert wait(client, build_id, timeout=60)["status"] == "cancelled"


def test_html_in_logs_and_errors_stays_text(server: Server, browser: Any) -> None:
    evil = "<img src=x onerror=alert(1)>"
    script = f"echo '{evil}'\necho '<script>alert(2)</script>'\nexit 3"
    with server.client() as client:
        build_id = submit(
            client,
            configs=[config("web-evil", script=script)],
        )
        assert wait(client, build_id)["status"] == "failed"
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: _refuse(d, dialogs))
        page.goto(f"{server.url}/builds/{build_id}/packages/web-evil")
        log = page.locator("#log")
        assert evil in log.inner_text()
        assert log.locator("img, script").count() == 0
        page.goto(f"{server.url}/builds/{build_id}")
        assert page.locator("#packages img, #packages script").count() == 0
        assert dialogs == []
        # a missing build or package is a 404 page, not a 500
        for path in (f"/builds/{build_id}x", "/builds/nope", f"/builds/{build_id}/packages/no"):
            response = page.goto(server.url + path)
            assert response is not None and response.status == 404
            assert page.locator("h1").inner_text() == "Not found"
        page.close()


class _EventReader(threading.Thread):
    """Reads ``GET /api/v1/events`` (every build) in a thread, keeping each message."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.token = token
        self.messages: list[tuple[str, str, dict[str, Any]]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError:
            if not self.stop.is_set():  # the stream broke while the test still reads
                raise

    def _read(self) -> None:
        timeout = httpx.Timeout(10, read=30)
        with (
            httpx.Client(timeout=timeout) as http,
            http.stream(
                "GET",
                self.url,
                headers={"accept": "text/event-stream", "authorization": f"Bearer {self.token}"},
            ) as resp,
        ):
            event, id_, data = "message", "", ""
            for line in resp.iter_lines():
                if self.stop.is_set():
                    return
                if not line:
                    if data:
                        self.messages.append((event, id_, json.loads(data)))
                        if event == "hello":
                            self.ready.set()
                    event, id_, data = "message", "", ""
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    id_ = line[4:]
                elif line.startswith("data: "):
                    data += line[6:]


def test_events_stream_every_state_change_of_a_20_package_build_in_order(
    server: Server,
) -> None:
    names = [f"ev-{i:02d}" for i in range(20)]
    # a tree: ev-00 first, each package needing the one at half its index
    configs = [config(n, needs=(names[(i - 1) // 2],) if i else ()) for i, n in enumerate(names)]
    reader = _EventReader(server.url + "/api/v1/events", server.token)
    reader.start()
    assert reader.ready.wait(30)
    with server.client() as client:
        build_id = submit(client, configs=configs, mode="dag")
        final = wait(client, build_id)
        assert final["status"] == "success", final
        _until(
            lambda: any(
                e == "build" and d["build_id"] == build_id and d["status"] == "success"
                for e, _, d in reader.messages
            ),
            30,
            "the build's final event",
        )
    reader.stop.set()
    mine = [(e, i, d) for e, i, d in reader.messages if d.get("build_id") == build_id]
    # ids strictly increase (one epoch, a sequence)
    seqs = [int(i.rsplit("-", 1)[1]) for _, i, _ in mine]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    builds = [d for e, _, d in mine if e == "build"]
    assert [(b["previous"], b["status"]) for b in builds] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "success"),
    ]
    packages = [d for e, _, d in mine if e == "package"]
    # each package: a gapless walk of legal moves from where it started to success
    walks: dict[str, list[str]] = {}
    for d in packages:
        walk = walks.setdefault(d["name"], [d["previous"]])
        assert d["previous"] == walk[-1], (d, walk)
        assert PackageStatus(d["status"]) in ALLOWED_TRANSITIONS[PackageStatus(walk[-1])]
        walk.append(d["status"])
    assert sorted(walks) == names
    stored = by_name(final)
    for name, walk in walks.items():
        assert walk[0] == ("pending" if name == "ev-00" else "blocked")
        assert walk[-1] == "success" == stored[name]["status"]
    # in order: no package starts before the one it needs has succeeded
    position = {(d["name"], d["status"]): n for n, d in enumerate(packages)}
    for i, name in enumerate(names[1:], 1):
        dep = names[(i - 1) // 2]
        assert position[(dep, "success")] < position[(name, "running")]
    # counts travel with each event: the last one says all 20 succeeded
    assert packages[-1]["counts"] == {"success": 20}
    assert builds[-1]["counts"] == {"success": 20}
