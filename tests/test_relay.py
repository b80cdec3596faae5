"""Committed events and audit entries reach live subscribers through the outbox relay and the
broker: in commit order, each once after deduplication by sequence, across a relay crash and
restart, with several relays sharing the work, never across tenants, and a subscriber that
cannot keep up is cut off with a clear error instead of slowing everyone down.

These tests run on a database of their own, so no other relay (a test server's in-process
one) publishes what they watch. Here the subscriber is the broker's, deduplicating by
sequence; the GraphQL subscriptions built on it (``after``) are tests/test_subscriptions.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.models.base import Environment
from coregraph.streams.broker import (
    TAKEN_BEFORE_A_TURN,
    Broker,
    InProcessBroker,
    SubscriberTooSlow,
    Subscription,
    audit_topic,
    events_topic,
)
from coregraph.streams.relay import Relay, running
from coregraph.streams.subscription import LiveFeed, live_only
from tests.conftest import make_settings
from tests.streams_support import (
    REDIS_URL,
    WAIT,
    broker_for_this_process,
    emit,
    engine_for,
    migrated_database,
    relay_settings,
    sequences,
    worker_env,
    worker_process,
)
from tests.support import (
    GraphQLClient,
    Server,
    running_server,
    unique,
)


@pytest.fixture(scope="module")
async def relay_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("relay"))) as url:
        yield url


@pytest.fixture(scope="module")
def api(relay_db: str) -> Iterator[Server]:
    """The API, without a relay of its own: each test runs the relay it is about."""
    with running_server(relay_settings(relay_db, run_relay="false"), migrate_first=False) as srv:
        yield srv


@pytest.fixture(scope="module")
async def app_engine(relay_db: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(relay_db) as engine:
        yield engine


@pytest.fixture
async def worker_engine(relay_db: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(relay_db, worker=True) as engine:
        yield engine


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with broker_for_this_process() as broker:
        yield broker


async def receive(messages: Subscription, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages, waiting at most WAIT seconds."""
    received: list[dict[str, Any]] = []

    async def take() -> None:
        async for message in messages:
            received.append(dict(message))
            if len(received) == count:
                return

    try:
        await asyncio.wait_for(take(), WAIT)
    except TimeoutError:
        raise AssertionError(f"expected {count} messages, got {received}") from None
    return received


async def receive_until(
    messages: Subscription, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Messages until ``done`` says so, waiting at most WAIT seconds."""
    received: list[dict[str, Any]] = []

    async def take() -> None:
        async for message in messages:
            received.append(dict(message))
            if done(received):
                return

    try:
        await asyncio.wait_for(take(), WAIT)
    except TimeoutError:
        raise AssertionError(f"stopped waiting, having received {received}") from None
    return received


class Deduplicating:
    """A subscriber as a stream client is: it keeps the last sequence it processed, drops a
    repeat, and would notice a gap."""

    def __init__(self) -> None:
        self.processed: list[int] = []
        self.repeats = 0

    def take(self, message: dict[str, Any]) -> None:
        sequence = message["sequence"]
        if self.processed and sequence <= self.processed[-1]:
            self.repeats += 1
            return
        assert not self.processed or sequence == self.processed[-1] + 1, (
            f"gap: {self.processed[-1]} then {sequence}"
        )
        self.processed.append(sequence)

    async def until(self, messages: Subscription, last: int) -> None:
        async def run() -> None:
            async for message in messages:
                self.take(dict(message))
                if self.processed and self.processed[-1] >= last:
                    return

        try:
            await asyncio.wait_for(run(), WAIT)
        except TimeoutError:
            raise AssertionError(f"stopped at {self.processed[-1:]}, waiting for {last}") from None


async def test_a_mutation_committed_through_the_api_reaches_a_subscriber_at_once(
    relay_db: str, api: Server, http: Any
) -> None:
    """`coregraph serve` runs the relay in-process (embedded defaults; forced here) and a
    commit wakes it: with a 30 s poll, the entries still arrive within seconds, in order."""
    settings = relay_settings(relay_db, run_relay="true", relay_poll_seconds=30)
    with running_server(settings, migrate_first=False) as server:
        client = GraphQLClient(http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        # On the embedded defaults the subscriber shares the server's broker; with Redis it
        # holds its own, as another API process would.
        async with broker_for_this_process() as own:
            broker = own if REDIS_URL else server.runtime.broker
            async with broker.subscribe(audit_topic(tenant_id)) as entries:
                for name in ("Renamed once", "Renamed twice", "Renamed thrice"):
                    r = await client.execute(
                        "mutation($i: UpdateTenantInput!) { updateTenant(input: $i) {"
                        " tenant { name } } }",
                        {"i": {"name": name}},
                        actor=owner,
                        tenant_id=tenant_id,
                    )
                    r.ok()
                received = await receive_until(
                    entries, lambda got: [m["action"] for m in got].count("tenant.updated") == 3
                )
    # The tenant's creation may still have been on its way when the subscription started.
    assert [m["action"] for m in received][-3:] == ["tenant.updated"] * 3
    assert [m["changes"]["after"]["name"] for m in received[-3:]] == [
        "Renamed once",
        "Renamed twice",
        "Renamed thrice",
    ]
    positions = [m["position"] for m in received]
    assert positions == list(range(positions[0], positions[0] + len(received)))
    assert {m["tenant"] for m in received} == {tenant_id}
    received = received[-3:]
    assert all(m["actor"]["id"] == owner.user_id for m in received)


async def test_events_reach_their_tenant_and_environment_topic_in_sequence_order_once(
    api: Server,
    client_for_api: GraphQLClient,
    app_engine: AsyncEngine,
    worker_engine: AsyncEngine,
    broker: Broker,
) -> None:
    owner = await client_for_api.sign_up()
    tenant_a = await client_for_api.create_tenant(owner)
    tenant_b = await client_for_api.create_tenant(owner)
    relay = Relay(worker_engine, broker, poll_seconds=0.05)
    async with (
        broker.subscribe(events_topic(tenant_a, Environment.LIVE)) as a_live,
        broker.subscribe(events_topic(tenant_a, Environment.TEST)) as a_test,
        broker.subscribe(events_topic(tenant_b, Environment.LIVE)) as b_live,
        running(relay),
    ):
        for _ in range(4):
            await emit(app_engine, tenant_a, 5)
            await emit(app_engine, tenant_b, 3)
            await emit(app_engine, tenant_a, 2, Environment.TEST)
        # Everything each topic's tenant and environment committed, in commit order.
        expected_a_live = await sequences(app_engine, tenant_a, Environment.LIVE)
        expected_a_test = await sequences(app_engine, tenant_a, Environment.TEST)
        expected_b_live = await sequences(app_engine, tenant_b, Environment.LIVE)
        got_a_live = await receive(a_live, len(expected_a_live))
        got_a_test = await receive(a_test, len(expected_a_test))
        got_b_live = await receive(b_live, len(expected_b_live))
        # Nothing more is on its way to anyone: one more event for B flushes the queues.
        await emit(app_engine, tenant_b, 1)
        extra = await receive(b_live, 1)
        assert a_live.pending == 0 and a_test.pending == 0 and b_live.pending == 0
    assert [m["sequence"] for m in got_a_live] == expected_a_live
    assert [m["sequence"] for m in got_a_test] == expected_a_test
    assert [m["sequence"] for m in got_b_live + extra] == (
        await sequences(app_engine, tenant_b, Environment.LIVE)
    )
    assert len(expected_a_test) == 8 and len(expected_a_live) >= 20
    assert {m["tenant"] for m in got_a_live + got_a_test} == {tenant_a}
    assert {m["tenant"] for m in got_b_live} == {tenant_b}
    assert {m["environment"] for m in got_a_test} == {"test"}
    first = next(m for m in got_a_live if m["type"] == "test.pinged")
    assert first["data"] == {"n": 0}
    assert first["actor"] == {"kind": "system", "id": "test", "actingForUserId": None}
    assert first["id"].startswith("evt_") and first["occurredAt"].endswith("Z")


async def test_a_pass_over_new_events_reads_only_what_is_behind(
    api: Server, client_for_api: GraphQLClient, app_engine: AsyncEngine, worker_engine: AsyncEngine
) -> None:
    """At a pass per commit, the relay's round trips are most of its cost: a tenant whose audit
    trail is caught up and which has no webhook endpoint costs the heads, the claim, the
    events and the new position, nothing more (it read the audit trail and the endpoints
    too, every pass)."""
    owner = await client_for_api.sign_up()
    tenant_id = await client_for_api.create_tenant(owner)
    relay = Relay(worker_engine, InProcessBroker())
    while await relay.publish_pending():
        pass  # whatever creating the tenant left to publish
    await emit(app_engine, tenant_id, 5, per_commit=5)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(worker_engine.sync_engine, "before_cursor_execute", count)
    try:
        assert await relay.publish_pending() == 5
    finally:
        event.remove(worker_engine.sync_engine, "before_cursor_execute", count)
    assert statements == ["SELECT", "SELECT", "SELECT", "UPDATE"]


@pytest.fixture(scope="module")
def client_for_api(api: Server, http: Any) -> GraphQLClient:
    return GraphQLClient(http, api.url)


async def test_a_slow_subscriber_is_cut_off_while_the_others_keep_receiving(
    broker: Broker,
) -> None:
    topic = events_topic(unique("ten_"), Environment.LIVE)
    async with (
        broker.subscribe(topic, buffer=5) as slow,
        broker.subscribe(topic) as keeping_up,
    ):
        received: list[dict[str, Any]] = []

        async def keep_up() -> None:
            async for message in keeping_up:
                received.append(dict(message))
                if len(received) == 50:
                    return

        reader = asyncio.create_task(keep_up())
        for sequence in range(1, 51):
            await broker.publish(topic, {"sequence": sequence})
        await asyncio.wait_for(reader, WAIT)
        assert [m["sequence"] for m in received] == list(range(1, 51))
        with pytest.raises(SubscriberTooSlow, match="fell 5 messages behind"):
            await asyncio.wait_for(receive(slow, 50), WAIT)
        # Cut off for good: it does not resume silently with a gap.
        with pytest.raises(SubscriberTooSlow):
            await asyncio.wait_for(anext(aiter(slow)), WAIT)
        assert broker.subscriber_count(topic) == 2


async def test_a_subscriber_drains_a_published_batch_without_a_loop_turn_per_message(
    broker: Broker,
) -> None:
    """The relay publishes whole batches; a subscription on a process that also serves
    requests (each turn of its event loop then takes milliseconds) must take what is queued
    at once, not one message a turn, or it falls behind and is cut off. It still lets the loop
    turn now and then, so a long backlog does not hold the rest of the process."""
    tenant_id = unique("ten_")
    topic = events_topic(tenant_id, Environment.LIVE)
    principal = Principal(
        PrincipalKind.API_KEY, tenant_id=tenant_id, tenant_scopes={tenant_id: frozenset({"x"})}
    )

    async def nothing_to_release() -> None:
        return None

    ctx: Any = SimpleNamespace(
        runtime=SimpleNamespace(broker=broker),
        settings=SimpleNamespace(subscription_idle_recheck_seconds=30.0),
        principal=principal,
        reset_reads=nothing_to_release,
    )
    feed = LiveFeed(topic, lambda m: True, lambda m: m["sequence"], tenant_id, "x", "test")
    items = live_only(ctx, feed)
    # The first item puts the subscription in place (live_only subscribes when first read).
    first = asyncio.create_task(anext(items))
    deadline = time.monotonic() + WAIT
    while not broker.subscriber_count(topic):
        assert time.monotonic() < deadline, "the feed did not subscribe"
        await asyncio.sleep(0.01)
    batch = 500
    async with broker.subscribe(topic) as beside:
        await broker.publish_many([(topic, {"sequence": n}) for n in range(1, batch + 1)])
        assert await asyncio.wait_for(first, WAIT) == 1
        # Every message has reached this process (over Redis they come in pieces): the
        # subscriber beside hears them right after the feed's.
        while beside.pending < batch:
            assert time.monotonic() < deadline, f"{beside.pending} of {batch} messages arrived"
            await asyncio.sleep(0.01)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def take(items: AsyncIterator[int], count: int) -> list[int]:
        return [await anext(items) for _ in range(count)]

    counter = asyncio.create_task(count_turns())
    await asyncio.sleep(0)
    try:
        received = await asyncio.wait_for(take(items, batch - 1), WAIT)
    finally:
        counter.cancel()
        await items.aclose()
    assert received == list(range(2, batch + 1))
    # 499 queued messages: a turn every TAKEN_BEFORE_A_TURN (64) of them; it was at least one
    # a message (a task per asyncio.wait_for).
    assert batch // TAKEN_BEFORE_A_TURN - 1 <= turns <= batch // TAKEN_BEFORE_A_TURN + 6


@pytest.mark.skipif(REDIS_URL is None, reason="the worker process reaches subscribers via Redis")
async def test_a_killed_worker_loses_nothing_and_a_deduplicating_subscriber_sees_each_once(
    relay_db: str, client_for_api: GraphQLClient, app_engine: AsyncEngine, broker: Broker
) -> None:
    owner = await client_for_api.sign_up()
    tenant_id = await client_for_api.create_tenant(owner)
    subscriber = Deduplicating()
    env = worker_env(relay_db)
    async with broker.subscribe(events_topic(tenant_id, Environment.LIVE)) as messages:
        await emit(app_engine, tenant_id, 30)
        with worker_process(env) as first:
            await subscriber.until(
                messages, (await sequences(app_engine, tenant_id, Environment.LIVE))[0]
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=WAIT)
        # Committed while no relay runs: only delayed.
        await emit(app_engine, tenant_id, 30)
        with worker_process(env) as second:
            expected = await sequences(app_engine, tenant_id, Environment.LIVE)
            await subscriber.until(messages, expected[-1])
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=WAIT) == 0, "the worker stops gracefully on SIGTERM"
    assert subscriber.processed == expected


@pytest.mark.skipif(REDIS_URL is None, reason="the worker process reaches subscribers via Redis")
async def test_a_worker_killed_after_publishing_and_before_recording_publishes_again(
    relay_db: str, client_for_api: GraphQLClient, app_engine: AsyncEngine, broker: Broker
) -> None:
    """The crash the at-least-once rule is about, made certain: the worker publishes a batch
    while a lock the test holds stops it from recording that it did; it is killed there."""
    owner = await client_for_api.sign_up()
    tenant_id = await client_for_api.create_tenant(owner)
    subscriber = Deduplicating()
    env = worker_env(relay_db)
    settings = relay_settings(relay_db)
    owner_engine = db.create_engine(settings, as_owner=True)
    try:
        async with broker.subscribe(events_topic(tenant_id, Environment.LIVE)) as messages:
            await emit(app_engine, tenant_id, 10)
            with worker_process(env) as first:
                published = await sequences(app_engine, tenant_id, Environment.LIVE)
                await subscriber.until(messages, published[-1])
                first.send_signal(signal.SIGTERM)
                assert first.wait(timeout=WAIT) == 0
            await emit(app_engine, tenant_id, 10)
            unrecorded = (await sequences(app_engine, tenant_id, Environment.LIVE))[-10:]
            async with owner_engine.connect() as lock:
                if settings.is_sqlite:
                    # SQLite's one writer: readers go on, the relay's recording waits.
                    await lock.execute(
                        text("INSERT INTO relay_positions VALUES ('lock-holder', 0, 0)")
                    )
                else:
                    # SHARE admits the relay's claim (FOR UPDATE), not its UPDATE.
                    await lock.execute(text("LOCK TABLE relay_positions IN SHARE MODE"))
                with worker_process(env) as second:
                    await subscriber.until(messages, unrecorded[-1])
                    second.send_signal(signal.SIGKILL)
                    second.wait(timeout=WAIT)
                await lock.rollback()
            assert subscriber.repeats == 0
            await emit(app_engine, tenant_id, 5)
            expected = await sequences(app_engine, tenant_id, Environment.LIVE)
            with worker_process(env) as third:
                await subscriber.until(messages, expected[-1])
                third.send_signal(signal.SIGTERM)
                assert third.wait(timeout=WAIT) == 0
    finally:
        await owner_engine.dispose()
    # The killed worker's batch came again (at least once), and the subscriber that drops
    # what it has by sequence holds every event once, in order.
    assert subscriber.repeats == len(unrecorded)
    assert subscriber.processed == expected


@pytest.fixture
def postgres_only(relay_db: str) -> None:
    if relay_db.startswith("sqlite"):
        pytest.skip("several relays and database roles are PostgreSQL's")


@pytest.mark.usefixtures("postgres_only")
async def test_two_relays_never_publish_one_chain_twice(
    relay_db: str, client_for_api: GraphQLClient, app_engine: AsyncEngine
) -> None:
    owner = await client_for_api.sign_up()
    tenants = [await client_for_api.create_tenant(owner) for _ in range(4)]
    settings = relay_settings(relay_db)
    engines = [db.create_engine(settings, role=settings.database_worker_role) for _ in range(2)]
    # Both relays publish to one broker, so every publication of either is counted here.
    broker = InProcessBroker(buffer=10_000)
    relays = [Relay(engine, broker, poll_seconds=0.01, batch=7) for engine in engines]
    try:
        async with AsyncExitStack() as stack:
            topics = {
                tenant: await stack.enter_async_context(
                    broker.subscribe(events_topic(tenant, Environment.LIVE))
                )
                for tenant in tenants
            }
            for relay in relays:
                await stack.enter_async_context(running(relay))
            await asyncio.gather(*(emit(app_engine, tenant, 75) for tenant in tenants))
            for tenant in tenants:
                expected = await sequences(app_engine, tenant, Environment.LIVE)
                got = await receive(topics[tenant], len(expected))
                assert [m["sequence"] for m in got] == expected, tenant
            # Whatever either relay publishes next would be a second copy: flush, then look.
            await emit(app_engine, tenants[0], 1)
            await receive(topics[tenants[0]], 1)
            assert all(t.pending == 0 for t in topics.values())
    finally:
        for engine in engines:
            await engine.dispose()
    assert all(relay.published > 0 for relay in relays), [r.published for r in relays]


@pytest.mark.usefixtures("postgres_only")
async def test_the_worker_role_reads_across_tenants_and_the_api_role_not_its_positions(
    relay_db: str,
    client_for_api: GraphQLClient,
    app_engine: AsyncEngine,
    worker_engine: AsyncEngine,
) -> None:
    owner = await client_for_api.sign_up()
    tenants = {await client_for_api.create_tenant(owner) for _ in range(2)}
    for tenant in tenants:
        await emit(app_engine, tenant, 1)
    async with worker_engine.connect() as conn:
        role = await conn.execute(
            text(
                "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles"
                " WHERE rolname = current_user"
            )
        )
        assert tuple(role.one()) == ("coregraph_worker", False, False)
        # No tenant scope set, and still every tenant's rows: its own policies.
        for table, column in (
            ("events", "tenant_id"),
            ("stream_heads", "chain_id"),
            ("audit_entries", "tenant_id"),
        ):
            seen = set(await conn.scalars(text(f"SELECT DISTINCT {column} FROM {table}")))
            assert tenants <= seen, table
        await conn.execute(text("SELECT count(*) FROM relay_positions"))
        await conn.rollback()
        # Reading what the relay needs is all it may do (audit retention adds a tenant's
        # retention and, scoped to that one tenant, pruning: tests/test_audit_retention.py).
        for statement in (
            "SELECT name FROM tenants",
            "SELECT count(*) FROM users",
            "DELETE FROM events",
            "UPDATE events SET type = 'nothing.happened'",
            "UPDATE stream_heads SET chain_id = chain_id",
        ):
            with pytest.raises(DBAPIError, match="permission denied"):
                await conn.execute(text(statement))
            await conn.rollback()
    async with app_engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=tenants)
        with pytest.raises(DBAPIError, match="permission denied"):
            await conn.execute(text("SELECT count(*) FROM relay_positions"))
        await conn.rollback()
        # The API's role keeps its wall: unscoped, it sees no tenant's events.
        assert await conn.scalar(text("SELECT count(*) FROM events")) == 0


def test_serve_runs_the_relay_itself_only_where_no_worker_could_hear_its_commits() -> None:
    sqlite = "sqlite+aiosqlite:///./x.sqlite3"
    postgres = "postgresql+asyncpg://u@127.0.0.1/x"
    assert make_settings(sqlite, redis_url=None).relay_in_process
    assert make_settings(sqlite, redis_url="redis://127.0.0.1:6379/0").relay_in_process
    assert make_settings(postgres, redis_url=None).relay_in_process
    assert not make_settings(postgres, redis_url="redis://127.0.0.1:6379/0").relay_in_process
    assert not make_settings(sqlite, run_relay="false").relay_in_process
    assert make_settings(
        postgres, redis_url="redis://127.0.0.1:6379/0", run_relay="true"
    ).relay_in_process


def test_the_production_compose_file_runs_workers_beside_the_api() -> None:
    compose = yaml.safe_load((Path(__file__).parent.parent / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        assert worker["command"][:2] == ["coregraph", "worker"]
        assert worker["environment"] == services["api-1"]["environment"]
        assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "ports" not in worker
