"""``/api/v1/backends``: the pool, configured and observed at runtime."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from melange2.api.schemas import (
    AddBackendRequest,
    BackendList,
    BackendOut,
    BackendStatusList,
    BackendStatusOut,
    ErrorOut,
    RemoveBackendRequest,
)
from melange2.api.services import Services, services
from melange2.buildkit.llb.platform import Platform
from melange2.errors import ConfigError, NotFound, RequestError
from melange2.pool.breaker import BreakerState
from melange2.pool.config import BackendSpec
from melange2.store.base import StoredBackend

router = APIRouter(prefix="/api/v1", tags=["backends"])
Svc = Annotated[Services, Depends(services)]
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
}


class Conflict(RequestError):
    """Conflict."""

    code = "conflict"


@router.get("/backends", response_model=BackendList)
async def list_backends(svc: Svc, arch: str | None = None) -> BackendList:
    backends = [b for b in svc.pool.serving() if arch is None or b.arch == arch]
    return BackendList(
        backends=[BackendOut(addr=b.addr, arch=b.arch, labels=dict(b.labels)) for b in backends],
        architectures=svc.pool.architectures(),
    )


@router.post("/backends", status_code=201, response_model=BackendOut, responses=_ERRORS)
async def add_backend(request: AddBackendRequest, svc: Svc) -> BackendOut:
    """Add a backend; it is kept in the store and comes back after a restart."""
    try:
        Platform.from_arch(request.arch)
    except ConfigError as exc:
        raise RequestError(f"arch: {exc}") from exc
    if not request.addr.startswith(("tcp://", "unix://")):
        raise RequestError("addr: use tcp://host:port or unix:///path")
    existing = svc.pool.backends.get(request.addr)
    if existing is not None and not existing.draining:
        raise Conflict(f"backend {request.addr} already exists")
    spec = BackendSpec(
        addr=request.addr, arch=request.arch, max_jobs=request.maxJobs, labels=request.labels
    )
    backend = svc.pool.add(spec, dynamic=True)
    await svc.store.save_backend(
        StoredBackend(
            addr=backend.addr, arch=backend.arch, labels=backend.labels, max_jobs=backend.max_jobs
        )
    )
    return BackendOut(addr=backend.addr, arch=backend.arch, labels=dict(backend.labels))


@router.delete("/backends", status_code=204, responses=_ERRORS)
async def remove_backend(request: RemoveBackendRequest, svc: Svc) -> Response:
    """Drain a backend: running jobs finish, no new ones. The last one stays."""
    backend = svc.pool.backends.get(request.addr)
    if backend is None or backend.draining:
        raise NotFound(f"no backend {request.addr}")
    try:
        svc.pool.remove(request.addr)
    except ConfigError as exc:
        raise Conflict(str(exc)) from exc
    await svc.store.delete_backend(request.addr)
    return Response(status_code=204)


@router.get("/backends/status", response_model=BackendStatusList)
async def backends_status(svc: Svc) -> BackendStatusList:
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
            )
        )
    return BackendStatusList(backends=out)
