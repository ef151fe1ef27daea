"""An asyncio client for a BuildKit daemon's gRPC control API.

Example::

    async with BuildkitClient("unix:///run/buildkit/buildkitd.sock") as bk:
        print(await bk.info())
        result = await bk.solve(marshal(state), exporters=[push_image("127.0.0.1:5000/x:y")],
                                on_progress=print)

Cancelling the task that awaits :meth:`BuildkitClient.solve` cancels the solve on the
daemon (BuildKit stops a build when its ``Solve`` call goes away).

A solve that needs the client while it runs (secrets, a ``local://`` source, a local
exporter) gets a session for its length (:mod:`melange2.buildkit.session`)::

    await bk.solve(marshal(state), exporters=[local_export(Path("out"))],
                   session=Session(secrets={"token": b"..."}))

A daemon that serves TLS (``buildkitd --tlscert --tlskey --tlscacert``) is reached with
``BuildkitClient(addr, tls=load_client_tls(...))`` (:mod:`melange2.buildkit.tls`).
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from melange2 import tracing
from melange2.buildkit._proto.api.services.control import control_pb2, control_pb2_grpc
from melange2.buildkit._proto.solver.pb import ops_pb2
from melange2.buildkit.errors import exit_code_of, map_grpc_errors
from melange2.buildkit.session import Session, SessionRunner
from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitError, SolveFailed
from melange2.platform import Platform

_MAX_MESSAGE = 64 * 1024 * 1024
_LOG_TAIL_BYTES = 4096
_STATUS_DRAIN_SECONDS = 5.0
_MESSAGE_TAIL_LINES = 10


def grpc_target(addr: str) -> str:
    """The gRPC target for a BuildKit address (``tcp://host:port`` or ``unix:///path``)."""
    if addr.startswith("tcp://"):
        return addr.removeprefix("tcp://")
    if addr.startswith("unix://"):
        return addr
    raise BuildkitError(
        f"unsupported BuildKit address {addr!r}: use tcp://host:port or unix:///path"
    )


@dataclass(frozen=True, kw_only=True)
class DaemonInfo:
    """What a daemon says of itself."""

    package: str
    version: str
    revision: str


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    """One worker of a daemon and the platforms it can run."""

    id: str
    platforms: tuple[Platform, ...]
    labels: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class Exporter:
    """An exporter for the solve's result (``image`` with ``name``/``push`` attrs, ...).

    ``output_dir`` is for the client only: where a ``local`` exporter's tree is written
    (it comes back through the solve's session)."""

    type: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    output_dir: Path | None = None


def push_image(name: str, *, insecure: bool = True) -> Exporter:
    """Export the result as an image and push it to ``name`` (``host/repo:tag``)."""
    attrs = {"name": name, "push": "true", "oci-mediatypes": "true"}
    if insecure:
        attrs["registry.insecure"] = "true"
    return Exporter(type="image", attrs=attrs)


def local_export(dest: Path) -> Exporter:
    """Export the result as a directory tree into ``dest`` on this machine, through the
    session's file-send target: modes, owners (as numbers, when running as root), symlinks
    and hard links as the daemon has them. No registry is involved."""
    return Exporter(type="local", output_dir=dest)


@dataclass(frozen=True, kw_only=True)
class VertexUpdate:
    """A step's state: started, completed (maybe cached), or failed."""

    digest: str
    name: str
    started: datetime | None
    completed: datetime | None
    cached: bool
    error: str


@dataclass(frozen=True, kw_only=True)
class LogChunk:
    """Output a step wrote (stream 1 stdout, 2 stderr)."""

    digest: str
    stream: int
    data: bytes


@dataclass(frozen=True, kw_only=True)
class Progress:
    """One message of the daemon's status stream."""

    vertexes: tuple[VertexUpdate, ...]
    logs: tuple[LogChunk, ...]


@dataclass(frozen=True, kw_only=True)
class LocalTree:
    """What a ``local`` exporter wrote on this machine."""

    dest: Path
    entries: int
    bytes: int
    #: every entry's owner as the daemon had it (path relative to ``dest`` -> (uid, gid)),
    #: also when this process could not ``chown`` (not root)
    owners: Mapping[str, tuple[int, int]]


@dataclass(frozen=True, kw_only=True)
class SolveResult:
    """A finished solve: its ref and what the exporters answered (image digest, ...);
    for each ``local`` exporter (by its index in ``exporters``), the tree it wrote."""

    ref: str
    exporter_response: Mapping[str, str]
    vertexes: Mapping[str, VertexUpdate]
    local_trees: Mapping[int, LocalTree] = field(default_factory=dict)


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def _ts(msg: object, name: str) -> datetime | None:
    if not msg.HasField(name):  # type: ignore[attr-defined]
        return None
    value: datetime = getattr(msg, name).ToDatetime()
    return value


def _progress(resp: control_pb2.StatusResponse) -> Progress:
    return Progress(
        vertexes=tuple(
            VertexUpdate(
                digest=v.digest,
                name=v.name,
                started=_ts(v, "started"),
                completed=_ts(v, "completed"),
                cached=v.cached,
                error=v.error,
            )
            for v in resp.vertexes
        ),
        logs=tuple(LogChunk(digest=lg.vertex, stream=lg.stream, data=lg.msg) for lg in resp.logs),
    )


class BuildkitClient:
    """A connection to one BuildKit daemon. Use it as an async context manager, once.
    With ``tls`` the channel is TLS (and shows the client certificate, if any)."""

    def __init__(
        self, addr: str, *, tls: ClientTLS | None = None, connect_timeout: float = 10.0
    ) -> None:
        self.addr = addr
        self.tls = tls
        self._target = grpc_target(addr)
        self._connect_timeout = connect_timeout
        self._state = _State.UNOPENED
        self._channel: grpc.aio.Channel | None = None
        self._stub: control_pb2_grpc.ControlStub | None = None

    async def __aenter__(self) -> BuildkitClient:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a BuildkitClient can be opened only once")
        options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ]
        if self.tls is None:
            self._channel = grpc.aio.insecure_channel(self._target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(
                self._target,
                self.tls.credentials(),
                options=[*options, *self.tls.channel_options()],
            )
        self._stub = control_pb2_grpc.ControlStub(self._channel)
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._channel is not None and self._state is _State.OPENED:
            await self._channel.close()
        self._state = _State.CLOSED

    @property
    def stub(self) -> control_pb2_grpc.ControlStub:
        if self._state is not _State.OPENED or self._stub is None:
            raise RuntimeError("BuildkitClient is not open")
        return self._stub

    async def info(self) -> DaemonInfo:
        """The daemon's BuildKit version."""
        with map_grpc_errors(self.addr, tls=self.tls is not None):
            resp = await self.stub.Info(control_pb2.InfoRequest(), timeout=self._connect_timeout)
        v = resp.buildkitVersion
        return DaemonInfo(package=v.package, version=v.version, revision=v.revision)

    async def list_workers(self) -> list[WorkerInfo]:
        """The daemon's workers and their platforms."""
        with map_grpc_errors(self.addr, tls=self.tls is not None):
            resp = await self.stub.ListWorkers(
                control_pb2.ListWorkersRequest(), timeout=self._connect_timeout
            )
        return [
            WorkerInfo(
                id=w.ID,
                platforms=tuple(
                    Platform(os=p.OS, architecture=p.Architecture, variant=p.Variant)
                    for p in w.platforms
                ),
                labels=dict(w.Labels),
            )
            for w in resp.record
        ]

    async def status(self, ref: str) -> AsyncIterator[Progress]:
        """The progress of the solve ``ref``: vertexes and step logs, as they happen."""
        call = self.stub.Status(control_pb2.StatusRequest(Ref=ref))
        with map_grpc_errors(self.addr, tls=self.tls is not None):
            async for resp in call:
                yield _progress(resp)

    async def solve(
        self,
        definition: ops_pb2.Definition,
        *,
        exporters: Sequence[Exporter] = (),
        ref: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cache_imports: Sequence[Mapping[str, str]] = (),
        cache_exports: Sequence[Mapping[str, str]] = (),
        session: Session | None = None,
    ) -> SolveResult:
        """Solve ``definition`` and run its exporters. Progress goes to ``on_progress``.

        A session (secrets, local directories) is opened for the solve when ``session`` is
        given or an exporter writes locally, and torn down when the solve ends.

        Raises :class:`SolveFailed` naming the failing step, its exit code and the tail
        of its output; :class:`BuildkitUnavailable` when the daemon is the problem.
        """
        ref = ref or uuid.uuid4().hex
        vertexes: dict[str, VertexUpdate] = {}
        logs: dict[str, bytearray] = {}

        async def follow() -> None:
            async for progress in self.status(ref):
                for v in progress.vertexes:
                    vertexes[v.digest] = v
                for chunk in progress.logs:
                    buf = logs.setdefault(chunk.digest, bytearray())
                    buf += chunk.data
                    del buf[: max(0, len(buf) - _LOG_TAIL_BYTES)]
                if on_progress is not None:
                    on_progress(progress)

        cache = control_pb2.CacheOptions(
            Imports=[control_pb2.CacheOptionsEntry(Type=c["type"], Attrs=c) for c in cache_imports],
            Exports=[control_pb2.CacheOptionsEntry(Type=c["type"], Attrs=c) for c in cache_exports],
        )
        request = control_pb2.SolveRequest(
            Ref=ref,
            Definition=definition,
            Exporters=[control_pb2.Exporter(Type=e.type, Attrs=dict(e.attrs)) for e in exporters],
            Cache=cache,
        )
        local = {i: e.output_dir for i, e in enumerate(exporters) if e.output_dir is not None}
        if session is None and not local:
            return await self._solve(request, follow, vertexes, logs)
        runner = SessionRunner(
            self.stub, self.addr, session or Session(), exports=local, tls=self.tls is not None
        )
        async with runner:
            request.Session = runner.id
            result = await self._solve(request, follow, vertexes, logs)
        trees = {
            i: LocalTree(dest=local[i], entries=r.entries, bytes=r.bytes_received, owners=r.owners)
            for i, r in runner.file_send.received.items()
            if i in local
        }
        return replace(result, local_trees=trees)

    async def _solve(
        self,
        request: control_pb2.SolveRequest,
        follow: Callable[[], Coroutine[Any, Any, None]],
        vertexes: dict[str, VertexUpdate],
        logs: dict[str, bytearray],
    ) -> SolveResult:
        follower = asyncio.create_task(follow())
        try:
            with map_grpc_errors(self.addr, tls=self.tls is not None):
                # the trace context: the daemon's spans join the caller's trace
                resp = await self.stub.Solve(request, metadata=tracing.grpc_metadata())
        except SolveFailed as exc:
            await _settle(follower)
            raise _describe_failure(exc, vertexes, logs) from exc.__cause__
        except BaseException:
            follower.cancel()
            await _settle(follower)
            raise
        await _settle(follower)
        return SolveResult(
            ref=request.Ref, exporter_response=dict(resp.ExporterResponse), vertexes=vertexes
        )


async def _settle(task: asyncio.Task[None]) -> None:
    """Let the status stream drain (it ends with the solve), then stop it."""
    try:
        await asyncio.wait_for(asyncio.shield(task), _STATUS_DRAIN_SECONDS)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
    except Exception:  # the status stream is best-effort; the solve's answer decides
        pass


class StepFailed(SolveFailed):
    """A build step failed."""

    def __init__(self, message: str, *, step: str, exit_code: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.step = step
        self.step_exit_code = exit_code
        self.log_tail = log_tail


def _describe_failure(
    exc: SolveFailed, vertexes: Mapping[str, VertexUpdate], logs: Mapping[str, bytearray]
) -> SolveFailed:
    failed = [v for v in vertexes.values() if v.error]
    if not failed:
        return exc
    step = failed[-1]
    tail = bytes(logs.get(step.digest, b"")).decode("utf-8", "replace")
    code = exit_code_of(step.error) or exit_code_of(exc.message)
    message = f"step {step.name!r} failed"
    if code is not None:
        message += f" with exit code {code}"
    elif step.error:  # it never ran (a missing secret, a mount that failed): say why
        message += f": {step.error}"
    last_lines = tail.rstrip("\n").splitlines()[-_MESSAGE_TAIL_LINES:]
    if last_lines:
        message += ":\n" + "\n".join(f"  {line}" for line in last_lines)
    return StepFailed(message, step=step.name, exit_code=code, log_tail=tail)
