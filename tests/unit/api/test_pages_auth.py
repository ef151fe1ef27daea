"""The dashboard's pages under tokens and roles, against the whole app in-process
(memory store and storage, no backend): an anonymous visitor is sent to /login, the
token given there is kept in an HttpOnly SameSite=Strict cookie, the pages show and
refuse what the role cannot do, the cookie reads the API (the pages' event streams)
but never changes anything through it, forms from another origin are refused, and
--public-read / --no-auth. The same in a real browser: tests/integration/test_dashboard_e2e.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from melange2.api.app import create_app
from melange2.api.auth import TOKEN_COOKIE
from melange2.apk.signing import generate_key
from melange2.auth import Role
from melange2.service.settings import ServerSettings
from melange2.service.tokens import issue_token, revoke_token
from melange2.storage import StorageSpec

pytestmark = pytest.mark.anyio
CONFIG = "package: {name: ok, version: 1.0.0}\nenvironment: {contents: {packages: [busybox]}}\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "farm.rsa"
    generate_key(path, key_size=2048)
    return path


@pytest.fixture
def settings(tmp_path: Path, key: Path) -> ServerSettings:
    return ServerSettings(
        signing_key=key,
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "out",
        store="memory",
        storage=StorageSpec(kind="memory"),
        registry="127.0.0.1:1",
        buildkit_addr="tcp://127.0.0.1:9",  # nobody answers: nothing builds
    )


class Site:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.tokens: dict[str, str] = {}

    async def make(self, name: str, role: Role) -> str:
        store = self.app.state.services.store
        self.tokens[name] = (await issue_token(store, name=name, role=role)).secret
        return self.tokens[name]

    def browser(self, who: str | None = None) -> httpx.AsyncClient:
        """A client as a browser is: cookies only, no Authorization header."""
        headers = {"cookie": f"{TOKEN_COOKIE}={self.tokens[who]}"} if who is not None else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://farm", headers=headers
        )

    async def submit(self, who: str) -> str:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://farm",
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
        ) as api:
            resp = await api.post("/api/v1/builds", json={"config_yaml": CONFIG})
        assert resp.status_code == 201, resp.text
        build_id: str = resp.json()["id"]
        return build_id


async def _site(settings: ServerSettings) -> AsyncIterator[Site]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        site = Site(app)
        for name, role in (
            ("read", Role.READ),
            ("submit", Role.SUBMIT),
            ("other", Role.SUBMIT),
            ("admin", Role.ADMIN),
        ):
            await site.make(name, role)
        yield site


@pytest.fixture
async def site(settings: ServerSettings) -> AsyncIterator[Site]:
    async for s in _site(settings):
        yield s


async def test_anonymous_visitors_are_sent_to_login_and_the_cookie_lets_them_in(
    site: Site,
) -> None:
    build_id = await site.submit("submit")
    async with site.browser() as browser:
        for path in ("/", f"/builds/{build_id}", f"/builds/{build_id}/packages/ok", "/backends"):
            resp = await browser.get(path)
            assert resp.status_code == 303, (path, resp.text)
            assert resp.headers["location"].startswith("/login?next=%2F"), path
        assert (await browser.get("/repository")).status_code == 200  # as /repo/ is
        login = await browser.get("/login?next=/backends")
        assert login.status_code == 200 and 'name="token"' in login.text

        bad = await browser.post("/login", data={"token": "mlg_" + "x" * 43, "next": "/"})
        assert bad.status_code == 401 and "not valid" in bad.text
        assert TOKEN_COOKIE not in bad.headers.get("set-cookie", "")

        ok = await browser.post("/login", data={"token": site.tokens["read"], "next": "/backends"})
        assert ok.status_code == 303 and ok.headers["location"] == "/backends"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith(f"{TOKEN_COOKIE}={site.tokens['read']};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        page = await browser.get(f"/builds/{build_id}")  # the cookie the answer set
        assert page.status_code == 200
        assert "read (read)" in page.text and 'id="logout"' in page.text
        assert 'id="cancel"' not in page.text  # a reader cannot cancel: no button
        assert (await browser.get("/backends")).status_code == 200


async def test_a_login_goes_back_only_to_this_server(site: Site) -> None:
    async with site.browser() as browser:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            resp = await browser.post("/login", data={"token": site.tokens["read"], "next": target})
            assert resp.status_code == 303 and resp.headers["location"] == "/", target


async def test_the_cookie_reads_the_api_but_never_changes_it(site: Site) -> None:
    build_id = await site.submit("submit")
    async with site.browser("admin") as browser:
        # the pages' streams and downloads are GETs: the cookie is enough
        # (an unknown build is a 404 after the role was checked, so no stream to hold)
        assert (await browser.get("/api/v1/events?build=bld-0000000000000000")).status_code == 404
        assert (await browser.get(f"/api/v1/builds/{build_id}")).status_code == 200
        # a change through the API needs the header, whatever the cookie says
        for method, path in (
            ("POST", f"/api/v1/builds/{build_id}/cancel"),
            ("POST", "/api/v1/builds"),
        ):
            resp = await browser.request(method, path, json={"config_yaml": CONFIG})
            assert resp.status_code == 401, (method, path, resp.text)
    async with site.browser() as anonymous:
        assert (await anonymous.get(f"/api/v1/events?build={build_id}")).status_code == 401


async def test_cancel_from_the_page_follows_the_role_and_the_origin(site: Site) -> None:
    build_id = await site.submit("submit")
    cancel = f"/builds/{build_id}/cancel"
    async with site.browser("other") as other:  # another submitter's build
        page = await other.get(f"/builds/{build_id}")
        assert page.status_code == 200 and 'id="cancel"' not in page.text
        refused = await other.post(cancel)
        assert refused.status_code == 403 and "may not cancel" in refused.text
    async with site.browser("submit") as owner:
        page = await owner.get(f"/builds/{build_id}")
        assert 'id="cancel"' in page.text  # its own build
        forged = await owner.post(cancel, headers={"origin": "https://evil.example"})
        assert forged.status_code == 403 and "not sent from this server" in forged.text
        done = await owner.post(cancel, headers={"origin": "http://farm"})
        assert done.status_code == 303 and done.headers["location"] == f"/builds/{build_id}"
    async with site.browser("admin") as admin:
        # a package already handed to the (unreachable) backend stops a moment later
        for _ in range(600):
            status = (await admin.get(f"/api/v1/builds/{build_id}")).json()["status"]
            if status == "cancelled":
                break
            await asyncio.sleep(0.05)
        assert status == "cancelled"


async def test_a_revoked_token_in_the_cookie_asks_to_log_in_again(site: Site) -> None:
    async with site.browser("read") as browser:
        assert (await browser.get("/")).status_code == 200
        await revoke_token(site.app.state.services.store, "read")
        resp = await browser.get("/")
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
        login = await browser.get("/login")
        assert "no longer valid" in login.text
        out = await browser.post("/logout")
        assert out.status_code == 303 and f"{TOKEN_COOKIE}=" in out.headers["set-cookie"]


async def test_public_read_shows_builds_to_anyone_and_no_auth_everything(
    settings: ServerSettings,
) -> None:
    async for site in _site(replace(settings, public_read=True)):
        build_id = await site.submit("submit")
        async with site.browser() as anonymous:
            page = await anonymous.get(f"/builds/{build_id}")
            assert page.status_code == 200 and 'id="cancel"' not in page.text
            assert 'id="login"' in page.text
            assert (await anonymous.get("/backends")).status_code == 303  # never anonymous
            assert (await anonymous.post(f"/builds/{build_id}/cancel")).status_code == 303
    async for site in _site(replace(settings, auth=False)):
        build_id = await site.submit("submit")  # the token is ignored
        async with site.browser() as anyone:
            page = await anyone.get(f"/builds/{build_id}")
            assert page.status_code == 200 and 'id="cancel"' in page.text
            assert 'id="login"' not in page.text and 'id="logout"' not in page.text
            assert (await anyone.get("/backends")).status_code == 200
