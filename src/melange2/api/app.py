"""The ASGI app: ``create_app(settings)`` builds the routes; its lifespan opens the
storage, the store, the pool, the registry client, the builder and the scheduler onto
one ``AsyncExitStack`` and closes them again in reverse order, also when one fails
while starting (nothing opened before it leaks). Tests replace the store, the storage,
the daemons (``buildkit``) and the scheduler's clock through :func:`create_app`.

Several servers on one PostgreSQL database (``--store postgres``, same
``--postgres-dsn``) serve one farm: replica mode is automatic when the store
``supports_listen_notify`` (:class:`~melange2.store.sql.bus.PostgresReplicas`, see
:mod:`melange2.scheduler.replicas`); no flag turns it on or off.

Shutdown (SIGINT/SIGTERM through uvicorn): stop accepting requests, finish in-flight
ones, stop the scheduler. Running packages are left ``running`` in the store; their
leases expire and the next start resumes them.

The scheduler's loop and the health probes run under a
:class:`~melange2.service.supervisor.Supervisor`: if one ends, ``/healthz`` answers 503
with the reason, submissions are refused (503), and ``on_fatal`` is called (the
server process shuts down and exits non-zero).

Request bodies are limited to ``--max-body-bytes``, by their ``Content-Length`` before
anything is read and by counting what arrives (a chunked body has no length): 413.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import TypedDict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from melange2 import __version__, tracing, web
from melange2.api import errors
from melange2.api.auth import FarmReader
from melange2.api.routes import artifacts, backends, builds, events, replicas, sources, tokens
from melange2.api.services import Services, services
from melange2.apk.signing import Signer, generate_key
from melange2.auth import AuthPolicy
from melange2.build.executor import Builder
from melange2.build.source_cache import SourceCache
from melange2.buildkit.client import BuildkitClient
from melange2.buildkit.solver import Connect
from melange2.oci.registry import RegistryClient
from melange2.pool.config import BackendSpec, PoolConfig, load_pool_config
from melange2.pool.health import HealthProber
from melange2.pool.pool import BackendPool
from melange2.repo.policy import FetchPolicy
from melange2.scheduler.loop import Clock, Scheduler, StateChange
from melange2.scheduler.replicas import backend_spec
from melange2.service.events import LocalEvents, event_of
from melange2.service.gitsource import GitFetcher
from melange2.service.layout import Layout, Locations
from melange2.service.logs import LogHub
from melange2.service.metrics import Metrics
from melange2.service.publish import Publication
from melange2.service.redact import Redactor
from melange2.service.replicas import ReplicaRegistry, advertise_url
from melange2.service.reuse import ReuseIndex, SubmissionReuse
from melange2.service.runner import BuildkitRunner
from melange2.service.settings import ServerSettings
from melange2.service.submit import Submitter
from melange2.service.supervisor import Supervisor
from melange2.storage import Storage, open_storage
from melange2.store import open_store
from melange2.store.base import JobStore
from melange2.store.sql import PostgresStore
from melange2.store.sql.bus import PostgresReplicas

_log = logging.getLogger(__name__)


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


def fetch_policy(settings: ServerSettings) -> FetchPolicy:
    """What configs may make this server fetch: ``--fetch-allow``; the operator's own
    repositories and keys are always allowed."""
    own_key = str(settings.key_path) + ".pub"
    return FetchPolicy.for_server(
        settings.fetch_allow,
        trusted=[*settings.repositories, *settings.keyrings, own_key],
        timeout=settings.fetch_timeout,
    )


def auth_policy(settings: ServerSettings) -> AuthPolicy:
    return AuthPolicy(enabled=settings.auth, public_read=settings.public_read)


def git_fetcher(settings: ServerSettings) -> GitFetcher:
    return GitFetcher(
        jobs=settings.git_jobs,
        timeout=settings.git_timeout,
        connect_timeout=settings.git_connect_timeout,
        allow_local=settings.git_allow_local,
        allow=settings.git_allow,
        max_bytes=settings.max_body_bytes,
    )


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


SOURCES_PREFIX = "/api/v1/sources/"


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with a JSON 413: by ``Content-Length``
    before anything is read, and by counting the bytes as they arrive (a chunked body
    has no length): past the limit, reading the body raises :class:`errors.BodyTooLarge`
    (a 413 through the app's error mapper) and nothing more is read. Source uploads
    (``/api/v1/sources/``) are left to ``--max-source-bytes``, checked as they stream."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(SOURCES_PREFIX):
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse(
                errors.error_body(
                    f"request body of {length} bytes is over the limit of {self.limit}",
                    {"limit": self.limit},
                ),
                status_code=413,
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise errors.BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


def create_app(
    settings: ServerSettings,
    *,
    pool: PoolConfig | None = None,
    on_fatal: Callable[[str], None] | None = None,
    store: JobStore | None = None,
    storage: Storage | None = None,
    buildkit: Connect = BuildkitClient,
    clock: Clock | None = None,
) -> FastAPI:
    """The app; ``pool``: the backends, when already loaded (else from ``settings``).
    ``on_fatal(reason)`` is called once if a side task (the scheduler, the health
    probes) ends: the caller should stop the server (``melange-server`` does, and exits
    non-zero).

    The rest replace a part for tests (fast in-process ones, over httpx's
    ``ASGITransport``): ``store`` and ``storage`` are used as given (opened and closed
    by the caller), ``buildkit`` is how the builds and the health probes reach the
    daemons (``melange2.testenv.buildkit.FakeBuildkit(handler)``), ``clock`` the
    scheduler's."""
    metrics = Metrics()
    config = pool

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[_State]:
        if not settings.auth:
            _log.warning(
                "authentication is off (--no-auth): anyone who reaches this server may "
                "submit and cancel builds and add and remove backends"
            )
        # every part is owned by the exit stack, in the order it was opened: whatever
        # fails while starting, what was opened before it is closed again
        async with contextlib.AsyncExitStack() as stack:
            svc = await _start(
                stack,
                settings,
                config,
                metrics,
                on_fatal=on_fatal,
                store=store,
                storage=storage,
                buildkit=buildkit,
                clock=clock,
            )
            app.state.services = svc
            yield {"services": svc}

    app = FastAPI(
        title="melange2 remote builds",
        version=__version__,
        lifespan=lifespan,
        description="Build melange configs on a pool of BuildKit daemons.",
    )
    app.state.auth_policy = auth_policy(settings)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    errors.install(
        app,
        Redactor.for_server(
            data_dir=settings.data_dir, output_dir=settings.output_dir, key_path=settings.key_path
        ),
    )
    app.include_router(builds.router)
    app.include_router(backends.router)
    app.include_router(artifacts.router)
    app.include_router(events.router)
    app.include_router(tokens.router)
    app.include_router(sources.router)
    app.include_router(replicas.router)
    web.mount(app)

    @app.get(
        "/healthz",
        tags=["health"],
        responses={503: {"description": "a side task ended: the server is shutting down"}},
    )
    async def healthz(request: Request) -> Response:
        """``{"status":"ok"}``; 503 with the reason once the scheduler or the health
        probes stopped (the server then exits)."""
        failure = services(request).supervisor.failure
        if failure is not None:
            return JSONResponse(
                {"status": "failed", **errors.error_body(failure, {"code": "unhealthy"})},
                status_code=503,
            )
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def prometheus(_: FarmReader) -> Response:
        """Prometheus metrics (a ``read`` token: give the scraper one)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


async def _start(
    stack: contextlib.AsyncExitStack,
    settings: ServerSettings,
    config: PoolConfig | None,
    metrics: Metrics,
    *,
    on_fatal: Callable[[str], None] | None,
    store: JobStore | None,
    storage: Storage | None,
    buildkit: Connect,
    clock: Clock | None,
) -> Services:
    """Open the server's parts onto ``stack`` (closed in reverse order when it unwinds)
    and start its side tasks under a supervisor; what the routes use."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    signer = await asyncio.to_thread(signer_for, settings)
    if storage is None:
        storage = open_storage(settings.storage_spec)
        stack.push_async_callback(storage.aclose)
        await storage.check()
    await publish_key(settings, storage)
    source_cache = SourceCache.open(
        settings.source_cache_location,
        work_dir=settings.data_dir / "tmp" / "sources",
        spec=settings.source_cache_spec,
    )
    stack.push_async_callback(source_cache.aclose)
    await source_cache.storage.check()
    hub = LogHub()
    live = LocalEvents()

    def on_change(change: StateChange) -> None:
        live.publish(event_of(change))
        if change.job is not None:  # log followers learn that the package moved
            hub.notify(f"{change.build_id}/{change.job.name}")

    pool = BackendPool.from_config(config or pool_config(settings))
    pool.on_breaker_change = metrics.breaker_changed
    if store is None:
        store = await stack.enter_async_context(
            open_store(settings.store, data_dir=settings.data_dir, dsn=settings.postgres_dsn)
        )
    owner = f"server-{secrets.token_hex(4)}"
    # several replicas on one database: automatic where the store can wake the others
    replicas = (
        PostgresReplicas(store, owner=owner)
        if isinstance(store, PostgresStore) and store.supports_listen_notify
        else None
    )
    store = tracing.traced_store(store)  # store.* spans when tracing is on
    for stored in await store.list_backends():
        if stored.addr not in pool.backends:
            pool.add(backend_spec(stored), dynamic=True)
    registry = await stack.enter_async_context(RegistryClient(settings.registry))
    policy = fetch_policy(settings)
    builder = Builder(registry, settings.data_dir / "cache", policy, connect=buildkit)
    stack.push_async_callback(builder.aclose)
    locations = Locations(storage, settings)
    publication = Publication(settings, storage, signer, locations, lock=store.hold_lock)
    reuse = ReuseIndex(storage, locations.layout, signer)
    runner = BuildkitRunner(
        settings,
        builder,
        locations,
        publication,
        reuse,
        hub,
        daemon_tls=pool.tls_for,
        source_cache=source_cache,
    )
    stack.push_async_callback(runner.drain)  # after the scheduler stops, before storage
    peers = ReplicaRegistry(  # the scheduler's lease owner is the replica's id
        store,
        replica_id=owner,
        url=settings.advertise_url or advertise_url(settings.listen_addr),
        ttl=settings.lease_ttl,
    )
    scheduler = Scheduler(
        store,
        pool,
        runner,
        owner=owner,
        schedule=settings.schedule,
        lease_ttl=settings.lease_ttl,
        max_attempts=settings.max_attempts,
        observer=metrics.scheduler_event,
        before_build_end=publication.build_ending,
        clock=clock,
        on_change=on_change,
        replicas=replicas,
    )
    submitter = Submitter(
        settings,
        store,
        scheduler,
        pool,
        SubmissionReuse(settings, reuse, builder.environments, publication, locations),
        git=git_fetcher(settings),
        policy=policy,
        parse_cache_bytes=settings.parse_cache_bytes,
    )
    stack.push_async_callback(submitter.aclose)  # its plan workers, if any started
    metrics.attach(pool)
    prober = HealthProber(
        pool, interval=settings.probe_interval, connect=buildkit, on_latency=metrics.probe
    )
    await prober.probe_all()  # know the daemons before the first dispatch
    supervisor = Supervisor(on_failure=on_fatal)
    await peers.register()  # before the first dispatch: its packages name a known replica
    # the replica's row goes last, once its scheduler stopped
    stack.push_async_callback(supervisor.aclose, prober.stop, scheduler.shutdown, peers.stop)
    stack.callback(live.close)  # first: the event streams end, their clients go
    supervisor.start("the scheduler", scheduler.run())
    supervisor.start("the health probes", prober.run())
    supervisor.start("the replica heartbeat", peers.run())
    return Services(
        settings=settings,
        store=store,
        pool=pool,
        scheduler=scheduler,
        submitter=submitter,
        locations=locations,
        reuse=reuse,
        publication=publication,
        storage=storage,
        hub=hub,
        source_cache=source_cache,
        supervisor=supervisor,
        events=live,
        replicas=peers,
    )
