"""GraphQL subscriptions over graphql-transport-ws: a tenant's events and audit trail, live.

A client pages history with the events query, then subscribes with the last cursor, and gets
what it missed, then what is committed, each once and in sequence order, even while commits
land during the switch. Filters run on the server; a subscriber never hears another tenant;
its rights are its current ones; a subscriber that stops reading is cut off with a clear
error rather than slowing anyone down. Real servers, real sockets, a real relay.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.models import Event
from coregraph.models.base import Environment
from coregraph.streams.broker import audit_topic, events_topic
from coregraph.streams.relay import event_message
from tests.streams_support import (
    REDIS_URL,
    WAIT,
    Subscriber,
    broker_for_this_process,
    emit,
    engine_for,
    migrated_database,
    relay_settings,
    sequences,
    subscribed,
    worker_env,
    worker_process,
)
from tests.support import (
    Actor,
    GraphQLClient,
    Server,
    running_server,
    unique,
)
from tests.test_audit_retention import prune, set_retention, tenant_with_history

EVENTS = """subscription($types: [String!], $after: String) {
  events(types: $types, after: $after) { cursor node { id type sequence data environment } }
}"""
AUDIT = """subscription($filter: AuditLogFilter, $after: String) {
  auditLog(filter: $filter, after: $after) { cursor node { id action position actorId targetId } }
}"""


@pytest.fixture(scope="module")
async def streams_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A database of this module's own: its server's relay is the only one publishing it."""
    async with migrated_database(str(tmp_path_factory.mktemp("subs"))) as url:
        yield url


@pytest.fixture(scope="module")
def api(streams_db: str) -> Iterator[Server]:
    with running_server(relay_settings(streams_db, run_relay="true"), migrate_first=False) as srv:
        yield srv


@pytest.fixture(scope="module")
async def app_engine(streams_db: str) -> AsyncIterator[AsyncEngine]:
    async with engine_for(streams_db) as engine:
        yield engine


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


async def create_role(gql: GraphQLClient, owner: Actor, tenant_id: str, key: str) -> str:
    r = await gql.execute(
        """mutation($input: CreateRoleInput!) { createRole(input: $input) { role { id } } }""",
        {"input": {"key": key, "name": key, "permissions": ["tenant:read"]}},
        actor=owner,
        tenant_id=tenant_id,
    )
    return str(r.ok()["createRole"]["role"]["id"])


async def update_role(gql: GraphQLClient, actor: Actor, tenant_id: str, role_id: str) -> None:
    r = await gql.execute(
        """mutation($input: UpdateRoleInput!) { updateRole(input: $input) { role { id } } }""",
        {"input": {"roleId": role_id, "description": unique("d")}},
        actor=actor,
        tenant_id=tenant_id,
    )
    r.ok()


async def test_audit_filters_run_on_the_server_and_a_subscriber_never_hears_another_tenant(
    api: Server, gql: GraphQLClient
) -> None:
    """One owner runs tenants A and B and works in both at once; A's subscribers, whatever
    they filter by (even B's ids), receive A's entries that match, and nothing else."""
    owner = await gql.sign_up()
    tenant_a = await gql.create_tenant(owner)
    tenant_b = await gql.create_tenant(owner)
    admin = await gql.add_member(owner, tenant_a, "admin")
    role_a = await create_role(gql, owner, tenant_a, "reviewer")
    role_b = await create_role(gql, owner, tenant_b, "reviewer")
    filters: dict[str, dict[str, Any] | None] = {
        "all": None,
        "roles": {"action": "role."},
        "owner": {"actorId": owner.user_id},
        "admin": {"actorId": admin.user_id},
        "role_a": {"targetId": role_a},
        "role_b": {"targetId": role_b},
        "owner_roles": {"action": "role.", "actorId": owner.user_id},
    }
    credential = owner.headers(tenant_a)
    async with AsyncExitStack() as stack:
        subs = {
            name: await stack.enter_async_context(
                subscribed(api, credential, AUDIT, {"filter": f}, field="auditLog")
            )
            for name, f in filters.items()
        }
        await listening(api, audit_topic(tenant_a), len(filters))
        await asyncio.gather(
            update_role(gql, owner, tenant_a, role_a),  # A: role.updated by owner on role_a
            update_role(gql, owner, tenant_b, role_b),  # B, at the same time
        )
        await asyncio.gather(
            update_role(gql, admin, tenant_a, role_a),  # A: role.updated by admin on role_a
            create_role(gql, owner, tenant_b, "b-only"),
        )
        await create_role(gql, owner, tenant_a, "last")  # A: role.created by owner
        await update_role(gql, owner, tenant_a, role_a)  # A: role.updated by owner on role_a
        r = await gql.execute(
            "{ tenant { auditLog(first: 4) { nodes { id action position actorId targetId } } } }",
            actor=owner,
            tenant_id=tenant_a,
        )
        recent = list(reversed(r.ok()["tenant"]["auditLog"]["nodes"]))
        by_owner = [recent[0], recent[2], recent[3]]
        expected = {
            "all": recent,
            "roles": recent,
            "owner": by_owner,
            "admin": [recent[1]],
            "role_a": [recent[0], recent[1], recent[3]],
            "role_b": [],
            "owner_roles": by_owner,
        }
        for name, sub in subs.items():
            if expected[name]:
                await sub.items_count(len(expected[name]))
    assert [n["action"] for n in recent] == ["role.updated"] * 2 + ["role.created", "role.updated"]
    for name, sub in subs.items():
        assert [item["node"] for item in sub.items] == expected[name], name
        assert sub.errors == []


async def test_an_events_subscriber_of_one_tenant_never_receives_another_tenants_events(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine
) -> None:
    owner = await gql.sign_up()
    tenant_a = await gql.create_tenant(owner)
    tenant_b = await gql.create_tenant(owner)
    await register(gql, owner, tenant_a, "order.paid")
    await register(gql, owner, tenant_b, "order.paid", "order.shipped")
    r = await gql.execute(
        "{ events(first: 1) { edges { cursor } } }", actor=owner, tenant_id=tenant_b
    )
    b_cursor = r.ok()["events"]["edges"][0]["cursor"]
    variants: list[dict[str, Any]] = [
        {},
        {"types": ["order.paid", "order.shipped", "test.pinged"]},
        {"types": ["order.shipped"]},
        {"after": b_cursor},  # a cursor read in B is only a number: it replays A's stream
    ]
    async with AsyncExitStack() as stack:
        subs = [
            await stack.enter_async_context(
                subscribed(api, owner.headers(tenant_a), EVENTS, v, field="events")
            )
            for v in variants
        ]
        await listening(api, events_topic(tenant_a, Environment.LIVE), 4)
        await asyncio.gather(
            emit(app_engine, tenant_a, 10),
            emit(app_engine, tenant_b, 10),
            emit(app_engine, tenant_b, 10, type="order.shipped"),
            emit(app_engine, tenant_a, 3, Environment.TEST),
        )
        await emit_event(gql, owner, tenant_a, "order.paid", {"last": True})
        a_live = await sequences(app_engine, tenant_a, Environment.LIVE)
        for sub in subs[:2]:
            await sub.until(lambda s: bool(s.items) and s.sequences()[-1] == a_live[-1])
        await subs[3].until(lambda s: bool(s.items) and s.sequences()[-1] == a_live[-1])
    r = await gql.execute(
        "{ events(first: 100) { nodes { id sequence type } } }", actor=owner, tenant_id=tenant_a
    )
    a_events = r.ok()["events"]["nodes"]
    a_ids = {e["id"] for e in a_events}
    for sub in subs:
        assert {item["node"]["id"] for item in sub.items} <= a_ids
        assert all(item["node"]["environment"] == "LIVE" for item in sub.items)
    assert subs[0].sequences()[-11:] == a_live[-11:]
    assert [i["node"]["type"] for i in subs[1].items][-11:] == ["test.pinged"] * 10 + ["order.paid"]
    assert subs[2].items == []
    b_after = int(__import__("base64").urlsafe_b64decode(b_cursor + "==").decode()[4:])
    assert subs[3].sequences() == [s for s in a_live if s > b_after]


async def keep_committing_until_it_ends(
    sub: Subscriber, engine: AsyncEngine, tenant_id: str
) -> list[dict[str, Any]]:
    """Rights are rechecked while events flow: commit one at a time until the subscription
    ends (bounded), and return its errors."""
    for _ in range(40):
        await emit(engine, tenant_id, 1)
        try:
            return await sub.ended(wait=0.25)
        except AssertionError:
            continue
    raise AssertionError(f"still running after 40 events: {len(sub.items)} items")


async def test_a_revoked_key_ends_its_subscription_and_the_socket(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine
) -> None:
    owner, tenant_id = await owner_with_tenant(gql)
    r = await gql.execute(
        """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
            secret apiKey { id } } }""",
        {"input": {"name": unique("key"), "scopes": ["events:read"]}},
        actor=owner,
        tenant_id=tenant_id,
    )
    created = r.ok()["createApiKey"]
    key = Actor(token=created["secret"])
    async with subscribed(api, key.headers(), EVENTS, field="events") as sub:
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        await emit(app_engine, tenant_id, 1)
        await sub.items_count(1)
        r = await gql.execute(
            "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id } } }",
            {"id": created["apiKey"]["id"]},
            actor=owner,
            tenant_id=tenant_id,
        )
        r.ok()
        errors = await keep_committing_until_it_ends(sub, app_engine, tenant_id)
        assert [e["extensions"]["code"] for e in errors] == ["UNAUTHENTICATED"]
        assert errors[0]["extensions"]["requestId"]
        await asyncio.wait_for(sub.ws.wait_closed(), WAIT)
        assert sub.ws.close_code == 4403


@pytest.mark.parametrize("loses", ["membership", "scope"])
async def test_a_member_who_loses_the_right_to_read_events_stops_receiving_them(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine, loses: str
) -> None:
    owner, tenant_id = await owner_with_tenant(gql)
    member = await gql.add_member(owner, tenant_id, "viewer")
    async with subscribed(api, member.headers(tenant_id), EVENTS, field="events") as sub:
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        await emit(app_engine, tenant_id, 1)
        await sub.items_count(1)
        if loses == "membership":
            r = await gql.execute(
                "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
                {"id": member.membership_id},
                actor=owner,
                tenant_id=tenant_id,
            )
        else:
            r = await gql.execute(
                """mutation($input: ChangeMemberRoleInput!) {
                    changeMemberRole(input: $input) { membership { id } } }""",
                {"input": {"membershipId": member.membership_id, "role": "billing"}},
                actor=owner,
                tenant_id=tenant_id,
            )
        r.ok()
        errors = await keep_committing_until_it_ends(sub, app_engine, tenant_id)
        assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"]
        assert errors[0]["extensions"]["requestId"]
        if loses == "membership":
            # The socket's credential is refused now, as connection_init would refuse it.
            await asyncio.wait_for(sub.ws.wait_closed(), WAIT)
            assert sub.ws.close_code == 4403
        else:
            # A changed role is not a refusal: the socket stays for what the new role may do.
            assert sub.ws.close_code is None


async def test_bad_requests_get_typed_errors_with_a_request_id(
    api: Server, gql: GraphQLClient
) -> None:
    owner, tenant_id = await owner_with_tenant(gql)
    viewer = await gql.add_member(owner, tenant_id, "viewer")
    cases: list[tuple[Actor, str, dict[str, Any], str, str]] = [
        (owner, EVENTS, {"after": "not-a-cursor"}, "events", "BAD_USER_INPUT"),
        (owner, AUDIT, {"after": "c2VxOjE"}, "auditLog", "BAD_USER_INPUT"),  # an events cursor
        (owner, AUDIT, {"filter": {"targetId": "nope"}}, "auditLog", "BAD_USER_INPUT"),
        (owner, EVENTS, {"types": ["Not A Type!"]}, "events", "BAD_USER_INPUT"),
        (owner, AUDIT, {"after": "YzE6dXNyXzAx"}, "auditLog", "BAD_USER_INPUT"),  # an id
        (viewer, AUDIT, {}, "auditLog", "FORBIDDEN"),
    ]
    for actor, query, variables, field, code in cases:
        async with subscribed(api, actor.headers(tenant_id), query, variables, field=field) as sub:
            errors = await sub.ended()
        assert [e["extensions"]["code"] for e in errors] == [code], (variables, errors)
        assert errors[0]["extensions"]["requestId"]
        assert "Traceback" not in errors[0]["message"]
        assert sub.items == []


@pytest.fixture(scope="module")
async def own_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A database no module-wide server relays: each test here runs the relay it is about."""
    async with migrated_database(str(tmp_path_factory.mktemp("own"))) as url:
        yield url


async def test_a_subscriber_that_stops_reading_is_cut_off_with_a_clear_error(
    own_db: str, http: httpx.AsyncClient
) -> None:
    settings = relay_settings(own_db, run_relay="true", subscriber_buffer=4)
    engine = db.create_engine(settings)
    try:
        with running_server(settings, migrate_first=False) as server:
            gql = GraphQLClient(http, server.url)
            owner, tenant_id = await owner_with_tenant(gql)
            async with subscribed(
                server, owner.headers(tenant_id), EVENTS, field="events", max_queue=1
            ) as sub:
                await listening(server, events_topic(tenant_id, Environment.LIVE))
                # One commit of many events: the relay publishes them as one batch, far more
                # than the 4 the subscriber may fall behind by while it does not read.
                await emit(engine, tenant_id, 200, per_commit=200)
                errors = await sub.ended()
    finally:
        await engine.dispose()
    assert [e["extensions"]["code"] for e in errors] == ["SUBSCRIBER_TOO_SLOW"]
    assert "subscribe again with the last cursor" in errors[0]["message"]
    assert errors[0]["extensions"]["requestId"]
    assert len(sub.items) < 200


async def test_a_quiet_subscription_ends_when_its_key_is_revoked(
    own_db: str, http: httpx.AsyncClient
) -> None:
    """Nothing is sent to it, so no item carries a rights check: the idle recheck does."""
    settings = relay_settings(own_db, run_relay="true", subscription_idle_recheck_seconds=0.3)
    with running_server(settings, migrate_first=False) as server:
        gql = GraphQLClient(http, server.url)
        owner, tenant_id = await owner_with_tenant(gql)
        r = await gql.execute(
            """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
                secret apiKey { id } } }""",
            {"input": {"name": unique("key"), "scopes": ["events:read"]}},
            actor=owner,
            tenant_id=tenant_id,
        )
        created = r.ok()["createApiKey"]
        async with subscribed(
            server, Actor(token=created["secret"]).headers(), EVENTS, field="events"
        ) as sub:
            await listening(server, events_topic(tenant_id, Environment.LIVE))
            r = await gql.execute(
                "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id } } }",
                {"id": created["apiKey"]["id"]},
                actor=owner,
                tenant_id=tenant_id,
            )
            r.ok()
            errors = await sub.ended()
            assert [e["extensions"]["code"] for e in errors] == ["UNAUTHENTICATED"]
            await asyncio.wait_for(sub.ws.wait_closed(), WAIT)
            assert sub.ws.close_code == 4403
    # What committed with the revocation may still arrive (rights are at most a recheck old).
    assert [item["node"]["type"] for item in sub.items] in ([], ["apikey.revoked"])


async def cursor_of(gql: GraphQLClient, actor: Actor, tenant_id: str, sequence: int) -> str:
    """The events query's cursor for ``sequence``, as a client paging history holds it."""
    r = await gql.execute(
        "{ events(first: 200) { edges { cursor node { sequence } } } }",
        actor=actor,
        tenant_id=tenant_id,
    )
    edges = r.ok()["events"]["edges"]
    return str(next(e["cursor"] for e in edges if e["node"]["sequence"] == sequence))


async def test_a_message_this_process_never_heard_is_filled_from_the_database(
    own_db: str, http: httpx.AsyncClient
) -> None:
    """No relay runs: five events are committed, and only the fifth reaches the broker (the
    first four were lost on the way). The subscriber notices the jump and reads them."""
    settings = relay_settings(own_db, run_relay="false")
    engine = db.create_engine(settings)
    try:
        with running_server(settings, migrate_first=False) as server:
            gql = GraphQLClient(http, server.url)
            owner, tenant_id = await owner_with_tenant(gql)
            head = (await sequences(engine, tenant_id, Environment.LIVE))[-1]
            after = await cursor_of(gql, owner, tenant_id, head)
            topic = events_topic(tenant_id, Environment.LIVE)
            async with subscribed(
                server, owner.headers(tenant_id), EVENTS, {"after": after}, field="events"
            ) as sub:
                await listening(server, topic)
                await emit(engine, tenant_id, 5)
                async with engine.connect() as conn:
                    await db.scope_transaction(conn, tenant_ids=[tenant_id])
                    rows = (
                        await conn.execute(
                            select(Event.__table__)
                            .where(Event.tenant_id == tenant_id)
                            .order_by(Event.sequence)
                        )
                    ).all()
                fifth = event_message(rows[-1])
                async with broker_for_this_process() as broker:
                    if REDIS_URL is None:
                        broker = server.runtime.broker  # in-process: hand it over directly
                    await broker.publish(topic, fifth)
                    await broker.publish(topic, fifth)  # and once more, as a relay may
                await sub.items_count(5)
    finally:
        await engine.dispose()
    assert sub.sequences() == [row.sequence for row in rows[-5:]]
    assert sub.items[-1]["node"]["id"] == fifth["id"]


@pytest.mark.skipif(REDIS_URL is None, reason="two API processes meet only through Redis")
async def test_a_subscriber_on_one_api_process_receives_events_committed_through_another(
    api: Server, streams_db: str, http: httpx.AsyncClient, gql: GraphQLClient
) -> None:
    """Two runtimes on one database and one Redis, each with its own broker; the first runs
    the relay (one relay is enough for both), the second only serves subscribers."""
    settings = relay_settings(streams_db, run_relay="false")
    with running_server(settings, migrate_first=False) as other:
        owner, tenant_id = await owner_with_tenant(gql)  # through the first process
        await register(gql, owner, tenant_id, "order.paid")
        r = await gql.execute(
            "{ events(first: 200) { pageInfo { endCursor } } }", actor=owner, tenant_id=tenant_id
        )
        after = r.ok()["events"]["pageInfo"]["endCursor"]
        async with AsyncExitStack() as stack:
            live = await stack.enter_async_context(
                subscribed(other, owner.headers(tenant_id), EVENTS, field="events")
            )
            resumed = await stack.enter_async_context(
                subscribed(
                    other, owner.headers(tenant_id), EVENTS, {"after": after}, field="events"
                )
            )
            await listening(other, events_topic(tenant_id, Environment.LIVE), 2)
            first = await emit_event(gql, owner, tenant_id, "order.paid", {"n": 1})
            second = await emit_event(gql, owner, tenant_id, "order.paid", {"n": 2})
            await live.items_count(2)
            await resumed.items_count(2)
        assert other.runtime.broker is not api.runtime.broker
    assert live.sequences() == [first, second]
    assert resumed.sequences() == [first, second]


@pytest.mark.skipif(REDIS_URL is None, reason="the worker process reaches subscribers via Redis")
async def test_a_relay_killed_between_commit_and_publish_loses_nothing_for_a_resuming_subscriber(
    own_db: str, http: httpx.AsyncClient
) -> None:
    """`coregraph worker` relays for an API without a relay of its own. The subscriber
    disconnects, the worker is killed, events are committed with nobody to publish them; the
    subscriber comes back with its last cursor, the worker restarts, more events come: every
    event arrives exactly once, in order."""
    settings = relay_settings(own_db, run_relay="false")
    engine = db.create_engine(settings)
    env = worker_env(own_db)
    try:
        with running_server(settings, migrate_first=False) as server:
            gql = GraphQLClient(http, server.url)
            owner, tenant_id = await owner_with_tenant(gql)
            credential = owner.headers(tenant_id)
            head = (await sequences(engine, tenant_id, Environment.LIVE))[-1]
            after = await cursor_of(gql, owner, tenant_id, head)
            received: list[int] = []
            with worker_process(env) as first:
                async with subscribed(
                    server, credential, EVENTS, {"after": after}, field="events"
                ) as sub:
                    await emit(engine, tenant_id, 5)
                    await sub.items_count(5)
                    received += sub.sequences()
                    last_cursor = sub.items[-1]["cursor"]
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=WAIT)
            # Committed while no relay runs: in the database, published to nobody.
            await emit(engine, tenant_id, 10)
            async with subscribed(
                server, credential, EVENTS, {"after": last_cursor}, field="events"
            ) as sub:
                await sub.items_count(10)  # replayed from storage
                with worker_process(env) as second:
                    # The restarted relay publishes the ten again (dropped), then new ones.
                    await emit(engine, tenant_id, 5)
                    expected = await sequences(engine, tenant_id, Environment.LIVE)
                    await sub.until(lambda s: s.sequences()[-1] == expected[-1])
                    second.send_signal(signal.SIGTERM)
                    assert second.wait(timeout=WAIT) == 0
                received += sub.sequences()
    finally:
        await engine.dispose()
    assert received == [s for s in expected if s > head]
    assert len(received) == 20


async def test_paging_the_audit_log_then_subscribing_after_its_newest_entry(
    api: Server, gql: GraphQLClient
) -> None:
    owner, tenant_id = await owner_with_tenant(gql)
    other_owner, other_tenant = await owner_with_tenant(gql)
    await create_role(gql, owner, tenant_id, "first")
    query = "{ tenant { auditLog(first: 1) { edges { cursor node { id position } } } } }"
    r = await gql.execute(query, actor=owner, tenant_id=tenant_id)
    newest = r.ok()["tenant"]["auditLog"]["edges"][0]
    credential = owner.headers(tenant_id)
    variables = {"after": newest["cursor"]}
    async with subscribed(api, credential, AUDIT, variables, field="auditLog") as sub:
        await create_role(gql, owner, tenant_id, "second")
        await sub.items_count(1)
    assert sub.items[0]["node"]["position"] == newest["node"]["position"] + 1
    assert sub.items[0]["node"]["action"] == "role.created"
    # A cursor read in another tenant is only a position: it replays this tenant's trail after
    # it, and nothing of the other's.
    r = await gql.execute(query, actor=other_owner, tenant_id=other_tenant)
    foreign = r.ok()["tenant"]["auditLog"]["edges"][0]
    mine = await audit_positions(gql, owner, tenant_id)
    async with subscribed(
        api, credential, AUDIT, {"after": foreign["cursor"]}, field="auditLog"
    ) as sub:
        await sub.until(lambda s: bool(s.items) and s.items[-1]["node"]["position"] == max(mine))
    assert [item["node"]["position"] for item in sub.items] == [
        p for p in mine if p > foreign["node"]["position"]
    ]
    assert {item["node"]["id"] for item in sub.items} <= set(mine.values())


async def audit_positions(gql: GraphQLClient, actor: Actor, tenant_id: str) -> dict[int, str]:
    """The tenant's audit entries now: position to id, oldest first."""
    r = await gql.execute(
        "{ tenant { auditLog(first: 200) { nodes { id position } } } }",
        actor=actor,
        tenant_id=tenant_id,
    )
    nodes = r.ok()["tenant"]["auditLog"]["nodes"]
    return {n["position"]: n["id"] for n in reversed(nodes)}


async def test_a_query_cursor_resumes_the_subscription_after_retention_pruned_its_entry(
    api: Server, gql: GraphQLClient
) -> None:
    """A client read the log, then went away; meanwhile retention deleted the entry its cursor
    came from. The cursor is a position, so the client resumes after it: every entry kept since
    (the prune's own included), then live, each once and in order."""
    owner = await gql.sign_up()
    tenant_id = await tenant_with_history(api.settings, owner, days_ago=40)
    r = await gql.execute(
        "{ tenant { auditLog(first: 1) { edges { cursor node { position } } } } }",
        actor=owner,
        tenant_id=tenant_id,
    )
    [held] = r.ok()["tenant"]["auditLog"]["edges"]
    (await set_retention(gql, owner, tenant_id, 30)).ok()
    [pruned] = await prune(api.settings, tenant_id, relay=False)
    assert pruned.last_position == held["node"]["position"]  # the cursor's entry is gone
    kept = await audit_positions(gql, owner, tenant_id)
    assert min(kept) == held["node"]["position"] + 1

    credential = owner.headers(tenant_id)
    variables = {"after": held["cursor"]}
    async with subscribed(api, credential, AUDIT, variables, field="auditLog") as sub:
        await sub.items_count(len(kept))
        await create_role(gql, owner, tenant_id, unique("later"))
        await sub.items_count(len(kept) + 1)
    positions = [item["node"]["position"] for item in sub.items]
    assert positions == [*kept, max(kept) + 1]
    assert [item["node"]["id"] for item in sub.items[:-1]] == list(kept.values())
    actions = [item["node"]["action"] for item in sub.items]
    assert actions == ["tenant.updated", "audit.pruned", "role.created"]
    # The query takes the same cursor: older than the pruned entry, nothing is left.
    r = await gql.execute(
        "query($after: String) { tenant { auditLog(after: $after) { nodes { id } } } }",
        variables,
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.ok()["tenant"]["auditLog"]["nodes"] == []


async def test_busy_subscriptions_recheck_their_credential_once_a_second_between_them(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine
) -> None:
    """Three subscriptions of one credential, two on one socket, events flowing for over two
    seconds: about one authentication a second in all, not one per event or per subscriber."""
    owner, tenant_id = await owner_with_tenant(gql)
    authenticator = api.runtime.authenticator
    original = authenticator.authenticate
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(loop.time())
        return await original(*args, **kwargs)

    credential = owner.headers(tenant_id)
    authenticator.authenticate = counted  # type: ignore[method-assign]
    try:
        async with AsyncExitStack() as stack:
            subs = [
                await stack.enter_async_context(subscribed(api, credential, EVENTS, field="events"))
                for _ in range(2)
            ]
            second = Subscriber(subs[1].ws, "events", "2")
            await second.start(EVENTS)
            subs.append(second)
            await listening(api, events_topic(tenant_id, Environment.LIVE), 3)
            calls.clear()
            started = loop.time()
            committed = 0
            # Paced and capped below the subscriber buffer (1,000): a loaded machine's client
            # reading three streams must not fall far enough behind to be cut off.
            while loop.time() - started < 2.5 and committed < 900:
                await emit(app_engine, tenant_id, 5, per_commit=5)
                committed += 5
                await asyncio.sleep(0.02)
            for sub in subs[:2]:
                await sub.items_count(committed)
            elapsed = loop.time() - started
    finally:
        del authenticator.authenticate
    assert elapsed > 2
    assert len(calls) <= 1 + elapsed, (len(calls), elapsed)


async def test_waiting_subscribers_hold_no_database_connection(
    own_db: str, http: httpx.AsyncClient
) -> None:
    """More subscribers than the pool has connections, some resuming with ``after``, some
    live, one filtered to a type that never comes: the API still answers and every one hears
    the next event."""
    settings = relay_settings(
        own_db, run_relay="true", database_pool_size=2, database_max_overflow=0
    )
    with running_server(settings, migrate_first=False) as server:
        gql = GraphQLClient(http, server.url)
        owner, tenant_id = await owner_with_tenant(gql)
        await register(gql, owner, tenant_id, "order.paid")
        after = await cursor_of(gql, owner, tenant_id, 1)
        credential = owner.headers(tenant_id)
        variants: list[dict[str, Any]] = [{}, {"after": after}, {"types": ["order.paid"]}] * 2
        async with AsyncExitStack() as stack:
            subs = [
                await stack.enter_async_context(
                    subscribed(server, credential, EVENTS, v, field="events")
                )
                for v in variants
            ]
            quiet = await stack.enter_async_context(
                subscribed(
                    server, credential, AUDIT, {"filter": {"action": "x."}}, field="auditLog"
                )
            )
            await listening(server, events_topic(tenant_id, Environment.LIVE), len(subs))
            await listening(server, audit_topic(tenant_id))
            sequence = await asyncio.wait_for(
                emit_event(gql, owner, tenant_id, "order.paid", {"n": 1}), WAIT
            )
            for sub in subs:
                await sub.until(lambda s: bool(s.items) and s.sequences()[-1] == sequence)
            assert quiet.items == []


def _live_objects(type_name: str) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o).__name__ == type_name)


async def test_a_long_running_subscription_keeps_nothing_per_event_delivered(
    api: Server, gql: GraphQLClient, app_engine: AsyncEngine
) -> None:
    """The server runs in this process: what each delivered event leaves behind shows in the
    heap. The executor's per-field caches belong to one event, not to the subscription."""
    owner, tenant_id = await owner_with_tenant(gql)
    async with subscribed(api, owner.headers(tenant_id), EVENTS, field="events") as sub:
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        await emit(app_engine, tenant_id, 20)
        await sub.items_count(20)
        before = _live_objects("CollectedFields")
        await emit(app_engine, tenant_id, 100, per_commit=10)
        await sub.items_count(120)
        after = _live_objects("CollectedFields")
    assert after - before < 20, (before, after)
