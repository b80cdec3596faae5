"""The authenticated REST routes (GET /audit/export, POST /usage/bulk) are admitted like a
GraphQL operation (``coregraph.admission``): one operation of the credential's plan rate
limits, and one api.requests toward the hard monthly cap. Refusals are 429 with the RateLimit
headers and the routes' JSON error body. On the server and plans of test_plan_rate_limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

from tests.support import Actor, Server, unique
from tests.test_plan_rate_limits import (  # noqa: F401 (the fixtures)
    ASSIGN,
    DEFINE,
    TENANT,
    Customer,
    limits_server,
    on_plan,
    operator,
)
from tests.test_usage import CREATE_METER


def _codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json()["errors"]]


async def _export(server: Server, customer: Customer) -> httpx.Response:
    return await customer.client.http.get(
        f"{server.base_url}/audit/export", headers=customer.owner.headers(customer.tenant_id)
    )


async def _bulk(server: Server, customer: Customer, meter: str) -> httpx.Response:
    body = orjson.dumps({"meter": meter, "quantity": "1"}) + b"\n"
    headers = {
        "Content-Type": "application/x-ndjson",
        **customer.owner.headers(customer.tenant_id),
    }
    return await customer.client.http.post(
        f"{server.base_url}/usage/bulk", content=body, headers=headers
    )


def _assert_rate_limited(refused: httpx.Response) -> None:
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("application/json")
    assert _codes(refused) == ["RATE_LIMITED"]
    extensions = refused.json()["errors"][0]["extensions"]
    assert extensions["policy"] == "minute"
    assert 1 <= extensions["retryAfter"] <= 60
    assert refused.headers["RateLimit-Policy"] == '"minute";q=1;w=60'
    assert refused.headers["RateLimit"] == f'"minute";r=0;t={extensions["retryAfter"]}'
    assert refused.headers["Retry-After"] == str(extensions["retryAfter"])


async def test_the_second_audit_export_in_a_minute_is_rate_limited(
    limits_server: Server,  # noqa: F811
    on_plan: Callable[..., Awaitable[Customer]],  # noqa: F811
) -> None:
    customer = await on_plan(rateLimits={"perMinute": 1})
    first = await _export(limits_server, customer)
    second = await _export(limits_server, customer)
    assert first.status_code == 200, first.text
    _assert_rate_limited(second)
    # The same limit as GraphQL's: the credential's minute is spent for both.
    graphql = await customer.run(TENANT)
    assert (graphql.status, graphql.codes) == (429, ["RATE_LIMITED"])


async def test_the_second_usage_bulk_in_a_minute_is_rate_limited(
    limits_server: Server,  # noqa: F811
    on_plan: Callable[..., Awaitable[Customer]],  # noqa: F811
    operator: tuple[Actor, str],  # noqa: F811
) -> None:
    customer = await on_plan()
    meter = f"app.{unique('m').replace('-', '_').lower()}"
    r = await customer.run(
        CREATE_METER,
        input={"key": meter, "name": "Tokens", "unit": "token", "aggregation": "SUM"},
    )
    r.ok()
    # Now on a plan of one operation a minute (limits read afresh: cache 0 s).
    plan = unique("plan").lower().replace("-", "_")
    owner, operator_tenant = operator
    variables: dict[str, Any] = {
        "input": {"key": plan, "name": f"Plan {plan}", "rateLimits": {"perMinute": 1}}
    }
    r = await customer.client.execute(DEFINE, variables, actor=owner, tenant_id=operator_tenant)
    r.ok()
    r = await customer.client.execute(
        ASSIGN,
        {"tenantId": customer.tenant_id, "plan": plan},
        actor=owner,
        tenant_id=operator_tenant,
    )
    r.ok()

    first = await _bulk(limits_server, customer, meter)
    second = await _bulk(limits_server, customer, meter)
    assert (first.status_code, first.json()) == (200, {"recorded": 1, "replayed": 0})
    _assert_rate_limited(second)


async def test_rest_calls_count_toward_the_monthly_cap(
    limits_server: Server,  # noqa: F811
    on_plan: Callable[..., Awaitable[Customer]],  # noqa: F811
) -> None:
    customer = await on_plan(limits=[{"meter": "api.requests", "value": "3", "hard": True}])
    assert (await customer.run(TENANT)).status == 200
    # Three counted in all: this GraphQL call, the exports, and whatever of the plan's setup ran
    # in the tenant (whether it is counted depends on the plan cache's timing). REST calls
    # count, so an export is refused within three, after at least one went through.
    exports = []
    for _ in range(3):
        exports.append(await _export(limits_server, customer))
        if exports[-1].status_code != 200:
            break
    *served, refused = exports
    assert served and all(e.status_code == 200 for e in served), [e.text for e in exports]
    assert refused.status_code == 429, refused.text
    assert _codes(refused) == ["QUOTA_EXCEEDED"]
    extensions = refused.json()["errors"][0]["extensions"]
    assert (extensions["meter"], extensions["limit"], extensions["current"]) == (
        "api.requests",
        "3",
        "3",
    )
    assert refused.headers["RateLimit"].startswith('"month";r=0;t=')
    assert refused.headers["Retry-After"] == refused.headers["RateLimit"].rsplit("t=", 1)[1]
    assert '"month";q=3;w=' in refused.headers["RateLimit-Policy"]
    bulk = await _bulk(limits_server, customer, "app.any")
    assert (bulk.status_code, _codes(bulk)) == (429, ["QUOTA_EXCEEDED"])
    graphql = await customer.run(TENANT)
    assert (graphql.status, graphql.codes) == (429, ["QUOTA_EXCEEDED"])
