"""Operation rate limits from the tenant's plan, per credential, overridable per API key;
api.requests metered in batches and its monthly cap. Each test puts a tenant of its own on a
plan of its own, on a server of this module (the plan limits read afresh: cache 0 s; flushes
every 0.3 s). In memory, or in Redis when COREGRAPH_REDIS_URL is set (the limits' storage and
the api.requests counts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from coregraph.errors import QuotaExceeded
from coregraph.models.base import Environment, utcnow
from coregraph.services.api_requests import MAX_ATTEMPTS, ApiRequestMeter, Batch
from coregraph.services.ratelimit import Limiter, Window
from tests.conftest import make_settings
from tests.streams_support import engine_for
from tests.support import (
    PASSWORD,
    Actor,
    GraphQLClient,
    Server,
    free_port,
    running_server,
    unique,
)
from tests.test_websocket import PROTOCOL, WAIT, receive, run

DEFINE = """mutation($input: DefinePlanInput!) { definePlan(input: $input) { plan { key } } }"""
ASSIGN = """mutation($tenantId: ID!, $plan: String!) {
    assignPlan(tenantId: $tenantId, plan: $plan) { plan { key } } }"""
TENANT = "{ tenant { id } }"
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id rateLimits { perSecond perMinute costPerMinute } } } }"""
SET_KEY_LIMITS = """mutation($id: ID!, $limits: RateLimitsInput) {
    setApiKeyRateLimits(id: $id, rateLimits: $limits) {
        apiKey { id rateLimits { perMinute } } } }"""


@dataclass
class Customer:
    client: GraphQLClient
    owner: Actor
    tenant_id: str

    async def run(self, query: str, actor: Actor | None = None, **variables: Any) -> Any:
        return await self.client.execute(
            query, variables or None, actor=actor or self.owner, tenant_id=self.tenant_id
        )

    async def key(self, scopes: list[str], limits: dict[str, int] | None = None) -> Actor:
        r = await self.run(
            CREATE_KEY,
            input={"name": unique("key"), "scopes": scopes, "rateLimits": limits},
        )
        payload = r.ok()["createApiKey"]
        return Actor(token=payload["secret"], user_id=payload["apiKey"]["id"])


@pytest.fixture(scope="module")
async def operator(client: GraphQLClient) -> tuple[Actor, str]:
    owner = await client.sign_up()
    return owner, await client.create_tenant(owner)


@pytest.fixture(scope="module")
def limits_server(database_url: str, operator: tuple[Actor, str]) -> Iterator[Server]:
    settings = make_settings(
        database_url,
        billing_operator_tenant=operator[1],
        plan_limits_cache_seconds=0,
        api_requests_flush_seconds=0.3,
        redis_prefix=unique("plan-limits-"),
    )
    with running_server(settings, migrate_first=False) as server:
        yield server


@pytest.fixture
async def on_plan(
    limits_server: Server, operator: tuple[Actor, str], http: httpx.AsyncClient
) -> Callable[..., Awaitable[Customer]]:
    client = GraphQLClient(http, limits_server.url)

    async def make(**plan: Any) -> Customer:
        key = unique("plan").lower().replace("-", "_")
        owner, operator_tenant = operator
        r = await client.execute(
            DEFINE,
            {"input": {"key": key, "name": f"Plan {key}", **plan}},
            actor=owner,
            tenant_id=operator_tenant,
        )
        r.ok()
        customer = await client.sign_up()
        tenant_id = await client.create_tenant(customer)
        r = await client.execute(
            ASSIGN, {"tenantId": tenant_id, "plan": key}, actor=owner, tenant_id=operator_tenant
        )
        r.ok()
        return Customer(client, customer, tenant_id)

    return make


async def early_in_a_second() -> None:
    """Start a burst early in a wall-clock second: in memory, windows of a second start at
    whole seconds, and a burst of a few requests then stays in one."""
    fraction = time.time() % 1
    if fraction > 0.5:
        await asyncio.sleep(1.02 - fraction)


async def wait_until(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_per_second_limit_from_the_plan_answers_429_with_headers(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan(rateLimits={"perSecond": 3})
    await early_in_a_second()
    answers = [await customer.run(TENANT) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429], [a.body for a in answers]
    assert answers[0].headers["RateLimit-Policy"] == '"second";q=3;w=1'
    refused = answers[3]
    assert refused.codes == ["RATE_LIMITED"]
    assert "data" not in refused.body
    extensions = refused.errors[0]["extensions"]
    assert extensions["retryAfter"] == 1
    assert extensions["policy"] == "second"
    assert refused.headers["content-type"].startswith("application/graphql-response+json")
    assert refused.headers["RateLimit-Policy"] == '"second";q=3;w=1'
    assert refused.headers["RateLimit"] == '"second";r=0;t=1'
    assert refused.headers["Retry-After"] == "1"
    # Under application/json a refusal is a 200 like every other request error; same headers.
    r = await customer.client.execute(
        TENANT, actor=customer.owner, tenant_id=customer.tenant_id, accept="application/json"
    )
    assert (r.status, r.codes) == (200, ["RATE_LIMITED"])
    assert r.headers["RateLimit"] == '"second";r=0;t=1'

    async def allowed_again() -> bool:
        return (await customer.run(TENANT)).status == 200

    await wait_until(allowed_again, within=5)


async def test_per_minute_limit_is_per_credential_and_an_api_key_may_override_it(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan(rateLimits={"perMinute": 4})
    key = await customer.key(["tenant:read"], {"perMinute": 6})  # the owner's 1st operation
    # The key counts on its own, with its own limit.
    keyed = [(await customer.run(TENANT, actor=key)).status for _ in range(7)]
    assert keyed == [200] * 6 + [429]
    refused = await customer.run(TENANT, actor=key)
    assert 1 <= refused.errors[0]["extensions"]["retryAfter"] <= 60
    assert refused.headers["RateLimit-Policy"] == '"minute";q=6;w=60'

    # Raised: two more fit (the owner's 2nd operation).
    r = await customer.run(SET_KEY_LIMITS, id=key.user_id, limits={"perMinute": 8})
    assert r.ok()["setApiKeyRateLimits"]["apiKey"]["rateLimits"] == {"perMinute": 8}
    keyed = [(await customer.run(TENANT, actor=key)).status for _ in range(3)]
    assert keyed == [200, 200, 429]
    # Cleared (3rd): the plan's 4 apply to the key again, and it made 8.
    r = await customer.run(SET_KEY_LIMITS, id=key.user_id, limits=None)
    assert r.ok()["setApiKeyRateLimits"]["apiKey"]["rateLimits"] is None
    assert (await customer.run(TENANT, actor=key)).codes == ["RATE_LIMITED"]
    # The owner's own count: a 4th operation fits, a 5th does not.
    owner = [(await customer.run(TENANT)).status for _ in range(2)]
    assert owner == [200, 429]


async def test_setting_a_keys_limits_needs_apikeys_manage_and_valid_values(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan()
    key = await customer.key(["tenant:read"])
    r = await customer.run(SET_KEY_LIMITS, id=key.user_id, limits={"perMinute": 0})
    assert r.codes == ["BAD_USER_INPUT"]
    assert r.errors[0]["extensions"]["field"] == "rateLimits.perMinute"
    r = await customer.run(SET_KEY_LIMITS, actor=key, id=key.user_id, limits={"perMinute": 1000})
    assert r.codes == ["FORBIDDEN"]
    r = await customer.run(
        CREATE_KEY, input={"name": "k", "scopes": ["tenant:read"], "rateLimits": {"perSecond": -1}}
    )
    assert r.codes == ["BAD_USER_INPUT"]
    r = await customer.run(SET_KEY_LIMITS, id=key.user_id, limits={"perMinute": 1000})
    assert r.ok()["setApiKeyRateLimits"]["apiKey"]["rateLimits"] == {"perMinute": 1000}
    r = await customer.run("{ tenant { auditLog(first: 50) { nodes { action } } } }")
    actions = [node["action"] for node in r.ok()["tenant"]["auditLog"]["nodes"]]
    assert "api_key.rate_limits_changed" in actions


async def test_aliased_and_fragment_root_fields_count_each(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan(rateLimits={"perMinute": 6})
    three = "{ a: tenant { id } b: tenant { id } c: tenant { id } }"
    assert (await customer.run(three)).status == 200
    spread = "query { ...Roots } fragment Roots on Query { x: tenant { id } y: tenant { id } }"
    assert (await customer.run(spread)).status == 200
    refused = await customer.run(spread)
    assert (refused.status, refused.codes) == (429, ["RATE_LIMITED"]), "3 + 2 + 2 > 6"
    assert (await customer.run(TENANT)).status == 200, "3 + 2 + 1 = 6"
    # More root fields than the limit allows at all: refused, never runs.
    seven = "{ " + " ".join(f"f{i}: tenant {{ id }}" for i in range(7)) + " }"
    r = await customer.run(seven)
    assert r.codes == ["RATE_LIMITED"]
    assert "can never run" in r.errors[0]["message"]


async def test_cost_budget_counts_every_selected_field(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan(rateLimits={"costPerMinute": 10})
    four = "{ tenant { id name slug } }"  # tenant + 3 fields
    answers = [await customer.run(four) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.errors[0]["extensions"]["policy"] == "cost"
    assert refused.headers["RateLimit-Policy"] == '"cost";q=10;w=60;coregraph-unit="fields"'
    assert (await customer.run("{ tenant { id } }")).status == 200, "8 + 2 = 10"


async def test_a_websocket_operation_is_limited_with_an_error_message(
    on_plan: Callable[..., Awaitable[Customer]], limits_server: Server
) -> None:
    customer = await on_plan(rateLimits={"perMinute": 2})
    url = limits_server.url.replace("http://", "ws://")
    async with websockets.connect(url, subprotocols=[PROTOCOL], open_timeout=WAIT) as ws:
        init = {"type": "connection_init", "payload": customer.owner.headers(customer.tenant_id)}
        await ws.send(json.dumps(init))
        assert (await receive(ws))["type"] == "connection_ack"
        for i in range(2):
            messages = await run(ws, f"q{i}", TENANT)
            assert [m["type"] for m in messages] == ["next", "complete"], messages
        messages = await run(ws, "q3", TENANT)
        assert [m["type"] for m in messages] == ["error"], messages
        error = messages[0]["payload"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert 1 <= error["extensions"]["retryAfter"] <= 60
        # The socket stays open for later operations (refused the same way for now).
        messages = await run(ws, "q4", TENANT)
        assert messages[0]["payload"][0]["extensions"]["code"] == "RATE_LIMITED"


async def test_the_login_limiter_still_counts_per_account(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan()
    login = "mutation($i: LoginInput!) { login(input: $i) { accessToken } }"
    wrong = {"i": {"email": customer.owner.email, "password": "not the password 1"}}
    codes = [(await customer.client.execute(login, wrong)).codes[0] for _ in range(11)]
    assert codes == ["UNAUTHENTICATED"] * 10 + ["RATE_LIMITED"]
    right = {"i": {"email": customer.owner.email, "password": PASSWORD}}
    assert (await customer.client.execute(login, right)).codes == ["RATE_LIMITED"]


USAGE = """query($from: DateTime!, $to: DateTime!) { usage(meter: "api.requests", from: $from,
    to: $to, granularity: MONTH, groupBy: ["credential"]) { points { group value } } }"""


async def test_api_requests_are_flushed_per_credential(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    customer = await on_plan()
    key = await customer.key(["tenant:read"])
    reader = await customer.key(["usage:read"])
    for _ in range(5):
        (await customer.run(TENANT, actor=key)).ok()
    # One operation, one count, however many root fields it has.
    (await customer.run("{ a: tenant { id } b: tenant { id } }", actor=key)).ok()
    now = utcnow()
    window = {
        "from": (now - timedelta(days=40)).isoformat(),
        "to": (now + timedelta(days=1)).isoformat(),
    }
    seen: dict[str | None, str] = {}

    async def flushed() -> bool:
        r = await customer.run(USAGE, actor=reader, **window)
        seen.clear()
        for point in r.ok()["usage"]["points"]:
            seen[point["group"]["credential"]] = point["value"]
        # The reader's own polls are flushed on their own schedule: wait for them too.
        return seen.get(key.user_id) == "6" and reader.user_id in seen

    await wait_until(flushed)
    # The owner's two createApiKey operations; the reader's polls count under its own id.
    assert seen[customer.owner.user_id] == "2"
    assert set(seen) == {key.user_id, customer.owner.user_id, reader.user_id}


async def test_a_flush_recorded_twice_counts_once(
    database_url: str, on_plan: Callable[..., Awaitable[Customer]]
) -> None:
    """A flush retried after an error (its answer lost) records the same batch again: the
    idempotency keys (process identity, flush sequence, credential) make it count once. With
    Redis, a batch cut by a process that died before recording it is recorded by the next
    flush of another, also once."""
    customer = await on_plan()
    redis_url = os.environ.get("COREGRAPH_REDIS_URL")
    async with engine_for(database_url) as engine:
        meter = ApiRequestMeter(engine, flush_seconds=60, cache_seconds=0)
        for _ in range(7):
            await meter.count(customer.tenant_id, Environment.LIVE, "key_a", None)
        await meter.count(customer.tenant_id, Environment.LIVE, "key_b", None)
        batch = meter.cut()
        assert batch is not None
        await meter.count(customer.tenant_id, Environment.LIVE, "key_a", None)  # after the cut
        await meter.record(batch)
        await meter.record(batch)
        assert await meter.recorded(customer.tenant_id, Environment.LIVE) == Decimal(8)
        # 8 recorded and 1 not yet: the next operation is past a cap of 9, and not counted.
        with pytest.raises(QuotaExceeded) as refused:
            await meter.count(customer.tenant_id, Environment.LIVE, "key_a", Decimal(9))
        assert refused.value.extra["current"] == "9"
        assert await meter.flush() == 1
        assert await meter.recorded(customer.tenant_id, Environment.LIVE) == Decimal(9)
        # A tenant whose records fail holds up no other: the rest is recorded, the failed part
        # kept for the next flush, and dropped (logged) after MAX_ATTEMPTS failed flushes.
        mixed = Batch(
            "mixed:1",
            utcnow(),
            {(customer.tenant_id, "live", "key_d"): 2, (customer.tenant_id, "nowhere", "key_d"): 1},
        )
        left = await meter.record(mixed)
        assert left == Batch("mixed:1", mixed.at, {(customer.tenant_id, "nowhere", "key_d"): 1}, 1)
        assert await meter.recorded(customer.tenant_id, Environment.LIVE) == Decimal(11)
        meter._retry.append(replace(left, attempts=MAX_ATTEMPTS - 1))
        assert await meter.flush() == 1, "tried a last time, then dropped"
        assert meter._retry == []
        if not redis_url:
            return
        redis = Redis.from_url(redis_url)
        prefix = unique("api-requests-")
        try:
            dead = ApiRequestMeter(
                engine, flush_seconds=60, cache_seconds=0, redis=redis, prefix=prefix
            )
            for _ in range(4):
                await dead.count(customer.tenant_id, Environment.LIVE, "key_c", None)
            # Cut as a flush does, then "die" before recording.
            batch_key = f"{dead._keys}:batch:dead-process:1"
            await redis.rename(dead._hash, batch_key)
            await redis.sadd(dead._batches, batch_key)
            survivor = ApiRequestMeter(
                engine, flush_seconds=60, cache_seconds=0, redis=redis, prefix=prefix
            )
            assert await survivor.flush() == 1
            assert await survivor.recorded(customer.tenant_id, Environment.LIVE) == Decimal(15)
            # Had the dead process recorded it after all, the batch counts once.
            await survivor.record(
                Batch("dead-process:1", utcnow(), {(customer.tenant_id, "live", "key_c"): 4})
            )
            assert await survivor.recorded(customer.tenant_id, Environment.LIVE) == Decimal(15)
            assert await redis.smembers(survivor._batches) == set()
            # Another database's meter, under the same prefix, never sees these counts.
            await dead.count(customer.tenant_id, Environment.LIVE, "key_c", None)
            other = ApiRequestMeter(
                create_async_engine("sqlite+aiosqlite:///:memory:"),
                flush_seconds=60,
                cache_seconds=0,
                redis=redis,
                prefix=prefix,
            )
            assert await other.flush() == 0
            assert await redis.hgetall(other._hash) == {}
            await other.engine.dispose()
            assert await survivor.flush() == 1
        finally:
            await redis.aclose()


async def test_the_cap_admits_exactly_its_limit_while_flushes_record_concurrently(
    database_url: str, on_plan: Callable[..., Awaitable[Customer]]
) -> None:
    """A flush recording a batch while capped operations are counted: the recorded usage and
    the count not yet recorded must describe the same moment, or an operation past the cap
    slips through (a batch neither pending nor recorded yet) — in memory, and with Redis, where
    the flush's cut used to take the pending total with it. Cached recorded usage (60 s)."""
    customer = await on_plan()
    redis_url = os.environ.get("COREGRAPH_REDIS_URL")
    redis = Redis.from_url(redis_url) if redis_url else None
    cap = 40
    try:
        async with engine_for(database_url) as engine:
            meter = ApiRequestMeter(
                engine, flush_seconds=60, cache_seconds=60, redis=redis, prefix=unique("race-")
            )
            stop = asyncio.Event()

            async def flushing() -> int:
                flushes = 0
                while not stop.is_set() and flushes < 500:
                    flushes += await meter.flush()
                    await asyncio.sleep(0)
                return flushes

            async def counting(credential: str) -> int:
                admitted = 0
                for _ in range(cap):
                    try:
                        await meter.count(
                            customer.tenant_id, Environment.LIVE, credential, Decimal(cap)
                        )
                    except QuotaExceeded:
                        continue
                    admitted += 1
                    await asyncio.sleep(0)
                return admitted

            flusher = asyncio.create_task(flushing())
            admitted = await asyncio.gather(*(counting(f"key_{i}") for i in range(3)))
            stop.set()
            assert await flusher > 0, "flushes ran while operations were counted"
            assert sum(admitted) == cap
            await meter.flush()
            assert await meter.recorded(customer.tenant_id, Environment.LIVE) == Decimal(cap)
    finally:
        if redis is not None:
            await redis.aclose()


async def test_quota_of_api_requests_counts_what_is_not_flushed_yet(
    on_plan: Callable[..., Awaitable[Customer]],
) -> None:
    """quota("api.requests") is the records plus the counts not recorded yet: exact between
    flushes, whenever the flush lands."""
    customer = await on_plan(limits=[{"meter": "api.requests", "value": "1000", "hard": True}])
    reader = await customer.key(["usage:read", "tenant:read"])
    query = '{ quota(meter: "api.requests") { used remaining } }'
    before = (await customer.run(query, actor=reader)).ok()["quota"]
    for _ in range(5):
        (await customer.run(TENANT, actor=reader)).ok()
    after = (await customer.run(query, actor=reader)).ok()["quota"]
    # The five operations and the second quota query itself.
    assert Decimal(after["used"]) - Decimal(before["used"]) == 6
    assert Decimal(after["used"]) + Decimal(after["remaining"]) == 1000


async def test_the_monthly_cap_refuses_with_quota_exceeded(
    database_url: str, on_plan: Callable[..., Awaitable[Customer]]
) -> None:
    customer = await on_plan(limits=[{"meter": "api.requests", "value": "3", "hard": True}])
    statuses = [(await customer.run(TENANT)).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = await customer.run(TENANT)
    assert (refused.status, refused.codes) == (429, ["QUOTA_EXCEEDED"])
    extensions = refused.errors[0]["extensions"]
    assert (extensions["meter"], extensions["limit"], extensions["current"]) == (
        "api.requests",
        "3",
        "3",
    )
    assert refused.headers["RateLimit"].startswith('"month";r=0;t=')

    # Still refused once the counts are flushed (recorded + unflushed, refusals not counted).
    async def still_three() -> bool:
        r = await customer.run(TENANT)
        return r.codes == ["QUOTA_EXCEEDED"] and r.errors[0]["extensions"]["current"] == "3"

    async with engine_for(database_url) as engine:
        meter = ApiRequestMeter(engine, flush_seconds=60, cache_seconds=0)

        async def recorded() -> bool:
            return await meter.recorded(customer.tenant_id, Environment.LIVE) == Decimal(3)

        await wait_until(recorded)
    assert await still_three()


async def test_a_redis_outage_neither_refuses_operations_nor_loses_their_counts(
    database_url: str, on_plan: Callable[..., Awaitable[Customer]]
) -> None:
    """Redis unreachable: operations are counted in the process (never refused with an
    internal error) and recorded by its next flush; the rate limiter lets them through."""
    customer = await on_plan()
    nobody = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        async with engine_for(database_url) as engine:
            meter = ApiRequestMeter(
                engine, flush_seconds=60, cache_seconds=0, redis=nobody, prefix=unique("down-")
            )
            for _ in range(3):
                await meter.count(customer.tenant_id, Environment.LIVE, "key_a", Decimal(100))
            with contextlib.suppress(Exception):  # Redis's own part of the flush fails
                await meter.flush()
            assert await meter.recorded(customer.tenant_id, Environment.LIVE) == Decimal(3)
        dead_url = str(nobody.connection_pool.connection_kwargs.get("port"))
        limiter = Limiter.create(nobody, f"redis://127.0.0.1:{dead_url}/0", unique("down-"))
        assert await limiter.hit(Window(1, 60), "t", "k")
        assert await limiter.hit(Window(1, 60), "t", "k"), "fails open while it cannot count"
    finally:
        await nobody.aclose()
