"""``RemoteClient``: the build server's HTTP API, spoken with sync httpx and typed by the
wire models of ``melange2.wire``.

Every failure leaves as one of three errors, whose ``exit_code`` the CLI uses::

    FarmError
    └── RemoteError             the server failed (5xx) or answered nonsense      exit 1
        ├── RequestRejected     the server refused the request (4xx)              exit 2
        └── ServerUnreachable   no connection to the server                       exit 3

Tests plug a fake server in at the transport::

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"backends": [], "architectures": []})

    with RemoteClient("http://farm", transport=httpx.MockTransport(handler)) as client:
        assert client.backends().architectures == []
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from melange2.errors import FarmError
from melange2.wire import (
    AddBackendRequest,
    ArtifactList,
    BackendList,
    BackendStatusList,
    BuildEventOut,
    BuildList,
    BuildOut,
    BuildSummary,
    CreateBuildRequest,
    CreateBuildResponse,
    ErrorOut,
    PackageEventOut,
    PackageOut,
    PlanOut,
    PoolBackendOut,
    RemoveBackendRequest,
    ResyncOut,
    SourceOut,
)

DEFAULT_SERVER = "http://localhost:8080"
API = "/api/v1"

_M = TypeVar("_M", bound=BaseModel)


class RemoteError(FarmError):
    """The build server failed."""

    code = "remote_error"
    exit_code = 1

    def __init__(
        self, message: str | None = None, *, status: int | None = None, details: Any = None
    ) -> None:
        super().__init__(message)
        #: the HTTP status, when the server answered
        self.status = status
        #: the ``details`` of the server's ``ErrorOut`` body
        self.details = details


class RequestRejected(RemoteError):
    """The build server refused the request."""

    code = "request_rejected"
    exit_code = 2


class ServerUnreachable(RemoteError):
    """The build server cannot be reached."""

    code = "server_unreachable"
    exit_code = 3


@contextlib.contextmanager
def _translate(server: str) -> Iterator[None]:
    """The one place httpx's exceptions become ``RemoteError`` (the cause kept)."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ServerUnreachable(f"cannot reach the build server at {server}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise RemoteError(f"the build server at {server} did not answer in time") from exc
    except httpx.TransportError as exc:
        raise RemoteError(f"lost the connection to the build server at {server}: {exc}") from exc
    except httpx.InvalidURL as exc:
        raise RequestRejected(f"invalid URL: {exc}") from exc


def _raise_for_error(response: httpx.Response) -> None:
    """A 4xx/5xx answer becomes ``RequestRejected``/``RemoteError`` with the server's
    ``error`` and ``details`` (or the start of whatever else it sent)."""
    if response.is_success:
        return
    status = response.status_code
    try:
        body = ErrorOut.model_validate_json(response.read())
        message, details = body.error, body.details
    except ValidationError:
        text = response.text.strip()
        message, details = (text[:500] or response.reason_phrase or "no message"), None
    cls = RequestRejected if 400 <= status < 500 else RemoteError
    raise cls(f"{message} (HTTP {status})", status=status, details=details)


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise RemoteError(
            f"unexpected answer from the build server to {response.request.method} "
            f"{response.request.url.path}: not a {model.__name__}",
            status=response.status_code,
            details=exc.errors(include_url=False, include_context=False),
        ) from exc


@dataclass(frozen=True, kw_only=True)
class LiveMessage:
    """One message of ``GET /api/v1/events``: ``hello`` (the stream is in place: read
    the state now), ``package``, ``build``, or ``resync`` (events were missed: read the
    state again)."""

    event: str
    id: str
    data: PackageEventOut | BuildEventOut | ResyncOut | None = None


#: seconds without a byte (keep-alives come every 15) before a stream counts as dropped
EVENTS_READ_TIMEOUT = 60.0


class RemoteClient:
    """The build server's API, one method per endpoint. Use it as a context manager
    (or ``close()`` it); pass ``transport`` or a ready ``client`` to talk to a fake,
    ``token`` (an API token) to authenticate."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        transport: httpx.BaseTransport | None = None,
        client: httpx.Client | None = None,
        timeout: float = 30.0,
        token: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        #: sent as ``Authorization: Bearer <token>`` (never printed)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = client or httpx.Client(
            base_url=self.server + API, transport=transport, timeout=timeout, headers=headers
        )

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with _translate(self.server):
            response = self._http.request(method, path, **kwargs)
        _raise_for_error(response)
        return response

    # builds

    def submit(self, request: CreateBuildRequest) -> CreateBuildResponse | PlanOut:
        """Submit a build (201 with its id), or with ``dry_run`` get the plan (200)."""
        body = request.model_dump(mode="json", exclude_none=True)
        response = self._request("POST", "/builds", json=body)
        if request.dry_run:
            return _parse(PlanOut, response)
        return _parse(CreateBuildResponse, response)

    def list_builds(
        self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None
    ) -> BuildList:
        """One page of builds, newest first; pass ``next_cursor`` back for older ones."""
        params = {
            k: v
            for k, v in (("limit", limit), ("cursor", cursor), ("status", status))
            if v is not None
        }
        return _parse(BuildList, self._request("GET", "/builds", params=params))

    def iter_builds(
        self, *, limit: int | None = None, cursor: str | None = None, status: str | None = None
    ) -> Iterator[BuildSummary]:
        """Every build from ``cursor`` on, following ``next_cursor`` page by page."""
        while True:
            page = self.list_builds(limit=limit, cursor=cursor, status=status)
            yield from page.builds
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def get_build(self, build_id: str) -> BuildOut:
        return _parse(BuildOut, self._request("GET", f"/builds/{_seg(build_id)}"))

    def cancel(self, build_id: str) -> BuildOut:
        return _parse(BuildOut, self._request("POST", f"/builds/{_seg(build_id)}/cancel"))

    def get_package(self, build_id: str, name: str) -> PackageOut:
        path = f"/builds/{_seg(build_id)}/packages/{_seg(name)}"
        return _parse(PackageOut, self._request("GET", path))

    def logs(self, build_id: str, name: str) -> bytes:
        """The package's build log as it stands."""
        path = f"/builds/{_seg(build_id)}/packages/{_seg(name)}/logs"
        return self._request("GET", path).content

    def follow_logs(self, build_id: str, name: str) -> Iterator[bytes]:
        """The package's build log, chunk by chunk as it grows, until the package ends."""
        path = f"/builds/{_seg(build_id)}/packages/{_seg(name)}/logs"
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        with (
            _translate(self.server),
            self._http.stream("GET", path, params={"follow": "true"}, timeout=timeout) as response,
        ):
            _raise_for_error(response)
            yield from response.iter_bytes()

    def events(
        self, *, build: str | None = None, last_id: str | None = None
    ) -> Iterator[LiveMessage]:
        """Live build and package state changes (Server-Sent Events) of ``build`` (or of
        every build), from now on or after ``last_id``, until the server closes the
        stream. An older server without the endpoint answers 404 (``RequestRejected``);
        a stream that stops is a ``RemoteError``."""
        from httpx_sse import SSEError, connect_sse

        params = {"build": build} if build else {}
        headers = {"last-event-id": last_id} if last_id else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=EVENTS_READ_TIMEOUT)
        models: dict[str, type[PackageEventOut | BuildEventOut | ResyncOut]] = {
            "package": PackageEventOut,
            "build": BuildEventOut,
            "resync": ResyncOut,
        }
        with (
            _translate(self.server),
            connect_sse(
                self._http, "GET", "/events", params=params, headers=headers, timeout=timeout
            ) as source,
        ):
            _raise_for_error(source.response)
            try:
                for sse in source.iter_sse():
                    model = models.get(sse.event)
                    try:
                        data = model.model_validate_json(sse.data) if model else None
                    except ValidationError as exc:
                        raise RemoteError(
                            f"unexpected event from the build server: {sse.event} {sse.data[:200]}"
                        ) from exc
                    yield LiveMessage(event=sse.event, id=sse.id, data=data)
            except SSEError as exc:  # not an event stream
                raise RemoteError(
                    f"the build server's events are not an event stream: {exc}"
                ) from exc

    # artifacts

    def artifacts(self, build_id: str, name: str) -> ArtifactList:
        path = f"/builds/{_seg(build_id)}/packages/{_seg(name)}/artifacts"
        return _parse(ArtifactList, self._request("GET", path))

    def download(self, build_id: str, name: str, artifact: str, dest: Path) -> int:
        """Stream one artifact (``<arch>/<file>``) into ``dest``; return its size."""
        arch, _, filename = artifact.partition("/")
        path = (
            f"/builds/{_seg(build_id)}/packages/{_seg(name)}/artifacts/"
            f"{_seg(arch)}/{_seg(filename)}"
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        size = 0
        with _translate(self.server), self._http.stream("GET", path) as response:
            _raise_for_error(response)
            with tmp.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
        tmp.replace(dest)
        return size

    # backends

    def backends(self, *, arch: str | None = None) -> BackendList:
        params = {"arch": arch} if arch else {}
        return _parse(BackendList, self._request("GET", "/backends", params=params))

    def add_backend(self, request: AddBackendRequest) -> PoolBackendOut:
        body = request.model_dump(mode="json", exclude_none=True)
        return _parse(PoolBackendOut, self._request("POST", "/backends", json=body))

    def remove_backend(self, addr: str) -> None:
        body = RemoveBackendRequest(addr=addr).model_dump(mode="json")
        self._request("DELETE", "/backends", json=body)

    def backend_status(self) -> BackendStatusList:
        return _parse(BackendStatusList, self._request("GET", "/backends/status"))

    # the source cache

    def has_source(self, digest: str) -> bool:
        """Whether the server's source cache holds ``digest`` (``sha256:<hex>``)."""
        with _translate(self.server):
            response = self._http.head(f"/sources/{_seg(digest)}")
        if response.status_code == 404:
            return False
        if not response.is_success:
            # a HEAD answer has no body: the same GET carries the server's message
            with (
                _translate(self.server),
                self._http.stream("GET", f"/sources/{_seg(digest)}") as error,
            ):
                if not error.is_success:
                    _raise_for_error(error)
            _raise_for_error(response)
        return True

    def add_source(self, path: Path, digest: str) -> SourceOut:
        """Upload ``path`` to the source cache under ``digest``, streamed from disk."""

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        timeout = httpx.Timeout(self._http.timeout.connect, read=None, write=None)
        response = self._request(
            "PUT",
            f"/sources/{_seg(digest)}",
            content=chunks(),
            headers={
                "content-type": "application/octet-stream",
                "content-length": str(path.stat().st_size),
            },
            timeout=timeout,
        )
        return _parse(SourceOut, response)


def _seg(value: str) -> str:
    """One path segment, quoted so that an id or name cannot change the route."""
    return quote(value, safe="")
