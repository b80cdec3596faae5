"""GraphQL subscriptions over graphql-transport-ws: a tenant's events and audit trail, live.

A client pages history with the events query, then subscribes with the last cursor, and gets
what it missed, then what is committed, each once and in sequence order, even while commits
land during the switch. Filters run on the server; a subscriber never hears another tenant;
its rights are its current ones; a subscriber that stops reading is cut off with a clear
error rather than slowing anyone down. Real servers, real sockets, a real relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db, migrate
from coregraph.models.base import Environment
from coregraph.streams.broker import audit_topic, events_topic
from tests.streams_support import (
    REDIS_URL,
    WAIT,
    Subscriber,
    emit,
    relay_settings,
    sequences,
    subscribed,
)
from tests.support import (
    Actor,
    GraphQLClient,
    Server,
    create_test_database,
    drop_test_database,
    env_database_url,
    running_server,
    unique,
)

EVENTS = """subscription($types: [String!], $after: String) {
  events(types: $types, after: $after) { cursor node { id type sequence data environment } }
}"""
AUDIT = """subscription($filter: AuditLogFilter, $after: String) {
  auditLog(filter: $filter, after: $after) { cursor node { id action position actorId targetId } }
}"""


@pytest.fixture(scope="module")
async def streams_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A database of this module's own: its server's relay is the only one publishing it."""
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path_factory.mktemp("subs")))
    await migrate.upgrade(relay_settings(url))
    yield url
    if name and base:
        await drop_test_database(base, name)


@pytest.fixture(scope="module")
def api(streams_db: str) -> Iterator[Server]:
    with running_server(relay_settings(streams_db, run_relay="true"), migrate_first=False) as srv:
        yield srv


@pytest.fixture(scope="module")
async def app_engine(streams_db: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(relay_settings(streams_db))
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def gql(api: Server, http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http, api.url)


async def listening(server: Server, topic: str, count: int = 1) -> None:
    """Waits (bounded) until ``count`` subscribers of ``topic`` are in place on ``server``."""
    broker = server.runtime.broker
    for _ in range(int(WAIT / 0.01)):
        if broker.subscriber_count(topic) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{broker.subscriber_count(topic)} subscribers of {topic}, not {count}")


async def owner_with_tenant(gql: GraphQLClient) -> tuple[Actor, str]:
    owner = await gql.sign_up()
    return owner, await gql.create_tenant(owner)


async def register(gql: GraphQLClient, owner: Actor, tenant_id: str, *types: str) -> None:
    for type_ in types:
        r = await gql.execute(
            """mutation($input: RegisterEventTypeInput!) {
                registerEventType(input: $input) { eventType { id } } }""",
            {"input": {"type": type_, "schema": {"type": "object"}}},
            actor=owner,
            tenant_id=tenant_id,
        )
        r.ok()


async def emit_event(
    gql: GraphQLClient, actor: Actor, tenant_id: str, type_: str, data: dict[str, Any]
) -> int:
    r = await gql.execute(
        """mutation($input: EmitEventInput!) { emitEvent(input: $input) {
            event { sequence } } }""",
        {"input": {"type": type_, "data": data}},
        actor=actor,
        tenant_id=tenant_id,
    )
    return int(r.ok()["emitEvent"]["event"]["sequence"])


async def test_a_subscriber_gets_events_as_they_are_committed(
    api: Server, gql: GraphQLClient
) -> None:
    owner, tenant_id = await owner_with_tenant(gql)
    await register(gql, owner, tenant_id, "order.paid")
    async with subscribed(api, owner.headers(tenant_id), EVENTS, field="events") as sub:
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        first = await emit_event(gql, owner, tenant_id, "order.paid", {"order": 1})
        second = await emit_event(gql, owner, tenant_id, "order.paid", {"order": 2})
        items = await sub.items_count(2)
    assert [item["node"]["sequence"] for item in items] == [first, second]
    assert [item["node"]["data"] for item in items] == [{"order": 1}, {"order": 2}]
    assert items[0]["node"]["type"] == "order.paid"
    assert items[0]["node"]["environment"] == "LIVE"
    assert sub.errors == []


async def test_paging_history_then_subscribing_with_the_last_cursor_misses_nothing(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine
) -> None:
    owner, tenant_id = await owner_with_tenant(gql)
    await emit(app_engine, tenant_id, 5)
    r = await gql.execute(
        '{ events(types: ["test.pinged"], first: 3) { edges { cursor node { sequence } } } }',
        actor=owner,
        tenant_id=tenant_id,
    )
    edges = r.ok()["events"]["edges"]
    page_end = edges[-1]["cursor"]
    variables = {"types": ["test.pinged"], "after": page_end}
    async with subscribed(api, owner.headers(tenant_id), EVENTS, variables, field="events") as sub:
        await sub.items_count(2)
        await emit(app_engine, tenant_id, 3)
        await sub.items_count(5)
        # Resuming from the subscription's own cursor works the same way.
        resume = sub.items[2]["cursor"]
    expected = await sequences(app_engine, tenant_id, Environment.LIVE)
    pinged = [s for s in expected if s > edges[-1]["node"]["sequence"]]
    assert sub.sequences() == pinged[:5]
    variables = {"types": ["test.pinged"], "after": resume}
    async with subscribed(api, owner.headers(tenant_id), EVENTS, variables, field="events") as sub:
        await sub.items_count(2)
    assert sub.sequences() == pinged[3:5]


async def test_subscribers_starting_while_events_are_committed_get_each_exactly_once_in_order(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine
) -> None:
    """The switch from replay to live under fire: commits land before, during and after each
    subscriber's replay; none is lost at the seam and none comes twice."""
    owner, tenant_id = await owner_with_tenant(gql)
    await emit(app_engine, tenant_id, 3)
    start = (await sequences(app_engine, tenant_id, Environment.LIVE))[-1]
    r = await gql.execute(
        "{ events(first: 100) { edges { cursor node { sequence } } } }",
        actor=owner,
        tenant_id=tenant_id,
    )
    after = next(e["cursor"] for e in r.ok()["events"]["edges"] if e["node"]["sequence"] == start)
    total = 60
    writer = asyncio.create_task(emit(app_engine, tenant_id, total))
    subscribers: list[Subscriber] = []
    async with AsyncExitStack() as stack:
        for _ in range(6):
            subscribers.append(
                await stack.enter_async_context(
                    subscribed(
                        api, owner.headers(tenant_id), EVENTS, {"after": after}, field="events"
                    )
                )
            )
            await asyncio.sleep(0)  # let the writer interleave with the subscribers' starts
        await asyncio.wait_for(writer, WAIT)
        expected = [
            s for s in await sequences(app_engine, tenant_id, Environment.LIVE) if s > start
        ]
        assert len(expected) == total
        for subscriber in subscribers:
            await subscriber.until(lambda s: bool(s.items) and s.sequences()[-1] >= expected[-1])
    for subscriber in subscribers:
        assert subscriber.sequences() == expected
        assert subscriber.errors == []
