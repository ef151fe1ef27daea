"""Traces end to end: the server's app in-process on a real farm whose buildkitd exports
its own spans with OTLP to a receiver in this test.

* an in-memory exporter receives the spans of one package's attempt with the expected
  parent/child shape (``package.attempt`` -> its phases -> ``environment``; the final
  store write), and the submission's (``build.submit`` -> ``build.plan``, store calls);
* the trace context goes to BuildKit with ``Solve``: the daemon's spans arrive in the
  attempt's trace, its ``Solve`` span a child of our ``solve`` phase.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from melange2 import tracing
from melange2.api.app import create_app
from melange2.farm.local import FarmEnv, LocalFarm
from melange2.service.settings import ServerSettings
from tests.conftest import TOOLS, require_real_parts
from tests.integration.test_server_e2e import config

pytestmark = pytest.mark.e2e


class Receiver:
    """An OTLP/HTTP endpoint keeping every span it is sent: ``(trace id, span id,
    parent span id, name)``."""

    def __init__(self) -> None:
        self.spans: list[tuple[bytes, bytes, bytes, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest.FromString(body)
                    for rs in request.resource_spans:
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                receiver.spans.append(
                                    (s.trace_id, s.span_id, s.parent_span_id, s.name)
                                )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def traced_farm(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmEnv]:
    """A farm of one buildkitd that exports its spans to ``receiver``."""
    require_real_parts()
    with pytest.MonkeyPatch.context() as mp:  # the daemons inherit this environment
        mp.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        mp.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        mp.setenv("OTEL_SERVICE_NAME", "buildkitd")
        local = LocalFarm(tmp_path_factory.mktemp("traced-farm"), tools_dir=TOOLS, daemons=1)
        try:
            env = asyncio.run(local.up())
        except BaseException:
            local.down()
            raise
    try:
        yield env
    finally:
        local.down()


def _by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def _build_one(farm: FarmEnv, root: Path) -> str:
    settings = ServerSettings(
        buildkit_addr=farm.buildkit_addrs[0],
        registry=farm.registry,
        data_dir=root / "data",
        output_dir=root / "output",
        store="sqlite",
        repositories=(farm.extra["BOOTSTRAP_REPO"],),
        keyrings=(farm.extra["BOOTSTRAP_KEY"],),
        auth=False,  # tokens are not what is traced here (tests/unit/api/test_auth_routes.py)
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://farm") as http,
    ):
        resp = await http.post("/api/v1/builds", json={"configs": [config("tr-one")]})
        assert resp.status_code == 201, resp.text
        build_id: str = resp.json()["id"]
        async with asyncio.timeout(240):
            while True:
                build = (await http.get(f"/api/v1/builds/{build_id}")).json()
                if build["status"] not in ("pending", "running"):
                    break
                await asyncio.sleep(0.2)
        assert build["status"] == "success", build
    return build_id


def test_one_attempt_traced_from_submission_into_the_daemon(
    traced_farm: FarmEnv, receiver: Receiver, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        build_id = asyncio.run(_build_one(traced_farm, tmp_path))
    finally:
        tracing.uninstall()
        provider.shutdown()
    spans = list(exporter.get_finished_spans())

    # the submission: build.submit -> build.plan -> store.durations; store.create_build
    (submit,) = _by_name(spans, "build.submit")
    assert submit.parent is None and submit.attributes is not None
    assert submit.attributes["melange2.build.id"] == build_id
    children = {s.name: s for s in spans if s.parent and s.parent.span_id == submit.context.span_id}
    assert {"build.plan", "store.create_build"} <= set(children)
    plan_children = [
        s.name
        for s in spans
        if s.parent and s.parent.span_id == children["build.plan"].context.span_id
    ]
    assert "store.durations" in plan_children

    # the attempt: a trace of its own, its phases as children
    (attempt,) = _by_name(spans, "package.attempt")
    assert attempt.parent is None and attempt.attributes is not None
    assert attempt.attributes["melange2.package"] == "tr-one"
    assert attempt.attributes["melange2.attempt"] == 1
    trace = [s for s in spans if s.context.trace_id == attempt.context.trace_id]
    phases = {s.name: s for s in trace if s.parent and s.parent.span_id == attempt.context.span_id}
    for name in ("plan", "solve", "package", "publish", "store.move"):
        assert name in phases, (name, sorted(phases))
    (environment,) = _by_name(trace, "environment")
    assert environment.parent is not None
    assert environment.parent.span_id == phases["plan"].context.span_id
    assert phases["plan"].end_time <= phases["solve"].start_time  # type: ignore[operator]

    # the daemon's own spans joined the attempt's trace, under our solve phase
    trace_id = attempt.context.trace_id.to_bytes(16, "big")
    solve_id = phases["solve"].context.span_id.to_bytes(8, "big")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        daemon = [s for s in receiver.spans if s[0] == trace_id]
        if any(parent == solve_id for _, _, parent, _ in daemon):
            break
        time.sleep(0.2)
    daemon = [s for s in receiver.spans if s[0] == trace_id]
    under_solve = [name for _, _, parent, name in daemon if parent == solve_id]
    assert under_solve, f"no daemon span under our solve; got {[s[3] for s in daemon][:20]}"
    assert any("Solve" in name for name in under_solve), under_solve
    assert len(daemon) > len(under_solve)  # and the daemon's work below its Solve span
