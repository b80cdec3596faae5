"""A server whose broker loses Redis: its subscribers hear STREAM_INTERRUPTED, promptly, and
resume from their last cursor once Redis is back, missing nothing.

Each test runs a Redis of its own (``redis-server`` on a free loopback port) that it can kill,
and a server on it with its own database, so breaking Redis breaks nobody else's test.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from coregraph.models.base import Environment
from coregraph.streams.broker import audit_topic, events_topic
from tests.streams_support import WAIT, migrated_database, relay_settings, subscribed
from tests.support import Actor, GraphQLClient, Server, free_port, running_server, unique
from tests.test_subscriptions import AUDIT, EVENTS, create_role, listening

REDIS_SERVER = shutil.which("redis-server")

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="needs the redis-server binary to run a Redis these tests may kill",
)


class PrivateRedis:
    """A ``redis-server`` on 127.0.0.1 that only this test uses: no persistence, killable,
    restartable on the same port (a server's client reconnects to the same address)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    with contextlib.suppress(RedisConnectionError):
                        if await client.ping():
                            return
                    assert self.process.returncode is None, "redis-server exited"
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await asyncio.wait_for(process.wait(), WAIT)


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    redis = PrivateRedis()
    await redis.start()
    try:
        yield redis
    finally:
        await redis.kill()


@pytest.fixture(scope="module")
async def own_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("interrupted"))) as url:
        yield url


@pytest.fixture
def api(own_db: str, private_redis: PrivateRedis) -> Iterator[Server]:
    """A server whose broker (and relay) use the private Redis."""
    settings = relay_settings(own_db, redis_url=private_redis.url, run_relay="true")
    with running_server(settings, migrate_first=False) as server:
        yield server


async def owner_with_tenant(gql: GraphQLClient) -> tuple[Actor, str]:
    owner = await gql.sign_up()
    return owner, await gql.create_tenant(owner)


def interrupted(errors: list[dict[str, Any]]) -> None:
    assert [e["extensions"]["code"] for e in errors] == ["STREAM_INTERRUPTED"], errors
    assert "subscribe again with the last cursor" in errors[0]["message"]
    assert errors[0]["extensions"]["requestId"]
    assert "Traceback" not in errors[0]["message"]


async def test_subscribers_hear_stream_interrupted_when_redis_dies_and_resume_when_it_is_back(
    api: Server, private_redis: PrivateRedis, http: httpx.AsyncClient
) -> None:
    gql = GraphQLClient(http, api.url)
    owner, tenant_id = await owner_with_tenant(gql)
    credential = owner.headers(tenant_id)
    async with (
        subscribed(api, credential, EVENTS, field="events") as events,
        subscribed(api, credential, AUDIT, field="auditLog") as audit,
    ):
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        await listening(api, audit_topic(tenant_id))
        # Live through this Redis first.
        await create_role(gql, owner, tenant_id, unique("before"))
        await events.items_count(1)
        await audit.items_count(1)

        await private_redis.kill()
        # Both end with the error (bounded: no retry loop keeps them waiting in silence),
        # and the socket stays open for the client to subscribe again.
        interrupted(await events.ended(wait=WAIT))
        interrupted(await audit.ended(wait=WAIT))
        assert events.ws.close_code is None
    last_event, last_entry = events.items[-1]["cursor"], audit.items[-1]["cursor"]

    # Redis is still down: a new subscription is refused the same way, at once.
    async with subscribed(api, credential, EVENTS, field="events") as refused:
        interrupted(await refused.ended(wait=WAIT))

    # Changes still commit (the outbox keeps them) ...
    await create_role(gql, owner, tenant_id, unique("while-down"))
    # ... and once Redis is back, resuming from the last cursors misses nothing.
    await private_redis.start()
    async with (
        subscribed(api, credential, EVENTS, {"after": last_event}, field="events") as events,
        subscribed(api, credential, AUDIT, {"after": last_entry}, field="auditLog") as audit,
    ):
        await events.items_count(1)
        await audit.items_count(1)
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        await create_role(gql, owner, tenant_id, unique("after"))
        await events.items_count(2)
        await audit.items_count(2)
    assert [i["node"]["type"] for i in events.items] == ["role.created", "role.created"]
    assert [i["node"]["action"] for i in audit.items] == ["role.created", "role.created"]
    assert events.errors == [] and audit.errors == []


async def test_a_dropped_broker_connection_interrupts_subscribers_even_when_redis_stays_up(
    api: Server, private_redis: PrivateRedis, http: httpx.AsyncClient
) -> None:
    """Redis closes the broker's subscriber connection (a proxy's idle timeout, a failover, an
    operator's CLIENT KILL); what was published until the client reconnected is lost to this
    process, so its subscribers must not carry on as if nothing happened."""
    gql = GraphQLClient(http, api.url)
    owner, tenant_id = await owner_with_tenant(gql)
    credential = owner.headers(tenant_id)
    async with subscribed(api, credential, EVENTS, field="events") as events:
        await listening(api, events_topic(tenant_id, Environment.LIVE))
        await create_role(gql, owner, tenant_id, unique("before"))
        await events.items_count(1)

        admin = Redis.from_url(private_redis.url)
        try:
            assert await admin.client_kill_filter(_type="pubsub") >= 1
        finally:
            await admin.aclose()
        interrupted(await events.ended(wait=WAIT))
