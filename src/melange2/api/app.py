"""The ASGI app: ``create_app(settings)`` builds the routes; its lifespan opens the
store, the pool, the registry client and the scheduler, and closes them again.

Shutdown (SIGINT/SIGTERM through uvicorn): stop accepting requests, finish in-flight
ones, stop the scheduler. Running packages are left ``running`` in the store; their
leases expire and the next start resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from melange2 import __version__, tracing, web
from melange2.api import errors
from melange2.api.routes import artifacts, backends, builds, events
from melange2.api.services import Services
from melange2.apk.signing import Signer, generate_key
from melange2.build.executor import Builder
from melange2.oci.registry import RegistryClient
from melange2.pool.config import BackendSpec, PoolConfig, load_pool_config
from melange2.pool.health import HealthProber
from melange2.pool.pool import BackendPool
from melange2.scheduler.loop import Scheduler, StateChange
from melange2.service.events import LocalEvents, event_of
from melange2.service.layout import Layout
from melange2.service.logs import LogHub
from melange2.service.metrics import Metrics
from melange2.service.runner import BuildkitRunner
from melange2.service.settings import ServerSettings
from melange2.service.submit import Submitter
from melange2.storage import Storage, open_storage
from melange2.store import open_store


class _State(TypedDict):
    services: Services


def pool_config(settings: ServerSettings) -> PoolConfig:
    if settings.backends_config is not None:
        return load_pool_config(settings.backends_config)
    if settings.buildkit_addr:
        return PoolConfig(
            backends=(
                BackendSpec(
                    addr=settings.buildkit_addr,
                    arch=settings.default_arch,
                    tls=settings.buildkit_tls,
                ),
            )
        )
    return PoolConfig(backends=())


def signer_for(settings: ServerSettings) -> Signer:
    """The farm's signing key, made on first start."""
    key = settings.key_path
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        generate_key(key)
    return Signer.from_files(key)


async def publish_key(settings: ServerSettings, storage: Storage) -> None:
    """The public half beside the repository: ``/repo/keys/<name>.rsa.pub``."""
    pub = settings.key_path.with_name(settings.key_path.name + ".pub")
    data = await asyncio.to_thread(pub.read_bytes)
    key = Layout().repo_key(pub.name)
    if not await storage.exists(key) or await storage.read_bytes(key) != data:
        await storage.put_bytes(key, data)


class BodyLimit(BaseHTTPMiddleware):
    """Refuse bodies over the configured size with 413, before reading them."""

    def __init__(self, app: object, limit: int) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.limit = limit

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return JSONResponse(
                errors.error_body(
                    f"request body of {length} bytes is over the limit of {self.limit}",
                    {"limit": self.limit},
                ),
                status_code=413,
            )
        return await call_next(request)


def create_app(settings: ServerSettings, *, pool: PoolConfig | None = None) -> FastAPI:
    """The app; ``pool``: the backends, when already loaded (else from ``settings``)."""
    metrics = Metrics()
    config = pool

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[_State]:
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        signer = await asyncio.to_thread(signer_for, settings)
        storage = open_storage(settings.storage_spec)
        await storage.check()
        await publish_key(settings, storage)
        hub = LogHub()
        live = LocalEvents()

        def on_change(change: StateChange) -> None:
            live.publish(event_of(change))
            if change.job is not None:  # log followers learn that the package moved
                hub.notify(f"{change.build_id}/{change.job.name}")

        pool = BackendPool.from_config(config or pool_config(settings))
        pool.on_breaker_change = metrics.breaker_changed
        async with open_store(
            settings.store, data_dir=settings.data_dir, dsn=settings.postgres_dsn
        ) as opened:
            store = tracing.traced_store(opened)  # store.* spans when tracing is on
            for stored in await store.list_backends():
                if stored.addr not in pool.backends:
                    pool.add(
                        BackendSpec(
                            addr=stored.addr,
                            arch=stored.arch,
                            labels=stored.labels,
                            max_jobs=stored.max_jobs,
                            tls=stored.tls,
                        ),
                        dynamic=True,
                    )
            async with RegistryClient(settings.registry) as registry:
                builder = Builder(registry, settings.data_dir / "cache")
                runner = BuildkitRunner(
                    settings, builder, signer, storage, hub, daemon_tls=pool.tls_for
                )
                scheduler = Scheduler(
                    store,
                    pool,
                    runner,
                    owner=f"server-{secrets.token_hex(4)}",
                    schedule=settings.schedule,
                    lease_ttl=settings.lease_ttl,
                    max_attempts=settings.max_attempts,
                    observer=metrics.scheduler_event,
                    before_build_end=runner.build_ending,
                    on_change=on_change,
                )
                svc = Services(
                    settings=settings,
                    store=store,
                    pool=pool,
                    scheduler=scheduler,
                    submitter=Submitter(settings, store, scheduler, pool, runner),
                    runner=runner,
                    storage=storage,
                    hub=hub,
                    events=live,
                )
                app.state.services = svc
                metrics.attach(pool)
                prober = HealthProber(
                    pool, interval=settings.probe_interval, on_latency=metrics.probe
                )
                await prober.probe_all()  # know the daemons before the first dispatch
                task = asyncio.create_task(scheduler.run(), name="scheduler")
                probes = asyncio.create_task(prober.run(), name="health probes")
                try:
                    yield {"services": svc}
                finally:
                    live.close()
                    prober.stop()
                    await probes
                    await scheduler.shutdown()
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    await builder.aclose()
                    await storage.aclose()

    app = FastAPI(
        title="melange2 remote builds",
        version=__version__,
        lifespan=lifespan,
        description="Build melange configs on a pool of BuildKit daemons.",
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    errors.install(app)
    app.include_router(builds.router)
    app.include_router(backends.router)
    app.include_router(artifacts.router)
    app.include_router(events.router)
    web.mount(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
