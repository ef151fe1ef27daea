"""``/api/v1/events``: build and package state changes as Server-Sent Events.

Each message is ``event: package`` or ``event: build`` with an ``id`` and one JSON
``data`` line (``PackageEventOut``/``BuildEventOut``). The stream opens with ``event:
hello`` (the subscription is in place: read the state now, then apply what follows) and
sends a comment every ``KEEPALIVE_S`` seconds. ``event: resync`` means events were
missed (the client fell behind, or reconnected from an id no longer kept): read the
state again. A client that reconnects with ``Last-Event-ID`` (browsers do it by
themselves) gets what it missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import StreamingResponse

from melange2.api.auth import BuildReader
from melange2.api.services import Services, services
from melange2.errors import NotFound
from melange2.ids import BuildId
from melange2.service.events import BuildEvent, Delivery, Resync, Subscription
from melange2.wire import BuildEventOut, ErrorOut, PackageEventOut, ResyncOut

router = APIRouter(prefix="/api/v1", tags=["events"])
Svc = Annotated[Services, Depends(services)]
#: seconds between keep-alive comments on an idle stream
KEEPALIVE_S = 15.0
#: what a browser waits before reconnecting (the SSE ``retry:`` field), milliseconds
RETRY_MS = 2000


def message(event: str, data: str, id: str | None = None) -> bytes:
    """One SSE message (``data`` is one line of JSON)."""
    head = f"id: {id}\n" if id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n".encode()


def delivery_message(item: Delivery | Resync) -> bytes:
    if isinstance(item, Resync):
        return message("resync", ResyncOut(reason=item.reason).model_dump_json(), item.id)
    ev = item.event
    out: PackageEventOut | BuildEventOut
    if isinstance(ev, BuildEvent):
        out = BuildEventOut.model_validate(asdict(ev))
    else:
        out = PackageEventOut.model_validate(asdict(ev))
    return message(ev.kind, out.model_dump_json(), item.id)


async def _stream(sub: Subscription, resumed: bool) -> AsyncIterator[bytes]:
    async with sub:
        hello = json.dumps({"last_id": sub.start_id})
        # a resumed stream keeps the client's own id until the replay has been sent
        yield f"retry: {RETRY_MS}\n".encode() + message(
            "hello", hello, None if resumed else sub.start_id
        )
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    item = await sub.get()
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if item is None:  # the server is stopping
                return
            yield delivery_message(item)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        401: {"model": ErrorOut},
        403: {"model": ErrorOut},
        404: {"model": ErrorOut},
    },
)
async def events(
    svc: Svc,
    _reader: BuildReader,
    build: Annotated[str | None, Query(max_length=128)] = None,
    after: Annotated[str | None, Query(max_length=128)] = None,
    last_event_id: Annotated[str | None, Header(max_length=128)] = None,
) -> StreamingResponse:
    """Build and package state changes (Server-Sent Events), of one ``build`` or of
    every build (role ``read``; anyone with ``--public-read``). ``Last-Event-ID``:
    resume after that event; ``after`` the same for a first connection (a page passes
    the id current when it was rendered)."""
    if build is not None:
        if not build.startswith("bld-"):
            raise NotFound(f"no build {build!r}")
        await svc.store.get_build(BuildId(build))  # NotFound: 404
    resume_from = last_event_id or after or None
    sub = svc.events.subscribe(build=build, last_id=resume_from)
    return StreamingResponse(
        _stream(sub, resumed=resume_from is not None),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
