"""Traces and logs (issue 12): a mutation, the event it states, the relay that publishes it
and the webhook request that delivers it are one trace, captured with the SDK's in-memory
exporter from a real server, relay, webhook worker and receiver; errors name the trace; log
lines carry the context bound for their request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from coregraph import db, telemetry
from coregraph.models import Event, WebhookDelivery
from tests.receiver_support import Receiver
from tests.streams_support import WAIT, engine_for, migrated_database, relay_settings
from tests.support import GraphQLClient, LogCapture, running_server, unique
from tests.webhooks_support import Verifying, add_endpoint

REGISTER = """mutation($input: RegisterEventTypeInput!) { registerEventType(input: $input) {
    eventType { id } } }"""
PAY = """mutation Pay($input: EmitEventInput!) { emitEvent(input: $input) { eventId } }"""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.configure(exporter, batch=False)
    try:
        yield exporter
    finally:
        telemetry.shutdown()


def _one(spans: list[ReadableSpan], name: str, trace_id: int | None = None) -> ReadableSpan:
    """The one span named ``name`` (in trace ``trace_id``: the relay and the worker may still
    be exporting the spans of earlier mutations' events)."""
    found = [
        span for span in spans if span.name == name and trace_id in (None, span.context.trace_id)
    ]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def _parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _statement(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    return str(attributes.get("db.statement") or attributes.get("db.query.text") or "")


async def _exported(exporter: InMemorySpanExporter, *names: str) -> list[ReadableSpan]:
    """Every span exported so far, once spans of all ``names`` are among them (bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        spans = list(exporter.get_finished_spans())
        if set(names) <= {span.name for span in spans}:
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"no spans {names} in {[span.name for span in spans]}")
        await asyncio.sleep(0.02)


async def _exported_in_trace(
    exporter: InMemorySpanExporter, operation: str, *names: str
) -> list[ReadableSpan]:
    """Every span exported so far, once the span named ``operation`` and spans of all
    ``names`` in its trace are among them (bounded): the relay and the webhook worker each
    poll on their own, so either may finish first, and either may still be exporting spans of
    earlier events."""
    deadline = time.monotonic() + WAIT
    while True:
        spans = list(exporter.get_finished_spans())
        traces = {span.context.trace_id for span in spans if span.name == operation}
        in_trace = {span.name for span in spans if span.context.trace_id in traces}
        if traces and set(names) <= in_trace:
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"no spans {names} in {[span.name for span in spans]}")
        await asyncio.sleep(0.02)


async def test_a_mutation_its_event_its_relay_and_its_webhook_share_one_trace(
    spans: InMemorySpanExporter, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    async with migrated_database(str(tmp_path)) as url:
        settings = relay_settings(
            url,
            run_relay="true",
            run_webhook_worker="true",
            relay_poll_seconds=0.05,
            webhook_poll_seconds=0.05,
            webhook_allow_private=True,
        )
        handler = Verifying(secrets=[])
        async with Receiver(handler) as receiver, engine_for(url) as engine:
            with running_server(settings, migrate_first=False) as server:
                client = GraphQLClient(http, server.url)
                owner = await client.sign_up()
                tenant = await client.create_tenant(owner)
                (
                    await client.execute(
                        REGISTER,
                        {"input": {"type": "order.paid", "description": "", "schema": {}}},
                        actor=owner,
                        tenant_id=tenant,
                    )
                ).ok()
                endpoint = await add_endpoint(
                    engine, settings, tenant, receiver.url("/hooks"), event_types=["order.*"]
                )
                handler.secrets.append(endpoint.secret)
                port = receiver.port
                spans.clear()
                paid = await client.execute(
                    PAY,
                    {"input": {"type": "order.paid", "data": {"amount": 12}}},
                    actor=owner,
                    tenant_id=tenant,
                )
                event_id = paid.ok()["emitEvent"]["eventId"]
                await receiver.wait_for(lambda: len(handler.verified) == 1, WAIT)
                finished = await _exported_in_trace(
                    spans, "mutation Pay", "relay publish", "webhook deliver"
                )
            async with engine.begin() as conn:
                await db.scope_transaction(conn, tenant_ids=[tenant])
                event = (await conn.execute(select(Event).where(Event.id == event_id))).one()
                delivery = (
                    await conn.execute(
                        select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)
                    )
                ).one()

    operation = _one(finished, "mutation Pay")
    trace_id = operation.context.trace_id
    server = next(
        span
        for span in finished
        if span.kind is SpanKind.SERVER and span.context.span_id == _parent_of(operation)
    )
    assert server.name == "POST /graphql" and server.context.trace_id == trace_id
    # The operation's own statements (the event's insert among them) are its children.
    statements = [_statement(s) for s in finished if _parent_of(s) == operation.context.span_id]
    assert any("events" in statement for statement in statements), statements

    # The event carries the operation's span as its parent; the delivery copies it.
    flags = int(operation.context.trace_flags)
    assert flags & 1, "sampled"
    traceparent = f"00-{trace_id:032x}-{operation.context.span_id:016x}-{flags:02x}"
    assert event.trace_parent == traceparent
    assert delivery.trace_parent == traceparent

    relay = _one(finished, "relay publish", trace_id)
    assert _parent_of(relay) == operation.context.span_id
    assert (relay.attributes or {})["coregraph.chain_id"] == tenant
    relay_statements = [_statement(s) for s in finished if _parent_of(s) == relay.context.span_id]
    assert any("relay_positions" in statement for statement in relay_statements)
    assert any("webhook_deliveries" in statement for statement in relay_statements)

    deliver = _one(finished, "webhook deliver", trace_id)
    assert _parent_of(deliver) == operation.context.span_id
    assert (deliver.attributes or {})["coregraph.webhook.delivery_id"] == delivery.id
    [request] = [
        span
        for span in finished
        if span.kind is SpanKind.CLIENT and _parent_of(span) == deliver.context.span_id
    ]
    assert request.name == "POST" and request.context.trace_id == trace_id
    attributes = request.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == port
    # Origins only: no path or query of a partner's URL reaches the trace backend.
    assert not any("/hooks" in str(value) for value in attributes.values())
    # The relay's and the worker's polling exported nothing (their statements would be roots).
    polled = [
        _statement(span)
        for span in finished
        if span.parent is None
        and any(t in _statement(span) for t in ("stream_heads", "relay_positions", "webhook_"))
    ]
    assert polled == []


async def test_an_error_and_the_request_line_name_the_trace(
    spans: InMemorySpanExporter, database_url: str, http: httpx.AsyncClient
) -> None:
    settings = relay_settings(database_url, run_relay="false", run_webhook_worker="false")
    with LogCapture("coregraph.request") as logs, running_server(settings) as server:
        request_id = unique("req-trace")
        r = await GraphQLClient(http, server.url).execute(
            PAY,
            {"input": {"type": "order.paid", "data": {}}},
            headers={"X-Request-Id": request_id},
        )
        [line] = await logs.wait_for(1, lambda line: line.get("request_id") == request_id)
    [error] = r.errors
    extensions = error["extensions"]
    assert extensions["requestId"] == request_id
    finished = await _exported(spans, "POST /graphql")
    [server_span] = [
        span
        for span in finished
        if span.kind is SpanKind.SERVER and span.context.trace_id == int(extensions["traceId"], 16)
    ]
    assert line["trace_id"] == extensions["traceId"]
    assert line["principal"] == "anonymous" and line["operation"] == "Pay"
    # The document is not recorded: its literals may be a password or a token.
    operation = _one(finished, "mutation Pay")
    assert "query" not in (operation.attributes or {})
    assert server_span.context.trace_id == operation.context.trace_id


async def test_without_an_endpoint_errors_and_events_carry_no_trace(
    client: GraphQLClient,
) -> None:
    assert not telemetry.enabled() and not telemetry.endpoint_configured({})
    r = await client.execute(PAY, {"input": {"type": "order.paid", "data": {}}})
    assert "traceId" not in r.errors[0]["extensions"]
    assert telemetry.current_traceparent() is None


def test_endpoint_variables_turn_tracing_on() -> None:
    assert telemetry.endpoint_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector"})
    assert telemetry.endpoint_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/v1"})
    assert not telemetry.endpoint_configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector", "OTEL_SDK_DISABLED": "true"}
    )


def test_a_log_line_carries_the_context_bound_for_its_request() -> None:
    with LogCapture("coregraph.test") as logs:
        with structlog.contextvars.bound_contextvars(
            request_id="req-bound", principal="user", tenant_id="ten_1", operation="Pay"
        ):
            logging.getLogger("coregraph.test").info("inside", extra={"operation": "Given"})
            try:
                raise ValueError("boom")
            except ValueError:
                logging.getLogger("coregraph.test").exception("failed")
        logging.getLogger("coregraph.test").info("outside")
    inside, failed, outside = logs.lines
    assert inside["message"] == "inside" and inside["level"] == "info"
    assert inside["logger"] == "coregraph.test" and inside["time"].endswith("Z")
    assert inside["request_id"] == "req-bound" and inside["tenant_id"] == "ten_1"
    assert inside["principal"] == "user"
    assert inside["operation"] == "Given", "a line's own fields win over bound ones"
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"]
    assert "request_id" not in outside and "trace_id" not in outside
