"""Webhook delivery: committed events reach a partner's endpoint as signed Standard Webhooks
requests, verified by a real receiver on 127.0.0.1 with the ``standardwebhooks`` package;
failures are retried on the configured schedule with the same ``webhook-id``, an endpoint that
keeps failing is disabled with an event, and any number of workers share the deliveries
without sending one twice, losing none when a worker is killed or stopped mid-request.

These tests run on a database of their own: the only relay and workers are the ones each test
starts (in this process, or as `coregraph worker` processes). Endpoints are written as the API
role stores them (tests/webhooks_support.py). Retry schedules are fractions of a second.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook

from coregraph import db
from coregraph.auth.principal import system_principal
from coregraph.models import AuditEntry, Event, RelayPosition, WebhookDelivery, WebhookEndpoint
from coregraph.models.base import Environment, utcnow
from coregraph.request import system_request
from coregraph.services.uow import UnitOfWork
from coregraph.services.webhooks import new_secret
from coregraph.settings import Settings
from coregraph.streams.broker import Broker, events_topic, webhook_attempts_topic
from coregraph.streams.relay import Relay, running as relaying
from coregraph.streams.webhooks import (
    JITTER,
    WebhookWorker,
    request_body,
    retry_delay,
    running as delivering,
)
from tests.receiver_support import ReceivedRequest, Receiver, Reply
from tests.streams_support import (
    REDIS_URL,
    WAIT,
    broker_for_this_process,
    emit,
    engine_for,
    migrated_database,
    relay_settings,
    worker_env,
    worker_process,
)
from tests.support import GraphQLClient, Server, running_server
from tests.webhooks_support import (
    Endpoint,
    Holding,
    Verifying,
    add_endpoint,
    attempts,
    deliveries,
    read_endpoint,
    set_enabled,
)

FAST = {
    "webhook_allow_private": True,
    "webhook_retry_schedule": [0.2, 0.2, 0.2, 0.2],
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 5.0,
    "webhook_claim_seconds": 30.0,
    "webhook_shutdown_seconds": 2.0,
}


@pytest.fixture(scope="module")
async def hooks_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("webhooks"))) as url:
        yield url


@pytest.fixture(scope="module")
def api(hooks_db: str) -> Iterator[Server]:
    """The API, without a relay or webhook worker of its own: each test runs those it is
    about."""
    settings = relay_settings(hooks_db, run_relay="false", run_webhook_worker="false")
    with running_server(settings, migrate_first=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(api: Server, http: Any) -> GraphQLClient:
    return GraphQLClient(http, api.url)


@pytest.fixture(scope="module")
async def app_engine(hooks_db: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(hooks_db) as engine:
        yield engine


@pytest.fixture
async def worker_engine(hooks_db: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(hooks_db, worker=True) as engine:
        yield engine


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with broker_for_this_process() as broker:
        yield broker


@pytest.fixture
async def tenant(client: GraphQLClient) -> str:
    owner = await client.sign_up()
    return await client.create_tenant(owner)


def settings_for(url: str, **overrides: Any) -> Settings:
    return relay_settings(url, **{**FAST, **overrides})


async def start_delivering(
    stack: AsyncExitStack, engine: AsyncEngine, broker: Broker, settings: Settings
) -> WebhookWorker:
    """The relay and a webhook worker in this process, for the rest of ``stack``."""
    await stack.enter_async_context(relaying(Relay(engine, broker, poll_seconds=0.05)))
    worker = WebhookWorker(engine, broker, settings)
    await stack.enter_async_context(delivering(worker))
    return worker


async def wait_until(predicate: Any, wait: float = WAIT, what: str = "condition") -> None:
    """Poll ``predicate`` (plain or async) until true; fail after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {wait} s for {what}")
        await asyncio.sleep(0.02)


async def test_a_committed_event_reaches_its_endpoint_signed_as_standard_webhooks_say(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(hooks_db)
    handler = Verifying(secrets=[])
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        endpoint = await add_endpoint(
            app_engine, settings, tenant, receiver.url("/hooks"), event_types=["test.*"]
        )
        handler.secrets.append(endpoint.secret)
        # Another environment's endpoint, and one for other types: neither gets this event.
        await add_endpoint(
            app_engine, settings, tenant, receiver.url("/test-env"), environment=Environment.TEST
        )
        await add_endpoint(
            app_engine, settings, tenant, receiver.url("/other"), event_types=["member.*"]
        )
        attempts_seen = await stack.enter_async_context(
            broker.subscribe(webhook_attempts_topic(tenant))
        )
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 1, type="test.pinged")
        await receiver.wait_for(lambda: len(handler.verified) == 1, WAIT)
        message = await asyncio.wait_for(anext(aiter(attempts_seen)), WAIT)
        await wait_until(
            lambda: _statuses_are(app_engine, endpoint, ["succeeded"]), what="the delivery recorded"
        )
    assert handler.forged == []
    request = handler.verified[0]
    assert request.method == "POST" and request.path == "/hooks"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("coregraph")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")
    assert " " not in request.headers["webhook-signature"], "one secret, one signature"
    payload = handler.payloads[0]
    assert payload["type"] == "test.pinged" and payload["tenant"] == tenant
    assert payload["data"] == {"n": 0} and payload["environment"] == "live"
    assert payload["id"].startswith("evt_") and payload["timestamp"] == payload["occurredAt"]
    [delivery] = await deliveries(app_engine, endpoint)
    assert request.headers["webhook-id"] == delivery.id and delivery.id.startswith("msg_")
    assert request.body == request_body(delivery.payload)
    assert delivery.event_id == payload["id"] and delivery.attempts == 1
    assert delivery.succeeded_at is not None and delivery.claimed_by is None
    [attempt] = await attempts(app_engine, endpoint, delivery.id)
    assert attempt.status_code == 200 and attempt.succeeded and attempt.error is None
    assert attempt.response_body == "thanks" and attempt.duration_ms > 0
    assert delivery.last_attempt_at == attempt.started_at <= delivery.succeeded_at
    assert message["deliveryId"] == delivery.id and message["attempt"] == 1
    assert message["statusCode"] == 200 and message["deliveryStatus"] == "succeeded"
    assert message["endpointId"] == endpoint.id and message["eventType"] == "test.pinged"
    assert [r.path for r in receiver.requests] == ["/hooks"]


async def _status(engine: AsyncEngine, endpoint: Endpoint) -> list[str]:
    return [d.status for d in await deliveries(engine, endpoint)]


async def _statuses_are(engine: AsyncEngine, endpoint: Endpoint, expected: list[str]) -> bool:
    return await _status(engine, endpoint) == expected


async def test_a_failing_receiver_gets_retries_on_the_schedule_with_the_same_webhook_id(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    failures = 3
    settings = settings_for(hooks_db)

    async def fail_first(request: ReceivedRequest) -> Reply:
        if len(handler.verified) <= failures:
            return Reply(500, b"down for maintenance")
        return Reply(204, b"")

    handler = Verifying(secrets=[], answer=fail_first)
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 1)
        await receiver.wait_for(lambda: len(handler.verified) == failures + 1, WAIT)
        await wait_until(
            lambda: _statuses_are(app_engine, endpoint, ["succeeded"]), what="the delivery recorded"
        )
    assert handler.forged == []
    [delivery] = await deliveries(app_engine, endpoint)
    # Delivered once, after K failed attempts: the same webhook-id and body every time.
    assert handler.ids() == [delivery.id] * (failures + 1)
    assert {r.body for r in handler.verified} == {request_body(delivery.payload)}
    assert delivery.attempts == failures + 1
    recorded = await attempts(app_engine, endpoint, delivery.id)
    assert [a.attempt for a in recorded] == [1, 2, 3, 4]
    assert [a.status_code for a in recorded] == [500, 500, 500, 204]
    assert [a.succeeded for a in recorded] == [False, False, False, True]
    assert delivery.last_attempt_at == recorded[-1].started_at
    assert recorded[0].response_body == "down for maintenance"
    # Each retry waited its delay of the schedule, less at most the jitter.
    starts = [a.started_at for a in recorded]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= 0.2 * (1 - JITTER) - 0.01 for gap in gaps), gaps
    # The success ends the endpoint's run of failures.
    row = await read_endpoint(app_engine, endpoint)
    assert row.consecutive_failures == 0 and row.failing_since is None and row.enabled


async def test_a_delivery_fails_for_good_once_the_schedule_is_spent(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(hooks_db, webhook_retry_schedule=[0.05, 0.05])

    async def refuse(request: ReceivedRequest) -> Reply:
        return Reply(503, b"no")

    handler = Verifying(secrets=[], answer=refuse)
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 1)
        await wait_until(
            lambda: _statuses_are(app_engine, endpoint, ["failed"]), what="the delivery to fail"
        )
    [delivery] = await deliveries(app_engine, endpoint)
    assert delivery.attempts == 3 and delivery.next_attempt_at is None
    assert len(handler.verified) == 3
    row = await read_endpoint(app_engine, endpoint)
    assert row.consecutive_failures == 3 and row.failing_since is not None
    assert row.enabled, "20 failures in a row are needed to disable it"


async def test_a_batch_the_relay_publishes_again_schedules_no_delivery_twice(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    """The crash between publishing and recording, replayed: the relay's position goes back and
    it publishes the same events again; each still has one delivery per endpoint."""
    settings = settings_for(hooks_db)
    endpoint = await add_endpoint(app_engine, settings, tenant, "http://127.0.0.1:9/unused")
    await emit(app_engine, tenant, 3, per_commit=3)
    relay = Relay(worker_engine, broker)
    await relay.publish_pending()
    first = await deliveries(app_engine, endpoint)
    async with worker_engine.begin() as conn:
        await conn.execute(
            update(RelayPosition)
            .where(RelayPosition.chain_id == tenant)
            .values(events_published=0, audit_published=0)
        )
    assert await relay.publish_pending() > 0, "published again"
    again = await deliveries(app_engine, endpoint)
    # No worker runs here; nothing later sends to this endpoint either.
    await set_enabled(app_engine, endpoint, False)
    assert len(first) == 3 and [d.id for d in again] == [d.id for d in first]
    assert sorted(d.payload["data"]["n"] for d in again) == [0, 1, 2]


def test_the_retry_delays_follow_the_schedule_within_the_jitter() -> None:
    schedule = [5.0, 300.0]
    for _ in range(200):
        first = retry_delay(schedule, 1)
        second = retry_delay(schedule, 2)
        assert first is not None and 4.5 <= first <= 5.5
        assert second is not None and 270 <= second <= 330
    assert retry_delay(schedule, 3) is None
    assert retry_delay([0.0], 1) == 0.0


async def test_during_a_secret_rotation_both_secrets_sign_and_either_verifies(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(hooks_db)
    old, new = new_secret(), new_secret()
    old_only = Verifying(secrets=[old])
    new_only = Verifying(secrets=[new])
    async with (
        Receiver(old_only) as old_receiver,
        Receiver(new_only) as new_receiver,
        AsyncExitStack() as stack,
    ):
        overlapping = utcnow() + timedelta(hours=1)
        for receiver in (old_receiver, new_receiver):
            await add_endpoint(
                app_engine,
                settings,
                tenant,
                receiver.url(),
                secret=new,
                previous_secret=old,
                previous_secret_expires_at=overlapping,
            )
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 1)
        await old_receiver.wait_for(lambda: len(old_only.verified) == 1, WAIT)
        await new_receiver.wait_for(lambda: len(new_only.verified) == 1, WAIT)
    # A receiver still holding the old secret and one that already has the new one both
    # verify: the header carries a signature of each.
    for handler in (old_only, new_only):
        assert handler.forged == []
        assert len(handler.verified[0].headers["webhook-signature"].split(" ")) == 2


async def test_after_the_overlap_only_the_new_secret_signs(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(hooks_db, webhook_retry_schedule=[])
    old, new = new_secret(), new_secret()
    handler = Verifying(secrets=[old])
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        endpoint = await add_endpoint(
            app_engine,
            settings,
            tenant,
            receiver.url(),
            secret=new,
            previous_secret=old,
            previous_secret_expires_at=utcnow() - timedelta(seconds=1),
        )
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 1)
        await wait_until(
            lambda: _statuses_are(app_engine, endpoint, ["failed"]), what="the refused delivery"
        )
    # The receiver that never got the new secret refuses it; the new secret verifies it.
    [request] = handler.forged
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert Webhook(new).verify(request.body, request.headers)["type"] == "test.pinged"


async def test_an_endpoint_that_keeps_failing_is_disabled_with_an_event_and_an_audit_entry(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(
        hooks_db,
        webhook_retry_schedule=[0.05] * 10,
        webhook_disable_after_failures=3,
        webhook_disable_after_seconds=0,
        # One request at a time: the endpoint is disabled before its next request starts.
        webhook_endpoint_concurrency=1,
    )
    healthy = asyncio.Event()

    async def fail_until_healthy(request: ReceivedRequest) -> Reply:
        return Reply(200, b"ok") if healthy.is_set() else Reply(500, b"broken")

    handler = Verifying(secrets=[], answer=fail_until_healthy)
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        url = receiver.url()
        endpoint = await add_endpoint(app_engine, settings, tenant, url)
        handler.secrets.append(endpoint.secret)
        worker = await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 2, per_commit=2)
        await wait_until(
            lambda: _disabled(app_engine, endpoint), what="the endpoint to be disabled"
        )
        # While disabled, its due deliveries are not claimed: they wait where they are.
        await wait_until(
            lambda: _statuses_are(app_engine, endpoint, ["pending", "pending"]),
            what="the requests in flight to finish",
        )
        failed_requests = len(handler.verified)
        claimed, _token, more = await worker.claim(10)
        assert (claimed, more) == ([], False)
        # Enabled again (and healthy): both flow.
        healthy.set()
        await set_enabled(app_engine, endpoint, True)
        await broker.wake_webhooks()
        await wait_until(
            lambda: _statuses_are(app_engine, endpoint, ["succeeded", "succeeded"]),
            what="both deliveries after re-enabling",
        )
    assert failed_requests == 3
    assert len(handler.verified) == failed_requests + 2
    async with app_engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant])
        [event] = (
            await conn.execute(select(Event).where(Event.type == "webhook_endpoint.disabled"))
        ).all()
        [entry] = (
            await conn.execute(
                select(AuditEntry).where(AuditEntry.action == "webhook_endpoint.disabled")
            )
        ).all()
    assert event.tenant_id == tenant and event.environment == "live"
    assert event.data["endpointId"] == endpoint.id and event.data["reason"] == "failing"
    assert event.data["url"] == url and event.data["consecutiveFailures"] == 3
    assert event.actor_kind == "system" and event.actor_id == "worker:webhooks"
    assert entry.target_id == endpoint.id and entry.target_type == "WebhookEndpoint"
    assert entry.changes["after"] == {"enabled": False, "disabledReason": "failing"}


async def _disabled(engine: AsyncEngine, endpoint: Endpoint) -> bool:
    row = await read_endpoint(engine, endpoint)
    return not row.enabled and row.disabled_reason == "failing"


async def test_the_concurrency_per_endpoint_is_never_exceeded(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(hooks_db, webhook_endpoint_concurrency=2, webhook_worker_concurrency=8)
    release = asyncio.Event()
    busy = {"slow": 0, "fast": 0}
    peak = {"slow": 0, "fast": 0}

    def answering(name: str, hold: bool) -> Any:
        async def answer(request: ReceivedRequest) -> Reply:
            busy[name] += 1
            peak[name] = max(peak[name], busy[name])
            try:
                if hold:
                    await release.wait()
                return Reply(200, b"ok")
            finally:
                busy[name] -= 1

        return answer

    slow = Verifying(secrets=[], answer=answering("slow", True))
    fast = Verifying(secrets=[], answer=answering("fast", False))
    async with Receiver(slow) as slow_rx, Receiver(fast) as fast_rx, AsyncExitStack() as stack:
        slow_endpoint = await add_endpoint(app_engine, settings, tenant, slow_rx.url())
        fast_endpoint = await add_endpoint(app_engine, settings, tenant, fast_rx.url())
        slow.secrets.append(slow_endpoint.secret)
        fast.secrets.append(fast_endpoint.secret)
        worker = await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 6, per_commit=6)
        # The slow endpoint holds two requests; the fast one still gets all six meanwhile.
        await fast_rx.wait_for(lambda: len(fast.verified) == 6, WAIT)
        await slow_rx.wait_for(lambda: len(slow.verified) == 2, WAIT)
        await wait_until(lambda: worker.in_flight == 2, what="the fast requests recorded")
        pending = await _status(app_engine, slow_endpoint)
        assert sorted(pending) == ["pending"] * 4 + ["sending"] * 2, "nothing claimed past 2"
        release.set()
        await slow_rx.wait_for(lambda: len(slow.verified) == 6, WAIT)
        await wait_until(
            lambda: _statuses_are(app_engine, slow_endpoint, ["succeeded"] * 6), what="all six"
        )
    assert peak["slow"] == 2 and 1 <= peak["fast"] <= 2


async def test_each_finished_request_lets_the_next_one_go_without_waiting_for_a_poll(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    """One request at a time to the endpoint and a 30 s poll: twenty deliveries arrive within
    seconds only if every recorded request wakes the worker to claim the next."""
    settings = settings_for(hooks_db, webhook_endpoint_concurrency=1, webhook_poll_seconds=30)
    handler = Verifying(secrets=[])
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 20, per_commit=20)
        await receiver.wait_for(lambda: len(handler.verified) == 20, WAIT)
    assert len(set(handler.ids())) == 20


async def test_a_stopped_worker_releases_the_claims_of_requests_it_could_not_finish(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    settings = settings_for(hooks_db, webhook_shutdown_seconds=0.2)
    answering = Holding()
    handler = Verifying(secrets=[], answer=answering.answer)
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        async with AsyncExitStack() as stack:
            first = await start_delivering(stack, worker_engine, broker, settings)
            await emit(app_engine, tenant, 1)
            await receiver.wait_for(lambda: len(handler.verified) == 1, WAIT)
            [claimed] = await deliveries(app_engine, endpoint)
            assert claimed.status == "sending" and claimed.claimed_by.startswith(f"{first.name}:")
        # Stopped: the request it held was cut short and its claim handed back at once.
        [released] = await deliveries(app_engine, endpoint)
        assert released.status == "pending" and released.claimed_by is None
        assert released.claimed_until is None and released.attempts == 0
        answering.release()
        async with AsyncExitStack() as stack:
            await start_delivering(stack, worker_engine, broker, settings)
            await wait_until(
                lambda: _statuses_are(app_engine, endpoint, ["succeeded"]), what="the redelivery"
            )
    # The same webhook-id both times: the receiver may have to drop a repeat, never a loss.
    assert handler.ids() == [claimed.id, claimed.id]
    assert [a.attempt for a in await attempts(app_engine, endpoint, claimed.id)] == [1]


async def test_serve_on_the_embedded_defaults_delivers_webhooks_itself(
    hooks_db: str, app_engine: AsyncEngine, client: GraphQLClient, http: Any
) -> None:
    settings = settings_for(hooks_db, run_relay="true", run_webhook_worker="auto")
    assert settings.webhook_worker_in_process
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    handler = Verifying(secrets=[])
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(
            app_engine, settings, tenant_id, receiver.url(), event_types=["tenant.updated"]
        )
        handler.secrets.append(endpoint.secret)
        with running_server(settings, migrate_first=False) as server:
            r = await GraphQLClient(http, server.url).execute(
                "mutation($i: UpdateTenantInput!) { updateTenant(input: $i) { tenant { name } } }",
                {"i": {"name": "Renamed for webhooks"}},
                actor=owner,
                tenant_id=tenant_id,
            )
            r.ok()
            await receiver.wait_for(lambda: len(handler.verified) == 1, WAIT)
    assert handler.payloads[0]["type"] == "tenant.updated"
    assert handler.payloads[0]["data"]["after"]["name"] == "Renamed for webhooks"


async def test_a_test_send_through_the_api_wakes_the_worker_instead_of_waiting_for_its_poll(
    hooks_db: str, app_engine: AsyncEngine, client: GraphQLClient, http: Any
) -> None:
    """A delivery made due by a mutation (here sendTestWebhook; retries, replays and an
    endpoint enabled again do the same) reaches the receiver well before the worker's poll."""
    settings = settings_for(
        hooks_db, run_relay="true", run_webhook_worker="true", webhook_poll_seconds=60
    )
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    handler = Verifying(secrets=[])
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(app_engine, settings, tenant_id, receiver.url())
        handler.secrets.append(endpoint.secret)
        with running_server(settings, migrate_first=False) as server:
            r = await GraphQLClient(http, server.url).execute(
                "mutation($id: ID!) { sendTestWebhook(endpointId: $id) {"
                " webhookDelivery { id } } }",
                {"id": endpoint.id},
                actor=owner,
                tenant_id=tenant_id,
            )
            sent = r.ok()["sendTestWebhook"]["webhookDelivery"]["id"]
            await receiver.wait_for(lambda: len(handler.verified) == 1, WAIT)
    assert handler.ids() == [sent]
    assert handler.payloads[0]["type"] == "webhook.test"


# --- what the security review found -----------------------------------------------------------

WIDE = 2**64  # one past what orjson encodes


async def test_emit_event_refuses_an_integer_beyond_64_bits_naming_its_path(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    registered = await client.execute(
        "mutation($input: RegisterEventTypeInput!) { registerEventType(input: $input) {"
        " eventType { id } } }",
        {"input": {"type": "order.placed", "description": "x", "schema": {"type": "object"}}},
        actor=owner,
        tenant_id=tenant_id,
    )
    registered.ok()
    # In the document: variables are read by orjson, which has no integers that wide.
    r = await client.execute(
        'mutation { emitEvent(input: {type: "order.placed",'
        f" data: {{lines: [{{qty: 1}}, {{qty: {WIDE}}}]}}}}) {{ eventId }} }}",
        {},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.codes == ["BAD_USER_INPUT"]
    assert "$.lines[1].qty" in r.errors[0]["message"]
    assert r.errors[0]["extensions"]["path"] == "$.lines[1].qty"


async def test_an_event_with_an_integer_beyond_64_bits_blocks_nothing_after_it(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    """Such an event (stored before emitEvent refused them) is published with the integer as a
    string, delivered with the number itself, and the next event follows it."""
    settings = settings_for(hooks_db)
    handler = Verifying(secrets=[])
    async with Receiver(handler) as receiver, AsyncExitStack() as stack:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        published = await stack.enter_async_context(
            broker.subscribe(events_topic(tenant, Environment.LIVE))
        )
        async with UnitOfWork(app_engine, system_principal("test"), system_request("test")) as uow:
            await uow.allow_tenant(tenant)
            uow.emit("test.pinged", tenant_id=tenant, data={"n": WIDE})
        await emit(app_engine, tenant, 1)
        await start_delivering(stack, worker_engine, broker, settings)
        await receiver.wait_for(lambda: len(handler.verified) == 2, WAIT)
        pings: list[Any] = []
        while len(pings) < 2:  # the tenant's own creation events come first
            message = await asyncio.wait_for(anext(aiter(published)), WAIT)
            if message["type"] == "test.pinged":
                pings.append(message)
    assert [m["data"] for m in pings] == [{"n": str(WIDE)}, {"n": 0}]
    # Sent side by side, in either order.
    assert sorted(p["data"]["n"] for p in handler.payloads) == [0, WIDE]
    assert any(b'"n":18446744073709551616' in request.body for request in handler.verified)


async def test_a_claim_is_tied_to_its_request(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    """A claim that expires while its request is in flight (a database clock that jumped, a
    request slower than it should be): its worker does not claim that delivery again, and once
    another worker has claimed it, the first one's answer is not recorded over the new claim."""
    settings = settings_for(hooks_db)
    answering = Holding()
    handler = Verifying(secrets=[], answer=answering.answer)
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        async with AsyncExitStack() as stack:
            first = await start_delivering(stack, worker_engine, broker, settings)
            await emit(app_engine, tenant, 1)
            await receiver.wait_for(lambda: len(handler.verified) == 1, WAIT)
            [held] = await deliveries(app_engine, endpoint)
            await _expire_claims(app_engine, endpoint)
            claimed, _, _ = await first.claim(10)
            assert claimed == [], "its own request is still in flight"
            # Another worker (not running: only its claim is used) takes the expired claim.
            second = WebhookWorker(worker_engine, broker, settings)
            [taken], token, _ = await second.claim(10)
            assert taken.id == held.id and token.startswith(f"{second.name}:")
            answering.release()
            await wait_until(lambda: first.in_flight == 0, what="the first request to end")
            [after] = await deliveries(app_engine, endpoint)
            assert (after.status, after.claimed_by, after.attempts) == ("sending", token, 0)
            assert await attempts(app_engine, endpoint, held.id) == []
    assert handler.ids() == [held.id], "one send for the one claim that made it"


async def _expire_claims(engine: AsyncEngine, endpoint: Endpoint) -> None:
    async with engine.begin() as conn:
        await db.scope_transaction(conn, tenant_ids=[endpoint.tenant_id])
        await conn.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint.id)
            .values(claimed_until=utcnow() - timedelta(seconds=3600))
        )


def test_settings_refuse_a_claim_that_does_not_outlast_the_request_by_the_margin() -> None:
    with pytest.raises(ValidationError, match="COREGRAPH_WEBHOOK_CLAIM_SECONDS"):
        Settings(webhook_timeout_seconds=15, webhook_claim_seconds=15 + 4.9)
    ok = Settings(webhook_timeout_seconds=15, webhook_claim_seconds=15 + 5)
    assert ok.webhook_claim_seconds == 20


async def test_a_delivery_whose_secret_cannot_be_opened_fails_on_the_schedule(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    """Sealed with a key the worker does not hold: each attempt is recorded as failed, with the
    reason, and retried on the schedule until it is spent (not every claim's expiry, forever)."""
    settings = settings_for(hooks_db, webhook_retry_schedule=[0.05, 0.05])
    stranger = settings_for(hooks_db, webhook_secret_keys=Fernet.generate_key().decode())
    async with AsyncExitStack() as stack:
        endpoint = await add_endpoint(app_engine, stranger, tenant, "http://127.0.0.1:9/never")
        await start_delivering(stack, worker_engine, broker, settings)
        await emit(app_engine, tenant, 1)
        await wait_until(lambda: _statuses_are(app_engine, endpoint, ["failed"]), what="failed")
    [delivery] = await deliveries(app_engine, endpoint)
    made = await attempts(app_engine, endpoint, delivery.id)
    assert [a.attempt for a in made] == [1, 2, 3] and delivery.attempts == 3
    assert {a.error for a in made} == {
        "not sent: the endpoint's signing secret could not be decrypted"
    }
    assert {a.status_code for a in made} == {None}


async def test_a_person_who_enabled_a_failing_endpoint_again_is_not_overruled(
    hooks_db: str, tenant: str, app_engine: AsyncEngine, worker_engine: AsyncEngine, broker: Broker
) -> None:
    """The worker decided to disable the endpoint, then a person enabled it (resetting its
    failures) before the disable ran: the disable finds the thresholds no longer hold."""
    settings = settings_for(hooks_db, webhook_disable_after_failures=3)
    endpoint = await add_endpoint(app_engine, settings, tenant, "http://127.0.0.1:9/never")
    seen = SimpleNamespace(consecutive_failures=3, failing_since=utcnow() - timedelta(days=6))
    worker = WebhookWorker(worker_engine, broker, settings)
    assert await worker.disable_failing(tenant, endpoint.id, seen) is False
    assert (await read_endpoint(app_engine, endpoint)).enabled
    async with app_engine.begin() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant])
        await conn.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint.id)
            .values(consecutive_failures=3, failing_since=seen.failing_since)
        )
    assert await worker.disable_failing(tenant, endpoint.id, seen) is True
    assert not (await read_endpoint(app_engine, endpoint)).enabled


# --- `coregraph worker` processes -----------------------------------------------------------


def process_env(database_url: str, **settings: str) -> dict[str, str]:
    """`coregraph worker`'s environment: the stream tests' one, allowed to deliver to loopback,
    with short schedules and ``settings`` (``webhook_claim_seconds="2"``) on top."""
    env = worker_env(database_url)
    if not REDIS_URL:
        env.pop("COREGRAPH_REDIS_URL")
    env.update(
        {
            "COREGRAPH_WEBHOOK_SECRET_KEYS": relay_settings(database_url).webhook_secret_keys,
            "COREGRAPH_WEBHOOK_ALLOW_PRIVATE": "true",
            "COREGRAPH_WEBHOOK_POLL_SECONDS": "0.05",
            "COREGRAPH_WEBHOOK_RETRY_SCHEDULE": "[0.2, 0.2, 0.2]",
            "COREGRAPH_WEBHOOK_TIMEOUT_SECONDS": "5",
        }
    )
    env.update({f"COREGRAPH_{name.upper()}": value for name, value in settings.items()})
    return env


async def stopped(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then its exit code (bounded)."""
    process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(asyncio.to_thread(process.wait), WAIT)


@pytest.fixture
def postgres_only(hooks_db: str) -> None:
    if hooks_db.startswith("sqlite"):
        pytest.skip("several workers share deliveries on PostgreSQL only (SQLite: run one)")


@pytest.mark.usefixtures("postgres_only")
async def test_two_worker_processes_deliver_a_thousand_events_exactly_once(
    hooks_db: str, tenant: str, app_engine: AsyncEngine
) -> None:
    settings = settings_for(hooks_db)
    handler = Verifying(secrets=[])
    env = process_env(hooks_db, webhook_endpoint_concurrency="16")
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(
            app_engine, settings, tenant, receiver.url(), event_types=["test.pinged"]
        )
        handler.secrets.append(endpoint.secret)
        with worker_process(env) as first, worker_process(env) as second:
            await emit(app_engine, tenant, 1000, per_commit=50)
            await receiver.wait_for(lambda: len(set(handler.ids())) == 1000, 60)
            await wait_until(
                lambda: _all_succeeded(app_engine, endpoint, 1000), what="1,000 recorded"
            )
            # Stopped: nothing more can be sent, so the count below is final.
            assert await stopped(first) == 0
            assert await stopped(second) == 0
    assert handler.forged == []
    assert len(handler.verified) == 1000, "every delivery made exactly once"
    sent = await deliveries(app_engine, endpoint)
    assert sorted(handler.ids()) == sorted(d.id for d in sent)
    assert {d.attempts for d in sent} == {1}
    assert sorted(p["data"]["n"] for p in handler.payloads) == list(range(1000))


async def _all_succeeded(engine: AsyncEngine, endpoint: Endpoint, count: int) -> bool:
    statuses = await _status(engine, endpoint)
    return len(statuses) == count and set(statuses) == {"succeeded"}


async def test_a_worker_killed_mid_delivery_is_replaced_once_its_claim_expires(
    hooks_db: str, tenant: str, app_engine: AsyncEngine
) -> None:
    settings = settings_for(hooks_db)
    answering = Holding()
    handler = Verifying(secrets=[], answer=answering.answer)
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        # The shortest claim the settings allow for a 1 s request timeout.
        short = process_env(hooks_db, webhook_timeout_seconds="1", webhook_claim_seconds="6")
        with worker_process(short) as doomed:
            await emit(app_engine, tenant, 3, per_commit=3)
            await receiver.wait_for(lambda: len(handler.verified) == 3, WAIT)
            doomed.send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.to_thread(doomed.wait), WAIT)
        held = await deliveries(app_engine, endpoint)
        assert {d.status for d in held} == {"sending"}, "the dead worker's claims remain"
        answering.release()
        with worker_process(process_env(hooks_db)) as successor:
            await wait_until(
                lambda: _all_succeeded(app_engine, endpoint, 3), what="the redeliveries"
            )
            assert await stopped(successor) == 0
    # None lost: each delivery sent again with its webhook-id, and recorded once.
    assert sorted(handler.ids()) == sorted([d.id for d in held] * 2)
    for delivery in held:
        assert [a.attempt for a in await attempts(app_engine, endpoint, delivery.id)] == [1]


async def test_sigterm_releases_the_claims_of_unfinished_requests_to_another_worker(
    hooks_db: str, tenant: str, app_engine: AsyncEngine
) -> None:
    settings = settings_for(hooks_db)
    answering = Holding()
    handler = Verifying(secrets=[], answer=answering.answer)
    # Claims that would last an hour: only the release lets another worker send them soon.
    env = process_env(hooks_db, webhook_claim_seconds="3600", webhook_shutdown_seconds="0.2")
    async with Receiver(handler) as receiver:
        endpoint = await add_endpoint(app_engine, settings, tenant, receiver.url())
        handler.secrets.append(endpoint.secret)
        with worker_process(env) as stopping:
            await emit(app_engine, tenant, 2, per_commit=2)
            await receiver.wait_for(lambda: len(handler.verified) == 2, WAIT)
            assert await stopped(stopping) == 0
        released = await deliveries(app_engine, endpoint)
        assert {d.status for d in released} == {"pending"}
        assert {d.claimed_by for d in released} == {None}
        answering.release()
        with worker_process(env) as successor:
            await wait_until(
                lambda: _all_succeeded(app_engine, endpoint, 2), what="the redeliveries"
            )
            assert await stopped(successor) == 0
    assert sorted(handler.ids()) == sorted([d.id for d in released] * 2)
