"""Hostile requests against the whole app in-process (memory store and storage, no
backend: nothing here needs BuildKit): each is a clear JSON 4xx naming what is wrong
and where, nothing is half-created, env values never come back, server paths never
appear; and when the scheduler's loop dies, /healthz says so (503) and the app asks to
be shut down. The same inputs run against a real server process in
tests/integration/test_hostile_e2e.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from melange2.api.app import create_app
from melange2.apk.signing import generate_key
from melange2.auth import Role
from melange2.service.settings import ServerSettings
from melange2.service.tokens import issue_token
from melange2.storage import StorageSpec

pytestmark = pytest.mark.anyio
OK = "package: {name: ok, version: 1.0.0}\nenvironment: {contents: {packages: [busybox]}}\n"


def config(name: str, extra: str = "") -> str:
    return f"package:\n  name: {name}\n  version: 1.0.0\n{extra}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fatal() -> list[str]:
    return []


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "farm.rsa"
    generate_key(path, key_size=2048)  # made once: a 4096-bit key per test is slow
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
        max_body_bytes=256 * 1024,
        lease_ttl=0.6,
        fetch_allow=("https://packages.example.org/os*",),
    )


@pytest.fixture
async def app(settings: ServerSettings, fatal: list[str]) -> AsyncIterator[FastAPI]:
    app = create_app(settings, on_fatal=fatal.append)
    async with app.router.lifespan_context(app):
        yield app


async def token(app: FastAPI, name: str, role: Role) -> str:
    """A token made in the running app's (memory) store."""
    return (await issue_token(app.state.services.store, name=name, role=role)).secret


def _client(app: FastAPI, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://farm",
        headers={"Authorization": f"Bearer {secret}"},
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a submit token (``hostile``): what a hostile user could hold."""
    async with _client(app, await token(app, "hostile", Role.SUBMIT)) as c:
        yield c


async def _raw(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(
        "/api/v1/builds", content=body, headers={"content-type": "application/json"}
    )


async def _count(client: httpx.AsyncClient) -> int:
    resp = await client.get("/api/v1/builds", params={"limit": 1000})
    return len(resp.json()["builds"])


def _assert_clear_4xx(resp: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error", "details"} and body["error"], body
    for needle in needles:
        assert needle in body["error"], body["error"]
    return body


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"config_yaml": "a\\ud800"}', "config_yaml"),
        (b'{"config_yaml": "x", "env": {"\\ud800": "v"}}', "env"),
        (b'{"config_yaml": "x", "env": {"K": "\\udfff"}}', "env['K']"),
        (b'{"config_yaml": "x", "backend_selector": {"tier": "\\ud800"}}', "backend_selector"),
        (b'{"config_yaml": "x", "pipelines": {"a\\u0000.yaml": "x"}}', "pipelines"),
        (b'{"config_yaml": "x", "source_files": {"p": {"\\ud800": "x"}}}', "source_files"),
        (b'{"configs": ["ok", "\\ud800"]}', "configs[1]"),
    ],
)
async def test_text_that_is_not_unicode_or_holds_nul_is_a_400_naming_where(
    client: httpx.AsyncClient, body: bytes, where: str
) -> None:
    before = await _count(client)
    answer = _assert_clear_4xx(await _raw(client, body), 400, where)
    assert "surrogate" in answer["error"] or "NUL" in answer["error"]
    assert await _count(client) == before


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (config("a..b"), "package name 'a..b'"),
        (config("a" * 5000), "longer than 128"),
        (config('"\\u0661\\u0662"'), "ASCII letters and digits"),
        (config("ok").replace("1.0.0", "../../x"), "package version"),
        (
            "package: {name: a, version: 1}\nvars:\n  x: " + "[" * 100_000 + "]" * 100_000,
            "nested more than 100 levels deep",
        ),
    ],
)
async def test_configs_the_farm_could_not_store_or_parse_are_a_400(
    client: httpx.AsyncClient, text: str, needle: str
) -> None:
    before = await _count(client)
    _assert_clear_4xx(await client.post("/api/v1/builds", json={"config_yaml": text}), 400, needle)
    assert await _count(client) == before


async def test_conflicting_and_duplicate_source_paths_are_a_400(client: httpx.AsyncClient) -> None:
    for files, needle in (
        ({"a": "x", "a/b": "y"}, "is a file, so it cannot also be the directory"),
        ({"a/b": "x", "a//b": "y"}, "name the same file"),
        ({"../x": "y"}, "must not climb out"),
    ):
        resp = await client.post(
            "/api/v1/builds",
            json={"config_yaml": config("src"), "source_files": {"src": files}},
        )
        _assert_clear_4xx(resp, 400, "source_files", needle)
    resp = await client.post(
        "/api/v1/builds",
        json={"config_yaml": config("p"), "pipelines": {"x.yaml": "a", "x.yaml/y": "b"}},
    )
    _assert_clear_4xx(resp, 400, "pipelines")


async def test_a_chunked_body_obeys_the_limit(
    client: httpx.AsyncClient, settings: ServerSettings
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"config_yaml": "'
        for _ in range(4 * settings.max_body_bytes // 65536):
            yield b"x" * 65536
        yield b'"}'

    resp = await client.post(
        "/api/v1/builds", content=chunks(), headers={"content-type": "application/json"}
    )
    _assert_clear_4xx(resp, 413, f"over the limit of {settings.max_body_bytes} bytes")
    big = await client.post("/api/v1/builds", json={"config_yaml": "x" * settings.max_body_bytes})
    _assert_clear_4xx(big, 413, "over the limit")


async def test_config_named_fetches_need_the_operators_allow_list(
    client: httpx.AsyncClient,
) -> None:
    for field, entry, needle in (
        ("keyring", "https://evil.example.com/k.rsa.pub", "does not fetch"),
        ("repositories", "http://169.254.169.254/latest", "does not fetch"),
        ("keyring", "/var/lib/melange/data/melange2.rsa", "local path"),
        ("repositories", "file:///etc", "local path"),
    ):
        text = config("f", f"environment:\n  contents:\n    {field}:\n      - {entry}\n")
        resp = await client.post("/api/v1/builds", json={"config_yaml": text})
        _assert_clear_4xx(resp, 400, "config_yaml", "environment.contents", needle)
    allowed = config(
        "f",
        "environment:\n  contents:\n    repositories:\n      - https://packages.example.org/os\n",
    )
    resp = await client.post("/api/v1/builds", json={"config_yaml": allowed, "dry_run": True})
    assert resp.status_code == 200, resp.text


async def test_git_sources_on_this_disk_are_refused_without_the_flag(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    for repository in (str(tmp_path), f"file://{tmp_path}", "--upload-pack=touch /tmp/x"):
        resp = await client.post("/api/v1/builds", json={"git_source": {"repository": repository}})
        _assert_clear_4xx(resp, 400, "git_source")
    resp = await client.post("/api/v1/builds", json={"git_source": {"repository": str(tmp_path)}})
    assert "--git-allow-local" in resp.json()["error"]


async def test_env_values_are_returned_only_to_their_submitter(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    resp = await client.post(
        "/api/v1/builds", json={"config_yaml": OK, "env": {"TOKEN": "s3cret-value", "A": "1"}}
    )
    assert resp.status_code == 201, resp.text
    build_id = resp.json()["id"]
    own = await client.get(f"/api/v1/builds/{build_id}")
    assert own.json()["spec"]["env"] == {"TOKEN": "s3cret-value", "A": "1"}
    for role in (Role.SUBMIT, Role.READ):
        async with _client(app, await token(app, f"another-{role}", role)) as other:
            build = await other.get(f"/api/v1/builds/{build_id}")
            assert build.json()["spec"]["env"] == {"TOKEN": "***", "A": "***"}
            assert "s3cret-value" not in build.text
            listing = await other.get("/api/v1/builds")
            assert "s3cret-value" not in listing.text


async def test_errors_name_request_paths_never_server_ones(
    client: httpx.AsyncClient, settings: ServerSettings
) -> None:
    text = config("u", "pipeline:\n  - uses: nope/nope\n")
    request = {"config_yaml": text, "pipelines": {"other.yaml": "pipeline: []\n"}}
    body = _assert_clear_4xx(
        await client.post("/api/v1/builds", json=request), 400, "unknown pipeline"
    )
    assert "pipelines/nope/nope.yaml" in body["error"] and "<built-in>" in body["error"]
    assert "/tmp/" not in body["error"] and str(settings.data_dir) not in body["error"]
    bad_pipeline = {
        "config_yaml": config("v", "pipeline:\n  - uses: mine\n"),
        "pipelines": {"mine.yaml": "pipeline: [\n"},
    }
    body = _assert_clear_4xx(
        await client.post("/api/v1/builds", json=bad_pipeline), 400, "mine.yaml"
    )
    assert "/tmp/" not in json.dumps(body)


async def test_healthz_tells_the_truth_when_the_scheduler_dies(
    client: httpx.AsyncClient, app: FastAPI, fatal: list[str]
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    # the store fails as a whole (closed under the scheduler): its leases cannot be
    # renewed, and after a lease period the loop gives up
    await app.state.services.store.aclose()
    async with asyncio.timeout(10):
        while True:
            health = await client.get("/healthz")
            if health.status_code == 503:
                break
            await asyncio.sleep(0.05)
    body = health.json()
    assert body["status"] == "failed" and "the scheduler failed" in body["error"]
    assert "store is closed" in body["error"]
    assert fatal == [body["error"]]
    # the token cannot be checked against a failed store: 503 too, not a 500
    refused = await client.post("/api/v1/builds", json={"config_yaml": OK})
    _assert_clear_4xx(refused, 503, "cannot check the token now")
