"""OpenTelemetry traces of the farm's work, exported with OTLP when the standard
``OTEL_*`` variables ask for it; nothing at all (not even an import of OpenTelemetry)
when they do not.

What is traced:

* ``build.submit`` (the request) with ``build.plan`` (graph and priorities) inside;
* ``package.attempt``: one trace per attempt of a package, from its dispatch to its
  final write (``Scheduler``), its phases as children
  (``plan`` with ``environment`` inside, ``reuse``, ``solve`` (the output comes back
  through the solve's session), ``package``, ``test`` (with tests), ``store``,
  ``publish``, ``remember``: the ``timings:`` line of the log,
  :class:`melange2.timing.PhaseTimer`);
* ``store.<method>``: the build store's calls made for those (:func:`traced_store`:
  the submission's inserts); ``store.move``: a package's own write waiting for its
  group commit (:class:`melange2.store.batch.MoveBatcher`: the attempt's final write);
* the daemon's own spans: the trace context goes to BuildKit with ``Solve`` (gRPC
  metadata ``traceparent``, :func:`grpc_metadata`), whose control API continues it.

Turned on by :func:`configure_from_env` (``melange-server`` calls it) when
``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console``, or, with it unset, when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set;
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keep it off. The exporter is
OTLP over HTTP/protobuf and reads its own variables (endpoint, headers, timeout,
compression); ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the service
(default ``melange-server``). Tests :func:`install` a provider of their own::

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter := InMemorySpanExporter()))
    tracing.install(provider)
    ...
    tracing.uninstall()

OpenTelemetry keeps its context in context variables; the provider is held here, not
registered globally, so a test can install and remove one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from melange2 import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

_log = logging.getLogger(__name__)
_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_T = TypeVar("_T")

AttributeValue = str | bool | int | float


def enabled() -> bool:
    return _tracer is not None


def install(provider: TracerProvider) -> None:
    """Trace into ``provider`` from now on."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("melange2", __version__)


def uninstall() -> None:
    global _provider, _tracer
    _provider, _tracer = None, None


def exporters_from_env(env: Mapping[str, str]) -> list[str]:
    """The exporters the ``OTEL_*`` variables ask for (``otlp``, ``console``)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    wanted = [n.strip() for n in named.split(",") if n.strip() and n.strip() != "none"]
    for unknown in sorted(set(wanted) - {"otlp", "console"}):
        _log.warning("OTEL_TRACES_EXPORTER: unsupported exporter %r ignored", unknown)
    return [n for n in wanted if n in ("otlp", "console")]


def configure_from_env(
    default_service: str = "melange-server", env: Mapping[str, str] | None = None
) -> bool:
    """Install an SDK provider exporting as the ``OTEL_*`` variables say; ``False``
    (and nothing installed) when they ask for no exporter."""
    env = os.environ if env is None else env
    exporters = exporters_from_env(env)
    if not exporters:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if "otlp" in exporters and protocol != "http/protobuf":
        _log.warning("OTLP protocol %r is not supported here: exporting http/protobuf", protocol)
    resource = Resource.create(
        {
            "service.name": env.get("OTEL_SERVICE_NAME") or default_service,
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    install(provider)
    _log.info("tracing on: %s", ", ".join(exporters))
    return True


def shutdown() -> None:
    """Flush and stop the installed provider's exporters."""
    provider = _provider
    uninstall()
    if provider is not None:
        provider.shutdown()


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[Any]:
    """A span around the block, child of the current one; nothing when tracing is off.
    Yields the span (``None`` when off): ``set_attribute`` on it as things are learnt."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=dict(attributes or {})) as current:
        yield current


@contextlib.contextmanager
def child_span(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[Any]:
    """:func:`span`, but only inside traced work (a child of the current span); outside
    any span, and when tracing is off, nothing (no trace of its own)."""
    if _tracer is None or not _in_span():
        yield None
        return
    with span(name, attributes) as current:
        yield current


def set_attribute(current: Any, key: str, value: AttributeValue) -> None:
    if current is not None:
        current.set_attribute(key, value)


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC metadata (W3C ``traceparent``/``tracestate``);
    empty when tracing is off or no span is current."""
    if _tracer is None:
        return ()
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return tuple((k.lower(), v) for k, v in carrier.items())


def _in_span() -> bool:
    from opentelemetry import trace

    return bool(trace.get_current_span().get_span_context().is_valid)


def traced_store(store: _T) -> _T:
    """``store`` with each of its coroutine methods in a ``store.<method>`` span, child
    of the work that called it (a submission, a package's attempt); calls made outside
    any span are not traced. ``store`` itself when tracing is off."""
    if _tracer is None:
        return store
    return cast(_T, _TracedStore(store))


class _TracedStore:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not callable(value):
            return value
        import inspect

        if not inspect.iscoroutinefunction(value):
            return value

        method = cast(Callable[..., Awaitable[Any]], value)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not _in_span():  # a store call outside any traced work: no trace of its own
                return await method(*args, **kwargs)
            with span(f"store.{name}"):
                return await method(*args, **kwargs)

        return call
