"""A package's artifacts (list, download) and the farm's APK repository, read-only, from
whatever storage the farm uses: ``/repo/<arch>/APKINDEX.tar.gz``, ``/repo/<arch>/<file>.apk``,
``/repo/keys/<key>.rsa.pub`` (so apk and apko can use the farm as a repository)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from melange2.api.auth import BuildReader
from melange2.api.services import Services, services
from melange2.errors import NotFound, RequestError
from melange2.ids import BuildId
from melange2.jobs import PackageJob
from melange2.service.layout import REPO, check_name
from melange2.storage import StorageNotFound, validate_key
from melange2.wire import ArtifactList, ArtifactOut

router = APIRouter(tags=["artifacts"])
Svc = Annotated[Services, Depends(services)]
_ERRORS: dict[int | str, dict[str, object]] = {400: {}, 401: {}, 403: {}, 404: {}}


async def _job(svc: Services, build_id: str, name: str) -> PackageJob:
    if not build_id.startswith("bld-"):
        raise NotFound(f"no build {build_id!r}")
    build = await svc.store.get_build(BuildId(build_id))
    job = build.package(name)
    if job is None:
        raise NotFound(f"build {build_id} has no package {name!r}")
    return job


def _artifact_path(path: str) -> str:
    """``<arch>/<file>``, checked: nothing else can be asked for."""
    parts = path.split("/")
    try:
        if len(parts) != 2:
            raise ValueError("expected <arch>/<file>")
        check_name("arch", parts[0])
        check_name("file name", parts[1])
    except ValueError as exc:
        raise RequestError(f"artifact path {path!r}: {exc}") from exc
    return path


@router.get(
    "/api/v1/builds/{build_id}/packages/{name}/artifacts",
    response_model=ArtifactList,
    responses=_ERRORS,
)
async def list_artifacts(build_id: str, name: str, svc: Svc, _: BuildReader) -> ArtifactList:
    """The package's files (APKs and their index), once it has built."""
    job = await _job(svc, build_id, name)
    prefix = svc.locations.artifacts_key(job)
    found = []
    for obj in await svc.storage.list(prefix):
        rel = obj.key[len(prefix) + 1 :]
        if rel.count("/") != 1 or rel.startswith("logs/"):
            continue
        found.append(
            ArtifactOut(
                path=rel,
                size=obj.size,
                location=svc.storage.url(obj.key),
                url=f"/api/v1/builds/{build_id}/packages/{name}/artifacts/{rel}",
            )
        )
    return ArtifactList(artifacts=found)


@router.get(
    "/api/v1/builds/{build_id}/packages/{name}/artifacts/{path:path}",
    responses={**_ERRORS, 200: {"content": {"application/octet-stream": {}}}},
    response_class=Response,
)
async def get_artifact(build_id: str, name: str, path: str, svc: Svc, _: BuildReader) -> Response:
    job = await _job(svc, build_id, name)
    key = f"{svc.locations.artifacts_key(job)}/{_artifact_path(path)}"
    return await _serve(svc, key, head=False, missing=f"{name} in {build_id} has no {path}")


async def _serve(svc: Services, key: str, *, head: bool, missing: str) -> Response:
    media = "application/gzip" if key.endswith(".tar.gz") else "application/octet-stream"
    if key.endswith(".pub"):
        media = "application/x-pem-file"
    local = svc.storage.local_path(key)  # a directory: served from the file itself
    if local is not None:
        if not local.is_file():
            raise NotFound(missing)
        return FileResponse(local, media_type=media)
    try:
        size = await svc.storage.size(key)
    except StorageNotFound as exc:
        raise NotFound(missing) from exc
    headers = {"content-length": str(size)}
    if head:
        return Response(status_code=200, headers=headers, media_type=media)
    chunks = svc.storage.iter_chunks(key)
    first = await _first(chunks)  # a vanished object is a 404, not a broken stream

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type=media, headers=headers)


async def _first(chunks: AsyncIterator[bytes]) -> bytes:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return b""
    except StorageNotFound as exc:
        raise NotFound("not found") from exc


@router.api_route(
    "/repo/{path:path}", methods=["GET", "HEAD"], response_class=Response, include_in_schema=False
)
async def repository(path: str, request: Request, svc: Svc) -> Response:
    """The farm's APK repository, read-only, for anyone (no token needed)."""
    parts = path.split("/")
    try:
        if len(parts) != 2:
            raise ValueError("expected <arch>/<file> or keys/<file>")
        check_name("directory", parts[0])
        check_name("file name", parts[1])
        key = validate_key(f"{REPO}/{path}")
    except ValueError as exc:
        raise NotFound(f"no {path!r} in the repository ({exc})") from exc
    return await _serve(
        svc, key, head=request.method == "HEAD", missing=f"no {path} in the repository"
    )
