"""gRPC over h2 (the session's server side), driven by a real h2 *client* connection over
an in-memory fake byte stream: framing, statuses, trailers, streaming, flow control,
deadlines, resets and the peer going away."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from melange2.buildkit.h2grpc import (
    WINDOW,
    CallInfo,
    GrpcError,
    H2GrpcServer,
    Handler,
    ServerCall,
    encode_grpc_message,
    frame,
    parse_timeout,
    unary,
)


class FakeByteStream:
    """The server's end of an in-memory pipe; the test's client holds the other end."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.outbound: asyncio.Queue[bytes] = asyncio.Queue()

    async def read(self) -> bytes | None:
        return await self.inbound.get()

    async def write(self, data: bytes) -> None:
        await self.outbound.put(data)


class Response:
    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.data = bytearray()
        self.ended = False
        self.reset = False

    def messages(self) -> list[bytes]:
        out, buf = [], bytes(self.data)
        while buf:
            assert buf[0] == 0
            n = int.from_bytes(buf[1:5], "big")
            out.append(buf[5 : 5 + n])
            buf = buf[5 + n :]
        return out

    @property
    def status(self) -> int:
        fields = dict(self.trailers or self.headers)
        return int(fields["grpc-status"])

    @property
    def message(self) -> str:
        return dict(self.trailers or self.headers).get("grpc-message", "")


class Client:
    """A real h2 client connection speaking gRPC to the server under test."""

    def __init__(self, stream: FakeByteStream, *, window: int = 65535) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.h2.initiate_connection()
        self.responses: dict[int, Response] = {}
        self.auto_ack = True
        self.events: list[h2.events.Event] = []

    def flush(self, chunk: int = 0) -> None:
        data = self.h2.data_to_send()
        if chunk:  # hand the server odd-sized pieces: frames split across reads
            for i in range(0, len(data), chunk):
                self.stream.inbound.put_nowait(data[i : i + chunk])
        elif data:
            self.stream.inbound.put_nowait(data)

    def call(
        self, method: str, metadata: Mapping[str, str] | None = None, *, end: bool = False
    ) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(metadata or {}).items(),
        ]
        self.h2.send_headers(sid, headers, end_stream=end)
        self.responses[sid] = Response()
        self.flush()
        return sid

    async def send(self, sid: int, message: bytes, *, end: bool = False, chunk: int = 0) -> None:
        data = frame(message)
        while data:
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window == 0:
                await self.pump()
                continue
            self.h2.send_data(sid, data[:window])
            data = data[window:]
            self.flush(chunk)
        if end:
            self.h2.end_stream(sid)
            self.flush(chunk)

    async def pump(self, wait: float = 5.0) -> None:
        """Take what the server wrote and process it."""
        data = await asyncio.wait_for(self.stream.outbound.get(), wait)
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id].headers = [
                    (str(k), str(v)) for k, v in event.headers or []
                ]
                if event.stream_ended is not None:
                    self.responses[event.stream_id].ended = True
            elif isinstance(event, h2.events.TrailersReceived):
                self.responses[event.stream_id].trailers = [
                    (str(k), str(v)) for k, v in event.headers or []
                ]
            elif isinstance(event, h2.events.DataReceived):
                self.responses[event.stream_id].data += event.data
                if self.auto_ack:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses[event.stream_id].ended = True
        self.flush()

    async def until_ended(self, sid: int) -> Response:
        while not self.responses[sid].ended:
            await self.pump()
        return self.responses[sid]


async def _echo_upper(request: bytes, info: CallInfo) -> bytes:
    return request.upper() + (info.get("x-extra") or "").encode()


async def _fail(request: bytes, info: CallInfo) -> bytes:
    raise GrpcError(grpc.StatusCode.NOT_FOUND, "secret «tok» 100% missing\n")


async def _bug(request: bytes, info: CallInfo) -> bytes:
    raise ValueError("boom")


async def _slow(request: bytes, info: CallInfo) -> bytes:
    await asyncio.sleep(30)
    return b""


async def _chat(call: ServerCall) -> None:
    """Answers each message with its length, then one final message."""
    count = 0
    while (message := await call.recv()) is not None:
        count += 1
        await call.send(str(len(message)).encode())
    await call.send(f"done {count}".encode())


async def _big(call: ServerCall) -> None:
    await call.recv()
    await call.send(b"z" * (1024 * 1024))


HANDLERS: dict[str, Handler] = {
    "/t.S/Upper": unary(_echo_upper),
    "/t.S/Fail": unary(_fail),
    "/t.S/Bug": unary(_bug),
    "/t.S/Slow": unary(_slow),
    "/t.S/Chat": _chat,
    "/t.S/Big": _big,
}


async def _with_server(
    body: object, handlers: Mapping[str, Handler] = HANDLERS, **client_kw: int
) -> None:
    stream = FakeByteStream()
    server = H2GrpcServer(handlers)
    client = Client(stream, **client_kw)
    client.flush()
    serving = asyncio.create_task(server.serve(stream))
    try:
        await asyncio.wait_for(server.wait_ready(), 5)
        assert callable(body)
        await body(client)
    finally:
        stream.inbound.put_nowait(None)
        await asyncio.wait_for(serving, 5)


def test_unary_call_answers_with_message_and_ok_trailers() -> None:
    async def body(client: Client) -> None:
        sid = client.call("/t.S/Upper", {"x-extra": "!"})
        await client.send(sid, b"hello", end=True)
        resp = await client.until_ended(sid)
        assert dict(resp.headers)[":status"] == "200"
        assert dict(resp.headers)["content-type"] == "application/grpc"
        assert resp.messages() == [b"HELLO!"]
        assert resp.status == 0

    asyncio.run(_with_server(body))


def test_frames_split_at_every_byte_still_parse() -> None:
    async def body(client: Client) -> None:
        sid = client.call("/t.S/Chat")
        await client.send(sid, b"abc", chunk=1)
        await client.send(sid, b"", chunk=1)
        await client.send(sid, b"x" * 70000, end=True, chunk=7)
        resp = await client.until_ended(sid)
        assert resp.messages() == [b"3", b"0", b"70000", b"done 3"]
        assert resp.status == 0

    asyncio.run(_with_server(body))


def test_errors_become_statuses_with_encoded_messages() -> None:
    async def body(client: Client) -> None:
        fail = client.call("/t.S/Fail")
        await client.send(fail, b"", end=True)
        bug = client.call("/t.S/Bug")
        await client.send(bug, b"", end=True)
        unknown = client.call("/t.S/Nope", end=True)
        r_fail, r_bug, r_unknown = [await client.until_ended(s) for s in (fail, bug, unknown)]
        assert r_fail.status == grpc.StatusCode.NOT_FOUND.value[0]
        assert r_fail.message == encode_grpc_message("secret «tok» 100% missing\n")
        assert "%C2%AB" in r_fail.message and "%25" in r_fail.message and "%0A" in r_fail.message
        assert r_bug.status == grpc.StatusCode.UNKNOWN.value[0]
        assert "boom" in r_bug.message
        # an unknown method gets a trailers-only answer: one HEADERS frame, no data
        assert r_unknown.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert not r_unknown.trailers and not r_unknown.data

    asyncio.run(_with_server(body))


def test_deadline_from_grpc_timeout() -> None:
    async def body(client: Client) -> None:
        sid = client.call("/t.S/Slow", {"grpc-timeout": "50m"})
        await client.send(sid, b"", end=True)
        resp = await client.until_ended(sid)
        assert resp.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]

    asyncio.run(_with_server(body))


def test_sending_waits_for_the_peers_window() -> None:
    async def body(client: Client) -> None:
        client.auto_ack = False  # the client's 64 KiB window fills and stays full
        sid = client.call("/t.S/Big")
        await client.send(sid, b"", end=True)
        while True:
            try:
                await client.pump(wait=0.2)
            except TimeoutError:
                break
        received = len(client.responses[sid].data)
        assert 0 < received <= 65535  # what the window allowed, not more
        assert not client.responses[sid].ended
        client.auto_ack = True
        client.h2.acknowledge_received_data(received, sid)
        client.h2.increment_flow_control_window(received)
        client.flush()
        resp = await client.until_ended(sid)
        assert resp.messages() == [b"z" * (1024 * 1024)]

    asyncio.run(_with_server(body))


def test_receiving_acknowledges_only_what_the_handler_took() -> None:
    release = asyncio.Event()

    async def slow_reader(call: ServerCall) -> None:
        await release.wait()
        total = 0
        while (message := await call.recv()) is not None:
            total += len(message)
        await call.send(str(total).encode())

    async def send_all(client: Client, sid: int, count: int) -> None:
        for i in range(count):
            await client.send(sid, b"q" * 65536, end=i == count - 1)

    async def body(client: Client) -> None:
        sid = client.call("/t.S/Read")
        count = WINDOW // 65536 + 16
        sent = asyncio.create_task(send_all(client, sid, count))
        await asyncio.sleep(0.3)
        assert not sent.done()  # blocked on the server's window: nothing was acknowledged
        assert client.h2.local_flow_control_window(sid) == 0
        release.set()
        await asyncio.wait_for(sent, 10)
        resp = await client.until_ended(sid)
        assert resp.messages() == [str(count * 65536).encode()]

    async def body_big_message(client: Client) -> None:
        # one message larger than the window still gets through (no deadlock)
        release.set()
        sid = client.call("/t.S/Read")
        await asyncio.wait_for(client.send(sid, b"q" * (WINDOW + 100_000), end=True), 10)
        resp = await client.until_ended(sid)
        assert resp.messages() == [str(WINDOW + 100_000).encode()]

    asyncio.run(_with_server(body, {"/t.S/Read": slow_reader}))
    asyncio.run(_with_server(body_big_message, {"/t.S/Read": slow_reader}))


def test_a_reset_stream_cancels_its_handler() -> None:
    cancelled = asyncio.Event()

    async def waits(call: ServerCall) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def body(client: Client) -> None:
        sid = client.call("/t.S/Wait")
        await client.send(sid, b"x")
        await asyncio.sleep(0.05)
        client.h2.reset_stream(sid)
        client.flush()
        await asyncio.wait_for(cancelled.wait(), 5)

    asyncio.run(_with_server(body, {"/t.S/Wait": waits}))


def test_the_peer_closing_ends_serve_and_every_call() -> None:
    cancelled = asyncio.Event()

    async def waits(call: ServerCall) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def go() -> None:
        stream = FakeByteStream()
        client = Client(stream)
        client.flush()
        serving = asyncio.create_task(H2GrpcServer({"/t.S/Wait": waits}).serve(stream))
        client.call("/t.S/Wait")
        await asyncio.sleep(0.05)
        stream.inbound.put_nowait(None)  # the session stream ended
        await asyncio.wait_for(serving, 5)
        assert cancelled.is_set()

    asyncio.run(go())


def test_a_protocol_violation_is_an_error_not_a_hang() -> None:
    async def go() -> None:
        stream = FakeByteStream()
        stream.inbound.put_nowait(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(GrpcError, match="protocol error"):
            await asyncio.wait_for(H2GrpcServer(HANDLERS).serve(stream), 5)

    asyncio.run(go())


def test_timeouts_and_message_encoding() -> None:
    assert parse_timeout("100m") == pytest.approx(0.1)
    assert parse_timeout("5S") == 5.0
    assert parse_timeout("2H") == 7200.0
    assert parse_timeout("") is None and parse_timeout("5x") is None
    assert encode_grpc_message("plain text") == "plain text"
    assert encode_grpc_message("50%\n") == "50%25%0A"
    assert frame(b"ab") == b"\x00\x00\x00\x00\x02ab"
