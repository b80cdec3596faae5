"""Support context (issue 11): platform staff belong to no tenant and read nothing of one until
its owners approve a support session; an approved session gives an impersonation token for
that tenant only, read-only unless ACT was approved, revocable at any moment, and everything
done under it names the staff member and the session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import websockets
from jsonschema import Draft202012Validator

from coregraph.services.events import BUILTIN_EVENT_TYPES
from coregraph.streams.broker import audit_topic
from tests.conftest import make_settings
from tests.receiver_support import ReceivedRequest, Receiver, Reply
from tests.streams_support import PROTOCOL, WAIT, subscribed
from tests.support import PASSWORD, Actor, GraphQLClient, Response, Server, running_server, unique
from tests.test_cli_and_deploy import cli_env_for, coregraph
from tests.test_subscriptions import listening

LOGIN = """mutation($i: LoginInput!) { login(input: $i) { accessToken user { id } } }"""
REQUEST = """mutation($input: RequestSupportAccessInput!) { requestSupportAccess(input: $input) {
    supportSession { id status mode reason durationSeconds staffUserId tenantId } } }"""
APPROVE = """mutation($id: ID!) { approveSupportAccess(id: $id) {
    supportSession { id status endsAt decidedByUserId } } }"""
DENY = "mutation($id: ID!) { denySupportAccess(id: $id) { supportSession { id status } } }"
REVOKE = "mutation($id: ID!) { revokeSupportAccess(id: $id) { supportSession { id status } } }"
START = """mutation($id: ID!) { startSupportSession(id: $id) {
    token { accessToken tokenType expiresAt session { id status endsAt } } } }"""
SESSIONS = """{ supportSessions(first: 20) { nodes { id status mode reason staffUserId staffEmail
    tenantId } } }"""
STAFF_SESSIONS = "{ staffSupportSessions(first: 20) { nodes { id status tenantId } } }"
TENANT = "{ tenant { id name } }"
AUDIT = """query($session: ID, $action: String) { tenant { auditLog(first: 50,
    supportSessionId: $session, action: $action) { nodes { action actorKind actorId
    supportSessionId targetId supportSession { reason staffUserId mode } } } } }"""
EVENTS = """query($types: [String!]) { events(types: $types, first: 50) { nodes { type actorKind
    actorId supportSessionId data supportSession { reason staffUserId mode } } } }"""
REGISTER = """mutation($input: RegisterEventTypeInput!) { registerEventType(input: $input) {
    eventType { id } } }"""
EMIT = """mutation($input: EmitEventInput!) { emitEvent(input: $input) { eventId } }"""
CREATE_METER = """mutation($input: CreateMeterInput!) { createMeter(input: $input) {
    meter { id key } } }"""
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret } }"""
INVITE = """mutation($input: InviteMemberInput!) { inviteMember(input: $input) { token } }"""
UPDATE_TENANT = """mutation($input: UpdateTenantInput!) { updateTenant(input: $input) {
    tenant { id } } }"""
CREATE_TENANT = """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
    tenant { id } } }"""
LOGOUT = "mutation { logout { ended } }"
VERIFY = "{ verifyAuditChain { ok checked reason } }"
EVENTS_SUBSCRIPTION = "subscription { events { cursor node { id type } } }"
AUDIT_SUBSCRIPTION = """subscription($filter: AuditLogFilter) { auditLog(filter: $filter) {
    cursor node { action actorKind actorId supportSessionId } } }"""


@pytest.fixture(scope="module")
def relayed(database_url: str, server: Server) -> Iterator[Server]:
    """A server that runs the outbox relay and the webhook worker itself (the session's does
    only on SQLite), so its subscriptions receive the tenant's events and its endpoints their
    deliveries. After the session's server, which migrated the database."""
    settings = make_settings(
        database_url,
        run_relay="true",
        run_webhook_worker="true",
        # One endpoint per tenant and environment: a second is a quota refusal to keep.
        webhook_max_endpoints=1,
        # One attempt now, the next one far away: a failing endpoint fails once per event.
        webhook_retry_schedule=[3600],
    )
    with running_server(settings, migrate_first=False) as srv:
        yield srv


async def answer_failing(request: ReceivedRequest) -> Reply:
    return Reply(500, b"down for maintenance")


@dataclass
class Staff:
    actor: Actor
    email: str


async def make_staff(
    client: GraphQLClient, database_url: str, role: str = "platform:support"
) -> Staff:
    """A platform staff member made by the CLI, signed in like a user."""
    email = f"{unique('staff')}@example.com"
    made = await asyncio.to_thread(
        coregraph,
        "create-staff",
        "--email",
        email,
        "--role",
        role,
        "--password",
        PASSWORD,
        env=cli_env_for(database_url),
    )
    assert made.returncode == 0, made.stderr
    return Staff(await login(client, email), email)


async def login(client: GraphQLClient, email: str) -> Actor:
    payload = (await client.execute(LOGIN, {"i": {"email": email, "password": PASSWORD}})).ok()[
        "login"
    ]
    return Actor(token=payload["accessToken"], user_id=payload["user"]["id"], email=email)


@dataclass
class Customer:
    owner: Actor
    tenant_id: str


async def customer(client: GraphQLClient) -> Customer:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    return Customer(owner, tenant_id)


async def request(
    client: GraphQLClient,
    staff: Staff,
    tenant_id: str,
    mode: str = "READ",
    *,
    reason: str = "Ticket 4242: webhooks stopped arriving",
    duration: int = 3600,
) -> Response:
    variables = {
        "input": {"tenantId": tenant_id, "reason": reason, "duration": duration, "mode": mode}
    }
    return await client.execute(REQUEST, variables, actor=staff.actor)


async def session_token(
    client: GraphQLClient, staff: Staff, tenant: Customer, mode: str = "READ"
) -> tuple[str, Actor]:
    """An approved session of ``mode`` and an impersonation token under it."""
    session_id = (await request(client, staff, tenant.tenant_id, mode)).ok()[
        "requestSupportAccess"
    ]["supportSession"]["id"]
    approved = (
        await client.execute(
            APPROVE, {"id": session_id}, actor=tenant.owner, tenant_id=tenant.tenant_id
        )
    ).ok()["approveSupportAccess"]["supportSession"]
    assert approved["status"] == "APPROVED" and approved["decidedByUserId"] == tenant.owner.user_id
    token = (await client.execute(START, {"id": session_id}, actor=staff.actor)).ok()[
        "startSupportSession"
    ]["token"]
    assert token["tokenType"] == "Bearer" and token["session"]["status"] == "APPROVED"
    # Short-lived, and never past the session's end.
    expires = datetime.fromisoformat(token["expiresAt"])
    assert expires <= datetime.fromisoformat(token["session"]["endsAt"])
    assert expires <= datetime.now(UTC) + timedelta(minutes=15, seconds=5)
    return session_id, Actor(token=token["accessToken"])


def codes(response: Response) -> list[str | None]:
    return response.codes


async def rest(
    http: httpx.AsyncClient, server: Server, actor: Actor, tenant_id: str | None
) -> dict[str, int]:
    """The status of each authenticated REST route for ``actor`` addressing ``tenant_id``."""
    headers = actor.headers(tenant_id)
    exported = await http.get(f"{server.base_url}/audit/export", headers=headers)
    billing = await http.get(f"{server.base_url}/billing/export", headers=headers)
    body = orjson.dumps({"meter": "api.calls", "quantity": "1"}) + b"\n"
    bulk = await http.post(
        f"{server.base_url}/usage/bulk",
        content=body,
        headers={**headers, "Content-Type": "application/x-ndjson"},
    )
    return {
        "/audit/export": exported.status_code,
        "/billing/export": billing.status_code,
        "/usage/bulk": bulk.status_code,
    }


async def socket_refused(server: Server, credential: dict[str, str]) -> int | None:
    """The close code a socket acknowledging ``credential`` gets (None if acknowledged)."""
    url = server.url.replace("http://", "ws://")
    async with websockets.connect(url, subprotocols=[PROTOCOL], open_timeout=WAIT) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": credential}))
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        assert message["type"] == "connection_ack", message
        return None


async def tenant_rows(client: GraphQLClient, tenant: Customer) -> dict[str, str]:
    """Ids of a few of the tenant's rows (the tenant, an audit entry, an event, a member)."""
    data = (
        await client.execute(
            """{ tenant { id auditLog(first: 1) { nodes { id } }
                members(first: 1) { nodes { id } } }
                events(first: 1) { nodes { id } } }""",
            actor=tenant.owner,
            tenant_id=tenant.tenant_id,
        )
    ).ok()
    return {
        "Tenant": data["tenant"]["id"],
        "AuditEntry": data["tenant"]["auditLog"]["nodes"][0]["id"],
        "Membership": data["tenant"]["members"]["nodes"][0]["id"],
        "Event": data["events"]["nodes"][0]["id"],
    }


async def transitions(client: GraphQLClient, tenant: Customer) -> list[tuple[str, str]]:
    """The tenant's support.* events, oldest first: (type, support session id)."""
    types = [f"support.{t}" for t in ("requested", "approved", "denied", "revoked", "started")]
    events = (
        await client.execute(
            EVENTS, {"types": types}, actor=tenant.owner, tenant_id=tenant.tenant_id
        )
    ).ok()["events"]["nodes"]
    return [(e["type"], e["data"]["supportSessionId"]) for e in events]


async def test_staff_are_made_by_the_cli_and_belong_to_no_tenant(
    client: GraphQLClient, database_url: str
) -> None:
    env = cli_env_for(database_url)
    staff = await make_staff(client, database_url, "platform:admin")
    # Staff cannot make a tenant of their own, nor join one.
    made = await client.execute(
        CREATE_TENANT, {"input": {"name": "Mine", "slug": unique("staff-")}}, actor=staff.actor
    )
    assert made.codes == ["FORBIDDEN"]
    tenant = await customer(client)
    invited = (
        await client.execute(
            INVITE,
            {"input": {"email": staff.email, "role": "viewer"}},
            actor=tenant.owner,
            tenant_id=tenant.tenant_id,
        )
    ).ok()["inviteMember"]["token"]
    joined = await client.execute(
        "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
        {"t": invited},
        actor=staff.actor,
    )
    assert joined.codes == ["FORBIDDEN"]

    # An existing user is promoted; a member of a tenant is refused (staff belong to none).
    user = await client.sign_up()
    promoted = await asyncio.to_thread(
        coregraph,
        "create-staff",
        "--email",
        user.email or "",
        "--role",
        "platform:support",
        env=env,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == user.user_id
    refused = await asyncio.to_thread(
        coregraph,
        "create-staff",
        "--email",
        tenant.owner.email or "",
        "--role",
        "platform:support",
        env=env,
    )
    assert refused.returncode == 1 and "CONFLICT" in refused.stderr
    bad_role = await asyncio.to_thread(
        coregraph, "create-staff", "--email", user.email or "", "--role", "root", env=env
    )
    assert bad_role.returncode == 2
    # The promotion is in the user's own security log, naming the command.
    log = (
        await client.execute(
            "{ viewer { securityLog(first: 5) { nodes { action actorKind actorId changes } } } }",
            actor=user,
        )
    ).ok()["viewer"]["securityLog"]["nodes"]
    assert log[0]["action"] == "user.platform_role_changed"
    assert (log[0]["actorKind"], log[0]["actorId"]) == ("system", "cli:create-staff")
    assert log[0]["changes"]["after"] == {"platformRole": "platform:support"}


async def test_without_an_approved_session_staff_read_nothing_of_a_tenant(
    client: GraphQLClient, database_url: str, server: Server, http: httpx.AsyncClient
) -> None:
    staff = await make_staff(client, database_url)
    tenant = await customer(client)
    rows = await tenant_rows(client, tenant)
    pending = (await request(client, staff, tenant.tenant_id)).ok()["requestSupportAccess"][
        "supportSession"
    ]
    assert pending["status"] == "PENDING" and pending["staffUserId"] == staff.actor.user_id

    # Root fields addressing the tenant: refused at the door, a pending request changes nothing.
    for query in (TENANT, SESSIONS, "{ events(first: 5) { nodes { id } } }", VERIFY):
        answer = await client.execute(query, actor=staff.actor, tenant_id=tenant.tenant_id)
        assert answer.codes == ["FORBIDDEN"], (query, answer.body)
        assert answer.data is None
    # Without X-Tenant-Id, tenant root fields have no tenant to read.
    answer = await client.execute(TENANT, actor=staff.actor)
    assert answer.codes == ["FORBIDDEN"] and answer.data == {"tenant": None}
    # node(id:) and _entities: not found, as for anything that is not yours.
    for typename, row_id in rows.items():
        node = await client.execute(
            "query($id: ID!) { node(id: $id) { id } }", {"id": row_id}, actor=staff.actor
        )
        assert node.codes == ["NOT_FOUND"] and node.data == {"node": None}, (typename, node.body)
        entities = await client.execute(
            """query($r: [_Any!]!) { _entities(representations: $r) { __typename } }""",
            {"r": [{"__typename": typename, "id": row_id}]},
            actor=staff.actor,
        )
        assert entities.codes == ["NOT_FOUND"], (typename, entities.body)
        assert entities.data == {"_entities": [None]}
    # Subscriptions: a socket addressing the tenant is refused; without it, nothing to read.
    assert await socket_refused(server, staff.actor.headers(tenant.tenant_id)) == 4403
    async with subscribed(
        server, staff.actor.headers(), EVENTS_SUBSCRIPTION, field="events"
    ) as sub:
        errors = await sub.ended()
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"] and not sub.items
    # REST routes.
    assert await rest(http, server, staff.actor, tenant.tenant_id) == {
        "/audit/export": 403,
        "/billing/export": 403,
        "/usage/bulk": 403,
    }
    # No token for a pending, a denied or a revoked request.
    started = await client.execute(START, {"id": pending["id"]}, actor=staff.actor)
    assert started.codes == ["FORBIDDEN"]
    denied = await client.execute(
        DENY, {"id": pending["id"]}, actor=tenant.owner, tenant_id=tenant.tenant_id
    )
    assert denied.ok()["denySupportAccess"]["supportSession"]["status"] == "DENIED"
    started = await client.execute(START, {"id": pending["id"]}, actor=staff.actor)
    assert started.codes == ["FORBIDDEN"]
    assert await transitions(client, tenant) == [
        ("support.requested", pending["id"]),
        ("support.denied", pending["id"]),
    ]
    # The staff member sees their own requests (and nothing else of the tenant).
    mine = (await client.execute(STAFF_SESSIONS, actor=staff.actor)).ok()
    assert mine["staffSupportSessions"]["nodes"] == [
        {"id": pending["id"], "status": "DENIED", "tenantId": tenant.tenant_id}
    ]


async def test_a_read_session_reads_the_tenant_and_no_mutation_succeeds(
    client: GraphQLClient, database_url: str, server: Server, http: httpx.AsyncClient
) -> None:
    staff = await make_staff(client, database_url)
    tenant = await customer(client)
    other = await customer(client)
    session_id, support = await session_token(client, staff, tenant, "READ")

    # Reads: the tenant's own data, with or without X-Tenant-Id (the token names it).
    assert (await client.execute(TENANT, actor=support)).ok()["tenant"]["id"] == tenant.tenant_id
    read = await client.execute(TENANT, actor=support, tenant_id=tenant.tenant_id)
    assert read.ok()["tenant"]["id"] == tenant.tenant_id
    audit = (await client.execute(AUDIT, {"action": "support."}, actor=support)).ok()
    actions = [n["action"] for n in audit["tenant"]["auditLog"]["nodes"]]
    assert actions == ["support.started", "support.approved", "support.requested"]
    assert (await client.execute(VERIFY, actor=support)).ok()["verifyAuditChain"]["ok"] is True
    # Never another tenant: the header naming it is refused, its rows are not found.
    elsewhere = await client.execute(TENANT, actor=support, tenant_id=other.tenant_id)
    assert elsewhere.codes == ["FORBIDDEN"]
    node = await client.execute(
        "query($id: ID!) { node(id: $id) { id } }", {"id": other.tenant_id}, actor=support
    )
    assert node.codes == ["NOT_FOUND"]

    # Every mutation is refused, whatever it is declared with.
    attempts: list[tuple[str, dict[str, Any]]] = [
        (EMIT, {"input": {"type": "order.paid", "data": {}}}),
        (CREATE_KEY, {"input": {"name": "k", "scopes": ["events:read"]}}),
        (INVITE, {"input": {"email": "x@example.com", "role": "viewer"}}),
        (UPDATE_TENANT, {"input": {"name": "Renamed"}}),
        (CREATE_TENANT, {"input": {"name": "Mine", "slug": unique("s-")}}),
        (REVOKE, {"id": session_id}),
        (LOGOUT, {}),
    ]
    for query, variables in attempts:
        refused = await client.execute(query, variables, actor=support)
        assert refused.codes == ["FORBIDDEN"], (query, refused.body)
        assert refused.data is None
    # REST: reading the trail yes, ingesting usage no; billing is not a support read here.
    statuses = await rest(http, server, support, tenant.tenant_id)
    assert statuses["/audit/export"] == 200 and statuses["/usage/bulk"] == 403
    # Subscriptions read too.
    assert await socket_refused(server, support.headers()) is None

    # The tenant sees the session, who and why; nothing was done under it.
    sessions = (
        await client.execute(SESSIONS, actor=tenant.owner, tenant_id=tenant.tenant_id)
    ).ok()["supportSessions"]["nodes"]
    assert sessions == [
        {
            "id": session_id,
            "status": "APPROVED",
            "mode": "READ",
            "reason": "Ticket 4242: webhooks stopped arriving",
            "staffUserId": staff.actor.user_id,
            "staffEmail": staff.email,
            "tenantId": tenant.tenant_id,
        }
    ]
    under = await client.execute(
        AUDIT, {"session": session_id}, actor=tenant.owner, tenant_id=tenant.tenant_id
    )
    assert under.ok()["tenant"]["auditLog"]["nodes"] == []


async def test_an_act_session_acts_within_its_rights_and_every_action_names_it(
    database_url: str, relayed: Server, http: httpx.AsyncClient
) -> None:
    client = GraphQLClient(http, relayed.url)
    staff = await make_staff(client, database_url)
    tenant = await customer(client)
    session_id, support = await session_token(client, staff, tenant, "ACT")
    owner = tenant.owner
    registered = await client.execute(
        REGISTER,
        {"input": {"type": "order.paid", "description": "", "schema": {"type": "object"}}},
        actor=owner,
        tenant_id=tenant.tenant_id,
    )
    registered.ok()

    emitted = await client.execute(
        EMIT, {"input": {"type": "order.paid", "data": {"order": 7}}}, actor=support
    )
    assert emitted.ok()["emitEvent"]["eventId"]
    # The tenant watches what is done under the session as it happens.
    async with subscribed(
        relayed,
        owner.headers(tenant.tenant_id),
        AUDIT_SUBSCRIPTION,
        {"filter": {"supportSessionId": session_id}},
        field="auditLog",
    ) as watching:
        await listening(relayed, audit_topic(tenant.tenant_id))
        meter = {"key": "app.tokens", "name": "Tokens", "unit": "token", "aggregation": "SUM"}
        made = await client.execute(CREATE_METER, {"input": meter}, actor=support)
        meter_id = made.ok()["createMeter"]["meter"]["id"]
        streamed = (await watching.items_count(1))[0]["node"]
    assert (streamed["action"], streamed["actorKind"], streamed["supportSessionId"]) == (
        "meter.created",
        "support",
        session_id,
    )
    # What changes who gets in, or outlives the session, is not support's to do.
    for query, variables in (
        (CREATE_KEY, {"input": {"name": "k", "scopes": ["events:read"]}}),
        (INVITE, {"input": {"email": "x@example.com", "role": "viewer"}}),
        (UPDATE_TENANT, {"input": {"name": "Renamed"}}),
        (CREATE_TENANT, {"input": {"name": "Mine", "slug": unique("s-")}}),
        (REVOKE, {"id": session_id}),
        (APPROVE, {"id": session_id}),
    ):
        refused = await client.execute(query, variables, actor=support)
        assert refused.codes == ["FORBIDDEN"], (query, refused.body)

    # The tenant sees what was done under the session, by whom; the chain still holds.
    under = (
        await client.execute(
            AUDIT, {"session": session_id}, actor=owner, tenant_id=tenant.tenant_id
        )
    ).ok()["tenant"]["auditLog"]["nodes"]
    assert [
        (n["action"], n["actorKind"], n["actorId"], n["supportSessionId"], n["targetId"])
        for n in under
    ] == [("meter.created", "support", staff.actor.user_id, session_id, meter_id)]
    # The entry shows the session: who, why, in which mode.
    reason = "Ticket 4242: webhooks stopped arriving"
    assert under[0]["supportSession"] == {
        "reason": reason,
        "staffUserId": staff.actor.user_id,
        "mode": "ACT",
    }
    events = (
        await client.execute(
            EVENTS, {"types": ["order.paid"]}, actor=owner, tenant_id=tenant.tenant_id
        )
    ).ok()["events"]["nodes"]
    assert [(e["actorKind"], e["actorId"], e["supportSessionId"]) for e in events] == [
        ("support", staff.actor.user_id, session_id)
    ]
    assert events[0]["supportSession"]["reason"] == reason
    verified = await client.execute(VERIFY, actor=owner, tenant_id=tenant.tenant_id)
    assert verified.ok()["verifyAuditChain"]["ok"] is True
    support_events = (
        await client.execute(
            EVENTS,
            {"types": ["support.requested", "support.approved", "support.started"]},
            actor=owner,
            tenant_id=tenant.tenant_id,
        )
    ).ok()["events"]["nodes"]
    assert [e["type"] for e in support_events] == [
        "support.requested",
        "support.approved",
        "support.started",
    ]
    assert {e["data"]["supportSessionId"] for e in support_events} == {session_id}
    assert {e["data"]["mode"] for e in support_events} == {"ACT"}


async def test_a_revoked_session_fails_the_very_next_request(
    database_url: str, relayed: Server, http: httpx.AsyncClient
) -> None:
    server = relayed
    client = GraphQLClient(http, server.url)
    staff = await make_staff(client, database_url)
    tenant = await customer(client)
    session_id, support = await session_token(client, staff, tenant, "READ")
    assert (await client.execute(TENANT, actor=support)).ok()["tenant"]
    async with subscribed(server, support.headers(), EVENTS_SUBSCRIPTION, field="events") as sub:
        revoked = await client.execute(
            REVOKE, {"id": session_id}, actor=tenant.owner, tenant_id=tenant.tenant_id
        )
        assert revoked.ok()["revokeSupportAccess"]["supportSession"]["status"] == "REVOKED"
        # The next request with the token fails; so does taking a new one.
        after = await client.execute(TENANT, actor=support)
        assert after.codes == ["UNAUTHENTICATED"] and after.status == 401
        assert (await client.execute(START, {"id": session_id}, actor=staff.actor)).codes == [
            "FORBIDDEN"
        ]
        # A subscription open under it re-authenticates its credential as items flow (at most
        # once a second, beside the stream: coregraph.streams.subscription) and then ends.
        await client.execute(
            REGISTER,
            {"input": {"type": "order.paid", "description": "", "schema": {"type": "object"}}},
            actor=tenant.owner,
            tenant_id=tenant.tenant_id,
        )
        ended_with: list[str] = []
        for _ in range(20):
            emitted = await client.execute(
                EMIT,
                {"input": {"type": "order.paid", "data": {}}},
                actor=tenant.owner,
                tenant_id=tenant.tenant_id,
            )
            emitted.ok()
            try:
                errors = await sub.ended(wait=0.5)
            except AssertionError:
                continue  # still running: the next item brings the check
            except websockets.ConnectionClosed as closed:
                ended_with = [f"closed {closed.rcvd.code if closed.rcvd else None}"]
                break
            ended_with = [e["extensions"]["code"] for e in errors]
            break
        assert ended_with in (["UNAUTHENTICATED"], ["closed 4403"]), (
            ended_with,
            sub.items,
            sub.errors,
        )
    assert await socket_refused(server, support.headers()) == 4403
    assert await transitions(client, tenant) == [
        ("support.requested", session_id),
        ("support.approved", session_id),
        ("support.started", session_id),
        ("support.revoked", session_id),
    ]
    again = await client.execute(
        REVOKE, {"id": session_id}, actor=tenant.owner, tenant_id=tenant.tenant_id
    )
    assert again.codes == ["CONFLICT"]


async def test_support_refusals_each_with_its_code(
    client: GraphQLClient, database_url: str
) -> None:
    staff = await make_staff(client, database_url)
    colleague = await make_staff(client, database_url)
    tenant = await customer(client)
    admin = await client.add_member(tenant.owner, tenant.tenant_id, role="admin")
    user = await client.sign_up()

    # Only staff ask; a reason and a bounded duration are required; the tenant must exist.
    assert (await request(client, Staff(user, user.email or ""), tenant.tenant_id)).codes == [
        "FORBIDDEN"
    ]
    assert (await request(client, staff, tenant.tenant_id, reason="  ")).codes == ["BAD_USER_INPUT"]
    assert (await request(client, staff, tenant.tenant_id, duration=86401)).codes == [
        "BAD_USER_INPUT"
    ]
    assert (await request(client, staff, tenant.tenant_id, duration=10)).codes == ["BAD_USER_INPUT"]
    missing = "ten_" + "0" * 26
    assert (await request(client, staff, missing)).codes in (["NOT_FOUND"], ["BAD_USER_INPUT"])
    session_id = (await request(client, staff, tenant.tenant_id)).ok()["requestSupportAccess"][
        "supportSession"
    ]["id"]
    # An admin does not hold support:manage: letting staff in is the owners' call.
    by_admin = await client.execute(
        APPROVE, {"id": session_id}, actor=admin, tenant_id=tenant.tenant_id
    )
    assert by_admin.codes == ["FORBIDDEN"]
    # Nor does an API key decide it, whatever its scopes.
    key = await client.api_key(tenant.owner, tenant.tenant_id, ["support:manage"])
    by_key = await client.execute(
        APPROVE, {"id": session_id}, actor=key, tenant_id=tenant.tenant_id
    )
    assert by_key.codes == ["FORBIDDEN"]
    approved = await client.execute(
        APPROVE, {"id": session_id}, actor=tenant.owner, tenant_id=tenant.tenant_id
    )
    approved.ok()
    twice = await client.execute(
        APPROVE, {"id": session_id}, actor=tenant.owner, tenant_id=tenant.tenant_id
    )
    assert twice.codes == ["CONFLICT"]
    # Another staff member cannot start it: not theirs, not found.
    assert (await client.execute(START, {"id": session_id}, actor=colleague.actor)).codes == [
        "NOT_FOUND"
    ]
    # A support token is for its tenant only, and ends with the staff member's own session.
    token = (await client.execute(START, {"id": session_id}, actor=staff.actor)).ok()
    support = Actor(token=token["startSupportSession"]["token"]["accessToken"])
    other = await customer(client)
    assert (await client.execute(TENANT, actor=support, tenant_id=other.tenant_id)).codes == [
        "FORBIDDEN"
    ]
    # A token from another secret or a forged claim is not a token.
    forged = Actor(token=support.token[:-4] + "AAAA")
    assert (await client.execute(TENANT, actor=forged)).codes == ["UNAUTHENTICATED"]
    assert (await client.execute(LOGOUT, actor=staff.actor)).ok()
    ended = await client.execute(TENANT, actor=support)
    assert ended.codes == ["UNAUTHENTICATED"]

    # A staff member who loses the role loses every session's token at once.
    staff = await make_staff(client, database_url)
    session_id, support = await session_token(client, staff, tenant, "READ")
    assert (await client.execute(TENANT, actor=support)).ok()
    demoted = await asyncio.to_thread(
        coregraph,
        "create-staff",
        "--email",
        staff.email,
        "--role",
        "none",
        env=cli_env_for(database_url),
    )
    assert demoted.returncode == 0, demoted.stderr
    assert (await client.execute(TENANT, actor=support)).codes == ["UNAUTHENTICATED"]


TIMELINE = """query($tenant: ID!, $user: ID, $first: Int, $after: String, $from: DateTime) {
    supportTimeline(tenantId: $tenant, userId: $user, first: $first, after: $after, from: $from) {
        edges { cursor node { at source id name actorKind actorId actingForUserId targetType
            targetId supportSessionId detail } }
        pageInfo { hasNextPage endCursor } } }"""
CREATE_ENDPOINT = """mutation($input: CreateWebhookEndpointInput!) {
    createWebhookEndpoint(input: $input) { webhookEndpoint { id } } }"""


async def timeline(
    client: GraphQLClient, actor: Actor, tenant_id: str, **variables: Any
) -> list[dict[str, Any]]:
    """The whole timeline, page after page of ``first`` (default 100) entries."""
    entries: list[dict[str, Any]] = []
    after = None
    while True:
        page = (
            await client.execute(
                TIMELINE, {"tenant": tenant_id, "after": after, **variables}, actor=actor
            )
        ).ok()["supportTimeline"]
        entries += [edge["node"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return entries
        after = page["pageInfo"]["endCursor"]


async def eventually(check: Any, what: str, within: float = WAIT) -> Any:
    """``await check()`` until it answers something truthy, for at most ``within`` seconds."""
    for _ in range(int(within / 0.05)):
        if answer := await check():
            return answer
        await asyncio.sleep(0.05)
    raise AssertionError(f"waited {within} s for {what}")


async def test_the_support_timeline_merges_what_happened_to_one_tenant_in_time_order(
    database_url: str, relayed: Server, http: httpx.AsyncClient
) -> None:
    client = GraphQLClient(http, relayed.url)
    staff = await make_staff(client, database_url)
    tenant, other = await customer(client), await customer(client)
    owner, tenant_id = tenant.owner, tenant.tenant_id
    member = await client.add_member(owner, tenant_id, role="member")
    for who in (tenant, other):
        registered = await client.execute(
            REGISTER,
            {"input": {"type": "order.paid", "description": "", "schema": {"type": "object"}}},
            actor=who.owner,
            tenant_id=who.tenant_id,
        )
        registered.ok()
    async with Receiver(answer_failing) as receiver:
        endpoint = {"url": receiver.url("/hooks"), "eventTypes": ["order.*"]}
        made = await client.execute(
            CREATE_ENDPOINT, {"input": endpoint}, actor=owner, tenant_id=tenant_id
        )
        made.ok()
        # A second endpoint is past the limit: refused, and the refusal is kept.
        refused = await client.execute(
            CREATE_ENDPOINT, {"input": endpoint}, actor=owner, tenant_id=tenant_id
        )
        assert refused.codes == ["QUOTA_EXCEEDED"]
        for who in (tenant, other):
            emitted = await client.execute(
                EMIT,
                {"input": {"type": "order.paid", "data": {"order": 1}}},
                actor=who.owner,
                tenant_id=who.tenant_id,
            )
            emitted.ok()
        # A change held back for approval: its steps are the timeline's approvals.
        policy = await client.execute(
            """mutation($input: CreateApprovalPolicyInput!) {
                createApprovalPolicy(input: $input) { policy { id } } }""",
            {"input": {"name": "renames", "actions": ["tenant.update"]}},
            actor=owner,
            tenant_id=tenant_id,
        )
        policy.ok()
        held = await client.execute(
            """mutation { updateTenant(input: {name: "Renamed"}) {
                approvalRequired { request { id } } } }""",
            actor=owner,
            tenant_id=tenant_id,
            headers={"X-Approval-Reason": "rebrand"},
        )
        request_id = held.ok()["updateTenant"]["approvalRequired"]["request"]["id"]
        session_id, support = await session_token(client, staff, tenant, "READ")

        async def failed_and_refused() -> list[dict[str, Any]] | None:
            entries = await timeline(client, support, tenant_id)
            sources = {entry["source"] for entry in entries}
            return entries if {"WEBHOOK_FAILURE", "QUOTA_REFUSAL"} <= sources else None

        entries = await eventually(failed_and_refused, "a failed attempt and a kept refusal")

    # Every source, newest first by (at, id), nothing twice.
    assert {entry["source"] for entry in entries} >= {
        "AUDIT",
        "EVENT",
        "WEBHOOK_DELIVERY",
        "WEBHOOK_FAILURE",
        "QUOTA_REFUSAL",
        "APPROVAL",
    }
    keys = [(datetime.fromisoformat(e["at"]), e["id"]) for e in entries]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    by_source = {entry["source"]: entry for entry in entries}
    assert by_source["WEBHOOK_FAILURE"]["detail"] == "500"
    assert by_source["WEBHOOK_FAILURE"]["targetType"] == "WebhookDelivery"
    assert by_source["WEBHOOK_DELIVERY"]["name"] == "order.paid"
    asked = by_source["APPROVAL"]
    assert (asked["name"], asked["actorId"]) == ("approval.requested", owner.user_id)
    assert (asked["detail"]["requestId"], asked["detail"]["reason"]) == (request_id, "rebrand")
    kept = by_source["QUOTA_REFUSAL"]
    assert (kept["name"], kept["actorId"]) == ("quota.refused", owner.user_id)
    assert kept["detail"]["meter"] == "webhook_endpoints"
    Draft202012Validator(BUILTIN_EVENT_TYPES["quota.refused"].schema).validate(kept["detail"])
    assert (kept["detail"]["limit"], kept["detail"]["current"]) == (1, 1)
    actions = [e["name"] for e in entries if e["source"] == "AUDIT"]
    assert "support.approved" in actions and "tenant.created" in actions
    # Small pages walk the same timeline.
    assert await timeline(client, support, tenant_id, first=3) == entries

    # Never another tenant's rows: none of its events or audit entries, by any page.
    theirs = (
        await client.execute(
            """{ events(first: 100) { nodes { id } }
                tenant { auditLog(first: 100) { nodes { id } } } }""",
            actor=other.owner,
            tenant_id=other.tenant_id,
        )
    ).ok()
    their_ids = {n["id"] for n in theirs["events"]["nodes"]} | {
        n["id"] for n in theirs["tenant"]["auditLog"]["nodes"]
    }
    assert their_ids and not their_ids & {entry["id"] for entry in entries}
    ours = (
        await client.execute(
            "{ events(first: 100) { nodes { id } } }", actor=owner, tenant_id=tenant_id
        )
    ).ok()["events"]["nodes"]
    assert {n["id"] for n in ours} <= {entry["id"] for entry in entries}

    # One user: what they did, what was done for them, what was done to them.
    assert member.user_id is not None
    theirs_only = await timeline(client, support, tenant_id, user=member.user_id)
    assert theirs_only and all(
        member.user_id in (e["actorId"], e["actingForUserId"], e["targetId"]) for e in theirs_only
    )
    assert {(e["source"], e["name"]) for e in theirs_only} == {
        ("AUDIT", "invitation.accepted"),
        ("AUDIT", "member.added"),
        ("EVENT", "member.joined"),
    }
    # A time range narrows it.
    since = entries[2]["at"]
    assert await timeline(client, support, tenant_id, **{"from": since}) == [
        e for e in entries if datetime.fromisoformat(e["at"]) >= datetime.fromisoformat(since)
    ]
    assert session_id


async def test_the_support_timeline_is_read_only_inside_a_session_for_its_tenant(
    client: GraphQLClient, database_url: str
) -> None:
    staff = await make_staff(client, database_url)
    tenant, other = await customer(client), await customer(client)
    _session_id, support = await session_token(client, staff, tenant, "READ")
    variables = {"tenant": tenant.tenant_id}
    # The tenant's own owner, staff without a session, a session of another tenant: refused.
    owned = await client.execute(
        TIMELINE, variables, actor=tenant.owner, tenant_id=tenant.tenant_id
    )
    assert owned.codes == ["FORBIDDEN"] and owned.data == {"supportTimeline": None}
    assert (await client.execute(TIMELINE, variables, actor=staff.actor)).codes == ["FORBIDDEN"]
    elsewhere = await client.execute(TIMELINE, {"tenant": other.tenant_id}, actor=support)
    assert elsewhere.codes == ["FORBIDDEN"]
    # Bad input names its argument.
    for extra, field in (
        ({"after": "not-a-cursor"}, "after"),
        ({"user": "nobody"}, "userId"),
        ({"first": -1}, "first"),
        ({"from": "2026-12-02T08:00:00"}, "from"),
    ):
        bad = await client.execute(TIMELINE, {**variables, **extra}, actor=support)
        assert bad.codes == ["BAD_USER_INPUT"], (extra, bad.body)
        assert bad.errors[0]["extensions"].get("field") == field, bad.errors


async def test_an_act_session_cannot_ask_for_an_approval(
    database_url: str, relayed: Server, http: httpx.AsyncClient
) -> None:
    """A tenant's approval policy holds support's writes back too, and support cannot ask for
    the approval (its own people can): FORBIDDEN, nothing stored, nothing done."""
    client = GraphQLClient(http, relayed.url)
    staff = await make_staff(client, database_url)
    tenant = await customer(client)
    _, support = await session_token(client, staff, tenant, "ACT")
    policy = await client.execute(
        """mutation($input: CreateApprovalPolicyInput!) {
            createApprovalPolicy(input: $input) { policy { id } } }""",
        {"input": {"name": "meters", "actions": ["meter.*"]}},
        actor=tenant.owner,
        tenant_id=tenant.tenant_id,
    )
    policy.ok()
    meter = {"key": "app.calls", "name": "Calls", "unit": "call", "aggregation": "SUM"}
    refused = await client.execute(
        CREATE_METER, {"input": meter}, actor=support, headers={"X-Approval-Reason": "fix"}
    )
    assert refused.codes == ["FORBIDDEN"]
    assert "support session cannot ask" in refused.errors[0]["message"]
    requests = await client.execute(
        "{ approvalRequests(first: 10) { nodes { id } } }",
        actor=tenant.owner,
        tenant_id=tenant.tenant_id,
    )
    assert requests.ok()["approvalRequests"]["nodes"] == []
