"""``/api/v1/backends``: the pool, configured and observed at runtime."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from melange2.api.auth import BackendAdmin, FarmReader
from melange2.api.services import Services, services
from melange2.buildkit.tls import ClientTLS, TLSMaterialError, client_tls_from_pem
from melange2.errors import ConfigError, NotFound, RequestError
from melange2.platform import Platform
from melange2.pool.breaker import BreakerState
from melange2.pool.config import BackendSpec
from melange2.pool.pool import PoolBackend
from melange2.resources import cpu_millis, format_cpu, format_memory, memory_bytes
from melange2.store.base import StoredBackend
from melange2.wire import (
    AddBackendRequest,
    BackendList,
    BackendStatusList,
    BackendStatusOut,
    ErrorOut,
    PoolBackendOut,
    RemoveBackendRequest,
)

router = APIRouter(prefix="/api/v1", tags=["backends"])
Svc = Annotated[Services, Depends(services)]
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut, "description": "no valid token"},
    403: {"model": ErrorOut, "description": "the token's role does not allow it"},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
}


class Conflict(RequestError):
    """Conflict."""

    code = "conflict"


def _cpu(millis: int | None) -> str | None:
    return None if millis is None else format_cpu(millis)


def _memory(amount: int | None) -> str | None:
    return None if amount is None else format_memory(amount)


def _out(b: PoolBackend) -> PoolBackendOut:
    return PoolBackendOut(
        addr=b.addr,
        arch=b.arch,
        labels=dict(b.labels),
        tls=b.tls is not None,
        cpu=_cpu(b.cpu),
        memory=_memory(b.memory),
    )


@router.get("/backends", response_model=BackendList, responses=_ERRORS)
async def list_backends(_: FarmReader, svc: Svc, arch: str | None = None) -> BackendList:
    backends = [b for b in svc.pool.serving() if arch is None or b.arch == arch]
    return BackendList(backends=[_out(b) for b in backends], architectures=svc.pool.architectures())


def _tls(request: AddBackendRequest) -> ClientTLS | None:
    if request.tls is None:
        return None
    try:
        return client_tls_from_pem(
            ca_cert=request.tls.caCert,
            cert=request.tls.cert,
            key=request.tls.key,
            server_name=request.tls.serverName,
        )
    except TLSMaterialError as exc:
        hint = "; give the PEM text itself, not a path" if "not PEM" in exc.problem else ""
        raise RequestError(
            f"tls.{exc.field}: {exc.problem}{hint} (backend {request.addr})"
        ) from exc


@router.post("/backends", status_code=201, response_model=PoolBackendOut, responses=_ERRORS)
async def add_backend(_: BackendAdmin, request: AddBackendRequest, svc: Svc) -> PoolBackendOut:
    """Add a backend (role ``admin``); it is kept in the store and comes back after a restart. With
    ``tls`` (PEM text, checked now) it is reached over TLS. ``cpu`` and ``memory``
    (quantities: ``"8"``, ``"32Gi"``) declare what its machine has; packages are
    placed by them (absent: unlimited, only ``maxJobs`` caps it)."""
    try:
        Platform.from_arch(request.arch)
    except ConfigError as exc:
        raise RequestError(f"arch: {exc}") from exc
    if not request.addr.startswith(("tcp://", "unix://")):
        raise RequestError("addr: use tcp://host:port or unix:///path")
    tls = _tls(request)
    existing = svc.pool.backends.get(request.addr)
    if existing is not None and not existing.draining:
        raise Conflict(f"backend {request.addr} already exists")
    spec = BackendSpec(
        addr=request.addr,
        arch=request.arch,
        max_jobs=request.maxJobs,
        labels=request.labels,
        tls=tls,
        cpu=None if request.cpu is None else cpu_millis(request.cpu),
        memory=None if request.memory is None else memory_bytes(request.memory),
    )
    backend = svc.pool.add(spec, dynamic=True)
    await svc.store.save_backend(
        StoredBackend(
            addr=backend.addr,
            arch=backend.arch,
            labels=backend.labels,
            max_jobs=backend.max_jobs,
            tls=backend.tls,
            cpu_millis=backend.cpu,
            memory_bytes=backend.memory,
        )
    )
    svc.scheduler.backends_changed()  # the other replicas reload them
    return _out(backend)


@router.delete("/backends", status_code=204, responses=_ERRORS)
async def remove_backend(_: BackendAdmin, request: RemoveBackendRequest, svc: Svc) -> Response:
    """Drain a backend (role ``admin``): running jobs finish, no new ones. The last one stays."""
    backend = svc.pool.backends.get(request.addr)
    if backend is None or backend.draining:
        raise NotFound(f"no backend {request.addr}")
    try:
        svc.pool.remove(request.addr)
    except ConfigError as exc:
        raise Conflict(str(exc)) from exc
    await svc.store.delete_backend(request.addr)
    svc.scheduler.backends_changed()
    return Response(status_code=204)


@router.get("/backends/status", response_model=BackendStatusList, responses=_ERRORS)
async def backends_status(_: FarmReader, svc: Svc) -> BackendStatusList:
    out = []
    for b in svc.pool.backends.values():
        state = "error" if b.platform_error else b.breaker.state.value
        out.append(
            BackendStatusOut(
                addr=b.addr,
                arch=b.arch,
                labels=dict(b.labels),
                maxJobs=b.max_jobs,
                activeJobs=b.active,
                failures=b.breaker.failures,
                circuitOpen=b.breaker.state is BreakerState.OPEN,
                lastFailure=b.breaker.last_failure,
                circuitState=state,
                lastProbe=b.last_probe,
                lastProbeResult=b.last_probe_result,
                buildkitVersion=b.buildkit_version,
                platforms=list(b.platforms),
                draining=b.draining,
                tls=b.tls is not None,
                cpu=_cpu(b.cpu),
                memory=_memory(b.memory),
                cpuInUse=format_cpu(b.cpu_used),
                memoryInUse=format_memory(b.memory_used),
                reservedFor=b.reserved_for,
            )
        )
    return BackendStatusList(backends=out)
