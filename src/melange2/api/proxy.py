"""A package's log read through a replica that does not run it: the request is passed
to the replica that does (its ``lease_owner``, reached at the URL it advertised in the
replica registry) and its answer streamed back as it comes.

The caller's ``Authorization`` (and the dashboard's token cookie) goes along: the owner
checks the token against the same database (this replica checked it too, first). The
request carries ``X-Melange2-Proxied-By: <this replica>``, and a replica never proxies
such a request again (no loops). When the owner cannot be reached or does not answer
200, the caller is served here, from storage (the package may have ended, the owner
died): :func:`open_on_peer` returns ``None``. A stream the owner breaks off midway ends
here too; a plain-text follower is then continued from storage at the byte it reached
(an event-stream follower reconnects with ``Last-Event-ID``, which then lands here or
on the owner's successor).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
from fastapi import Request
from fastapi.responses import StreamingResponse

from melange2.store.base import Replica

__all__ = ["PROXIED_BY", "Proxied", "open_on_peer"]

#: names the replica that passed the request on
PROXIED_BY = "x-melange2-proxied-by"
_FORWARDED = ("authorization", "cookie", "accept", "last-event-id")
_PASSED_BACK = ("cache-control", "x-accel-buffering")
#: a silent build sends nothing for long: no read timeout on the stream
_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=10.0, pool=5.0)
_log = logging.getLogger(__name__)


@dataclass
class Proxied:
    """The owner's answer, open: hand :meth:`response` to the client."""

    peer: Replica
    client: httpx.AsyncClient
    upstream: httpx.Response

    def response(
        self, then: Callable[[int], AsyncIterator[bytes]] | None = None
    ) -> StreamingResponse:
        """The owner's body streamed as it comes; if the owner breaks it off and
        ``then`` is given, ``then(bytes relayed)`` continues it."""
        headers = {k: v for k in _PASSED_BACK if (v := self.upstream.headers.get(k))}
        return StreamingResponse(
            self._relay(then),
            status_code=self.upstream.status_code,
            media_type=self.upstream.headers.get("content-type"),
            headers=headers,
        )

    async def _relay(
        self, then: Callable[[int], AsyncIterator[bytes]] | None
    ) -> AsyncIterator[bytes]:
        relayed = 0
        broken = False
        try:
            async for chunk in self.upstream.aiter_bytes():
                relayed += len(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            broken = True
            _log.warning("the log stream from replica %s broke off: %s", self.peer.id, exc)
        finally:
            await self.upstream.aclose()
            await self.client.aclose()
        if broken and then is not None:
            async for chunk in then(relayed):
                yield chunk


async def open_on_peer(peer: Replica, request: Request, me: str) -> Proxied | None:
    """Send ``request`` (a GET) to ``peer``; its answer if it is a 200, else ``None``."""
    url = f"{peer.url}{request.url.path}"
    if request.url.query:
        url += f"?{request.url.query}"
    headers = {k: v for k in _FORWARDED if (v := request.headers.get(k))}
    headers[PROXIED_BY] = me
    client = httpx.AsyncClient(timeout=_TIMEOUT)
    try:
        upstream = await client.send(client.build_request("GET", url, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        await client.aclose()
        _log.info("replica %s (%s) not reached, serving here: %s", peer.id, peer.url, exc)
        return None
    if upstream.status_code != 200:
        _log.info("replica %s answered %d, serving here", peer.id, upstream.status_code)
        await upstream.aclose()
        await client.aclose()
        return None
    return Proxied(peer=peer, client=client, upstream=upstream)
