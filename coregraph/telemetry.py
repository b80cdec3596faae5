"""OpenTelemetry traces, on only when an OTLP endpoint is configured.

``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) turns tracing on:
a ``TracerProvider`` whose ``BatchSpanProcessor`` exports over OTLP/HTTP, configured by the
standard variables the SDK reads itself (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``, ...). Then FastAPI, every engine made
by ``coregraph.db.create_engine``, Redis and httpx are instrumented, the schema gets an
operation span (``coregraph.schema.tracing``), and webhook requests (sent with httpcore by
``coregraph.outbound``, which httpx's instrumentation does not see) get a client span here.

Without an endpoint nothing of the SDK or the instrumentations is imported, and every helper
below is one global read: a process pays for tracing only when it traces.

The relay and the webhook worker continue the trace of the mutation that caused their work:
the unit of work stores the W3C ``traceparent`` of the span current when an event is stated
(``current_traceparent``) with the event (and the relay copies it to its webhook deliveries),
and they start their spans from it (``continuing``). Their polling runs ``untraced``, so an
idle worker exports nothing.

``configure(exporter)`` is the seam for tests: the SDK's ``InMemorySpanExporter`` instead of
OTLP, and ``shutdown()`` undoes it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_undo: list[Callable[[], None]] = []

DEFAULT_SERVICE_NAME = "coregraph"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def enabled() -> bool:
    return _provider is not None


def endpoint_configured(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure_from_environment() -> bool:
    """Trace over OTLP/HTTP when the standard variables name an endpoint; idempotent. Whether
    this process traces."""
    if _provider is not None:
        return True
    if not endpoint_configured():
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = configure(OTLPSpanExporter())
    # The process's provider for anything else that traces (a library's own spans).
    trace.set_tracer_provider(provider)
    return True


def configure(exporter: SpanExporter, *, batch: bool = True) -> TracerProvider:
    """Trace to ``exporter`` (batched, or each span as it ends with ``batch=False``) and
    instrument the libraries. Not the global provider: a test undoes it with ``shutdown``."""
    global _provider, _tracer
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if _provider is not None:
        raise RuntimeError("tracing is already configured: shutdown() first")
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    _provider = provider
    _tracer = provider.get_tracer("coregraph")
    _instrument_libraries(provider)
    return provider


def _instrument_libraries(provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (HTTPXClientInstrumentor(), RedisInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
            _undo.append(instrumentor.uninstrument)


def shutdown() -> None:
    """Export what is pending, stop tracing and take the library instrumentation out."""
    global _provider, _tracer
    provider, _provider, _tracer = _provider, None, None
    while _undo:
        _undo.pop()()
    if provider is not None:
        provider.shutdown()


def flush(timeout_millis: int = 10_000) -> bool:
    return _provider.force_flush(timeout_millis) if _provider is not None else True


def provider() -> TracerProvider | None:
    return _provider


def instrument_engine(engine: Any) -> None:
    """Statement spans for ``engine`` (an ``AsyncEngine``), children of the current span."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    # SQLAlchemyInstrumentor().instrument(engine=...) works once per process; a process has
    # several engines (the API's, the workers'), so each gets the engine tracer it would make.
    usage = NoOpMeterProvider().get_meter("coregraph").create_up_down_counter("db.connections")
    EngineTracer(
        _provider.get_tracer("opentelemetry.instrumentation.sqlalchemy"),
        engine.sync_engine,
        usage,
    )


def instrument_app(app: Any, redact_path: Callable[[str], str]) -> None:
    """A server span per HTTP request and WebSocket connection (not per message). Paths are
    redacted as the request log redacts them (a signed file URL's token is a credential) and
    query strings (a GET query's variables) are not recorded."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    def redact(span: Any, scope: dict[str, Any]) -> None:
        if not span.is_recording():
            return
        path = redact_path(scope.get("path", ""))
        recorded = getattr(span, "attributes", None) or {}
        for key in ("http.target", "url.path"):
            if key in recorded:
                span.set_attribute(key, path)
        for key in ("http.url", "url.full"):
            value = recorded.get(key)
            if isinstance(value, str):
                origin = value.split("://", 1)
                host = origin[1].split("/", 1)[0] if len(origin) == 2 else ""
                span.set_attribute(key, f"{origin[0]}://{host}{path}" if host else path)
        if "url.query" in recorded:
            span.set_attribute("url.query", "")

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        server_request_hook=redact,
        excluded_urls="/healthz,/readyz",
        exclude_spans=["receive", "send"],
    )


def tracer() -> Tracer | None:
    return _tracer


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits) while a span records, else None."""
    if _provider is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return None
    return format(span.get_span_context().trace_id, "032x")


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, sampled or not (its flag goes with it, so
    whatever continues the trace keeps the decision), or None without one."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextlib.contextmanager
def continuing(
    name: str,
    traceparent: str | None,
    *,
    links: Sequence[str | None] = (),
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span | None]:
    """A span (current for the block) that continues ``traceparent`` as its child, or starts a
    trace of its own without one; linked to the other ``links``. A fresh context: instrumentation
    suppressed around it (``untraced``) records again inside. None when tracing is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import context as otel_context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    parent = _extract(traceparent) or Context()
    span_links = []
    for other in dict.fromkeys(link for link in links if link and link != traceparent):
        linked = _extract(other)
        if linked is not None:
            span_links.append(Link(trace.get_current_span(linked).get_span_context()))
    token = otel_context.attach(parent)
    try:
        with _tracer.start_as_current_span(
            name, links=span_links, attributes=dict(attributes or {})
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def _extract(traceparent: str | None) -> Any:
    if not traceparent or not _TRACEPARENT.match(traceparent):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    extracted = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    from opentelemetry import trace

    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No instrumentation spans inside (a worker's polling), unless ``continuing`` starts one."""
    if _provider is None:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


@contextlib.contextmanager
def client_span(method: str) -> Iterator[Span | None]:
    """An HTTP client span for a request sent without httpx (``coregraph.outbound``), or None.
    The sender names the origin only: a partner's path and query may carry a secret of theirs."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled
    from opentelemetry.trace import SpanKind

    if not is_instrumentation_enabled():
        yield None
        return
    with _tracer.start_as_current_span(
        method, kind=SpanKind.CLIENT, attributes={"http.request.method": method}
    ) as span:
        yield span
