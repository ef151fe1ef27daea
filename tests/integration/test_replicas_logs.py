"""Two server replicas on one real PostgreSQL database and one storage (a bucket-like
one: logs are local files on the replica running the package until it ends): a log
followed through the replica that does not run the package streams live from the one
that does (reached at its advertised URL), with the caller's token, and ends when the
package ends. Both serve real HTTP on loopback (httpx's ASGI transport would hold a
streamed answer until it ends). The daemon is the fake (``FakeBuildkit``), whose handler
writes the log as the test says; the registry is a real one (``registry_farm``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from melange2.api.app import create_app
from melange2.apk.signing import generate_key
from melange2.auth import Role, Token, hash_token, new_secret
from melange2.farm.local import FarmEnv
from melange2.ids import BuildId
from melange2.jobs import PackageStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.service.settings import ServerSettings
from melange2.storage import Storage, StorageSpec, open_storage
from melange2.store import MemoryStore, PostgresStore
from melange2.store.base import Replica
from melange2.testenv.buildkit import FakeBuildkit, SolveCall
from melange2.testenv.contracts.store import make_build, make_job

pytestmark = pytest.mark.anyio
ADDR = "tcp://fake-buildkit:1234"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "farm.rsa"
    generate_key(path, key_size=2048)
    return path


def config(name: str) -> str:
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n  description: replicas {name}\n"
        "environment:\n  contents:\n    packages:\n      - busybox\n"
        f"pipeline:\n  - name: build {name}\n    runs: echo {name}\n"
    )


def settings_for(farm: FarmEnv, root: Path, key: Path, **over: Any) -> ServerSettings:
    return ServerSettings(
        signing_key=key,
        data_dir=root / "data",
        output_dir=root / "out",
        registry=farm.registry,
        repositories=(farm.extra["BOOTSTRAP_REPO"],),
        keyrings=(farm.extra["BOOTSTRAP_KEY"],),
        lease_ttl=3.0,
        probe_interval=0.2,
        **over,
    )


@contextlib.asynccontextmanager
async def on_loopback(app: FastAPI, sock: socket.socket) -> AsyncIterator[None]:
    """``app`` served by uvicorn on ``sock`` (lifespan included) until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    await task  # its error
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def _running(http: httpx.AsyncClient, build_id: str, name: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            job: dict[str, Any] = (
                await http.get(f"/api/v1/builds/{build_id}/packages/{name}")
            ).json()
            if job["status"] == "running":
                return job
            assert job["status"] in ("pending", "blocked"), job
            await asyncio.sleep(0.05)


async def _until(lines: AsyncIterator[str], wanted: str, seen: list[str]) -> None:
    async with asyncio.timeout(30):
        async for line in lines:
            seen.append(line)
            if wanted in line:
                return
    raise AssertionError(f"the stream ended before {wanted!r}: {seen}")


async def test_a_log_followed_through_another_replica_streams_live_from_its_owner(
    registry_farm: FarmEnv, postgres_dsn: str, tmp_path: Path, key: Path
) -> None:
    go, finish = asyncio.Event(), asyncio.Event()

    async def handler(call: SolveCall) -> dict[str, bytes]:
        if "rl-slow" in call.packages:
            call.output(b"first line from the owner\n")
            await go.wait()
            call.output(b"second line from the owner\n")
            await finish.wait()
        return {f"{n}/usr/share/{n}/marker": f"{n}\n".encode() for n in call.packages}

    secret = new_secret()
    token = Token(
        id="tok-0123456789abcdef",
        name="reader",
        role=Role.SUBMIT,
        token_hash=hash_token(secret),
        created_at=datetime.now(UTC),
    )
    auth = {"authorization": f"Bearer {secret}"}
    sock_a, sock_b = socket.socket(), socket.socket()
    for sock in (sock_a, sock_b):
        sock.bind(("127.0.0.1", 0))
    url_a = f"http://127.0.0.1:{sock_a.getsockname()[1]}"
    url_b = f"http://127.0.0.1:{sock_b.getsockname()[1]}"
    storage: Storage = open_storage(StorageSpec(kind="memory"))  # logs: local until the end
    store_a = await PostgresStore.open(postgres_dsn)
    store_b = await PostgresStore.open(postgres_dsn)
    await store_a.create_token(token)
    pool_a = PoolConfig(backends=(BackendSpec(addr=ADDR, arch="x86_64", max_jobs=2),))
    app_a = create_app(
        settings_for(registry_farm, tmp_path / "a", key, advertise_url=url_a),
        pool=pool_a,
        store=store_a,
        storage=storage,
        buildkit=FakeBuildkit(handler),
    )
    # B has no daemon: it runs nothing, it only answers
    app_b = create_app(
        settings_for(registry_farm, tmp_path / "b", key, advertise_url=url_b),
        pool=PoolConfig(backends=()),
        store=store_b,
        storage=storage,
        buildkit=FakeBuildkit(handler),
    )
    try:
        async with (
            on_loopback(app_a, sock_a),
            on_loopback(app_b, sock_b),
            httpx.AsyncClient(base_url=url_a, headers=auth, timeout=60) as http_a,
            httpx.AsyncClient(base_url=url_b, headers=auth, timeout=60) as http_b,
        ):
            replicas = (await http_b.get("/api/v1/replicas")).json()
            assert {r["url"] for r in replicas} == {url_b, url_a}
            assert all(r["alive"] for r in replicas)
            assert [r["here"] for r in replicas if r["url"] == url_a] == [False]
            assert (
                await http_b.get("/api/v1/replicas", headers={"authorization": ""})
            ).status_code == 401

            resp = await http_a.post("/api/v1/builds", json={"configs": [config("rl-slow")]})
            assert resp.status_code == 201, resp.text
            build_id = resp.json()["id"]
            await _running(http_b, build_id, "rl-slow")

            seen: list[str] = []
            logs = f"/api/v1/builds/{build_id}/packages/rl-slow/logs"
            async with http_b.stream("GET", logs, params={"follow": "true"}) as stream:
                assert stream.status_code == 200
                lines = stream.aiter_lines()
                await _until(lines, "first line from the owner", seen)
                go.set()  # A writes more while B's caller follows
                await _until(lines, "second line from the owner", seen)
                finish.set()  # the package ends: the stream ends
                async with asyncio.timeout(60):
                    rest = [line async for line in lines]
            whole = "\n".join(seen + rest)
            assert whole.index("first line") < whole.index("second line")
            build = (await http_b.get(f"/api/v1/builds/{build_id}")).json()
            assert build["packages"][0]["status"] == "success", build
            # ended: B serves the log itself, from storage (A uploaded it)
            after = await http_b.get(logs)
            assert after.status_code == 200 and "second line from the owner" in after.text
    finally:
        go.set()
        finish.set()
        await store_a.aclose()
        await store_b.aclose()
        await storage.aclose()


async def test_a_log_whose_owner_is_gone_is_served_from_storage_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The package is ``running`` under a replica whose advertised URL answers nothing:
    the log is served here, from storage."""
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "out",
        registry="127.0.0.1:1",
        storage=StorageSpec(kind="memory"),
        auth=False,
    )
    store = MemoryStore()
    app = create_app(settings, pool=PoolConfig(backends=()), store=store)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as http,
        ):
            now = datetime.now(UTC)
            await store.register_replica(
                Replica(
                    id="server-ghost",
                    url=f"http://127.0.0.1:{dead.getsockname()[1]}",
                    started_at=now,
                    heartbeat_at=now,
                )
            )
            job = make_job(
                "bld-0000000000000042",
                "gone",
                status=PackageStatus.RUNNING,
                lease_owner="server-ghost",
                lease_expires=now + timedelta(hours=1),
            )
            build = make_build("bld-0000000000000042", names=())
            await store.create_build(dataclasses.replace(build, packages=(job,)))
            svc = app.state.services
            await svc.storage.put_bytes(svc.locations.log_key(job, 1), b"kept in storage\n")
            logs = "/api/v1/builds/bld-0000000000000042/packages/gone/logs"
            with caplog.at_level(logging.INFO, logger="melange2.api.proxy"):
                resp = await http.get(logs)
            assert resp.status_code == 200, resp.text
            assert resp.text == "kept in storage\n"
            assert "replica server-ghost" in caplog.text and "serving here" in caplog.text
            replicas = {r["id"]: r for r in (await http.get("/api/v1/replicas")).json()}
            assert replicas["server-ghost"]["alive"] is True
            assert [r["here"] for r in replicas.values()].count(True) == 1
    finally:
        dead.close()


def broken_owner(seen: list[dict[str, str]]) -> Any:
    """A fake of the owning replica (an ASGI app): it records the request's headers,
    sends the log's first line, then dies in the middle of the stream."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        start = {"type": "http.response.start", "status": 200}
        await send({**start, "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"line one\n", "more_body": True})
        await asyncio.sleep(0.2)
        raise RuntimeError("the owner dies")

    return app


async def test_a_follow_its_owner_breaks_off_goes_on_from_storage_at_the_byte_reached(
    tmp_path: Path,
) -> None:
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "out",
        registry="127.0.0.1:1",
        storage=StorageSpec(kind="memory"),
        auth=False,
    )
    store = MemoryStore()
    app = create_app(settings, pool=PoolConfig(backends=()), store=store)
    headers: list[dict[str, str]] = []
    sock_owner, sock_b = socket.socket(), socket.socket()
    for sock in (sock_owner, sock_b):
        sock.bind(("127.0.0.1", 0))
    build_id = "bld-0000000000000043"
    async with (
        on_loopback(broken_owner(headers), sock_owner),
        on_loopback(app, sock_b),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{sock_b.getsockname()[1]}", timeout=60
        ) as http,
    ):
        now = datetime.now(UTC)
        await store.register_replica(
            Replica(
                id="server-owner",
                url=f"http://127.0.0.1:{sock_owner.getsockname()[1]}",
                started_at=now,
                heartbeat_at=now,
            )
        )
        job = make_job(
            build_id,
            "cut",
            status=PackageStatus.RUNNING,
            lease_owner="server-owner",
            lease_expires=now + timedelta(hours=1),
        )
        await store.create_build(
            dataclasses.replace(make_build(build_id, names=()), packages=(job,))
        )
        svc = app.state.services
        await svc.storage.put_bytes(svc.locations.log_key(job, 1), b"line one\nline two\n")
        logs = f"/api/v1/builds/{build_id}/packages/cut/logs"
        seen: list[str] = []
        async with http.stream(
            "GET", logs, params={"follow": "true"}, headers={"authorization": "Bearer abc"}
        ) as stream:
            lines = stream.aiter_lines()
            await _until(lines, "line two", seen)
            await store.transition(BuildId(build_id), "cut", PackageStatus.SUCCESS)
            async with asyncio.timeout(30):  # woken by the follower's periodic check
                rest = [line async for line in lines]
        assert seen + [r for r in rest if r] == ["line one", "line two"]  # nothing twice
        assert headers[0]["authorization"] == "Bearer abc"
        assert headers[0]["x-melange2-proxied-by"] == svc.replicas.id
