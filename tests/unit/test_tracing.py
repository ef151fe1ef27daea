"""Tracing: which ``OTEL_*`` settings turn it on, nothing loaded when they do not, the
attempt's phases as child spans, the trace context as gRPC metadata, store calls as
children of traced work. An in-memory exporter (OpenTelemetry's own) receives the spans."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from melange2 import tracing
from melange2.ids import BuildId
from melange2.jobs import Build, BuildSpec, BuildStatus
from melange2.store.memory import MemoryStore
from melange2.timing import PhaseTimer


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_exporters_follow_the_standard_variables(env: dict[str, str], expected: list[str]) -> None:
    assert tracing.exporters_from_env(env) == expected


def test_off_by_default_and_nothing_loaded() -> None:
    code = """
import json, sys
from melange2 import timing, tracing
on = tracing.configure_from_env(env={})
with timing.PhaseTimer().phase("solve"):
    pass
print(json.dumps([on, tracing.enabled(), tracing.grpc_metadata(),
                  sorted(m for m in sys.modules if m.startswith("opentelemetry"))]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert json.loads(out) == [False, False, [], []]


def test_configured_from_env_exports_with_otlp() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "farm-a"}
    try:
        assert tracing.configure_from_env(env=env)
        assert tracing.enabled()
        provider = tracing._provider
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "farm-a"
    finally:
        tracing.uninstall()


def test_phases_are_child_spans(spans: InMemorySpanExporter) -> None:
    timer = PhaseTimer()
    with tracing.span("package.attempt", {"melange2.package": "hello"}):
        with timer.phase("plan"), tracing.span("environment"):
            pass
        with timer.phase("solve"):
            metadata = dict(tracing.grpc_metadata())
        with timer.phase("publish"):
            pass
    finished = {s.name: s for s in spans.get_finished_spans()}
    root = finished["package.attempt"]
    assert root.parent is None and root.attributes == {"melange2.package": "hello"}
    for name in ("plan", "solve", "publish"):
        parent = finished[name].parent
        assert parent is not None and parent.span_id == root.context.span_id
        assert finished[name].attributes == {"melange2.phase": name}
    env = finished["environment"]
    assert env.parent is not None and env.parent.span_id == finished["plan"].context.span_id
    # the solve's context as W3C traceparent: version-trace id-span id-flags
    version, trace_id, span_id, flags = metadata["traceparent"].split("-")
    assert int(trace_id, 16) == root.context.trace_id
    assert int(span_id, 16) == finished["solve"].context.span_id
    assert version == "00" and int(flags, 16) & 1  # sampled
    assert timer.summary().startswith("plan ")


async def test_store_calls_are_children_of_traced_work(spans: InMemorySpanExporter) -> None:
    store = tracing.traced_store(MemoryStore())
    build = Build(
        id=BuildId("bld-1"),
        status=BuildStatus.PENDING,
        spec=BuildSpec(),
        created_at=datetime.now(UTC),
    )
    await store.create_build(build)  # outside any span: not traced
    with tracing.span("build.submit"):
        await store.get_build(build.id)
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["store.get_build", "build.submit"]
    assert store.supports_listen_notify is False


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio
