"""Quotas (issue 10): a plan's hard limits refuse the core action that would pass them
(QUOTA_EXCEEDED with meter, limit, current and period), also when 20 requests race for the
last 5 units; soft limits never refuse; usage.threshold_reached fires once per threshold and
period (also under concurrency), again in the next period; quota(meter) answers; and the
built-in meters the core feeds get their records (seats, storage.bytes, events.emitted,
webhooks.delivered). Both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from coregraph.services.events import BUILTIN_EVENT_TYPES
from tests.conftest import make_settings
from tests.receiver_support import ReceivedRequest, Receiver, Reply
from tests.support import Actor, GraphQLClient, Response, Server, running_server, unique

DEFINE = """mutation($input: DefinePlanInput!) { definePlan(input: $input) { plan { key } } }"""
ASSIGN = """mutation($tenantId: ID!, $plan: String!) {
    assignPlan(tenantId: $tenantId, plan: $plan) { plan { key } } }"""
INVITE = """mutation($input: InviteMemberInput!) { inviteMember(input: $input) { token } }"""
ACCEPT = "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }"
QUOTA = """query($meter: String!) { quota(meter: $meter) {
    meter limit period hard used remaining plan } }"""
CREATE_METER = """mutation($input: CreateMeterInput!) { createMeter(input: $input) {
    meter { key } } }"""
RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }"""
THRESHOLDS = """{ events(types: ["usage.threshold_reached"], first: 100) {
    nodes { type data environment } } }"""
USAGE = """query($meter: String!, $from: DateTime!, $to: DateTime!, $groupBy: [String!]) {
    usage(meter: $meter, from: $from, to: $to, granularity: MONTH, groupBy: $groupBy) {
        points { group value } } }"""
CREATE_URL = """mutation($input: CreateUploadUrlInput!) { createUploadUrl(input: $input) {
    file { id } } }"""
UPLOAD = """mutation($file: Upload!) { uploadFile(file: $file) { file { id size } } }"""
REGISTER = """mutation($input: RegisterEventTypeInput!) {
    registerEventType(input: $input) { eventType { id } } }"""
EMIT = """mutation($input: EmitEventInput!) { emitEvent(input: $input) { event { id } } }"""
EMIT_MANY = """mutation($inputs: [EmitEventInput!]!) { emitEvents(inputs: $inputs) {
    items { event { id } } } }"""
CREATE_ENDPOINT = """mutation($input: CreateWebhookEndpointInput!) {
    createWebhookEndpoint(input: $input) { webhookEndpoint { id } } }"""

WAIT = 20.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
async def operator_setup(client: GraphQLClient) -> tuple[Actor, str]:
    owner = await client.sign_up()
    return owner, await client.create_tenant(owner)


@pytest.fixture(scope="module")
def quota_server(
    database_url: str, operator_setup: tuple[Actor, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    _owner, operator_tenant = operator_setup
    settings = make_settings(
        database_url,
        billing_operator_tenant=operator_tenant,
        # Last month's records are still accepted on the first days of this one.
        usage_late_window_seconds=40 * 86400,
        storage_dir=str(tmp_path_factory.mktemp("quota-files")),
        # Webhooks to a receiver on 127.0.0.1, delivered by this server's own worker.
        webhook_allow_private=True,
        run_relay="true",
        run_webhook_worker="true",
        webhook_poll_seconds=0.05,
        webhook_retry_schedule=[0.2, 0.2],
        webhook_timeout_seconds=5.0,
    )
    with running_server(settings, migrate_first=False) as server:
        yield server


@dataclass
class Billing:
    client: GraphQLClient
    operator: Actor
    operator_tenant: str

    async def plan(self, *limits: dict[str, Any]) -> str:
        key = unique("q").lower().replace("-", "_")
        r = await self.client.execute(
            DEFINE,
            {"input": {"key": key, "name": f"Plan {key}", "limits": list(limits)}},
            actor=self.operator,
            tenant_id=self.operator_tenant,
        )
        r.ok()
        return key

    async def team(self, *limits: dict[str, Any]) -> Team:
        owner = await self.client.sign_up()
        tenant = await self.client.create_tenant(owner)
        team = Team(self.client, owner, tenant)
        if limits:
            await self.assign(team, await self.plan(*limits))
        return team

    async def assign(self, team: Team, plan: str) -> None:
        r = await self.client.execute(
            ASSIGN,
            {"tenantId": team.tenant_id, "plan": plan},
            actor=self.operator,
            tenant_id=self.operator_tenant,
        )
        r.ok()


@dataclass
class Team:
    client: GraphQLClient
    owner: Actor
    tenant_id: str

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> Response:
        return await self.client.execute(
            query, variables, actor=self.owner, tenant_id=self.tenant_id
        )

    async def run(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        return (await self.execute(query, variables)).ok()

    async def invite(self, email: str | None = None) -> Response:
        email = email or f"{unique('inv')}@example.com"
        return await self.execute(INVITE, {"input": {"email": email, "role": "member"}})

    async def quota(self, meter: str) -> dict[str, Any]:
        return dict((await self.run(QUOTA, {"meter": meter}))["quota"])

    async def thresholds(self) -> list[dict[str, Any]]:
        nodes = (await self.run(THRESHOLDS))["events"]["nodes"]
        schema = Draft202012Validator(BUILTIN_EVENT_TYPES["usage.threshold_reached"].schema)
        for node in nodes:
            schema.validate(node["data"])
        return [node["data"] for node in nodes]

    async def usage(self, meter: str, group_by: list[str] | None = None) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        start = _month_start(now)
        variables = {
            "meter": meter,
            "from": _iso(start),
            "to": _iso(now + timedelta(minutes=1)),
            "groupBy": group_by or [],
        }
        return list((await self.run(USAGE, variables))["usage"]["points"])

    async def meter(self) -> str:
        key = f"app.{unique('m').replace('-', '_').lower()}"
        await self.run(
            CREATE_METER,
            {"input": {"key": key, "name": "Tokens", "unit": "token", "aggregation": "SUM"}},
        )
        return key

    async def record(self, meter: str, quantity: str, at: datetime | None = None) -> Response:
        record: dict[str, Any] = {"meter": meter, "quantity": quantity}
        if at is not None:
            record["occurredAt"] = _iso(at)
        return await self.execute(RECORD, {"input": record})


@pytest.fixture
async def billing(
    quota_server: Server, operator_setup: tuple[Actor, str]
) -> AsyncIterator[Billing]:
    async with httpx.AsyncClient(timeout=60) as http:
        owner, tenant_id = operator_setup
        yield Billing(GraphQLClient(http, quota_server.url), owner, tenant_id)


def seats(value: int, hard: bool = True) -> dict[str, Any]:
    return {"meter": "seats", "value": str(value), "period": "MONTH", "hard": hard}


def _refusal(r: Response) -> dict[str, Any]:
    assert r.codes == ["QUOTA_EXCEEDED"], r.body
    return dict(r.errors[0]["extensions"])


# --- hard limits, also under races -------------------------------------------------------


async def test_20_concurrent_invitations_for_the_last_5_seats_grant_exactly_5(
    billing: Billing,
) -> None:
    # The owner holds one seat of six.
    team = await billing.team(seats(6))
    answers = await asyncio.gather(*(team.invite() for _ in range(20)))
    granted = [r for r in answers if not r.errors]
    refused = [r for r in answers if r.errors]
    assert len(granted) == 5 and len(refused) == 15
    for r in refused:
        ext = _refusal(r)
        assert (ext["meter"], ext["limit"], ext["current"], ext["period"]) == (
            "seats",
            6,
            6,
            "MONTH",
        )
    # Reserved seats count: the quota shows none left.
    assert await team.quota("seats") == {
        "meter": "seats",
        "limit": "6",
        "period": "MONTH",
        "hard": True,
        "used": "6",
        "remaining": "0",
        "plan": (await team.run("{ currentPlan { key } }"))["currentPlan"]["key"],
    }


async def test_20_concurrent_acceptances_for_the_last_5_seats_grant_exactly_5(
    billing: Billing,
) -> None:
    """Invitations sent before a smaller plan: accepting is refused once the members alone
    fill the seats."""
    team = await billing.team()
    invitees = [await billing.client.sign_up() for _ in range(20)]
    tokens = [(await team.invite(i.email)).ok()["inviteMember"]["token"] for i in invitees]
    await billing.assign(team, await billing.plan(seats(6)))

    answers = await asyncio.gather(
        *(
            billing.client.execute(ACCEPT, {"t": token}, actor=invitee)
            for invitee, token in zip(invitees, tokens, strict=True)
        )
    )
    assert sum(not r.errors for r in answers) == 5
    for r in (r for r in answers if r.errors):
        ext = _refusal(r)
        assert (ext["meter"], ext["limit"], ext["current"]) == ("seats", 6, 6)
    # The seats meter follows every membership change: its latest record is the six members.
    [point] = await team.usage("seats")
    assert point["value"] == "6"


async def test_20_concurrent_upload_urls_for_the_last_5_units_of_storage_grant_exactly_5(
    billing: Billing,
) -> None:
    """The plan's hard storage.bytes limit takes precedence over COREGRAPH_FILES_QUOTA_BYTES."""
    team = await billing.team({"meter": "storage.bytes", "value": "5000", "hard": True})

    async def reserve(size: int) -> Response:
        return await team.execute(
            CREATE_URL, {"input": {"filename": f"{unique('f')}.bin", "size": size}}
        )

    answers = await asyncio.gather(*(reserve(1000) for _ in range(20)))
    assert sum(not r.errors for r in answers) == 5
    for r in (r for r in answers if r.errors):
        ext = _refusal(r)
        assert (ext["meter"], ext["limit"], ext["current"]) == ("storage.bytes", 5000, 5000)
    quota = await team.quota("storage.bytes")
    assert (quota["used"], quota["remaining"], quota["hard"]) == ("5000", "0", True)
    [point] = await team.usage("storage.bytes")
    assert point["value"] == "5000"


# --- soft limits and thresholds ----------------------------------------------------------


async def test_a_soft_limit_never_refuses_and_announces_80_and_100_percent_once(
    billing: Billing,
) -> None:
    team = await billing.team(seats(4, hard=False))
    for _ in range(5):
        await billing.client.add_member(team.owner, team.tenant_id)
    assert (await team.quota("seats"))["used"] == "6"  # past the soft limit
    announced = await team.thresholds()
    assert sorted((t["percent"], t["value"], t["limit"], t["hard"]) for t in announced) == [
        (80, 4, 4, False),
        (100, 4, 4, False),
    ]
    assert {t["meter"] for t in announced} == {"seats"}
    assert {t["period"] for t in announced} == {"MONTH"}


async def test_thresholds_fire_once_per_period_also_under_concurrency_and_again_next_month(
    billing: Billing,
) -> None:
    """A tenant's meter with a hard monthly limit: recordUsage is never refused (the usage
    happened), its thresholds fire once per month, last month's late records in last month."""
    team = await billing.team()
    meter = await team.meter()
    await billing.assign(team, await billing.plan({"meter": meter, "value": "100", "hard": True}))
    now = datetime.now(UTC)
    this_month = _month_start(now)
    last_month = _month_start(this_month - timedelta(days=1))
    late = this_month - timedelta(hours=1)  # within the 40-day window

    (await team.record(meter, "79", late)).ok()
    assert await team.thresholds() == []
    (await team.record(meter, "1", late)).ok()
    (await team.record(meter, "30", late)).ok()  # 110: 100 %, past the hard limit, accepted
    (await team.record(meter, "5", late)).ok()  # nothing new to announce
    # This month, 20 concurrent records of 5 from 0: 80 % and 100 % once each.
    answers = await asyncio.gather(*(team.record(meter, "5") for _ in range(20)))
    assert all(not r.errors for r in answers)

    announced = await team.thresholds()
    assert sorted((t["periodStart"], t["percent"]) for t in announced) == [
        (last_month.isoformat(), 80),
        (last_month.isoformat(), 100),
        (this_month.isoformat(), 80),
        (this_month.isoformat(), 100),
    ]
    by = {(t["periodStart"], t["percent"]): t for t in announced}
    assert by[(last_month.isoformat(), 80)]["value"] == 80
    assert by[(last_month.isoformat(), 100)]["value"] == 110
    assert all(t["meter"] == meter and t["limit"] == 100 and t["hard"] for t in announced)
    quota = await team.quota(meter)
    assert (quota["used"], quota["remaining"], quota["limit"]) == ("100", "0", "100")


# --- quota() -------------------------------------------------------------------------------


async def test_quota_answers_with_and_without_a_limit_and_needs_a_reader(
    billing: Billing,
) -> None:
    team = await billing.team({"meter": "events.emitted", "value": "1000", "period": "DAY"})
    plan = (await team.run("{ currentPlan { key } }"))["currentPlan"]["key"]
    assert await team.quota("events.emitted") == {
        "meter": "events.emitted",
        "limit": "1000",
        "period": "DAY",
        "hard": True,
        "used": "0",
        "remaining": "1000",
        "plan": plan,
    }
    assert await team.quota("webhooks.delivered") == {
        "meter": "webhooks.delivered",
        "limit": None,
        "period": None,
        "hard": None,
        "used": "0",
        "remaining": None,
        "plan": plan,
    }
    missing = await team.execute(QUOTA, {"meter": "no.such_meter"})
    assert missing.codes == ["NOT_FOUND"]
    # A key with usage:read may ask; one with neither usage:read nor billing:read may not.
    reader = await billing.client.api_key(team.owner, team.tenant_id, ["usage:read"])
    r = await billing.client.execute(QUOTA, {"meter": "seats"}, actor=reader)
    assert r.ok()["quota"]["used"] == "1"
    outsider = await billing.client.api_key(team.owner, team.tenant_id, ["events:read"])
    r = await billing.client.execute(QUOTA, {"meter": "seats"}, actor=outsider)
    assert r.codes == ["FORBIDDEN"]


# --- built-in meters the core feeds ----------------------------------------------------------


async def test_uploads_and_emitted_events_are_metered(billing: Billing) -> None:
    team = await billing.team()
    content = b"quota bytes " * 100
    data = {
        "operations": json.dumps({"query": UPLOAD, "variables": {"file": None}}),
        "map": json.dumps({"0": ["variables.file"]}),
    }
    headers = {
        "Accept": "application/graphql-response+json",
        "Apollo-Require-Preflight": "true",
        **team.owner.headers(team.tenant_id),
    }
    response = await billing.client.http.post(
        billing.client.url,
        data=data,
        files={"0": ("a.txt", content, "text/plain")},
        headers=headers,
    )
    assert response.json()["data"]["uploadFile"]["file"]["size"] == len(content)
    [point] = await team.usage("storage.bytes")
    assert point["value"] == str(len(content))

    await team.run(REGISTER, {"input": {"type": "shop.sold", "schema": {"type": "object"}}})
    await team.run(EMIT, {"input": {"type": "shop.sold", "data": {}}})
    inputs = [{"type": "shop.sold", "data": {"n": n}} for n in range(3)]
    await team.run(EMIT_MANY, {"inputs": inputs})
    # A replayed key emits nothing and counts nothing.
    keyed = {"type": "shop.sold", "data": {}, "idempotencyKey": unique("k")}
    await team.run(EMIT, {"input": keyed})
    await team.run(EMIT, {"input": keyed})
    [point] = await team.usage("events.emitted")
    assert point["value"] == "5"


async def test_emitted_events_announce_their_thresholds(billing: Billing) -> None:
    team = await billing.team({"meter": "events.emitted", "value": "10", "hard": False})
    await team.run(REGISTER, {"input": {"type": "shop.sold", "schema": {"type": "object"}}})
    inputs = [{"type": "shop.sold", "data": {"n": n}} for n in range(8)]
    await team.run(EMIT_MANY, {"inputs": inputs})
    assert [(t["percent"], t["value"]) for t in await team.thresholds()] == [(80, 8)]
    await team.run(EMIT_MANY, {"inputs": inputs[:3]})
    await team.run(EMIT, {"input": inputs[0]})
    announced = sorted((t["percent"], t["value"]) for t in await team.thresholds())
    assert announced == [(80, 8), (100, 11)]


async def test_a_delivered_webhook_is_metered_per_endpoint_and_announces_thresholds(
    billing: Billing,
) -> None:
    team = await billing.team({"meter": "webhooks.delivered", "value": "2", "hard": False})
    got: list[ReceivedRequest] = []

    async def answer(request: ReceivedRequest) -> Reply:
        got.append(request)
        return Reply(200, b"ok")

    async def delivered() -> list[dict[str, Any]]:
        return await team.usage("webhooks.delivered", ["endpoint"])

    async with Receiver(answer) as receiver:
        await team.run(REGISTER, {"input": {"type": "shop.shipped", "schema": {"type": "object"}}})
        made = await team.run(
            CREATE_ENDPOINT,
            {"input": {"url": receiver.url("/hooks"), "eventTypes": ["shop.shipped"]}},
        )
        endpoint = made["createWebhookEndpoint"]["webhookEndpoint"]["id"]
        await team.run(EMIT, {"input": {"type": "shop.shipped", "data": {}}})
        await team.run(EMIT, {"input": {"type": "shop.shipped", "data": {}}})
        # The receiver stays up until both deliveries are recorded as succeeded (a slow first
        # attempt may be retried: it counts once, when it succeeds).
        deadline = asyncio.get_running_loop().time() + WAIT
        points = await delivered()
        while not points or points[0]["value"] != "2":
            assert asyncio.get_running_loop().time() < deadline, points
            await asyncio.sleep(0.05)
            points = await delivered()
    assert points == [{"group": {"endpoint": endpoint}, "value": "2"}]
    assert len({request.headers["webhook-id"] for request in got}) == 2
    # The worker announces them once the deliveries are recorded.
    deadline = asyncio.get_running_loop().time() + WAIT
    announced = await team.thresholds()
    while len(announced) < 2:
        assert asyncio.get_running_loop().time() < deadline, announced
        await asyncio.sleep(0.05)
        announced = await team.thresholds()
    assert sorted((t["meter"], t["percent"], t["value"]) for t in announced) == [
        ("webhooks.delivered", 80, 2),
        ("webhooks.delivered", 100, 2),
    ]
