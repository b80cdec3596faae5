"""Plans and entitlements: the catalog belongs to the billing operator's tenant; a tenant's own
billing managers may choose only self-serve plans for themselves; plans are checked whole
(BAD_USER_INPUT naming the path), audited and evented, and load from a config file at start."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from coregraph.errors import BadUserInput
from coregraph.services.billing import read_plans_file
from tests.conftest import make_settings
from tests.support import Actor, GraphQLClient, Server, running_server, unique

DEFINE = """mutation($input: DefinePlanInput!) { definePlan(input: $input) {
    plan { key name currency selfServe version features { name enabled }
           limits { meter value period hard }
           prices { kind meter amount unitAmount tiers { upTo unitAmount flatAmount } }
           rateLimits { perSecond perMinute costPerMinute } } } }"""
ASSIGN = """mutation($tenantId: ID!, $plan: String!) {
    assignPlan(tenantId: $tenantId, plan: $plan) { tenantId previousPlan plan { key } } }"""
PLANS = "{ plans { key selfServe } }"
CURRENT = "{ currentPlan { key } }"
ENTITLEMENT = "query($f: String!) { entitlement(feature: $f) { feature enabled plan } }"


def plan_input(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": f"Plan {key}",
        "currency": "EUR",
        "features": [{"name": "sso", "enabled": True}, {"name": "audit.export", "enabled": False}],
        "limits": [
            {"meter": "seats", "value": "5", "period": "MONTH", "hard": True},
            {"meter": "api.requests", "value": "10000"},
        ],
        "prices": [
            {"kind": "FLAT", "amount": "4900"},
            {"kind": "PER_UNIT", "meter": "api.requests", "unitAmount": "0.05"},
            {
                "kind": "GRADUATED",
                "meter": "storage.bytes",
                "tiers": [{"upTo": "1000", "unitAmount": "1"}, {"unitAmount": "0.5"}],
            },
        ],
        "rateLimits": {"perSecond": 10, "perMinute": 300},
        **extra,
    }


@dataclass
class Billing:
    client: GraphQLClient
    operator: Actor
    operator_tenant: str

    async def as_operator(self, query: str, variables: dict[str, Any]) -> Any:
        r = await self.client.execute(
            query, variables, actor=self.operator, tenant_id=self.operator_tenant
        )
        return r


@pytest.fixture(scope="module")
async def operator_setup(client: GraphQLClient) -> tuple[Actor, str]:
    owner = await client.sign_up()
    return owner, await client.create_tenant(owner)


@pytest.fixture(scope="module")
def billing_server(
    database_url: str, operator_setup: tuple[Actor, str], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    _owner, tenant_id = operator_setup
    plans_file = tmp_path_factory.mktemp("plans") / "plans.json"
    plans_file.write_text(
        json.dumps({"plans": [{"key": "filed-starter", "name": "Starter", "selfServe": True}]})
    )
    settings = make_settings(
        database_url, billing_operator_tenant=tenant_id, plans_file=str(plans_file)
    )
    with running_server(settings, migrate_first=False) as server:
        yield server


@pytest.fixture
async def billing(
    billing_server: Server, operator_setup: tuple[Actor, str]
) -> AsyncIterator[Billing]:
    async with httpx.AsyncClient(timeout=30) as http:
        owner, tenant_id = operator_setup
        yield Billing(GraphQLClient(http, billing_server.url), owner, tenant_id)


async def test_the_operator_defines_plans_and_a_tenant_cannot(billing: Billing) -> None:
    key = unique("pro").lower().replace("-", "_")
    plan = (await billing.as_operator(DEFINE, {"input": plan_input(key)})).ok()["definePlan"]
    assert plan["plan"]["version"] == 1
    assert plan["plan"]["currency"] == "EUR"
    assert plan["plan"]["limits"][0] == {
        "meter": "seats",
        "value": "5",
        "period": "MONTH",
        "hard": True,
    }
    assert plan["plan"]["prices"][2]["tiers"][1]["upTo"] is None
    # Redefined: replaced whole, version grows.
    again = await billing.as_operator(DEFINE, {"input": plan_input(key, name="Pro 2")})
    assert again.ok()["definePlan"]["plan"]["version"] == 2

    customer = await billing.client.sign_up()
    tenant = await billing.client.create_tenant(customer)
    refused = await billing.client.execute(
        DEFINE, {"input": plan_input(unique("x").lower())}, actor=customer, tenant_id=tenant
    )
    assert refused.codes == ["FORBIDDEN"]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"key": "Bad Key"}, "input.key"),
        ({"currency": "euro"}, "input.currency"),
        ({"limits": [{"meter": "seats", "value": "-1"}]}, "input.limits.0.value"),
        (
            {"prices": [{"kind": "GRADUATED", "meter": "seats", "tiers": [{"upTo": "5"}]}]},
            "input.prices.0",
        ),
        (
            {
                "prices": [
                    {
                        "kind": "GRADUATED",
                        "meter": "seats",
                        "tiers": [{"upTo": "10"}, {"upTo": "5"}, {}],
                    }
                ]
            },
            "input.prices.0",
        ),
        ({"prices": [{"kind": "FLAT"}]}, "input.prices.0"),
        ({"rateLimits": {"perSecond": 0}}, "input.rateLimits.perSecond"),
    ],
)
async def test_a_bad_plan_is_refused_naming_the_path_and_nothing_is_written(
    billing: Billing, change: dict[str, Any], path: str
) -> None:
    key = unique("bad").lower().replace("-", "_")
    r = await billing.as_operator(DEFINE, {"input": {**plan_input(key), **change}})
    assert r.codes == ["BAD_USER_INPUT"], r.body
    assert r.errors[0]["extensions"]["field"] == path
    plans = (await billing.as_operator(PLANS, {})).ok()["plans"]
    assert key not in {p["key"] for p in plans}


async def test_tenants_choose_self_serve_plans_only_and_the_operator_assigns_any(
    billing: Billing,
) -> None:
    public = unique("team").lower().replace("-", "_")
    private = unique("enterprise").lower().replace("-", "_")
    await billing.as_operator(DEFINE, {"input": plan_input(public, selfServe=True)})
    await billing.as_operator(DEFINE, {"input": plan_input(private)})
    customer = await billing.client.sign_up()
    tenant = await billing.client.create_tenant(customer)

    async def run(query: str, variables: dict[str, Any] | None = None) -> Any:
        return await billing.client.execute(query, variables, actor=customer, tenant_id=tenant)

    visible = {p["key"] for p in (await run(PLANS)).ok()["plans"]}
    assert public in visible and "filed-starter" in visible and private not in visible
    assert (await run(CURRENT)).ok()["currentPlan"] is None
    assert (await run(ENTITLEMENT, {"f": "sso"})).ok()["entitlement"]["enabled"] is False

    refused = await run(ASSIGN, {"tenantId": tenant, "plan": private})
    assert refused.codes == ["NOT_FOUND"]
    chosen = (await run(ASSIGN, {"tenantId": tenant, "plan": public})).ok()["assignPlan"]
    assert chosen == {"tenantId": tenant, "previousPlan": None, "plan": {"key": public}}
    assert (await run(ENTITLEMENT, {"f": "sso"})).ok()["entitlement"] == {
        "feature": "sso",
        "enabled": True,
        "plan": public,
    }
    assert (await run(ENTITLEMENT, {"f": "audit.export"})).ok()["entitlement"]["enabled"] is False
    # Another tenant's plan is not the customer's to change.
    other = await billing.client.execute(
        ASSIGN,
        {"tenantId": billing.operator_tenant, "plan": public},
        actor=customer,
        tenant_id=tenant,
    )
    assert other.codes == ["NOT_FOUND"]

    # The operator moves the customer to the private plan: audited and evented in the tenant.
    moved = await billing.as_operator(ASSIGN, {"tenantId": tenant, "plan": private})
    assert moved.ok()["assignPlan"]["previousPlan"] == public
    assert (await run(CURRENT)).ok()["currentPlan"] == {"key": private}
    audit = (
        await run(
            '{ tenant { auditLog(first: 10, action: "plan.assigned") {'
            " nodes { action actorId changes } } } }"
        )
    ).ok()["tenant"]["auditLog"]["nodes"]
    assert [n["changes"] for n in audit] == [
        {"before": {"plan": public}, "after": {"plan": private}},
        {"before": {"plan": None}, "after": {"plan": public}},
    ]
    assert audit[0]["actorId"] == billing.operator.user_id
    events = (await run('{ events(types: ["plan.assigned"], first: 10) { nodes { data } } }')).ok()[
        "events"
    ]["nodes"]
    assert [e["data"]["plan"] for e in events] == [public, private]


async def test_plans_from_the_config_file_are_loaded_at_start(billing: Billing) -> None:
    plans = (await billing.as_operator(PLANS, {})).ok()["plans"]
    assert {"key": "filed-starter", "selfServe": True} in plans


def test_a_bad_plans_file_is_refused_whole_naming_the_path(tmp_path: Path) -> None:
    """The server loads it at start and does not start with a bad one (uvicorn's startup
    failure); the file's check is what names the path."""
    bad = tmp_path / "plans.toml"
    bad.write_text('[[plans]]\nkey = "ok"\nname = "x"\n[[plans]]\nkey = "Bad Key"\nname = "y"\n')
    with pytest.raises(BadUserInput, match=r"plans\.1\.key"):
        read_plans_file(bad)
    good = tmp_path / "plans.json"
    good.write_text(json.dumps({"plans": [{"key": "a", "name": "A"}, {"key": "a", "name": "B"}]}))
    with pytest.raises(BadUserInput, match="defined twice"):
        read_plans_file(good)


async def test_only_the_operators_live_credentials_change_the_catalog(billing: Billing) -> None:
    """Plans are live and global: a test-environment key of the operator's tenant, holding
    billing:manage, does not define them; a live one does."""
    test_key = await billing.client.api_key(
        billing.operator, billing.operator_tenant, ["billing:manage"], environment="TEST"
    )
    r = await billing.client.execute(
        DEFINE,
        {"input": plan_input(unique("t").lower().replace("-", "_"))},
        actor=test_key,
        tenant_id=billing.operator_tenant,
    )
    assert r.codes == ["FORBIDDEN"], r.body
    live_key = await billing.client.api_key(
        billing.operator, billing.operator_tenant, ["billing:manage"]
    )
    ok = await billing.client.execute(
        DEFINE,
        {"input": plan_input(unique("l").lower().replace("-", "_"))},
        actor=live_key,
        tenant_id=billing.operator_tenant,
    )
    assert ok.ok()
