"""Webhooks through the API: a tenant's admin sets up endpoints, gets each signing secret once,
rotates it, retries and replays deliveries and sends test messages, and watches attempts live;
nobody without webhooks:manage changes anything, nobody steers events to a URL without
events:read, nobody of another tenant or environment sees anything, events and audit entries
show no more of a URL than its origin, and no endpoint can point inside coregraph's network.

The module's server runs on a database of its own, with no relay and no delivery worker, so
the rows the API writes (pending deliveries, due now) stay as it wrote them; where a test
needs what a worker would have done (an attempt made, a delivery settled), it writes it as
the worker does and publishes the attempt on the broker as the worker does.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db, ids
from coregraph.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from coregraph.models.base import utcnow
from coregraph.services import webhooks
from coregraph.services.events import BUILTIN_EVENT_TYPES
from coregraph.streams.broker import webhook_attempts_topic
from tests.conftest import TEST_WEBHOOK_KEY
from tests.streams_support import (
    REDIS_URL,
    broker_for_this_process,
    migrated_database,
    relay_settings,
    subscribed,
)
from tests.support import Actor, GraphQLClient, Response, Server, running_server, unique
from tests.test_production_surface import production_settings
from tests.test_subscriptions import listening

ATTEMPTS_TABLE: Table = WebhookAttempt.__table__  # type: ignore[assignment]
DELIVERIES_TABLE: Table = WebhookDelivery.__table__  # type: ignore[assignment]
ENDPOINTS_TABLE: Table = WebhookEndpoint.__table__  # type: ignore[assignment]
# A public address, written as a literal so that creating an endpoint needs no DNS; nothing
# is ever sent to it (this module runs no delivery worker).
PUBLIC_URL = "https://93.184.215.14/hooks/coregraph"
ENDPOINT_FIELDS = """id url description eventTypes environment enabled disabledReason
    consecutiveFailures failingSince previousSecretExpiresAt createdAt updatedAt"""
CREATE = f"""mutation($input: CreateWebhookEndpointInput!) {{
    createWebhookEndpoint(input: $input) {{ secret webhookEndpoint {{ {ENDPOINT_FIELDS} }} }} }}"""
UPDATE = f"""mutation($input: UpdateWebhookEndpointInput!) {{
    updateWebhookEndpoint(input: $input) {{ webhookEndpoint {{ {ENDPOINT_FIELDS} }} }} }}"""
DISABLE = """mutation($id: ID!) { disableWebhookEndpoint(id: $id) {
    webhookEndpoint { id enabled disabledReason } } }"""
ENABLE = """mutation($id: ID!) { enableWebhookEndpoint(id: $id) {
    webhookEndpoint { id enabled disabledReason consecutiveFailures failingSince } } }"""
DELETE = """mutation($id: ID!) { deleteWebhookEndpoint(id: $id) { deletedWebhookEndpointId } }"""
ROTATE = """mutation($id: ID!, $overlap: Int) {
    rotateWebhookSecret(id: $id, overlapSeconds: $overlap) {
        secret webhookEndpoint { id previousSecretExpiresAt } } }"""
DELIVERY_FIELDS = """id endpointId eventId eventType environment status attemptCount
    nextAttemptAt lastAttemptAt succeededAt createdAt payload
    attempts { id attempt startedAt durationMs statusCode responseBody error succeeded }"""
RETRY = f"""mutation($id: ID!) {{ retryWebhookDelivery(id: $id) {{
    webhookDelivery {{ {DELIVERY_FIELDS} }} }} }}"""
REPLAY = """mutation($id: ID!, $from: DateTime!, $to: DateTime!) {
    replayWebhookEvents(endpointId: $id, from: $from, to: $to) { scheduled continueFrom } }"""
SEND_TEST = f"""mutation($id: ID!) {{ sendTestWebhook(endpointId: $id) {{
    webhookDelivery {{ {DELIVERY_FIELDS} }} }} }}"""
DELIVERIES = f"""query($id: ID!, $status: WebhookDeliveryStatus, $first: Int, $after: String) {{
    webhookDeliveries(endpointId: $id, status: $status, first: $first, after: $after) {{
        pageInfo {{ hasNextPage endCursor }} nodes {{ {DELIVERY_FIELDS} }} }} }}"""
ENDPOINTS = f"""query($environment: Environment) {{ webhookEndpoints(environment: $environment,
    first: 200) {{ totalCount nodes {{ {ENDPOINT_FIELDS} }} }} }}"""
ONE_ENDPOINT = f"""query($id: ID!) {{ webhookEndpoint(id: $id) {{ {ENDPOINT_FIELDS} }} }}"""
ATTEMPTS = """subscription($id: ID!) { webhookDeliveries(endpointId: $id) {
    deliveryId eventId eventType environment deliveryStatus
    attempt { id deliveryId endpointId attempt startedAt durationMs statusCode responseBody
              error succeeded } } }"""


@pytest.fixture(scope="module")
async def hooks_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("hooks"))) as url:
        yield url


@pytest.fixture(scope="module")
def api(hooks_db: str) -> Iterator[Server]:
    """Private targets refused, as production has it; no relay, no delivery worker."""
    settings = relay_settings(
        hooks_db, webhook_allow_private=False, run_relay="false", run_webhook_worker="false"
    )
    with running_server(settings, migrate_first=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def gql(api: Server, http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http, api.url)


@pytest.fixture(scope="module")
async def engine(hooks_db: str) -> AsyncIterator[AsyncEngine]:
    """The API's own role: what a test reads or writes in the database passes its wall."""
    engine = db.create_engine(relay_settings(hooks_db))
    yield engine
    await engine.dispose()


class Team:
    """A tenant with its owner, acting through the API."""

    def __init__(self, gql: GraphQLClient, owner: Actor, tenant_id: str) -> None:
        self.gql, self.owner, self.tenant_id = gql, owner, tenant_id

    async def run(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        actor: Actor | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return await self.gql.execute(
            query, variables, actor=actor or self.owner, tenant_id=self.tenant_id, headers=headers
        )

    async def create(
        self,
        url: str = PUBLIC_URL,
        types: list[str] | None = None,
        actor: Actor | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> tuple[dict[str, Any], str]:
        r = await self.run(
            CREATE, {"input": {"url": url, "eventTypes": types or ["*"], **extra}}, actor, headers
        )
        made = r.ok()["createWebhookEndpoint"]
        return made["webhookEndpoint"], made["secret"]

    async def deliveries(self, endpoint_id: str, **variables: Any) -> list[dict[str, Any]]:
        r = await self.run(DELIVERIES, {"id": endpoint_id, "first": 200, **variables})
        return list(r.ok()["webhookDeliveries"]["nodes"])

    async def register(self, *types: str) -> None:
        for type_ in types:
            r = await self.run(
                """mutation($input: RegisterEventTypeInput!) {
                    registerEventType(input: $input) { eventType { id } } }""",
                {"input": {"type": type_, "schema": {"type": "object"}}},
            )
            r.ok()

    async def emit(self, type_: str, data: dict[str, Any]) -> str:
        r = await self.run(
            """mutation($input: EmitEventInput!) { emitEvent(input: $input) { eventId } }""",
            {"input": {"type": type_, "data": data}},
        )
        return str(r.ok()["emitEvent"]["eventId"])

    async def events(self, prefix: str = "webhook_endpoint.") -> list[dict[str, Any]]:
        r = await self.run("{ events(first: 200) { nodes { id type data actorId } } }")
        return [e for e in r.ok()["events"]["nodes"] if e["type"].startswith(prefix)]

    async def audit(self, prefix: str = "webhook_") -> list[dict[str, Any]]:
        r = await self.run(
            """{ tenant { auditLog(first: 200) { nodes { action targetId changes environment
                actorId } } } }"""
        )
        nodes = r.ok()["tenant"]["auditLog"]["nodes"]
        return [n for n in reversed(nodes) if n["action"].startswith(prefix)]


async def new_team(gql: GraphQLClient) -> Team:
    owner = await gql.sign_up()
    return Team(gql, owner, await gql.create_tenant(owner))


async def sealed_row(engine: AsyncEngine, tenant_id: str, endpoint_id: str) -> Any:
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        rows = await conn.execute(
            select(WebhookEndpoint.__table__).where(WebhookEndpoint.id == endpoint_id)
        )
        return rows.one()


async def worker_attempted(
    engine: AsyncEngine,
    tenant_id: str,
    delivery_id: str,
    *,
    succeeded: bool,
    status_code: int | None = 500,
    claimed_for: float | None = None,
) -> tuple[WebhookAttempt, Any]:
    """What a delivery worker writes after one attempt: the attempt, and the delivery settled
    (``claimed_for``: still held by the worker that many seconds instead)."""
    async with engine.begin() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        table = DELIVERIES_TABLE
        delivery = (await conn.execute(select(table).where(table.c.id == delivery_id))).one()
        now = utcnow()
        attempt = WebhookAttempt(
            id=ids.new_id("wha"),
            tenant_id=tenant_id,
            delivery_id=delivery_id,
            endpoint_id=delivery.endpoint_id,
            attempt=delivery.attempts + 1,
            started_at=now,
            duration_ms=12.5,
            status_code=status_code,
            response_body="upstream is down" if not succeeded else "ok",
            error=None,
            succeeded=succeeded,
        )
        await conn.execute(
            ATTEMPTS_TABLE.insert().values(
                {c.name: getattr(attempt, c.name) for c in ATTEMPTS_TABLE.columns}
            )
        )
        values: dict[str, Any] = {"attempts": attempt.attempt, "last_attempt_at": now}
        if claimed_for is not None:
            values.update(
                status="sending",
                claimed_until=now + timedelta(seconds=claimed_for),
                claimed_by="test-worker",
            )
        elif succeeded:
            values.update(status="succeeded", succeeded_at=now, next_attempt_at=None)
        else:
            values.update(status="failed", next_attempt_at=None)
        await conn.execute(update(table).where(table.c.id == delivery_id).values(values))
        settled = (await conn.execute(select(table).where(table.c.id == delivery_id))).one()
    return attempt, settled


def codes(r: Response) -> list[str | None]:
    return r.codes


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def close_to_now(value: str, seconds: float = 30) -> bool:
    return abs(datetime.fromisoformat(value) - datetime.now(UTC)) < timedelta(seconds=seconds)


# --- endpoints: create, read, change ---------------------------------------------------------


async def test_an_admin_creates_an_endpoint_and_sees_its_secret_once(
    gql: GraphQLClient, engine: AsyncEngine
) -> None:
    team = await new_team(gql)
    admin = await gql.add_member(team.owner, team.tenant_id, "admin")
    endpoint, secret = await team.create(
        types=["member.*", "apikey.created"], actor=admin, description="CRM sync"
    )
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 32
    assert endpoint["url"] == PUBLIC_URL
    assert endpoint["eventTypes"] == ["apikey.created", "member.*"]
    assert endpoint["environment"] == "LIVE" and endpoint["enabled"] is True
    assert endpoint["description"] == "CRM sync" and endpoint["previousSecretExpiresAt"] is None

    # Readable afterwards, by the list and by id, and through node(id:) — never its secret.
    listed = (await team.run(ENDPOINTS)).ok()["webhookEndpoints"]
    assert [e["id"] for e in listed["nodes"]] == [endpoint["id"]]
    assert (await team.run(ONE_ENDPOINT, {"id": endpoint["id"]})).ok()["webhookEndpoint"] == (
        endpoint
    )
    r = await team.run(
        "query($id: ID!) { node(id: $id) { ... on WebhookEndpoint { id url } } }",
        {"id": endpoint["id"]},
    )
    assert r.ok()["node"] == {"id": endpoint["id"], "url": PUBLIC_URL}
    r = await team.run('{ __type(name: "WebhookEndpoint") { fields { name } } }')
    names = {f["name"].lower() for f in r.ok()["__type"]["fields"]}
    assert not [n for n in names if "secret" in n and n != "previoussecretexpiresat"]

    # Stored sealed under the configured key, not as shown.
    row = await sealed_row(engine, team.tenant_id, endpoint["id"])
    assert secret not in json.dumps([str(v) for v in row])
    assert webhooks.SecretBox([TEST_WEBHOOK_KEY]).open(row.secret) == secret


TEST_ENV = {"X-Environment": "test"}


async def test_an_endpoint_of_the_test_environment(gql: GraphQLClient) -> None:
    """An endpoint belongs to the request's environment; each environment sees its own."""
    team = await new_team(gql)
    live, _ = await team.create()
    test, _ = await team.create(headers=TEST_ENV)
    named, _ = await team.create(headers=TEST_ENV, environment="TEST")
    assert (live["environment"], test["environment"], named["environment"]) == (
        "LIVE",
        "TEST",
        "TEST",
    )
    r = await team.run(ENDPOINTS, {"environment": "TEST"}, headers=TEST_ENV)
    assert [e["id"] for e in r.ok()["webhookEndpoints"]["nodes"]] == [test["id"], named["id"]]
    r = await team.run(ENDPOINTS)
    assert [e["id"] for e in r.ok()["webhookEndpoints"]["nodes"]] == [live["id"]]
    # Naming the other environment is refused, for the list and for a new endpoint.
    r = await team.run(ENDPOINTS, {"environment": "TEST"})
    assert codes(r) == ["BAD_USER_INPUT"] and r.errors[0]["extensions"]["field"] == "environment"
    r = await team.run(
        CREATE, {"input": {"url": PUBLIC_URL, "eventTypes": ["*"], "environment": "TEST"}}
    )
    assert codes(r) == ["BAD_USER_INPUT"] and r.data == {"createWebhookEndpoint": None}
    r = await team.run(ENDPOINTS, headers=TEST_ENV)
    assert r.ok()["webhookEndpoints"]["totalCount"] == 2


async def test_event_types_must_be_known_types_prefixes_or_everything(gql: GraphQLClient) -> None:
    team = await new_team(gql)
    await team.register("shop.order_paid")
    endpoint, _ = await team.create(types=["shop.order_paid", "shop.*", "*", "tenant.updated"])
    assert endpoint["eventTypes"] == ["*", "shop.*", "shop.order_paid", "tenant.updated"]
    for bad in (
        [],
        ["shop.order_refunded"],  # not registered
        ["Member.*"],
        ["member.**"],
        ["member"],
        ["x" * 5000],
        ["*"] * 51,
    ):
        r = await team.run(CREATE, {"input": {"url": PUBLIC_URL, "eventTypes": bad}})
        assert codes(r) == ["BAD_USER_INPUT"], (bad, r.body)
        assert r.errors[0]["extensions"]["field"] == "eventTypes"
    r = await team.run(
        UPDATE, {"input": {"id": endpoint["id"], "eventTypes": ["shop.order_refunded"]}}
    )
    assert codes(r) == ["BAD_USER_INPUT"]
    count = (await team.run(ENDPOINTS)).ok()["webhookEndpoints"]["totalCount"]
    assert count == 1


async def test_update_changes_what_is_given_and_nothing_else(gql: GraphQLClient) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create(types=["member.*"], description="first")
    r = await team.run(UPDATE, {"input": {"id": endpoint["id"], "description": "second"}})
    changed = r.ok()["updateWebhookEndpoint"]["webhookEndpoint"]
    assert changed["description"] == "second"
    assert changed["url"] == endpoint["url"] and changed["eventTypes"] == ["member.*"]
    other_url = "https://8.8.4.4:8443/in"
    r = await team.run(
        UPDATE, {"input": {"id": endpoint["id"], "url": other_url, "eventTypes": ["*"]}}
    )
    changed = r.ok()["updateWebhookEndpoint"]["webhookEndpoint"]
    assert changed["url"] == other_url and changed["eventTypes"] == ["*"]
    assert changed["description"] == "second"


# --- SSRF --------------------------------------------------------------------------------------


def _a_private_host_name() -> str:
    """This machine's own name: /etc/hosts resolves it to a loopback or private address."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
    except socket.gaierror:
        pytest.skip(f"{name} does not resolve here")
    import ipaddress

    if all(ipaddress.ip_address(info[4][0]).is_global for info in infos):
        pytest.skip(f"{name} resolves to a public address here")
    return name


REFUSED = {
    "loopback": "http://127.0.0.1/hook",
    "private": "http://10.0.0.1/hook",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "ipv6 loopback": "http://[::1]/hook",
    "ipv4-mapped ipv6": "http://[::ffff:10.0.0.1]/hook",
    "localhost": "http://localhost:8080/hook",
    "decimal loopback": "http://2130706433/hook",
    "not http": "ftp://93.184.215.14/hook",
    "credentials": "https://user:pass@93.184.215.14/hook",
}


@pytest.mark.parametrize("name", [*REFUSED, "host name resolving to a private address"])
async def test_endpoints_inside_our_network_are_refused(gql: GraphQLClient, name: str) -> None:
    url = REFUSED.get(name) or f"http://{_a_private_host_name()}:8080/hook"
    team = await new_team(gql)
    r = await team.run(CREATE, {"input": {"url": url, "eventTypes": ["*"]}})
    assert codes(r) == ["BAD_USER_INPUT"], r.body
    assert r.errors[0]["extensions"]["field"] == "url"
    assert r.data == {"createWebhookEndpoint": None}
    endpoint, _ = await team.create()
    r = await team.run(UPDATE, {"input": {"id": endpoint["id"], "url": url}})
    assert codes(r) == ["BAD_USER_INPUT"], r.body
    # Nothing was written by the refusals: one endpoint, at its first URL, one audit entry.
    listed = (await team.run(ENDPOINTS)).ok()["webhookEndpoints"]["nodes"]
    assert [(e["id"], e["url"]) for e in listed] == [(endpoint["id"], PUBLIC_URL)]
    assert [a["action"] for a in await team.audit()] == ["webhook_endpoint.created"]


async def test_private_targets_are_accepted_where_the_settings_allow_them(
    hooks_db: str, http: httpx.AsyncClient
) -> None:
    """The embedded default (COREGRAPH_WEBHOOK_ALLOW_PRIVATE, on outside production) lets a
    developer point an endpoint at a receiver on their own machine."""
    settings = relay_settings(
        hooks_db, webhook_allow_private=True, run_relay="false", run_webhook_worker="false"
    )
    with running_server(settings, migrate_first=False) as local:
        team = await new_team(GraphQLClient(http, local.url))
        endpoint, _ = await team.create(url="http://127.0.0.1:9/hook")
        assert endpoint["url"] == "http://127.0.0.1:9/hook"
        r = await team.run(CREATE, {"input": {"url": "gopher://127.0.0.1/", "eventTypes": ["*"]}})
        assert codes(r) == ["BAD_USER_INPUT"]


async def test_production_wants_https_for_live_endpoints(
    hooks_db: str, http: httpx.AsyncClient
) -> None:
    settings = production_settings(hooks_db, run_relay="false", run_webhook_worker="false")
    with running_server(settings, migrate_first=False) as production:
        team = await new_team(GraphQLClient(http, production.url))
        plain = PUBLIC_URL.replace("https://", "http://")
        r = await team.run(CREATE, {"input": {"url": plain, "eventTypes": ["*"]}})
        assert codes(r) == ["BAD_USER_INPUT"] and "https" in r.errors[0]["message"]
        live, _ = await team.create()
        # Test endpoints may be plain http (a partner's staging receiver); private targets
        # stay refused in production whatever the environment.
        test, _ = await team.create(url=plain, headers=TEST_ENV)
        assert (live["url"], test["url"]) == (PUBLIC_URL, plain)
        r = await team.run(UPDATE, {"input": {"id": live["id"], "url": plain}})
        assert codes(r) == ["BAD_USER_INPUT"]
        r = await team.run(
            CREATE, {"input": {"url": "http://10.0.0.1/", "eventTypes": ["*"]}}, headers=TEST_ENV
        )
        assert codes(r) == ["BAD_USER_INPUT"]


# --- permissions -------------------------------------------------------------------------------


async def test_only_webhooks_manage_changes_endpoints_and_webhooks_read_reads_them(
    gql: GraphQLClient,
) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create()
    member = await gql.add_member(team.owner, team.tenant_id, "member")
    viewer = await gql.add_member(team.owner, team.tenant_id, "viewer")
    reader = await gql.api_key(team.owner, team.tenant_id, ["webhooks:read"])
    manager = await gql.api_key(team.owner, team.tenant_id, ["webhooks:manage", "events:read"])
    id_ = endpoint["id"]
    changes: list[tuple[str, dict[str, Any]]] = [
        (CREATE, {"input": {"url": PUBLIC_URL, "eventTypes": ["*"]}}),
        (UPDATE, {"input": {"id": id_, "description": "x"}}),
        (DISABLE, {"id": id_}),
        (ENABLE, {"id": id_}),
        (ROTATE, {"id": id_}),
        (SEND_TEST, {"id": id_}),
        (REPLAY, {"id": id_, "from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}),
        (RETRY, {"id": ids.new_id("msg")}),
        (DELETE, {"id": id_}),
    ]
    for actor in (member, viewer, reader):
        for query, variables in changes:
            r = await team.run(query, variables, actor)
            assert codes(r) == ["FORBIDDEN"], (query, r.body)
    for actor in (member, viewer):
        for query in (ENDPOINTS, ONE_ENDPOINT, DELIVERIES):
            r = await team.run(query, {"id": id_}, actor)
            assert codes(r) == ["FORBIDDEN"], r.body
    r = await team.run(ENDPOINTS, actor=reader)
    assert [e["id"] for e in r.ok()["webhookEndpoints"]["nodes"]] == [id_]
    # A key that may manage webhooks reads what it changed (manage includes read).
    r = await team.run(UPDATE, {"input": {"id": id_, "description": "by key"}}, manager)
    assert r.ok()["updateWebhookEndpoint"]["webhookEndpoint"]["description"] == "by key"
    # Nothing the refused attempts tried happened.
    assert [a["action"] for a in await team.audit()] == [
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
    ]


async def test_a_delivery_payload_needs_events_read_too(gql: GraphQLClient) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create()
    r = await team.run(SEND_TEST, {"id": endpoint["id"]})
    r.ok()
    reader = await gql.api_key(team.owner, team.tenant_id, ["webhooks:read"])
    r = await team.run(
        "query($id: ID!) { webhookDeliveries(endpointId: $id) { nodes { id payload } } }",
        {"id": endpoint["id"]},
        reader,
    )
    assert codes(r) == ["FORBIDDEN"]
    r = await team.run(
        "query($id: ID!) { webhookDeliveries(endpointId: $id) { nodes { id eventType } } }",
        {"id": endpoint["id"]},
        reader,
    )
    assert r.ok()["webhookDeliveries"]["nodes"][0]["eventType"] == "webhook.test"


async def test_steering_events_to_a_url_needs_events_read_beside_webhooks_manage(
    gql: GraphQLClient,
) -> None:
    """With webhooks:manage alone, a key would read every event through an endpoint of its
    own: creating one, changing an endpoint's URL or types, enabling it and replaying events
    to it need events:read as well."""
    team = await new_team(gql)
    endpoint, _ = await team.create(types=["member.*"])
    id_ = endpoint["id"]
    (await team.run(DISABLE, {"id": id_})).ok()
    manage_only = await gql.api_key(team.owner, team.tenant_id, ["webhooks:manage"])
    elsewhere = "https://93.184.215.15/collect"
    window = {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}
    for query, variables in (
        (CREATE, {"input": {"url": elsewhere, "eventTypes": ["*"]}}),
        (UPDATE, {"input": {"id": id_, "url": elsewhere}}),
        (UPDATE, {"input": {"id": id_, "eventTypes": ["*"]}}),
        (ENABLE, {"id": id_}),
        (REPLAY, {"id": id_, **window}),
    ):
        r = await team.run(query, variables, manage_only)
        assert codes(r) == ["FORBIDDEN"], (query, r.body)
        assert "events:read" in r.errors[0]["message"]
    listed = (await team.run(ENDPOINTS)).ok()["webhookEndpoints"]["nodes"]
    assert [(e["id"], e["url"], e["eventTypes"], e["enabled"]) for e in listed] == [
        (id_, PUBLIC_URL, ["member.*"], False)
    ]
    # What sends no event anywhere new stays with webhooks:manage.
    (await team.run(ENABLE, {"id": id_})).ok()
    sent = """mutation($id: ID!) { sendTestWebhook(endpointId: $id) { webhookDelivery { id } } }"""
    (await team.run(sent, {"id": id_}, manage_only)).ok()
    (await team.run(ROTATE, {"id": id_}, manage_only)).ok()
    (await team.run(DISABLE, {"id": id_}, manage_only)).ok()
    # With events:read too, the key may.
    both = await gql.api_key(team.owner, team.tenant_id, ["webhooks:manage", "events:read"])
    (await team.run(ENABLE, {"id": id_}, both)).ok()
    r = await team.run(UPDATE, {"input": {"id": id_, "url": elsewhere}}, both)
    assert r.ok()["updateWebhookEndpoint"]["webhookEndpoint"]["url"] == elsewhere
    assert [a["action"] for a in await team.audit()] == [
        "webhook_endpoint.created",
        "webhook_endpoint.disabled",
        "webhook_endpoint.enabled",
        "webhook_endpoint.test_sent",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.disabled",
        "webhook_endpoint.enabled",
        "webhook_endpoint.updated",
    ]


# --- every change audited and evented, never with a secret -------------------------------------


async def test_each_change_is_audited_and_evented_without_secrets(gql: GraphQLClient) -> None:
    team = await new_team(gql)
    endpoint, first_secret = await team.create(types=["member.*"])
    id_ = endpoint["id"]
    (await team.run(UPDATE, {"input": {"id": id_, "eventTypes": ["*"]}})).ok()
    # An update that changes nothing states nothing.
    (await team.run(UPDATE, {"input": {"id": id_, "eventTypes": ["*"]}})).ok()
    r = await team.run(DISABLE, {"id": id_})
    assert r.ok()["disableWebhookEndpoint"]["webhookEndpoint"] == {
        "id": id_,
        "enabled": False,
        "disabledReason": "manual",
    }
    (await team.run(DISABLE, {"id": id_})).ok()  # already disabled: nothing more
    r = await team.run(ENABLE, {"id": id_})
    assert r.ok()["enableWebhookEndpoint"]["webhookEndpoint"]["enabled"] is True
    second_secret = (await team.run(ROTATE, {"id": id_})).ok()["rotateWebhookSecret"]["secret"]
    r = await team.run(DELETE, {"id": id_})
    assert r.ok()["deleteWebhookEndpoint"]["deletedWebhookEndpointId"] == id_

    expected = [
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "webhook_endpoint.disabled",
        "webhook_endpoint.enabled",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.deleted",
    ]
    events = await team.events()
    assert [e["type"] for e in events] == expected
    for event in events:
        assert event["data"]["endpointId"] == id_
        assert event["actorId"] == team.owner.user_id
        Draft202012Validator(BUILTIN_EVENT_TYPES[event["type"]].schema).validate(event["data"])
    assert events[1]["data"]["after"] == {"eventTypes": ["*"]}
    assert events[2]["data"]["reason"] == "manual"
    audit = await team.audit()
    assert [a["action"] for a in audit] == expected
    assert all(a["targetId"] == id_ and a["environment"] == "LIVE" for a in audit)
    assert audit[1]["changes"] == {
        "before": {"eventTypes": ["member.*"]},
        "after": {"eventTypes": ["*"]},
    }
    everything = json.dumps([events, audit])
    assert first_secret not in everything and second_secret not in everything
    assert "whsec_" not in everything
    # Gone, and its id is now like any unknown id.
    r = await team.run(ONE_ENDPOINT, {"id": id_})
    assert codes(r) == ["NOT_FOUND"]
    r = await team.run(DISABLE, {"id": id_})
    assert codes(r) == ["NOT_FOUND"]


async def test_events_and_audit_show_a_url_by_its_origin_only(gql: GraphQLClient) -> None:
    """A receiver's URL is often its credential (a Slack hook path): events, which every
    holder of events:read reads and other endpoints receive, and audit entries show its origin,
    the audit trail a hash of the whole to tell changes apart."""
    team = await new_team(gql)
    hook = f"https://93.184.215.14:8443/services/T0/{unique('hook')}?token={unique('tok')}"
    endpoint, _ = await team.create(url=hook, description="chat")
    id_, first_url = endpoint["id"], endpoint["url"]
    second_url = f"https://93.184.215.14:8443/services/T0/{unique('hook')}"
    third_url = f"https://8.8.4.4/{unique('hook')}"
    for url in (second_url, third_url):
        (await team.run(UPDATE, {"input": {"id": id_, "url": url}})).ok()
    (await team.run(DELETE, {"id": id_})).ok()

    events, audit = await team.events(), await team.audit()
    everything = json.dumps([events, audit])
    for url in (first_url, second_url, third_url):
        path = url.split("/", 3)[3]
        assert path not in everything, path
    assert "token" not in everything
    origin, moved = "https://93.184.215.14:8443", "https://8.8.4.4"
    assert [e["data"] for e in events] == [
        {
            "endpointId": id_,
            "urlOrigin": origin,
            "description": "chat",
            "eventTypes": ["*"],
            "environment": "live",
            "enabled": True,
        },
        {"endpointId": id_, "before": {}, "after": {}, "urlChanged": True},
        {
            "endpointId": id_,
            "before": {"urlOrigin": origin},
            "after": {"urlOrigin": moved},
            "urlChanged": True,
        },
        {"endpointId": id_, "urlOrigin": moved},
    ]
    for event in events:
        Draft202012Validator(BUILTIN_EVENT_TYPES[event["type"]].schema).validate(event["data"])

    def sha(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest()

    assert [a["changes"] for a in audit[1:3]] == [
        {"before": {"urlSha256": sha(first_url)}, "after": {"urlSha256": sha(second_url)}},
        {
            "before": {"urlOrigin": origin, "urlSha256": sha(second_url)},
            "after": {"urlOrigin": moved, "urlSha256": sha(third_url)},
        },
    ]
    assert audit[0]["changes"]["after"]["urlSha256"] == sha(first_url)


async def test_enabling_starts_the_failure_count_afresh(
    gql: GraphQLClient, engine: AsyncEngine
) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create()
    # As the worker leaves an endpoint it disabled for failing.
    async with engine.begin() as conn:
        await db.scope_transaction(conn, tenant_ids=[team.tenant_id])
        table = ENDPOINTS_TABLE
        await conn.execute(
            update(table)
            .where(table.c.id == endpoint["id"])
            .values(
                enabled=False,
                disabled_reason="failing",
                consecutive_failures=20,
                failing_since=utcnow() - timedelta(days=5),
            )
        )
    r = await team.run(ONE_ENDPOINT, {"id": endpoint["id"]})
    assert r.ok()["webhookEndpoint"]["consecutiveFailures"] == 20
    r = await team.run(ENABLE, {"id": endpoint["id"]})
    assert r.ok()["enableWebhookEndpoint"]["webhookEndpoint"] == {
        "id": endpoint["id"],
        "enabled": True,
        "disabledReason": None,
        "consecutiveFailures": 0,
        "failingSince": None,
    }


# --- secrets: rotation and overlap -------------------------------------------------------------


async def test_rotation_gives_a_new_secret_once_and_the_old_one_keeps_signing_for_the_overlap(
    gql: GraphQLClient, engine: AsyncEngine, api: Server
) -> None:
    team = await new_team(gql)
    endpoint, first = await team.create()
    box = webhooks.SecretBox([TEST_WEBHOOK_KEY])

    r = await team.run(ROTATE, {"id": endpoint["id"]})
    rotated = r.ok()["rotateWebhookSecret"]
    second = rotated["secret"]
    assert second.startswith("whsec_") and second != first
    overlap = timedelta(seconds=api.settings.webhook_secret_overlap_seconds)
    expires = datetime.fromisoformat(rotated["webhookEndpoint"]["previousSecretExpiresAt"])
    assert abs(expires - (datetime.now(UTC) + overlap)) < timedelta(seconds=30)
    row = await sealed_row(engine, team.tenant_id, endpoint["id"])
    assert webhooks.signing_secrets(box, row) == [second, first]
    # Past the overlap only the new one signs.
    assert webhooks.signing_secrets(box, row, now=expires + timedelta(seconds=1)) == [second]

    # A chosen overlap; 0 drops the previous secret at once.
    r = await team.run(ROTATE, {"id": endpoint["id"], "overlap": 60})
    third = r.ok()["rotateWebhookSecret"]["secret"]
    row = await sealed_row(engine, team.tenant_id, endpoint["id"])
    assert webhooks.signing_secrets(box, row) == [third, second]
    r = await team.run(ROTATE, {"id": endpoint["id"], "overlap": 0})
    fourth = r.ok()["rotateWebhookSecret"]["secret"]
    assert r.ok()["rotateWebhookSecret"]["webhookEndpoint"]["previousSecretExpiresAt"] is None
    row = await sealed_row(engine, team.tenant_id, endpoint["id"])
    assert webhooks.signing_secrets(box, row) == [fourth]
    for bad in (-1, 31 * 86400):
        r = await team.run(ROTATE, {"id": endpoint["id"], "overlap": bad})
        assert codes(r) == ["BAD_USER_INPUT"]
    assert len({first, second, third, fourth}) == 4


# --- deliveries: test messages, retries, replays -----------------------------------------------


async def test_a_test_message_is_a_pending_delivery_of_no_event(gql: GraphQLClient) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create(types=["member.*"])
    r = await team.run(SEND_TEST, {"id": endpoint["id"]})
    delivery = r.ok()["sendTestWebhook"]["webhookDelivery"]
    assert delivery["id"].startswith("msg_")
    assert delivery["eventId"] is None and delivery["eventType"] == "webhook.test"
    assert delivery["status"] == "PENDING" and delivery["attemptCount"] == 0
    assert close_to_now(delivery["nextAttemptAt"]) and delivery["attempts"] == []
    assert delivery["payload"]["type"] == "webhook.test"
    assert delivery["payload"]["data"] == {"endpointId": endpoint["id"]}
    assert delivery["payload"]["tenant"] == team.tenant_id
    # Each test message is a delivery of its own.
    (await team.run(SEND_TEST, {"id": endpoint["id"]})).ok()
    listed = await team.deliveries(endpoint["id"])
    assert len(listed) == 2 and listed[1]["id"] == delivery["id"]  # newest first
    audit = await team.audit("webhook_endpoint.test_sent")
    assert [a["changes"]["after"]["deliveryId"] for a in audit] == [delivery["id"], listed[0]["id"]]
    # A disabled endpoint receives nothing, tests included.
    (await team.run(DISABLE, {"id": endpoint["id"]})).ok()
    r = await team.run(SEND_TEST, {"id": endpoint["id"]})
    assert codes(r) == ["CONFLICT"]


async def test_a_retry_sends_the_same_delivery_again_now(
    gql: GraphQLClient, engine: AsyncEngine
) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create()
    sent = (await team.run(SEND_TEST, {"id": endpoint["id"]})).ok()["sendTestWebhook"]
    delivery_id = sent["webhookDelivery"]["id"]
    attempt, _ = await worker_attempted(engine, team.tenant_id, delivery_id, succeeded=False)
    [failed] = await team.deliveries(endpoint["id"], status="FAILED")
    assert failed["id"] == delivery_id and failed["nextAttemptAt"] is None
    assert failed["attempts"] == [
        {
            "id": attempt.id,
            "attempt": 1,
            "startedAt": failed["attempts"][0]["startedAt"],
            "durationMs": 12.5,
            "statusCode": 500,
            "responseBody": "upstream is down",
            "error": None,
            "succeeded": False,
        }
    ]

    r = await team.run(RETRY, {"id": delivery_id})
    retried = r.ok()["retryWebhookDelivery"]["webhookDelivery"]
    assert retried["id"] == delivery_id  # the receiver's webhook-id does not change
    assert retried["status"] == "PENDING" and close_to_now(retried["nextAttemptAt"])
    assert retried["attemptCount"] == 1 and len(retried["attempts"]) == 1
    assert await team.deliveries(endpoint["id"], status="FAILED") == []
    [audited] = await team.audit("webhook_delivery.retried")
    assert audited["changes"]["after"]["deliveryId"] == delivery_id
    assert audited["changes"]["after"]["previousStatus"] == "failed"

    # While a worker holds it, a retry would send it twice: refused.
    await worker_attempted(engine, team.tenant_id, delivery_id, succeeded=False, claimed_for=60)
    r = await team.run(RETRY, {"id": delivery_id})
    assert codes(r) == ["CONFLICT"]
    for bad, code in (("msg_nope", "BAD_USER_INPUT"), (ids.new_id("msg"), "NOT_FOUND")):
        r = await team.run(RETRY, {"id": bad})
        assert codes(r) == [code]


async def test_a_replay_sends_a_time_range_again_keeping_each_delivery(
    gql: GraphQLClient, engine: AsyncEngine
) -> None:
    team = await new_team(gql)
    await team.register("shop.order_paid", "shop.refunded")
    before = datetime.now(UTC) - timedelta(seconds=1)
    paid = [await team.emit("shop.order_paid", {"n": n}) for n in range(3)]
    await team.emit("shop.refunded", {"n": 9})
    after = datetime.now(UTC) + timedelta(seconds=1)
    endpoint, _ = await team.create(types=["shop.order_paid"])
    window = {"id": endpoint["id"], "from": iso(before), "to": iso(after)}

    r = await team.run(REPLAY, window)
    assert r.ok()["replayWebhookEvents"] == {"scheduled": 3, "continueFrom": None}
    deliveries = await team.deliveries(endpoint["id"])
    assert sorted(d["eventId"] for d in deliveries) == sorted(paid)
    assert {d["status"] for d in deliveries} == {"PENDING"}
    assert {d["eventType"] for d in deliveries} == {"shop.order_paid"}
    by_event = {d["eventId"]: d for d in deliveries}
    assert by_event[paid[1]]["payload"]["data"] == {"n": 1}
    assert by_event[paid[1]]["payload"]["id"] == paid[1]

    # A delivered one is sent again under its own id; nothing is scheduled twice.
    await worker_attempted(
        engine, team.tenant_id, by_event[paid[0]]["id"], succeeded=True, status_code=200
    )
    r = await team.run(REPLAY, window)
    assert r.ok()["replayWebhookEvents"]["scheduled"] == 3
    again = await team.deliveries(endpoint["id"])
    assert sorted(d["id"] for d in again) == sorted(d["id"] for d in deliveries)
    assert {d["status"] for d in again} == {"PENDING"}

    # Outside the range, nothing; a range must be one.
    r = await team.run(REPLAY, {**window, "from": iso(after), "to": iso(after + timedelta(1))})
    assert r.ok()["replayWebhookEvents"]["scheduled"] == 0
    r = await team.run(REPLAY, {**window, "to": iso(before)})
    assert codes(r) == ["BAD_USER_INPUT"]
    r = await team.run(REPLAY, {**window, "from": "2026-12-01T10:00:00"})
    assert codes(r) == ["BAD_USER_INPUT"]
    [audited, _] = await team.audit("webhook_endpoint.events_replayed")
    assert audited["changes"]["after"]["scheduled"] == 3


async def test_a_replay_is_bounded_and_says_where_to_go_on(
    gql: GraphQLClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "REPLAY_LIMIT", 4)
    team = await new_team(gql)
    await team.register("shop.order_paid")
    before = datetime.now(UTC) - timedelta(seconds=1)
    emitted = [await team.emit("shop.order_paid", {"n": n}) for n in range(6)]
    after = datetime.now(UTC) + timedelta(seconds=1)
    endpoint, _ = await team.create(types=["shop.*"])
    r = await team.run(REPLAY, {"id": endpoint["id"], "from": iso(before), "to": iso(after)})
    first = r.ok()["replayWebhookEvents"]
    assert first["scheduled"] == 4 and first["continueFrom"] is not None
    r = await team.run(
        REPLAY, {"id": endpoint["id"], "from": first["continueFrom"], "to": iso(after)}
    )
    assert r.ok()["replayWebhookEvents"] == {"scheduled": 2, "continueFrom": None}
    deliveries = await team.deliveries(endpoint["id"])
    assert sorted(d["eventId"] for d in deliveries) == sorted(emitted)


async def test_deliveries_page_newest_first_and_filter_by_status(
    gql: GraphQLClient, engine: AsyncEngine
) -> None:
    team = await new_team(gql)
    endpoint, _ = await team.create()
    made = [
        (await team.run(SEND_TEST, {"id": endpoint["id"]})).ok()["sendTestWebhook"][
            "webhookDelivery"
        ]["id"]
        for _ in range(5)
    ]
    await worker_attempted(engine, team.tenant_id, made[1], succeeded=True, status_code=204)
    r = await team.run(DELIVERIES, {"id": endpoint["id"], "first": 2})
    page = r.ok()["webhookDeliveries"]
    assert [d["id"] for d in page["nodes"]] == [made[4], made[3]]
    assert page["pageInfo"]["hasNextPage"] is True
    r = await team.run(
        DELIVERIES, {"id": endpoint["id"], "first": 10, "after": page["pageInfo"]["endCursor"]}
    )
    assert [d["id"] for d in r.ok()["webhookDeliveries"]["nodes"]] == made[2::-1]
    succeeded = await team.deliveries(endpoint["id"], status="SUCCEEDED")
    assert [d["id"] for d in succeeded] == [made[1]]
    assert succeeded[0]["attempts"][0]["statusCode"] == 204


# --- tenant isolation --------------------------------------------------------------------------


async def test_another_tenant_can_neither_see_nor_touch_an_endpoint_or_its_deliveries(
    gql: GraphQLClient, engine: AsyncEngine
) -> None:
    a = await new_team(gql)
    b = await new_team(gql)
    endpoint, _ = await a.create()
    delivery = (await a.run(SEND_TEST, {"id": endpoint["id"]})).ok()["sendTestWebhook"][
        "webhookDelivery"
    ]
    attempt, _ = await worker_attempted(engine, a.tenant_id, delivery["id"], succeeded=False)
    b_key = await gql.api_key(b.owner, b.tenant_id, ["webhooks:manage", "events:read"])
    window = {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}
    attempts: list[tuple[str, dict[str, Any]]] = [
        (ONE_ENDPOINT, {"id": endpoint["id"]}),
        (DELIVERIES, {"id": endpoint["id"]}),
        (UPDATE, {"input": {"id": endpoint["id"], "description": "mine now"}}),
        (DISABLE, {"id": endpoint["id"]}),
        (ENABLE, {"id": endpoint["id"]}),
        (ROTATE, {"id": endpoint["id"]}),
        (DELETE, {"id": endpoint["id"]}),
        (SEND_TEST, {"id": endpoint["id"]}),
        (REPLAY, {"id": endpoint["id"], **window}),
        (RETRY, {"id": delivery["id"]}),
    ]
    secrets = [a.tenant_id, endpoint["id"], delivery["id"], attempt.id, PUBLIC_URL]
    for actor in (b.owner, b_key):
        for query, variables in attempts:
            r = await b.run(query, variables, actor)
            assert codes(r) == ["NOT_FOUND"], (query, r.body)
            assert not any(s in json.dumps(r.body) for s in secrets), r.body
        for id_ in (endpoint["id"], delivery["id"], attempt.id):
            r = await b.run("query($id: ID!) { node(id: $id) { id } }", {"id": id_}, actor)
            assert r.data == {"node": None} and "NOT_FOUND" in codes(r), r.body
        for typename, id_ in (
            ("WebhookEndpoint", endpoint["id"]),
            ("WebhookDelivery", delivery["id"]),
            ("WebhookAttempt", attempt.id),
        ):
            r = await b.run(
                "query($r: [_Any!]!) { _entities(representations: $r) { __typename } }",
                {"r": [{"__typename": typename, "id": id_}]},
                actor,
            )
            assert r.data == {"_entities": [None]} and codes(r) == ["NOT_FOUND"], r.body
        r = await b.run(ENDPOINTS, actor=actor)
        assert r.ok()["webhookEndpoints"]["totalCount"] == 0
    # Addressing A with B's credentials is refused before anything is looked up.
    r = await gql.execute(ENDPOINTS, actor=b.owner, tenant_id=a.tenant_id)
    assert codes(r) == ["FORBIDDEN"]
    # A's endpoint and delivery are as they were, and B left no trace in A's audit trail.
    assert (await a.run(ONE_ENDPOINT, {"id": endpoint["id"]})).ok()["webhookEndpoint"][
        "description"
    ] == ""
    [still] = await a.deliveries(endpoint["id"])
    assert still["status"] == "FAILED" and still["id"] == delivery["id"]
    assert [x["action"] for x in await a.audit()] == [
        "webhook_endpoint.created",
        "webhook_endpoint.test_sent",
    ]
    # The same reads through the API, by the owner of A, do find them.
    r = await a.run("query($id: ID!) { node(id: $id) { id } }", {"id": attempt.id})
    assert r.ok()["node"] == {"id": attempt.id}


async def test_a_test_key_neither_sees_nor_touches_live_endpoints_or_deliveries(
    api: Server, gql: GraphQLClient, engine: AsyncEngine
) -> None:
    team = await new_team(gql)
    live, _ = await team.create()
    delivery = (await team.run(SEND_TEST, {"id": live["id"]})).ok()["sendTestWebhook"][
        "webhookDelivery"
    ]
    attempt, _ = await worker_attempted(engine, team.tenant_id, delivery["id"], succeeded=False)
    test_key = await gql.api_key(
        team.owner,
        team.tenant_id,
        ["webhooks:manage", "events:read"],
        environment="TEST",
    )
    window = {"from": "2020-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}
    live_id = live["id"]
    for query, variables in (
        (ONE_ENDPOINT, {"id": live_id}),
        (DELIVERIES, {"id": live_id}),
        (UPDATE, {"input": {"id": live_id, "url": "https://93.184.215.15/test"}}),
        (DISABLE, {"id": live_id}),
        (ENABLE, {"id": live_id}),
        (ROTATE, {"id": live_id}),
        (DELETE, {"id": live_id}),
        (SEND_TEST, {"id": live_id}),
        (REPLAY, {"id": live_id, **window}),
        (RETRY, {"id": delivery["id"]}),
    ):
        r = await team.run(query, variables, test_key)
        assert codes(r) == ["NOT_FOUND"], (query, r.body)
        assert PUBLIC_URL not in json.dumps(r.body)
    for typename, id_ in (
        ("WebhookEndpoint", live_id),
        ("WebhookDelivery", delivery["id"]),
        ("WebhookAttempt", attempt.id),
    ):
        r = await team.run(
            """query($id: ID!, $r: [_Any!]!) { node(id: $id) { id }
                _entities(representations: $r) { __typename } }""",
            {"id": id_, "r": [{"__typename": typename, "id": id_}]},
            test_key,
        )
        assert r.data == {"node": None, "_entities": [None]}, (typename, r.body)
    async with subscribed(
        api, test_key.headers(team.tenant_id), ATTEMPTS, {"id": live_id}, field="webhookDeliveries"
    ) as sub:
        errors = await sub.ended()
    assert [e["extensions"]["code"] for e in errors] == ["NOT_FOUND"], errors
    # Its own endpoints are of its environment; naming the other one is refused.
    r = await team.run(
        CREATE, {"input": {"url": PUBLIC_URL, "eventTypes": ["*"], "environment": "LIVE"}}, test_key
    )
    assert codes(r) == ["BAD_USER_INPUT"], r.body
    own, _ = await team.create(actor=test_key)
    assert own["environment"] == "TEST"
    r = await team.run(ENDPOINTS, actor=test_key)
    assert [e["id"] for e in r.ok()["webhookEndpoints"]["nodes"]] == [own["id"]]
    # The live endpoint and its delivery are as they were; the live side sees only its own.
    r = await team.run(ENDPOINTS)
    assert [(e["id"], e["url"], e["enabled"]) for e in r.ok()["webhookEndpoints"]["nodes"]] == [
        (live_id, PUBLIC_URL, True)
    ]
    [still] = await team.deliveries(live_id)
    assert still["status"] == "FAILED" and still["id"] == delivery["id"]
    r = await team.run(ONE_ENDPOINT, {"id": own["id"]})
    assert codes(r) == ["NOT_FOUND"]


async def test_a_live_endpoint_is_never_sent_a_test_event(gql: GraphQLClient) -> None:
    team = await new_team(gql)
    await team.register("shop.order_paid")
    emit = """mutation($input: EmitEventInput!) { emitEvent(input: $input) { eventId } }"""
    before = datetime.now(UTC) - timedelta(seconds=1)
    sent: dict[str, str] = {}
    for name, headers in (("live", None), ("test", TEST_ENV)):
        payload = {"input": {"type": "shop.order_paid", "data": {"in": name}}}
        r = await team.run(emit, payload, headers=headers)
        sent[name] = r.ok()["emitEvent"]["eventId"]
    after = datetime.now(UTC) + timedelta(seconds=1)
    for name, headers in (("live", None), ("test", TEST_ENV)):
        endpoint, _ = await team.create(types=["shop.*"], headers=headers)
        window = {"id": endpoint["id"], "from": iso(before), "to": iso(after)}
        r = await team.run(REPLAY, window, headers=headers)
        assert r.ok()["replayWebhookEvents"]["scheduled"] == 1
        r = await team.run(DELIVERIES, {"id": endpoint["id"]}, headers=headers)
        [delivery] = r.ok()["webhookDeliveries"]["nodes"]
        assert delivery["eventId"] == sent[name] and delivery["payload"]["data"] == {"in": name}


async def test_endpoints_per_tenant_and_environment_are_capped(
    hooks_db: str, http: httpx.AsyncClient
) -> None:
    settings = relay_settings(
        hooks_db,
        webhook_max_endpoints=2,
        webhook_allow_private=False,
        run_relay="false",
        run_webhook_worker="false",
    )
    with running_server(settings, migrate_first=False) as capped:
        client = GraphQLClient(http, capped.url)
        team = await new_team(client)
        first, _ = await team.create()
        await team.create()
        r = await team.run(CREATE, {"input": {"url": PUBLIC_URL, "eventTypes": ["*"]}})
        assert codes(r) == ["QUOTA_EXCEEDED"] and r.data == {"createWebhookEndpoint": None}
        extensions = r.errors[0]["extensions"]
        assert (extensions["limit"], extensions["current"]) == (2, 2)
        # The other environment, and another tenant, count their own.
        await team.create(headers=TEST_ENV)
        await (await new_team(client)).create()
        # Deleting one makes room again.
        (await team.run(DELETE, {"id": first["id"]})).ok()
        await team.create()
        r = await team.run(ENDPOINTS)
        assert r.ok()["webhookEndpoints"]["totalCount"] == 2


# --- live attempts -----------------------------------------------------------------------------


async def test_the_subscription_streams_its_endpoints_attempts_and_nothing_else(
    api: Server, gql: GraphQLClient, engine: AsyncEngine
) -> None:
    a = await new_team(gql)
    b = await new_team(gql)
    watched, _ = await a.create()
    other, _ = await a.create()
    foreign, _ = await b.create()

    async def an_attempt(team: Team, endpoint_id: str, succeeded: bool) -> dict[str, Any]:
        r = await team.run(SEND_TEST, {"id": endpoint_id})
        delivery_id = r.ok()["sendTestWebhook"]["webhookDelivery"]["id"]
        attempt, delivery = await worker_attempted(
            engine, team.tenant_id, delivery_id, succeeded=succeeded, status_code=200
        )
        return webhooks.attempt_message(attempt, delivery)

    first = await an_attempt(a, watched["id"], succeeded=False)
    others = [await an_attempt(a, other["id"], True), await an_attempt(b, foreign["id"], True)]
    second = await an_attempt(a, watched["id"], succeeded=True)

    topic = webhook_attempts_topic(a.tenant_id)
    async with (
        subscribed(
            api,
            a.owner.headers(a.tenant_id),
            ATTEMPTS,
            {"id": watched["id"]},
            field="webhookDeliveries",
        ) as sub,
        broker_for_this_process() as own,
    ):
        await listening(api, topic)
        broker = own if REDIS_URL else api.runtime.broker  # in-process: hand it over directly
        # As the worker publishes after each attempt commits: another endpoint's and another
        # tenant's (on its own topic, and forged onto this one) are never sent.
        await broker.publish(topic, others[0])
        await broker.publish(webhook_attempts_topic(b.tenant_id), others[1])
        await broker.publish(topic, others[1])
        await broker.publish(topic, first)
        await broker.publish(topic, second)
        items = await sub.items_count(2)
    assert [item["attempt"]["id"] for item in items] == [first["id"], second["id"]]
    assert items[0]["attempt"]["succeeded"] is False and items[1]["attempt"]["succeeded"] is True
    assert items[1] == {
        "deliveryId": second["deliveryId"],
        "eventId": None,
        "eventType": "webhook.test",
        "environment": "LIVE",
        "deliveryStatus": "SUCCEEDED",
        "attempt": {
            "id": second["id"],
            "deliveryId": second["deliveryId"],
            "endpointId": watched["id"],
            "attempt": 1,
            "startedAt": items[1]["attempt"]["startedAt"],
            "durationMs": 12.5,
            "statusCode": 200,
            "responseBody": "ok",
            "error": None,
            "succeeded": True,
        },
    }
    assert sub.errors == []


async def test_the_subscription_is_refused_to_others(api: Server, gql: GraphQLClient) -> None:
    a = await new_team(gql)
    b = await new_team(gql)
    endpoint, _ = await a.create()
    member = await gql.add_member(a.owner, a.tenant_id, "member")
    cases = [
        (member.headers(a.tenant_id), "FORBIDDEN"),
        (b.owner.headers(b.tenant_id), "NOT_FOUND"),
    ]
    for credential, code in cases:
        async with subscribed(
            api, credential, ATTEMPTS, {"id": endpoint["id"]}, field="webhookDeliveries"
        ) as sub:
            errors = await sub.ended()
        assert [e["extensions"]["code"] for e in errors] == [code], errors
