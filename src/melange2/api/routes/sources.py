"""The source cache over HTTP: ``PUT /api/v1/sources/<digest>`` stores a file (checked
against its digest as it streams, never held whole in memory; 413 over
``--max-source-bytes``), ``HEAD``/``GET`` tell whether it is there (and ``GET`` streams
it). Builds' ``fetch`` steps find these files in /var/cache/melange.

Uploading needs the submit role; ``HEAD`` and ``GET`` the read role (not anonymous,
even with ``--public-read``: an uploaded file may be anyone's private source)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from melange2.api.auth import FarmReader, Submitter
from melange2.api.services import Services, services
from melange2.build.source_cache import SourceTooLarge, parse_digest
from melange2.errors import NotFound
from melange2.wire import ErrorOut, SourceOut

router = APIRouter(prefix="/api/v1/sources", tags=["sources"])
Svc = Annotated[Services, Depends(services)]
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut, "description": "no valid token"},
    403: {"model": ErrorOut, "description": "the token's role does not allow it"},
    404: {"model": ErrorOut},
    413: {"model": ErrorOut},
}


@router.put("/{digest}", response_model=SourceOut, status_code=201, responses=_ERRORS)
async def put_source(
    digest: str, request: Request, svc: Svc, response: Response, _: Submitter
) -> SourceOut:
    """Store the body under ``digest`` (``sha256:<hex>``); refused (400) when the body
    has another digest, 413 when it is larger than the server accepts."""
    wanted = parse_digest(digest)
    limit = svc.settings.max_source_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise SourceTooLarge(
            f"source {wanted[:19]}...: {length} bytes is over the limit of {limit}"
        )
    existed = await svc.source_cache.has(wanted)
    size = await svc.source_cache.add_stream(wanted, request.stream(), limit=limit)
    if existed:
        response.status_code = 200
    return SourceOut(digest=wanted, size=size, created=not existed)


@router.head("/{digest}", include_in_schema=False)  # no body to document
async def head_source(digest: str, svc: Svc, _: FarmReader) -> Response:
    """200 with the size when the cache holds ``digest``, else 404."""
    wanted = parse_digest(digest)
    if not await svc.source_cache.has(wanted):
        raise NotFound(f"the source cache has no {wanted}")
    size = await svc.source_cache.storage.size(wanted)
    return Response(status_code=200, headers={"content-length": str(size)})


@router.get("/{digest}", responses=_ERRORS, response_class=StreamingResponse)
async def get_source(digest: str, svc: Svc, _: FarmReader) -> StreamingResponse:
    """The cached file itself."""
    wanted = parse_digest(digest)
    if not await svc.source_cache.has(wanted):
        raise NotFound(f"the source cache has no {wanted}")
    chunks = svc.source_cache.storage.iter_chunks(wanted, 1 << 20)
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="application/octet-stream")
