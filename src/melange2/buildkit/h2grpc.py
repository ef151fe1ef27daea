"""A small gRPC server speaking HTTP/2 over any byte stream (the ``h2`` library does HTTP/2).

BuildKit's session turns the client inside out: the client opens ``Control.Session`` and
then *serves* gRPC to the daemon over that stream's ``BytesMessage`` frames. grpcio can
only serve on sockets, so this module implements the server side of gRPC's HTTP/2
mapping (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md) for one
connection on a :class:`ByteStream`:

- a request is a HEADERS frame (``:method POST``, ``:path /pkg.Service/Method``,
  ``content-type application/grpc...``, ``grpc-timeout`` and custom metadata), then DATA;
- each message, either way, is length-prefixed: one byte "compressed" flag (we accept
  only 0: we announce no ``grpc-accept-encoding``), four bytes big-endian length, then
  the serialised protobuf;
- the response is HEADERS (``:status 200``), DATA, then trailers carrying
  ``grpc-status`` and ``grpc-message`` (percent-encoded); a call that fails before
  answering gets one "trailers-only" HEADERS frame with ``END_STREAM``.

Handlers work in bytes (the callers parse their protos), one coroutine per call, for
unary and streaming methods alike; :func:`unary` adapts a request-to-response function.
Flow control gives backpressure: received data is acknowledged to the peer only when a
handler has taken the message out (so a slow disk slows the sender instead of filling
memory; the rest of a message that is only partly in is always let in), and sending waits
for the peer's window.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

#: Our receive window per stream and for the connection. Large enough that a fast sender
#: is not throttled by round trips over the session stream, small enough to bound memory.
WINDOW = 4 * 1024 * 1024
#: The largest chunk we hand the transport in one write (one ``BytesMessage``).
MAX_WRITE = 1024 * 1024
_MAX_MESSAGE = 64 * 1024 * 1024
_HEADER = 5
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")


class ByteStream(Protocol):
    """A bidirectional byte transport: the HTTP/2 connection runs on top of it."""

    async def read(self) -> bytes | None:
        """The next bytes from the peer, or None once the peer has closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the peer, in order."""
        ...


class MessageStream(Protocol):
    """One call's messages as a handler sees them (:class:`ServerCall` is one)."""

    async def recv(self) -> bytes | None:
        """The peer's next message, or None when it has finished sending."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one message to the peer."""
        ...


class GrpcError(Exception):
    """Raised by a handler to end its call with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _status_number(code: grpc.StatusCode) -> int:
    value: tuple[int, str] = code.value
    return value[0]


def encode_grpc_message(message: str) -> str:
    """Percent-encode a status message as gRPC requires (bytes outside 0x20-0x7E, and %)."""
    return urllib.parse.quote(message, safe="".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25))


def frame(message: bytes) -> bytes:
    """One length-prefixed, uncompressed gRPC message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def parse_timeout(value: str) -> float | None:
    """Seconds of a ``grpc-timeout`` header (``100m``, ``5S``), None if malformed."""
    match = _TIMEOUT.match(value)
    if match is None:
        return None
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


@dataclass(frozen=True, kw_only=True)
class CallInfo:
    """What a request says of itself: the method and its metadata (lower-case keys)."""

    method: str
    metadata: Mapping[str, tuple[str, ...]]

    def get(self, key: str) -> str | None:
        values = self.metadata.get(key.lower())
        return values[0] if values else None


class ServerCall:
    """One call being served: receive the client's messages, send ours."""

    def __init__(self, conn: _Connection, stream_id: int, info: CallInfo) -> None:
        self.info = info
        self._conn = conn
        self._stream_id = stream_id
        self._buffer = bytearray()
        self._pos = 0  # where the next message starts in _buffer
        self._unacked = 0
        self._ended = False
        self._reset = False
        self._readable = asyncio.Event()
        self._headers_sent = False

    @property
    def method(self) -> str:
        return self.info.method

    # -- fed by the connection --
    def _on_data(self, data: bytes, flow_controlled: int) -> None:
        self._buffer += data
        self._unacked += flow_controlled
        if not self._has_message():
            # the handler cannot go on without the rest of this message: let it come
            # (a message may be larger than the window; memory is bounded by _MAX_MESSAGE)
            self._conn.acknowledge_now(self._stream_id, self._unacked)
            self._unacked = 0
        self._readable.set()

    def _has_message(self) -> bool:
        pos, have = self._pos, len(self._buffer) - self._pos
        if have < _HEADER:
            return False
        return have >= _HEADER + int.from_bytes(self._buffer[pos + 1 : pos + _HEADER], "big")

    def _on_end(self) -> None:
        self._ended = True
        self._readable.set()

    def _on_reset(self) -> None:
        self._reset = True
        self._ended = True
        self._readable.set()

    # -- used by handlers --
    async def recv(self) -> bytes | None:
        """The client's next message, or None when it has finished sending."""
        while True:
            message = self._take()
            if message is not None:
                await self._conn.acknowledge(self._stream_id, self._unacked)
                self._unacked = 0
                return message
            if self._ended:
                if self._reset:
                    raise GrpcError(grpc.StatusCode.CANCELLED, "stream reset by the peer")
                if len(self._buffer) > self._pos:
                    raise GrpcError(grpc.StatusCode.INTERNAL, "truncated message at end of stream")
                return None
            self._readable.clear()
            await self._readable.wait()

    def _take(self) -> bytes | None:
        pos, have = self._pos, len(self._buffer) - self._pos
        if have < _HEADER:
            return None
        if self._buffer[pos] != 0:
            raise GrpcError(grpc.StatusCode.UNIMPLEMENTED, "compressed messages are not accepted")
        length = int.from_bytes(self._buffer[pos + 1 : pos + _HEADER], "big")
        if length > _MAX_MESSAGE:
            raise GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"message of {length} bytes")
        if have < _HEADER + length:
            return None
        message = bytes(self._buffer[pos + _HEADER : pos + _HEADER + length])
        self._pos = pos + _HEADER + length
        if self._pos * 2 >= len(self._buffer):  # compact: amortised, not per message
            del self._buffer[: self._pos]
            self._pos = 0
        return message

    async def send(self, message: bytes) -> None:
        """Send one message to the client."""
        if self._reset:
            raise GrpcError(grpc.StatusCode.CANCELLED, "stream reset by the peer")
        await self._send_headers()
        await self._conn.send_data(self._stream_id, frame(message))

    async def _send_headers(self) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            self._conn.h2.send_headers(
                self._stream_id, [(":status", "200"), ("content-type", "application/grpc")]
            )

    async def _finish(self, code: grpc.StatusCode, message: str) -> None:
        if self._reset:
            return
        trailers = [("grpc-status", str(_status_number(code)))]
        if message:
            trailers.append(("grpc-message", encode_grpc_message(message)))
        if not self._headers_sent:  # trailers-only
            self._headers_sent = True
            trailers = [(":status", "200"), ("content-type", "application/grpc"), *trailers]
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self._conn.h2.send_headers(self._stream_id, trailers, end_stream=True)
        await self._conn.flush()


Handler = Callable[[ServerCall], Awaitable[None]]


def unary(fn: Callable[[bytes, CallInfo], Awaitable[bytes]]) -> Handler:
    """A handler for a unary method from a function of the request's bytes."""

    async def handle(call: ServerCall) -> None:
        request = await call.recv()
        if request is None:
            raise GrpcError(grpc.StatusCode.INTERNAL, "unary call without a request")
        await call.send(await fn(request, call.info))

    return handle


class _Connection:
    def __init__(self, stream: ByteStream, handlers: Mapping[str, Handler]) -> None:
        self.stream = stream
        self.handlers = handlers
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.calls: dict[int, ServerCall] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.window_open = asyncio.Event()
        self.write_lock = asyncio.Lock()
        self.preface_seen = asyncio.Event()

    async def flush(self) -> None:
        async with self.write_lock:
            data = self.h2.data_to_send()
            for start in range(0, len(data), MAX_WRITE):
                await self.stream.write(data[start : start + MAX_WRITE])

    def acknowledge_now(self, stream_id: int, size: int) -> None:
        """Give ``size`` bytes of window back (sent with the next flush)."""
        if size > 0:
            with contextlib.suppress(h2.exceptions.StreamClosedError, KeyError):
                self.h2.acknowledge_received_data(size, stream_id)

    async def acknowledge(self, stream_id: int, size: int) -> None:
        if size > 0:
            self.acknowledge_now(stream_id, size)
            await self.flush()

    async def send_data(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            call = self.calls.get(stream_id)
            if call is None or call._reset:
                raise GrpcError(grpc.StatusCode.CANCELLED, "stream closed by the peer")
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                continue
            chunk = view[:window]
            self.h2.send_data(stream_id, chunk.tobytes())
            view = view[len(chunk) :]
            await self.flush()

    def start(self) -> None:
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW)

    async def handle_events(self, events: list[h2.events.Event]) -> bool:
        """Dispatch events; False once the peer has ended the connection."""
        for event in events:
            if isinstance(event, h2.events.RemoteSettingsChanged):
                self.preface_seen.set()
                self.window_open.set()
            elif isinstance(event, h2.events.RequestReceived):
                self._start_call(event)
            elif isinstance(event, h2.events.DataReceived):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call._on_data(event.data, event.flow_controlled_length)
                else:  # a finished call: give the window back
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call._on_end()
            elif isinstance(event, h2.events.StreamReset):
                call = self.calls.pop(event.stream_id, None)
                if call is not None:
                    call._on_reset()
                task = self.tasks.pop(event.stream_id, None)
                if task is not None:
                    task.cancel()
                self.window_open.set()
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_open.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                return False
        await self.flush()
        return True

    def _start_call(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        headers = [(str(k), str(v)) for k, v in (event.headers or [])]
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        metadata: dict[str, tuple[str, ...]] = {}
        for k, v in headers:
            if not k.startswith(":"):
                metadata[k] = (*metadata.get(k, ()), v)
        call = ServerCall(
            self, stream_id, CallInfo(method=pseudo.get(":path", ""), metadata=metadata)
        )
        self.calls[stream_id] = call
        if event.stream_ended is not None:
            call._on_end()
        self.tasks[stream_id] = asyncio.create_task(self._run(call))

    async def _run(self, call: ServerCall) -> None:
        stream_id = call._stream_id
        try:
            handler = self.handlers.get(call.method)
            content_type = call.info.get("content-type") or ""
            try:
                if not content_type.startswith("application/grpc"):
                    raise GrpcError(grpc.StatusCode.INTERNAL, f"content-type {content_type!r}")
                if handler is None:
                    raise GrpcError(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {call.method}")
                timeout = parse_timeout(call.info.get("grpc-timeout") or "")
                try:
                    async with asyncio.timeout(timeout):
                        await handler(call)
                except TimeoutError:
                    raise GrpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
                    ) from None
            except GrpcError as exc:
                await call._finish(exc.code, exc.message)
            except Exception as exc:  # a handler's bug or I/O error becomes the call's status
                await call._finish(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            else:
                await call._finish(grpc.StatusCode.OK, "")
        finally:
            self.calls.pop(stream_id, None)
            self.tasks.pop(stream_id, None)


class H2GrpcServer:
    """Serves ``handlers`` (by method path, ``/pkg.Service/Method``) on one connection."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)
        self._ready = asyncio.Event()

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(sorted(self.handlers))

    async def wait_ready(self) -> None:
        """Until the peer's HTTP/2 preface (its SETTINGS) has arrived."""
        await self._ready.wait()

    async def serve(self, stream: ByteStream) -> None:
        """Run the connection until the peer closes it. Cancelling stops every call."""
        conn = _Connection(stream, self.handlers)
        conn.start()
        try:
            await conn.flush()
            while True:
                data = await stream.read()
                if data is None:
                    break
                try:
                    events = conn.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    raise GrpcError(
                        grpc.StatusCode.INTERNAL, f"HTTP/2 protocol error from the peer: {exc}"
                    ) from exc
                alive = await conn.handle_events(events)
                if conn.preface_seen.is_set():
                    self._ready.set()
                if not alive:
                    break
        finally:
            tasks = list(conn.tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
