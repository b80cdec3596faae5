"""Invoice previews and the billing export: a month's usage priced by the tenant's plan (flat
fee, per unit with fractions of a minor unit, graduated tiers) against worked examples written
out here, quantities equal to usageSummary's, test-environment usage never billed, and the
CLI's export and plan loading, on both backends."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.sql import Executable

from coregraph import db
from coregraph.models import Tenant, TenantPlanPeriod
from coregraph.services.invoices import round_minor
from tests.conftest import make_settings
from tests.support import GraphQLClient, Server, running_server, unique
from tests.test_cli_and_deploy import cli_env_for
from tests.test_usage import CREATE_METER, RECORD_BATCH, SUMMARY, Team, new_team

PREVIEW = """query($period: String) { invoicePreview(period: $period) {
    period from to environment plan currency total
    lines { kind description meter quantity unitAmount amount
            tiers { from upTo quantity unitAmount flatAmount amount } } } }"""
ASSIGN = """mutation($tenantId: ID!, $plan: String!) {
    assignPlan(tenantId: $tenantId, plan: $plan) { plan { key } } }"""
DEFINE = """mutation($input: DefinePlanInput!) { definePlan(input: $input) {
    plan { key version } } }"""

# The worked example's tiers: units 1-1,000 at 1.00, 1,001-5,000 at 0.80 plus a flat 500 once
# reached, 5,001 and up at 0.50 (minor units).
TIERS = [
    {"upTo": "1000", "unitAmount": "1.00"},
    {"upTo": "5000", "unitAmount": "0.80", "flatAmount": "500"},
    {"unitAmount": "0.50"},
]
# Graduated meters and the quantity each one records: at the boundaries and inside.
GRADUATED = {
    "app.g_at_1000": "1000",
    "app.g_at_1001": "1001",
    "app.g_at_5000": "5000",
    "app.g_at_5001": "5001",
    "app.g_inside": "2500.5",
    "app.g_none": None,
}
PRICED = {
    "key": "inv-priced",
    "name": "Priced",
    "currency": "EUR",
    "selfServe": True,
    "prices": [
        {"kind": "FLAT", "amount": "4900", "description": "Platform fee"},
        {"kind": "PER_UNIT", "meter": "app.calls", "unitAmount": "0.05"},
        {"kind": "PER_UNIT", "meter": "app.tokens", "unitAmount": "0.0125"},
        {"kind": "PER_UNIT", "meter": "app.peak", "unitAmount": "100"},
        {"kind": "PER_UNIT", "meter": "app.users", "unitAmount": "250"},
        *({"kind": "GRADUATED", "meter": meter, "tiers": TIERS} for meter in GRADUATED),
    ],
}
BASIC = {
    "key": "inv-basic",
    "name": "Basic",
    "currency": "USD",
    "selfServe": True,
    "prices": [
        {"kind": "FLAT", "amount": "1000"},
        {"kind": "PER_UNIT", "meter": "app.calls", "unitAmount": "2"},
    ],
}


@pytest.fixture(scope="module")
async def operator(client: GraphQLClient) -> Team:
    """The billing operator's tenant (made on the session's server, which migrates first)."""
    return await new_team(client)


@pytest.fixture(scope="module")
def invoice_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, operator: Team
) -> Iterator[Server]:
    plans_file = tmp_path_factory.mktemp("plans") / "plans.json"
    plans_file.write_text(json.dumps({"plans": [PRICED, BASIC]}))
    settings = make_settings(
        database_url, plans_file=str(plans_file), billing_operator_tenant=operator.tenant_id
    )
    with running_server(settings, migrate_first=False) as server:
        yield server


@pytest.fixture
def billing_client(invoice_server: Server, http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http, invoice_server.url)


async def _create_meters(team: Team, meters: dict[str, str]) -> None:
    for key, aggregation in meters.items():
        definition = {"key": key, "name": key, "unit": "unit", "aggregation": aggregation}
        if aggregation == "UNIQUE_COUNT":
            definition |= {"dimensions": ["user"], "uniqueDimension": "user"}
        await team.run(CREATE_METER, {"input": definition})


async def _on_plan(client: GraphQLClient, plan: str, meters: dict[str, str]) -> Team:
    team = await new_team(client)
    await team.run(ASSIGN, {"tenantId": team.tenant_id, "plan": plan})
    await _create_meters(team, meters)
    return team


def _this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


async def _preview(team: Team, period: str | None = None) -> dict[str, Any]:
    preview: dict[str, Any] = (await team.run(PREVIEW, {"period": period}))["invoicePreview"]
    return preview


def _amounts(preview: dict[str, Any]) -> dict[str | None, tuple[str, str]]:
    return {line["meter"]: (line["quantity"], line["amount"]) for line in preview["lines"]}


async def test_graduated_per_unit_and_flat_prices_match_the_worked_examples(
    billing_client: GraphQLClient,
) -> None:
    meters = {
        "app.calls": "SUM",
        "app.tokens": "SUM",
        "app.peak": "MAX",
        "app.users": "UNIQUE_COUNT",
        **dict.fromkeys(GRADUATED, "SUM"),
    }
    team = await _on_plan(billing_client, "inv-priced", meters)
    records = [
        {"meter": "app.calls", "quantity": "12"},
        {"meter": "app.calls", "quantity": "18"},
        {"meter": "app.tokens", "quantity": "1234.5"},
        *({"meter": "app.peak", "quantity": q} for q in ("3", "7", "5")),
        *({"meter": "app.users", "dimensions": {"user": u}} for u in ("u1", "u2", "u1")),
        *({"meter": m, "quantity": q} for m, q in GRADUATED.items() if q is not None),
    ]
    await team.run(RECORD_BATCH, {"records": records})

    preview = await _preview(team)
    summary = await team.summary()

    assert (preview["plan"], preview["currency"], preview["environment"]) == (
        "inv-priced",
        "EUR",
        "live",
    )
    assert preview["period"] == _this_month()
    assert _amounts(preview) == {
        None: ("1", "4900"),  # the flat fee
        "app.calls": ("30", "2"),  # 30 x 0.05 = 1.50, half-up to 2
        "app.tokens": ("1234.5", "15"),  # 1234.5 x 0.0125 = 15.43125
        "app.peak": ("7", "700"),  # MAX of 3, 7, 5
        "app.users": ("2", "500"),  # u1 and u2
        # 1000 x 1.00
        "app.g_at_1000": ("1000", "1000"),
        # 1000 x 1.00 + (1 x 0.80 + 500) = 1500.80
        "app.g_at_1001": ("1001", "1501"),
        # 1000 x 1.00 + (4000 x 0.80 + 500)
        "app.g_at_5000": ("5000", "4700"),
        # 4700 + 1 x 0.50 = 4700.50, half-up (banker's rounding would say 4700)
        "app.g_at_5001": ("5001", "4701"),
        # 1000 x 1.00 + (1500.5 x 0.80 + 500) = 2700.40
        "app.g_inside": ("2500.5", "2700"),
        # No usage reaches no tier: not even the second tier's flat amount.
        "app.g_none": ("0", "0"),
    }
    assert preview["total"] == "20719"  # the sum of the rounded lines
    # Every line's quantity is usageSummary's value for its meter.
    for line in preview["lines"]:
        if line["meter"] is not None:
            assert line["quantity"] == (summary[line["meter"]] or "0"), line["meter"]
    by_meter = {line["meter"]: line for line in preview["lines"]}
    assert by_meter[None]["description"] == "Platform fee"
    assert by_meter["app.calls"]["unitAmount"] == "0.05"
    assert by_meter["app.g_at_1001"]["unitAmount"] is None
    assert by_meter["app.g_at_1001"]["tiers"] == [
        {
            "from": "0",
            "upTo": "1000",
            "quantity": "1000",
            "unitAmount": "1.00",
            "flatAmount": "0",
            "amount": "1000",
        },
        {
            "from": "1000",
            "upTo": "5000",
            "quantity": "1",
            "unitAmount": "0.80",
            "flatAmount": "500",
            "amount": "500.8",
        },
        {
            "from": "5000",
            "upTo": None,
            "quantity": "0",
            "unitAmount": "0.50",
            "flatAmount": "0",
            "amount": "0",
        },
    ]
    assert [t["amount"] for t in by_meter["app.g_at_5001"]["tiers"]] == ["1000", "3700", "0.5"]
    # A month without usage bills the flat fee alone (the plan in force at its end: today's).
    empty = await _preview(team, "2099-01")
    assert (empty["total"], empty["from"]) == ("4900", "2099-01-01T00:00:00+00:00")
    # A month that ended before the tenant existed bills nothing.
    before = await _preview(team, "2020-01")
    assert (before["plan"], before["currency"], before["lines"], before["total"]) == (
        None,
        None,
        [],
        "0",
    )


@pytest.mark.parametrize(
    ("amount", "rounded"),
    [("1.5", "2"), ("2.5", "3"), ("0.5", "1"), ("1.4999", "1"), ("4700.50", "4701"), ("7", "7")],
)
def test_line_amounts_round_half_up_to_whole_minor_units(amount: str, rounded: str) -> None:
    assert str(round_minor(Decimal(amount))) == rounded


async def test_test_environment_usage_is_not_billed(billing_client: GraphQLClient) -> None:
    team = await _on_plan(billing_client, "inv-basic", {"app.calls": "SUM"})
    tester = await billing_client.api_key(
        team.owner, team.tenant_id, ["usage:write", "usage:read", "billing:read"], "TEST"
    )
    await team.run(RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "10"}]})
    in_test = await team.execute(
        RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "500"}]}, tester
    )
    in_test.ok()

    live = await _preview(team)
    test_preview = (await team.execute(PREVIEW, {"period": None}, tester)).ok()["invoicePreview"]

    assert (live["currency"], live["environment"]) == ("USD", "live")
    assert _amounts(live) == {None: ("1", "1000"), "app.calls": ("10", "20")}
    assert live["total"] == "1020"
    assert (await team.summary())["app.calls"] == "10"
    # A test key previews its own environment's usage, never live data.
    assert test_preview["environment"] == "test"
    assert _amounts(test_preview)["app.calls"] == ("500", "1000")


async def test_without_a_plan_the_preview_is_empty_and_billing_read_is_needed(
    billing_client: GraphQLClient,
) -> None:
    team = await new_team(billing_client)
    await _create_meters(team, {"app.calls": "SUM"})
    await team.run(RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "3"}]})
    viewer = await billing_client.add_member(team.owner, team.tenant_id, role="viewer")

    preview = await _preview(team)
    denied = await team.execute(PREVIEW, {"period": None}, viewer)
    bad_period = await team.execute(PREVIEW, {"period": "2026-13"})

    assert (preview["plan"], preview["currency"], preview["lines"], preview["total"]) == (
        None,
        None,
        [],
        "0",
    )
    assert denied.codes == ["FORBIDDEN"]
    assert bad_period.codes == ["BAD_USER_INPUT"]


# --- the CLI: billing-export and load-plans ----------------------------------------------


async def _coregraph(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "coregraph.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_billing_export_lists_each_billable_tenants_live_invoice(
    billing_client: GraphQLClient, database_url: str, tmp_path: Path
) -> None:
    planned = await _on_plan(billing_client, "inv-basic", {"app.calls": "SUM"})
    unplanned = await new_team(billing_client)
    await _create_meters(unplanned, {"app.calls": "SUM"})
    bare = await new_team(billing_client)
    await planned.run(RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "7.25"}]})
    await unplanned.run(RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "1"}]})
    tester = await billing_client.api_key(planned.owner, planned.tenant_id, ["usage:write"], "TEST")
    (
        await planned.execute(
            RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "500"}]}, tester
        )
    ).ok()
    slugs = {
        t.tenant_id: (await t.run("{ tenant { slug } }"))["tenant"]["slug"]
        for t in (planned, unplanned)
    }
    output = tmp_path / "export.json"

    done = await _coregraph(
        "billing-export",
        "--period",
        _this_month(),
        "--output",
        str(output),
        env=cli_env_for(database_url),
    )
    bad = await _coregraph("billing-export", "--period", "2026-1", env=cli_env_for(database_url))
    # With a default plan every tenant is on a plan, so every tenant is listed.
    defaulted = await _coregraph(
        "billing-export",
        "--period",
        _this_month(),
        env={**cli_env_for(database_url), "COREGRAPH_DEFAULT_PLAN": "inv-basic"},
    )

    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(output.read_text())
    assert (document["period"], document["environment"]) == (_this_month(), "live")
    tenants = {t["tenantId"]: t for t in document["tenants"]}
    assert tenants[planned.tenant_id] == {
        "tenantId": planned.tenant_id,
        "slug": slugs[planned.tenant_id],
        "plan": "inv-basic",
        "currency": "USD",
        "lines": [
            {
                "kind": "FLAT",
                "description": "Flat fee",
                "meter": None,
                "quantity": "1",
                "unitAmount": "1000",
                "tiers": [],
                "amount": "1000",
            },
            {
                "kind": "PER_UNIT",
                "description": "app.calls",
                "meter": "app.calls",
                "quantity": "7.25",  # the test environment's 500 are not billed
                "unitAmount": "2",
                "tiers": [],
                "amount": "15",  # 14.50 half-up
            },
        ],
        "total": "1015",
    }
    # Live usage without a plan is listed, with nothing to charge.
    assert tenants[unplanned.tenant_id] == {
        "tenantId": unplanned.tenant_id,
        "slug": slugs[unplanned.tenant_id],
        "plan": None,
        "currency": None,
        "lines": [],
        "total": "0",
    }
    # The export's lines are the preview's.
    preview = await _preview(planned)
    assert [(x["meter"], x["quantity"], x["amount"]) for x in preview["lines"]] == [
        (x["meter"], x["quantity"], x["amount"]) for x in tenants[planned.tenant_id]["lines"]
    ]
    assert bad.returncode == 1 and "BAD_USER_INPUT" in bad.stderr
    assert defaulted.returncode == 0, defaulted.stderr[-2000:]
    everyone = {t["tenantId"]: t for t in json.loads(defaulted.stdout)["tenants"]}
    assert everyone[unplanned.tenant_id]["plan"] == "inv-basic"
    assert _amounts(everyone[unplanned.tenant_id]) == {None: ("1", "1000"), "app.calls": ("1", "2")}
    assert everyone[unplanned.tenant_id]["total"] == "1002"
    # A tenant that never recorded anything and has no plan of its own is listed too.
    assert everyone[bare.tenant_id]["plan"] == "inv-basic"


async def test_load_plans_defines_the_plans_of_a_file_all_or_none(
    billing_client: GraphQLClient, database_url: str, tmp_path: Path
) -> None:
    key = unique("filed").lower()
    good = tmp_path / "plans.toml"
    good.write_text(
        f'[[plans]]\nkey = "{key}"\nname = "Filed"\nselfServe = true\ncurrency = "GBP"\n'
        '[[plans.prices]]\nkind = "FLAT"\namount = "250"\n'
    )
    bad_key = unique("never").lower()
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"plans": [{"key": bad_key, "name": "x"}, {"key": "Bad Key", "name": "y"}]})
    )

    loaded = await _coregraph("load-plans", str(good), env=cli_env_for(database_url))
    refused = await _coregraph("load-plans", str(bad), env=cli_env_for(database_url))
    missing = await _coregraph(
        "load-plans", str(tmp_path / "none.json"), env=cli_env_for(database_url)
    )

    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert key in loaded.stdout
    assert refused.returncode == 1 and "plans.1.key" in refused.stderr
    assert missing.returncode == 1
    team = await _on_plan(billing_client, key, {})
    plans = {p["key"] for p in (await team.run("{ plans { key } }"))["plans"]}
    assert key in plans and bad_key not in plans
    preview = await _preview(team)
    assert (preview["currency"], preview["total"]) == ("GBP", "250")


async def test_usage_summary_and_invoice_agree_on_an_empty_month(
    billing_client: GraphQLClient,
) -> None:
    team = await _on_plan(billing_client, "inv-basic", {"app.calls": "SUM"})
    summary = (await team.run(SUMMARY, {"period": "2099-02"}))["usageSummary"]
    preview = await _preview(team, "2099-02")
    calls = {m["meter"]["key"]: m["value"] for m in summary["meters"]}["app.calls"]
    assert _amounts(preview) == {None: ("1", "1000"), "app.calls": (calls, "0")}
    assert (preview["from"], preview["to"]) == (summary["from"], summary["to"])


async def test_the_operators_billing_managers_get_the_export_over_http(
    billing_client: GraphQLClient, invoice_server: Server, operator: Team, http: httpx.AsyncClient
) -> None:
    customer = await _on_plan(billing_client, "inv-basic", {"app.calls": "SUM"})
    await customer.run(RECORD_BATCH, {"records": [{"meter": "app.calls", "quantity": "4"}]})
    member = await billing_client.add_member(operator.owner, operator.tenant_id, role="member")
    manager = await billing_client.api_key(operator.owner, operator.tenant_id, ["billing:manage"])
    url = f"{invoice_server.base_url}/billing/export"

    async def get(token: str | None, tenant_id: str, period: str | None) -> httpx.Response:
        headers = {"X-Tenant-Id": tenant_id}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        params = {"period": period} if period is not None else {}
        return await http.get(url, headers=headers, params=params)

    by_owner = await get(operator.owner.token, operator.tenant_id, _this_month())
    by_key = await get(manager.token, operator.tenant_id, None)
    by_member = await get(member.token, operator.tenant_id, _this_month())
    by_customer = await get(customer.owner.token, customer.tenant_id, _this_month())
    anonymous = await get(None, operator.tenant_id, _this_month())
    bad_period = await get(operator.owner.token, operator.tenant_id, "2026-13")

    assert by_owner.status_code == 200, by_owner.text
    document = by_owner.json()
    assert (document["period"], document["environment"]) == (_this_month(), "live")
    entry = {t["tenantId"]: t for t in document["tenants"]}[customer.tenant_id]
    assert (entry["plan"], entry["currency"], entry["total"]) == ("inv-basic", "USD", "1008")
    assert _amounts(entry) == {None: ("1", "1000"), "app.calls": ("4", "8")}
    assert by_key.status_code == 200  # default: this month
    assert customer.tenant_id in {t["tenantId"] for t in by_key.json()["tenants"]}
    assert by_member.status_code == 403  # billing:manage in the operator's tenant is needed
    assert by_customer.status_code == 403  # another tenant's billing managers: not theirs
    assert by_customer.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert anonymous.status_code == 401
    assert bad_period.status_code == 400
    assert bad_period.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# --- which plan prices a month: the one in force at its end ------------------------------


def _month_start(months_back: int) -> datetime:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def _as_owner(database_url: str, *statements: Executable) -> list[Any]:
    """Runs ``statements`` as the database owner (past timestamps no API writes); returns the
    rows of the last one when it is a query."""
    engine = db.create_engine(make_settings(database_url), as_owner=True)
    try:
        async with engine.begin() as conn:
            rows: list[Any] = []
            for statement in statements:
                result = await conn.execute(statement)
                rows = list(result.all()) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


def _periods(tenant_id: str) -> Executable:
    return (
        select(TenantPlanPeriod.__table__)
        .where(TenantPlanPeriod.tenant_id == tenant_id)
        .order_by(TenantPlanPeriod.id)
    )


def _created_at(tenant_id: str, at: datetime) -> Executable:
    return update(Tenant).where(Tenant.id == tenant_id).values(created_at=at)


def _priced(preview: dict[str, Any]) -> tuple[Any, ...]:
    return (preview["plan"], preview["currency"], preview["total"])


async def test_a_plan_changed_at_the_start_of_this_month_leaves_last_month_on_the_old_plan(
    billing_client: GraphQLClient, database_url: str
) -> None:
    this_month, last_month = _month_start(0), _month_start(1)
    team = await _on_plan(billing_client, "inv-priced", {})
    await team.run(ASSIGN, {"tenantId": team.tenant_id, "plan": "inv-basic"})
    written = await _as_owner(database_url, _periods(team.tenant_id))
    # The tenant existed from the 4th of last month, on inv-priced until this month began.
    mine = TenantPlanPeriod.tenant_id == team.tenant_id
    await _as_owner(
        database_url,
        _created_at(team.tenant_id, last_month + timedelta(days=3)),
        update(TenantPlanPeriod)
        .where(mine, TenantPlanPeriod.valid_to.is_not(None))
        .values(valid_from=last_month + timedelta(days=3), valid_to=this_month),
        update(TenantPlanPeriod)
        .where(mine, TenantPlanPeriod.valid_to.is_(None))
        .values(valid_from=this_month),
    )

    previous = await _preview(team, last_month.strftime("%Y-%m"))
    current = await _preview(team)
    before = await _preview(team, _month_start(2).strftime("%Y-%m"))

    # assign_plan closed the first period when it opened the second, each with its plan.
    assert [(p.plan["key"], p.plan_version) for p in written] == [
        ("inv-priced", 1),
        ("inv-basic", 1),
    ]
    assert written[0].valid_to == written[1].valid_from
    assert written[1].valid_to is None
    assert _priced(previous) == ("inv-priced", "EUR", "4900")  # no proration, no new plan
    assert _priced(current) == ("inv-basic", "USD", "1000")
    assert (before["plan"], before["lines"], before["total"]) == (None, [], "0")


async def test_a_switch_or_redefinition_after_month_end_does_not_reprice_that_month(
    billing_client: GraphQLClient,
    invoice_server: Server,
    operator: Team,
    http: httpx.AsyncClient,
    database_url: str,
) -> None:
    last_month = _month_start(1)
    period = last_month.strftime("%Y-%m")
    as_operator = dataclasses.replace(operator, client=billing_client)
    key = unique("inv-old").lower()
    definition = {
        "key": key,
        "name": "Old",
        "currency": "GBP",
        "selfServe": True,
        "prices": [{"kind": "FLAT", "amount": "7000"}],
    }
    await as_operator.run(DEFINE, {"input": definition})
    team = await _on_plan(billing_client, key, {})
    # On the plan since the first of last month.
    await _as_owner(
        database_url,
        _created_at(team.tenant_id, last_month),
        update(TenantPlanPeriod)
        .where(TenantPlanPeriod.tenant_id == team.tenant_id)
        .values(valid_from=last_month),
    )
    open_month = await _preview(team, period)

    # After the month ended: the tenant moves itself to a cheaper self-serve plan, then the
    # operator makes the old plan almost free.
    await team.run(ASSIGN, {"tenantId": team.tenant_id, "plan": "inv-basic"})
    redefined = await as_operator.run(
        DEFINE, {"input": {**definition, "prices": [{"kind": "FLAT", "amount": "1"}]}}
    )
    closed_month = await _preview(team, period)
    exported = await http.get(
        f"{invoice_server.base_url}/billing/export",
        headers={
            "Authorization": f"Bearer {operator.owner.token}",
            "X-Tenant-Id": operator.tenant_id,
        },
        params={"period": period},
    )

    assert _priced(open_month) == (key, "GBP", "7000")
    assert redefined["definePlan"]["plan"]["version"] == 2
    assert _priced(closed_month) == (key, "GBP", "7000")
    assert _priced(await _preview(team)) == ("inv-basic", "USD", "1000")
    assert exported.status_code == 200, exported.text
    entry = {t["tenantId"]: t for t in exported.json()["tenants"]}[team.tenant_id]
    assert {k: entry[k] for k in ("plan", "currency", "lines", "total")} == {
        "plan": key,
        "currency": "GBP",
        "lines": closed_month["lines"],
        "total": "7000",
    }
