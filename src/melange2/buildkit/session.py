"""BuildKit's session: what the daemon may ask of the client while it solves.

A solve can name a session (``SolveRequest.Session``); the daemon then calls back into the
client through it: for secrets (``moby.buildkit.secrets.v1.Secrets/GetSecret``), for the
files of a ``local://`` source (``moby.filesync.v1.FileSync/DiffCopy``), to hand the
result of a ``local`` exporter back (``moby.filesync.v1.FileSend/DiffCopy``) and, every
five seconds, to see the client is alive (``grpc.health.v1.Health/Check``; two failures in a
row and the daemon drops the session).

How it runs (BuildKit's ``session/session.go``, ``session/grpchijack``, ``session/manager.go``):

1. The client calls ``Control.Session`` (a bidi stream of ``BytesMessage``) with metadata
   ``x-docker-expose-session-uuid`` (the id the solve names), ``-name``, ``-sharedkey``
   (a hint for ``local://`` sources' cache) and one ``x-docker-expose-session-grpc-method``
   per method the client serves (the daemon only calls what is listed).
2. The stream's frames then carry one HTTP/2 connection in which the *daemon* is the
   gRPC client (it sends the preface) and the client serves (:mod:`.h2grpc`).
3. The client sends ``Solve`` naming the session id; the daemon waits for the session to
   be registered when an op first needs it (5 s for an exporter).
4. When ``Solve`` returns, the client closes the stream and the session is gone.

:class:`Session` says what a solve's session offers; :class:`SessionRunner` runs it for one
solve (``BuildkitClient.solve`` does this; nothing else needs to).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets as _random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from melange2.buildkit._proto.api.services.control import control_pb2, control_pb2_grpc
from melange2.buildkit.errors import map_grpc_errors
from melange2.buildkit.filesync import FileSendTarget, FileSyncSource
from melange2.buildkit.h2grpc import CallInfo, H2GrpcServer, Handler, unary
from melange2.buildkit.secrets import SecretsProvider
from melange2.errors import BuildkitError, BuildkitUnavailable

HEADER_ID = "x-docker-expose-session-uuid"
HEADER_NAME = "x-docker-expose-session-name"
HEADER_SHARED_KEY = "x-docker-expose-session-sharedkey"
HEADER_METHOD = "x-docker-expose-session-grpc-method"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_READY_TIMEOUT = 10.0


def _health_messages() -> tuple[type[Message], type[Message]]:
    """``grpc.health.v1``'s two messages (no pinned module ships the .proto, and grpcio's
    health package is not a dependency): ``HealthCheckRequest{string service = 1}`` and
    ``HealthCheckResponse{ServingStatus status = 1}``, built as descriptors."""
    fd = descriptor_pb2.FileDescriptorProto(
        name="melange2/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    req = fd.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=9, label=1)  # TYPE_STRING, LABEL_OPTIONAL
    resp = fd.message_type.add(name="HealthCheckResponse")
    status = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]):
        status.value.add(name=name, number=number)
    resp.field.add(
        name="status",
        number=1,
        type=14,  # TYPE_ENUM
        label=1,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(fd.package + "." + req.name)),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(fd.package + "." + resp.name)),
    )


HealthCheckRequest, HealthCheckResponse = _health_messages()
_SERVING = 1


async def _health_check(request: bytes, info: CallInfo) -> bytes:
    HealthCheckRequest.FromString(request)
    data: bytes = HealthCheckResponse(status=_SERVING).SerializeToString()
    return data


@dataclass(frozen=True, kw_only=True)
class Session:
    """What a solve's session offers the daemon.

    ``secrets`` are served by id to secret mounts and secret env (``llb.secret_mount``,
    ``run(secret_env=...)``): they travel only through the session, never in the LLB.
    ``local_dirs`` are directories a ``llb.local(name)`` source may read, by name.
    ``shared_key`` is BuildKit's hint for reusing a local source's previous transfer.
    Local exporters (``local_export(dest)``) bring their own target directory.
    """

    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    local_dirs: Mapping[str, Path] = field(default_factory=dict)
    name: str = "melange2"
    shared_key: str = ""


class _State(enum.Enum):
    UNOPENED = 1
    RUNNING = 2
    CLOSED = 3


class _SessionStream:
    """The ``Control.Session`` call as a :class:`~.h2grpc.ByteStream`."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self.call = call

    async def read(self) -> bytes | None:
        msg = await self.call.read()
        if msg is grpc.aio.EOF:
            return None
        assert isinstance(msg, control_pb2.BytesMessage)
        return msg.data

    async def write(self, data: bytes) -> None:
        await self.call.write(control_pb2.BytesMessage(data=data))


class SessionRunner:
    """One session on one daemon, for the length of one solve. An async context manager:
    on entry the session is open and registered; on exit it is torn down."""

    def __init__(
        self,
        stub: control_pb2_grpc.ControlStub,
        addr: str,
        session: Session,
        exports: Mapping[int, Path] | None = None,
        *,
        tls: bool = False,
    ) -> None:
        self.id = _random.token_hex(13)  # BuildKit's ids are 25 base-36 characters; any do
        self.addr = addr
        self.tls = tls
        self.session = session
        self._stub = stub
        handlers: dict[str, Handler] = {HEALTH_CHECK: unary(_health_check)}
        if session.secrets:
            handlers.update(SecretsProvider(session.secrets).handlers())
        #: where the solve's local exporters write (what each received, once done)
        self.file_send = FileSendTarget(exports or {})
        if exports:
            handlers.update(self.file_send.handlers())
        if session.local_dirs:
            handlers.update(FileSyncSource(session.local_dirs).handlers())
        self.server = H2GrpcServer(handlers)
        self._call: grpc.aio.StreamStreamCall | None = None
        self._task: asyncio.Task[None] | None = None
        self._state = _State.UNOPENED

    @property
    def metadata(self) -> list[tuple[str, str]]:
        md = [
            (HEADER_ID, self.id),
            (HEADER_NAME, self.session.name),
            (HEADER_SHARED_KEY, self.session.shared_key),
        ]
        md += [(HEADER_METHOD, m) for m in self.server.methods]
        return md

    @property
    def done(self) -> bool:
        """Whether the session has ended (the daemon closed it, or it failed)."""
        return self._task is not None and self._task.done()

    async def __aenter__(self) -> SessionRunner:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a SessionRunner runs once")
        self._state = _State.RUNNING
        self._call = self._stub.Session(metadata=self.metadata)
        self._task = asyncio.create_task(self._serve(self._call))
        ready = asyncio.create_task(self.server.wait_ready())
        try:
            await asyncio.wait(
                {ready, self._task}, timeout=_READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
        if self._task.done():
            failure = None if self._task.cancelled() else self._task.exception()
            await self.aclose()
            if isinstance(failure, BuildkitError):  # why it ended (unreachable, TLS, ...)
                raise failure
            raise BuildkitUnavailable(f"buildkitd at {self.addr}: the session ended at once")
        if not self.server._ready.is_set():
            await self.aclose()
            raise BuildkitUnavailable(
                f"buildkitd at {self.addr}: no session within {_READY_TIMEOUT:.0f} s"
            )
        return self

    async def _serve(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            with map_grpc_errors(self.addr, tls=self.tls):
                await self.server.serve(_SessionStream(call))
        finally:  # however serving ends, the daemon learns at once that the session is gone
            call.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Tear the session down: close our side, cancel the call, stop serving."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._call is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call.done_writing(), 1.0)
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
