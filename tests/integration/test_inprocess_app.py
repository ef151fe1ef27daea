"""The whole server in this process, on a fake BuildKit: the API, the submission, the
scheduler, the runner, the executor (planning, environments composed from the bootstrap
repository, packaging) and the lifespan, through httpx's ``ASGITransport``. The fake
daemon is ``melange2.testenv.buildkit.FakeBuildkit``, whose handler answers each solve
with the files of the package's melange-out tree; the registry is a real one
(``registry_farm``: no daemons); the store is in memory. The same paths run on real
buildkitd in the e2e tests (test_server_e2e.py, test_reuse_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from melange2.api.app import create_app
from melange2.apk.signing import generate_key
from melange2.buildkit.solver import Connect
from melange2.errors import SolveFailed, StoreError
from melange2.farm.local import FarmEnv
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.service.settings import ServerSettings
from melange2.storage import StorageSpec, open_storage
from melange2.store.memory import MemoryStore
from melange2.testenv.buildkit import FakeBuildkit, SolveCall

pytestmark = pytest.mark.anyio
ADDR = "tcp://fake-buildkit:1234"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config(name: str, *, needs: tuple[str, ...] = (), version: str = "1.0.0") -> str:
    packages = "\n".join(f"      - {p}" for p in ("busybox", *needs))
    return (
        f"package:\n  name: {name}\n  version: {version}\n  description: in-process {name}\n"
        f"environment:\n  contents:\n    packages:\n{packages}\n"
        f"pipeline:\n  - name: build {name}\n    runs: echo {name}\n"
    )


def built(call: SolveCall) -> dict[str, bytes]:
    """What a build's solve makes: a marker file in each of its packages."""
    return {f"{n}/usr/share/{n}/marker": f"{n}\n".encode() for n in call.packages}


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "farm.rsa"
    generate_key(path, key_size=2048)
    return path


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
        auth=False,  # tokens are test_auth_routes.py's; these test the parts below them
        **over,
    )


@contextlib.asynccontextmanager
async def serving(
    settings: ServerSettings, buildkit: Connect, *, slots: int = 4, **over: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    pool = PoolConfig(backends=(BackendSpec(addr=ADDR, arch="x86_64", max_jobs=slots),))
    app = create_app(settings, pool=pool, store=MemoryStore(), buildkit=buildkit, **over)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://farm", timeout=60
        ) as http:
            yield app, http


async def wait(http: httpx.AsyncClient, build_id: str) -> dict[str, Any]:
    async with asyncio.timeout(120):
        while True:
            build: dict[str, Any] = (await http.get(f"/api/v1/builds/{build_id}")).json()
            if build["status"] not in ("pending", "running"):
                return build
            await asyncio.sleep(0.05)


async def submit(http: httpx.AsyncClient, **body: Any) -> str:
    resp = await http.post("/api/v1/builds", json=body)
    assert resp.status_code == 201, resp.text
    build_id: str = resp.json()["id"]
    return build_id


def by_name(build: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in build["packages"]}


async def test_a_build_runs_through_every_layer_on_the_fake_daemon(
    registry_farm: FarmEnv, tmp_path: Path, key: Path
) -> None:
    fake = FakeBuildkit(built)
    async with serving(settings_for(registry_farm, tmp_path, key), fake) as (_, http):
        configs = [config("ip-app", needs=("ip-lib",)), config("ip-lib")]
        build = await wait(http, await submit(http, configs=configs, mode="dag"))
        assert build["status"] == "success", build
        packages = by_name(build)
        assert packages["ip-app"]["dependencies"] == ["ip-lib"]
        assert packages["ip-lib"]["finished_at"] <= packages["ip-app"]["started_at"]
        # the daemon got one solve per package, in dependency order, at the pool's address
        assert [c.packages for c in fake.solves] == [("ip-lib",), ("ip-app",)]
        assert {c.addr for c in fake.solves} == {ADDR}
        # the packages are real APKs in storage, in the farm's repository, logged
        listed = (await http.get(f"/api/v1/builds/{build['id']}/packages/ip-app/artifacts")).json()
        assert sorted(a["path"] for a in listed["artifacts"]) == [
            "x86_64/APKINDEX.tar.gz",
            "x86_64/ip-app-1.0.0-r0.apk",
        ]
        index = await http.get("/repo/x86_64/APKINDEX.tar.gz")
        assert index.status_code == 200 and index.content[:2] == b"\x1f\x8b"
        log = (await http.get(f"/api/v1/builds/{build['id']}/packages/ip-app/logs")).text
        assert "build ip-app" in log and "input digest sha256:" in log

        # the same again: both reused at submission, nothing asked of the daemon
        before = len(fake.solves)
        again = await wait(http, await submit(http, configs=configs, mode="dag"))
        assert again["status"] == "success"
        assert all(p["cached"] and not p["attempts"] for p in again["packages"])
        assert len(fake.solves) == before


async def test_a_solve_that_fails_fails_its_package_and_skips_dependents(
    registry_farm: FarmEnv, tmp_path: Path, key: Path
) -> None:
    def handler(call: SolveCall) -> dict[str, bytes]:
        if "ip-broken" in call.packages:
            raise SolveFailed("step 'build ip-broken' failed with exit code 3")
        return built(call)

    async with serving(settings_for(registry_farm, tmp_path, key), FakeBuildkit(handler)) as (
        _,
        http,
    ):
        configs = [config("ip-broken"), config("ip-child", needs=("ip-broken",)), config("ip-ok")]
        build = await wait(http, await submit(http, configs=configs, mode="dag"))
        packages = by_name(build)
        assert build["status"] == "partial"
        assert packages["ip-broken"]["status"] == "failed"
        assert "exit code 3" in packages["ip-broken"]["error"]
        assert packages["ip-child"]["status"] == "skipped"
        assert packages["ip-ok"]["status"] == "success"


async def test_two_builds_on_one_server_each_ordered_by_its_own_schedule(
    registry_farm: FarmEnv, tmp_path: Path, key: Path
) -> None:
    """One slot, held by a first build while a fifo build and a critical-path build of the
    same shape wait: a (alone), b (c needs it). critical-path starts b first (the longer
    chain), fifo a (submitted first); the server's --schedule is critical-path."""
    gate = asyncio.Event()

    async def handler(call: SolveCall) -> dict[str, bytes]:
        if "ip-hold" in call.packages:
            await gate.wait()
        return built(call)

    fake = FakeBuildkit(handler)
    settings = settings_for(registry_farm, tmp_path, key)
    async with serving(settings, fake, slots=1) as (_, http):
        hold = await submit(http, configs=[config("ip-hold")])
        async with asyncio.timeout(60):
            while True:
                if fake.solves:
                    break
                await asyncio.sleep(0.02)

        def shape(p: str) -> list[str]:
            return [config(f"{p}-a"), config(f"{p}-b"), config(f"{p}-c", needs=(f"{p}-b",))]

        fifo = await submit(http, configs=shape("ip-f"), mode="dag", schedule="fifo")
        cp = await submit(http, configs=shape("ip-c"), mode="dag", schedule="critical-path")
        gate.set()
        for build_id in (hold, fifo, cp):
            assert (await wait(http, build_id))["status"] == "success"
        assert (await http.get(f"/api/v1/builds/{fifo}")).json()["spec"]["schedule"] == "fifo"
    started = [c.packages[0] for c in fake.solves]
    assert [n for n in started if n.startswith("ip-f-")] == ["ip-f-a", "ip-f-b", "ip-f-c"]
    assert [n for n in started if n.startswith("ip-c-")] == ["ip-c-b", "ip-c-a", "ip-c-c"]


async def test_the_server_stops_when_its_health_probes_die(
    registry_farm: FarmEnv, tmp_path: Path, key: Path
) -> None:
    """A bug in a side task is no silent failure: /healthz says why (503), submissions
    are refused, and the app asks to be shut down."""

    class Broken(FakeBuildkit):
        """Answers the first probe, then fails the probes with a bug."""

        probes = 0

        def __call__(self, addr: str, **kw: Any) -> Any:
            daemon = super().__call__(addr, **kw)
            self.probes += 1
            if self.probes > 1:

                async def broken() -> Any:
                    raise RuntimeError("a bug in the probe")

                daemon.info = broken  # type: ignore[method-assign]
            return daemon

    fatal: list[str] = []
    settings = settings_for(registry_farm, tmp_path, key)
    async with serving(settings, Broken(built), on_fatal=fatal.append) as (_, http):
        async with asyncio.timeout(10):
            while True:
                health = await http.get("/healthz")
                if health.status_code == 503:
                    break
                await asyncio.sleep(0.05)
        assert "the health probes failed: RuntimeError: a bug in the probe" in health.text
        assert fatal and "health probes" in fatal[0]
        refused = await http.post("/api/v1/builds", json={"configs": [config("ip-late")]})
        assert refused.status_code == 503


async def test_a_start_that_fails_leaves_nothing_running(
    registry_farm: FarmEnv, tmp_path: Path, key: Path
) -> None:
    """The store fails while the server starts: the lifespan gives up with the store's
    error, and closes what it had opened (no side task of it left behind)."""
    store = MemoryStore()
    await store.aclose()  # every call now fails: the store is closed
    pool = PoolConfig(backends=(BackendSpec(addr=ADDR, arch="x86_64", max_jobs=1),))
    app = create_app(
        settings_for(registry_farm, tmp_path, key),
        pool=pool,
        store=store,
        buildkit=FakeBuildkit(built),
    )
    before = asyncio.all_tasks()
    with pytest.raises(StoreError):
        async with app.router.lifespan_context(app):
            raise AssertionError("started with a closed store")
    assert asyncio.all_tasks() == before


async def test_a_package_running_at_shutdown_keeps_its_log(
    registry_farm: FarmEnv, tmp_path: Path, key: Path
) -> None:
    """The server stops while a solve runs: the attempt is cancelled, and its log (kept
    shielded from the cancellation) is in storage before the lifespan ends, not written
    into a storage already closed (the lifespan drains the runner first)."""

    started = asyncio.Event()

    async def handler(call: SolveCall) -> dict[str, bytes]:
        started.set()
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    fake = FakeBuildkit(handler)
    storage = open_storage(StorageSpec(kind="memory"))
    settings = settings_for(registry_farm, tmp_path, key, storage=StorageSpec(kind="memory"))
    try:
        async with serving(settings, fake, storage=storage) as (_, http):
            build_id = await submit(http, configs=[config("ip-stuck")])
            async with asyncio.timeout(60):
                await started.wait()
        log = await storage.read_bytes(f"{build_id}-ip-stuck/logs/build.log")
        assert log.startswith(b"input digest sha256:"), log
        assert log.rstrip().endswith(b"cancelled"), log
    finally:
        await storage.aclose()
