"""Who may do what, against the whole app in-process (memory store and storage, no
backend): every route's role, 401 without a valid token (with the Bearer challenge),
403 with one whose role lacks it, submitters and their own builds, revoked and expired
tokens, ``--public-read`` and ``--no-auth``, the tokens endpoints, and no token ever
in an answer or the server's log. The same rules on a real server process:
tests/integration/test_auth_e2e.py."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from melange2.api.app import create_app
from melange2.api.auth import principal_from_request
from melange2.apk.signing import generate_key
from melange2.auth import Action, Principal, Role
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
        buildkit_addr="tcp://127.0.0.1:9",  # nobody answers: packages fail, fast
    )


class Farm:
    """The app and a token of each role (``read``, ``submit``, ``other``: a second
    submitter, ``admin``)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.tokens: dict[str, str] = {}

    @property
    def store(self) -> Any:
        return self.app.state.services.store

    async def make(self, name: str, role: Role, **kw: Any) -> str:
        self.tokens[name] = (await issue_token(self.store, name=name, role=role, **kw)).secret
        return self.tokens[name]

    def client(self, who: str | None = None, **headers: str) -> httpx.AsyncClient:
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://farm", headers=headers
        )

    async def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        async with self.client(who) as client:
            return await client.request(method, path, **kw)


async def _farm(settings: ServerSettings) -> AsyncIterator[Farm]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        farm = Farm(app)
        for name, role in (
            ("read", Role.READ),
            ("submit", Role.SUBMIT),
            ("other", Role.SUBMIT),
            ("admin", Role.ADMIN),
        ):
            await farm.make(name, role)
        yield farm


@pytest.fixture
async def farm(settings: ServerSettings) -> AsyncIterator[Farm]:
    async for f in _farm(settings):
        yield f


def _refused(resp: httpx.Response, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "details"}, body
    assert body["details"] == {"code": "unauthorized" if status == 401 else "forbidden"}
    for needle in needles:
        assert needle in body["error"], body["error"]
    if status == 401:
        assert resp.headers["www-authenticate"] == 'Bearer realm="melange2"'
    return str(body["error"])


async def _submit(farm: Farm, who: str, **body: Any) -> str:
    resp = await farm.call(who, "POST", "/api/v1/builds", json={"config_yaml": CONFIG, **body})
    assert resp.status_code == 201, resp.text
    build_id: str = resp.json()["id"]
    return build_id


BACKEND = {"addr": "tcp://127.0.0.1:1", "arch": "x86_64"}
#: (method, path, body) of every route, and the least role that may call it
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/api/v1/builds", None, "read"),
    ("GET", "/api/v1/builds/{build}", None, "read"),
    ("GET", "/api/v1/builds/{build}/packages/ok", None, "read"),
    ("GET", "/api/v1/builds/{build}/packages/ok/logs", None, "read"),
    ("GET", "/api/v1/builds/{build}/packages/ok/artifacts", None, "read"),
    ("GET", "/api/v1/builds/{build}/packages/ok/artifacts/x86_64/a.apk", None, "read"),
    ("GET", "/api/v1/backends", None, "read"),
    ("GET", "/api/v1/backends/status", None, "read"),
    ("GET", "/api/v1/replicas", None, "read"),
    ("GET", "/metrics", None, "read"),
    ("POST", "/api/v1/builds", {"config_yaml": CONFIG, "dry_run": True}, "submit"),
    ("POST", "/api/v1/backends", BACKEND, "admin"),
    ("DELETE", "/api/v1/backends", {"addr": "tcp://nowhere:1"}, "admin"),
    ("GET", "/api/v1/tokens", None, "admin"),
    ("POST", "/api/v1/tokens", {"name": "new", "role": "read"}, "admin"),
    ("DELETE", "/api/v1/tokens/tok-nothing", None, "admin"),
    ("GET", f"/api/v1/sources/sha256:{'0' * 64}", None, "read"),
    ("PUT", f"/api/v1/sources/sha256:{'0' * 64}", "not these bytes", "submit"),
]
RANK = {"read": 0, "submit": 1, "admin": 2}


async def test_every_route_needs_its_role(farm: Farm) -> None:
    build_id = await _submit(farm, "submit")
    for method, template, body, least in ROUTES:
        path = template.format(build=build_id)
        where = f"{method} {path}"
        _refused(await farm.call(None, method, path, json=body), 401, "authentication required")
        for role in ("read", "submit", "admin"):
            resp = await farm.call(role, method, path, json=body)
            if RANK[role] < RANK[least]:
                error = _refused(resp, 403, f"token '{role}' (role {role})", f"the {least} role")
                assert farm.tokens[role] not in error, where
            else:
                assert resp.status_code not in (401, 403), (where, role, resp.text)


async def test_the_source_cache_needs_read_to_look_and_submit_to_add(farm: Farm) -> None:
    data = b"an upstream tarball\n"
    path = f"/api/v1/sources/sha256:{hashlib.sha256(data).hexdigest()}"
    assert (await farm.call(None, "HEAD", path)).status_code == 401
    assert (await farm.call("read", "HEAD", path)).status_code == 404
    _refused(await farm.call("read", "PUT", path, content=data), 403, "the submit role")
    assert (await farm.call("read", "HEAD", path)).status_code == 404  # nothing was kept
    assert (await farm.call("submit", "PUT", path, content=data)).status_code == 201
    assert (await farm.call("read", "HEAD", path)).status_code == 200
    assert (await farm.call("read", "GET", path)).content == data
    _refused(await farm.call(None, "GET", path), 401, "authentication required")


async def test_anyone_reads_healthz_and_the_repository(farm: Farm) -> None:
    assert (await farm.call(None, "GET", "/healthz")).json() == {"status": "ok"}
    key = await farm.call(None, "GET", "/repo/keys/farm.rsa.pub")
    assert key.status_code == 200 and b"PUBLIC KEY" in key.content
    assert (await farm.call(None, "GET", "/repo/x86_64/APKINDEX.tar.gz")).status_code == 404
    assert (await farm.call(None, "GET", "/openapi.json")).status_code == 200


async def test_a_submitter_cancels_its_own_builds_an_admin_any(farm: Farm) -> None:
    mine = await _submit(farm, "submit")
    theirs = await _submit(farm, "other")
    cancel = "/api/v1/builds/{}/cancel"
    _refused(await farm.call(None, "POST", cancel.format(mine)), 401)
    _refused(await farm.call("read", "POST", cancel.format(mine)), 403, "the admin role")
    error = _refused(
        await farm.call("submit", "POST", cancel.format(theirs)),
        403,
        "may cancel only the builds it submitted",
        "'other' submitted this one",
    )
    assert farm.tokens["submit"] not in error
    # an unknown build: the read token learns nothing (403), a submitter gets 404
    _refused(await farm.call("read", "POST", cancel.format("bld-nothing")), 403)
    assert (await farm.call("submit", "POST", cancel.format("bld-nothing"))).status_code == 404
    for build_id in (mine, theirs):  # nothing refused changed anything
        assert not (await farm.store.get_build(build_id)).cancel_requested
    own = await farm.call("submit", "POST", cancel.format(mine))
    assert own.status_code == 200, own.text
    by_admin = await farm.call("admin", "POST", cancel.format(theirs))
    assert by_admin.status_code == 200, by_admin.text
    for build_id in (mine, theirs):
        assert (await farm.store.get_build(build_id)).cancel_requested


async def test_builds_record_who_submitted_them(farm: Farm) -> None:
    build_id = await _submit(farm, "submit")
    build = (await farm.call("read", "GET", f"/api/v1/builds/{build_id}")).json()
    assert build["submitted_by"] == "submit" and build["source_commit"] == ""
    listing = (await farm.call("read", "GET", "/api/v1/builds")).json()["builds"]
    assert [(b["id"], b["submitted_by"]) for b in listing] == [(build_id, "submit")]
    assert (await farm.store.get_build(build_id)).submitted_by == "submit"


async def test_env_values_show_to_the_submitter_and_admins_only(farm: Farm) -> None:
    build_id = await _submit(farm, "submit", env={"SECRET": "v4lue"})
    path = f"/api/v1/builds/{build_id}"
    for who, shown in (("submit", "v4lue"), ("admin", "v4lue"), ("other", "***"), ("read", "***")):
        assert (await farm.call(who, "GET", path)).json()["spec"]["env"] == {"SECRET": shown}
    cancelled = await farm.call("admin", "POST", f"{path}/cancel")
    assert cancelled.json()["spec"]["env"] == {"SECRET": "v4lue"}


async def test_revoked_expired_unknown_and_malformed_tokens_are_401(farm: Farm) -> None:
    path = "/api/v1/builds"
    await revoke_token(farm.store, "read")
    _refused(await farm.call("read", "GET", path), 401, "not valid (unknown or revoked)")
    soon = datetime.now(UTC) + timedelta(seconds=60)
    await farm.make("short", Role.ADMIN, expires_at=soon, now=soon - timedelta(hours=1))
    assert (await farm.call("short", "GET", path)).status_code == 200
    await farm.make(
        "gone", Role.ADMIN, expires_at=datetime.now(UTC), now=datetime.now(UTC) - timedelta(1)
    )
    _refused(await farm.call("gone", "GET", path), 401, "'gone' expired at")
    forged = "mlg_" + "A" * 43
    for header in (f"Bearer {forged}", "Bearer not-a-token", f"bearer {forged}"):
        async with farm.client(Authorization=header) as client:
            error = _refused(await client.get(path), 401)
            assert forged not in error and "not-a-token" not in error
    # not a bearer scheme: as if no token was sent
    async with farm.client(Authorization="Basic dXNlcjpwYXNz") as client:
        _refused(await client.get(path), 401, "authentication required")


async def test_a_name_rotates_keeping_its_builds(farm: Farm) -> None:
    build_id = await _submit(farm, "submit")
    await revoke_token(farm.store, "submit")
    await farm.make("submit", Role.SUBMIT)  # the same name again: its builds are its own
    resp = await farm.call("submit", "POST", f"/api/v1/builds/{build_id}/cancel")
    assert resp.status_code == 200, resp.text


async def test_the_tokens_endpoints(farm: Farm) -> None:
    made = await farm.call(
        "admin", "POST", "/api/v1/tokens", json={"name": "ci", "role": "submit", "expires": "2h"}
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    token = made.json()["token"]
    assert secret.startswith("mlg_") and token["name"] == "ci" and token["state"] == "active"
    assert token["expires_at"] is not None
    farm.tokens["ci"] = secret
    assert (
        await farm.call("ci", "POST", "/api/v1/builds", json={"config_yaml": CONFIG})
    ).is_success
    again = await farm.call("admin", "POST", "/api/v1/tokens", json={"name": "ci", "role": "read"})
    assert again.status_code == 409 and "a token named 'ci' exists" in again.json()["error"]
    bad = await farm.call("admin", "POST", "/api/v1/tokens", json={"name": "a b", "role": "read"})
    assert bad.status_code == 400 and "token name" in bad.json()["error"]
    bad = await farm.call(
        "admin", "POST", "/api/v1/tokens", json={"name": "x", "role": "read", "expires": "soon"}
    )
    assert bad.status_code == 400 and "expiry 'soon'" in bad.json()["error"]
    bad = await farm.call("admin", "POST", "/api/v1/tokens", json={"name": "x", "role": "root"})
    assert bad.status_code == 400
    listing = await farm.call("admin", "GET", "/api/v1/tokens")
    assert [t["name"] for t in listing.json()["tokens"]] == [
        "read",
        "submit",
        "other",
        "admin",
        "ci",
    ]
    assert all(t not in listing.text for t in farm.tokens.values())
    assert "token_hash" not in listing.text
    revoked = await farm.call("admin", "DELETE", "/api/v1/tokens/ci")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    _refused(await farm.call("ci", "GET", "/api/v1/builds"), 401)
    by_id = await farm.call("admin", "DELETE", f"/api/v1/tokens/{token['id']}")
    assert by_id.status_code == 200  # revoking twice: fine, by id
    assert (await farm.call("admin", "DELETE", "/api/v1/tokens/ci")).status_code == 404


async def test_public_read_lets_anyone_read_builds_and_logs_only(
    settings: ServerSettings,
) -> None:
    async for farm in _farm(replace(settings, public_read=True)):
        build_id = await _submit(farm, "submit", env={"K": "v"})
        build = await farm.call(None, "GET", f"/api/v1/builds/{build_id}")
        assert build.status_code == 200 and build.json()["spec"]["env"] == {"K": "***"}
        assert (await farm.call(None, "GET", "/api/v1/builds")).status_code == 200
        pkg = f"/api/v1/builds/{build_id}/packages/ok"
        assert (await farm.call(None, "GET", pkg)).status_code == 200
        assert (await farm.call(None, "GET", f"{pkg}/artifacts")).status_code == 200
        for method, path in (
            ("GET", "/api/v1/backends"),
            ("GET", "/metrics"),
            ("POST", f"/api/v1/builds/{build_id}/cancel"),
            ("POST", "/api/v1/builds"),
        ):
            _refused(await farm.call(None, method, path, json={"config_yaml": CONFIG}), 401)


async def test_no_auth_lets_anyone_do_anything_but_tokens(
    settings: ServerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async for farm in _farm(replace(settings, auth=False)):
            build_id = await _submit(farm, "submit", env={"K": "v"})  # the token is ignored
            build = (await farm.call(None, "GET", f"/api/v1/builds/{build_id}")).json()
            assert build["submitted_by"] == "" and build["spec"]["env"] == {"K": "***"}
            cancel = await farm.call(None, "POST", f"/api/v1/builds/{build_id}/cancel")
            assert cancel.status_code == 200
            assert (await farm.call(None, "GET", "/api/v1/backends")).status_code == 200
            assert (await farm.call(None, "GET", "/metrics")).status_code == 200
            refused = await farm.call("admin", "GET", "/api/v1/tokens")
            assert refused.status_code == 403 and "--no-auth" in refused.json()["error"]
    assert "authentication is off (--no-auth)" in caplog.text


async def test_no_token_appears_in_the_log(farm: Farm, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        await _submit(farm, "submit")
        await farm.call("read", "POST", "/api/v1/builds", json={"config_yaml": CONFIG})
        await revoke_token(farm.store, "other")
        await farm.call("other", "GET", "/api/v1/builds")
    for secret in farm.tokens.values():
        assert secret not in caplog.text
        assert secret[4:20] not in caplog.text


async def test_principal_from_request_for_other_front_ends(farm: Farm) -> None:
    """What a page of the dashboard calls: who is asking, and may they."""
    seen: list[Principal | None] = []

    @farm.app.get("/whoami")
    async def whoami(request: Request) -> dict[str, bool]:
        principal = await principal_from_request(request)
        seen.append(principal)
        rule = request.app.state.auth_policy
        return {"cancel_any": rule.allows(principal, Action.CANCEL, None)}

    assert (await farm.call("admin", "GET", "/whoami")).json() == {"cancel_any": True}
    assert (await farm.call("submit", "GET", "/whoami")).json() == {"cancel_any": False}
    assert (await farm.call(None, "GET", "/whoami")).json() == {"cancel_any": False}
    assert [(p.name, p.role) if p else None for p in seen] == [
        ("admin", Role.ADMIN),
        ("submit", Role.SUBMIT),
        None,
    ]
