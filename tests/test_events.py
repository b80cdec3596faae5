"""Business events: every mutation states one, edge apps emit their own against a registered
JSON Schema, a repeated idempotency key answers the first event, and the stream pages in
sequence order, walled by tenant, environment and permission."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from jsonschema import Draft202012Validator

from coregraph.services.events import BUILTIN_EVENT_TYPES
from tests.support import Actor, GraphQLClient, Response, unique

EVENTS = """query($types: [String!], $from: DateTime, $to: DateTime, $after: String, $first: Int) {
  events(types: $types, from: $from, to: $to, after: $after, first: $first) {
    edges { cursor node { id type sequence occurredAt environment actorKind actorId data } }
    pageInfo { hasNextPage endCursor } } }"""
REGISTER = """mutation($input: RegisterEventTypeInput!) { registerEventType(input: $input) {
    eventType { id type description schema } } }"""
EMIT = """mutation($input: EmitEventInput!) { emitEvent(input: $input) {
    eventId replayed event { id type sequence environment data } } }"""
EMIT_BLIND = """mutation($input: EmitEventInput!) { emitEvent(input: $input) {
    eventId replayed } }"""
EVENT_TYPES = "{ eventTypes { type description schema builtin registered { id type } } }"
INVITE = """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
    token invitationUrl invitation { id } } }"""
CREATE_ROLE = """mutation($input: CreateRoleInput!) { createRole(input: $input) {
    role { id key } } }"""
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id } } }"""
ORDER_PAID = {
    "type": "object",
    "properties": {
        "amount": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
    },
    "required": ["amount", "currency"],
}


@dataclass
class Team:
    client: GraphQLClient
    owner: Actor
    tenant_id: str

    async def run(self, query: str, variables: dict[str, Any], actor: Actor | None = None) -> Any:
        return (await self.call(query, variables, actor)).ok()

    async def call(
        self, query: str, variables: dict[str, Any], actor: Actor | None = None
    ) -> Response:
        actor = actor or self.owner
        tenant = None if actor.user_id is None else self.tenant_id  # a key carries its tenant
        return await self.client.execute(query, variables, actor=actor, tenant_id=tenant)

    async def events(self, actor: Actor | None = None, **filters: Any) -> list[dict[str, Any]]:
        """Every event the actor reads in this tenant (after ``filters['after']``), all pages."""
        found: list[dict[str, Any]] = []
        variables = {"first": 200, **filters}
        while True:
            page = (await self.run(EVENTS, variables, actor))["events"]
            found += [edge["node"] for edge in page["edges"]]
            if not page["pageInfo"]["hasNextPage"]:
                return found
            variables["after"] = page["pageInfo"]["endCursor"]

    async def cursor(self) -> str | None:
        """Where the stream stands now: read after it to see only what comes next."""
        variables: dict[str, Any] = {"first": 200}
        cursor = None
        while True:
            page = (await self.run(EVENTS, variables))["events"]
            cursor = page["pageInfo"]["endCursor"] or cursor
            if not page["pageInfo"]["hasNextPage"]:
                return cursor
            variables["after"] = cursor

    async def register(self, type_: str, schema: dict[str, Any], actor: Actor | None = None) -> Any:
        variables = {"input": {"type": type_, "description": "test", "schema": schema}}
        return (await self.run(REGISTER, variables, actor))["registerEventType"]["eventType"]

    async def emit(
        self, type_: str, data: Any, key: str | None = None, actor: Actor | None = None
    ) -> Response:
        variables = {"input": {"type": type_, "data": data, "idempotencyKey": key}}
        return await self.call(EMIT, variables, actor)


async def new_team(client: GraphQLClient) -> Team:
    owner = await client.sign_up()
    return Team(client, owner, await client.create_tenant(owner))


# --- every mutation kind states exactly its event ---

Step = Callable[[Team, dict[str, Any]], Awaitable[None]]


async def _nothing(team: Team, made: dict[str, Any]) -> None:
    return None


async def _invite(team: Team, made: dict[str, Any]) -> None:
    made["invitee"] = await team.client.sign_up()
    invited = await team.run(INVITE, {"input": {"email": made["invitee"].email, "role": "viewer"}})
    made["invitation_id"] = invited["inviteMember"]["invitation"]["id"]
    made["token"] = invited["inviteMember"]["token"]


async def _member(team: Team, made: dict[str, Any]) -> None:
    made["member"] = await team.client.add_member(team.owner, team.tenant_id, role="viewer")


async def _role(team: Team, made: dict[str, Any]) -> None:
    role = await team.run(
        CREATE_ROLE,
        {"input": {"key": unique("role-"), "name": "Support", "permissions": ["tenant:read"]}},
    )
    made["role_id"] = role["createRole"]["role"]["id"]


async def _key(team: Team, made: dict[str, Any]) -> None:
    key = await team.run(CREATE_KEY, {"input": {"name": "job", "scopes": ["tenant:read"]}})
    made["key_id"] = key["createApiKey"]["apiKey"]["id"]


def _mutation(query: str, variables: Callable[[dict[str, Any]], dict[str, Any]]) -> Step:
    async def act(team: Team, made: dict[str, Any]) -> None:
        await team.run(query, variables(made))

    return act


async def _accept(team: Team, made: dict[str, Any]) -> None:
    accepted = await team.client.execute(
        "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
        {"t": made["token"]},
        actor=made["invitee"],
    )
    accepted.ok()


@dataclass(frozen=True)
class MutationKind:
    event: str
    arrange: Step
    act: Step
    # The event's data names the object acted on: (data field, key in ``made``).
    names: tuple[str, str] | None = None


MUTATION_KINDS = [
    MutationKind(
        "tenant.updated",
        _nothing,
        _mutation('mutation { updateTenant(input: {name: "Renamed"}) { tenant { id } } }', dict),
    ),
    MutationKind("member.invited", _nothing, _invite),
    MutationKind(
        "invitation.revoked",
        _invite,
        _mutation(
            "mutation($id: ID!) { revokeInvitation(id: $id) { invitation { id } } }",
            lambda made: {"id": made["invitation_id"]},
        ),
        ("invitationId", "invitation_id"),
    ),
    MutationKind("member.joined", _invite, _accept),
    MutationKind(
        "member.removed",
        _member,
        _mutation(
            "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
            lambda made: {"id": made["member"].membership_id},
        ),
    ),
    MutationKind(
        "member.role_changed",
        _member,
        _mutation(
            """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
                membership { id } } }""",
            lambda made: {"input": {"membershipId": made["member"].membership_id, "role": "admin"}},
        ),
    ),
    MutationKind("role.created", _nothing, _role),
    MutationKind(
        "role.updated",
        _role,
        _mutation(
            """mutation($input: UpdateRoleInput!) { updateRole(input: $input) { role { id } } }""",
            lambda made: {"input": {"roleId": made["role_id"], "name": "Support 2"}},
        ),
        ("roleId", "role_id"),
    ),
    MutationKind(
        "role.deleted",
        _role,
        _mutation(
            "mutation($id: ID!) { deleteRole(roleId: $id) { deletedRoleId } }",
            lambda made: {"id": made["role_id"]},
        ),
        ("roleId", "role_id"),
    ),
    MutationKind("apikey.created", _nothing, _key),
    MutationKind(
        "apikey.revoked",
        _key,
        _mutation(
            "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id } } }",
            lambda made: {"id": made["key_id"]},
        ),
        ("apiKeyId", "key_id"),
    ),
    MutationKind(
        "event_type.registered",
        _nothing,
        _mutation(
            REGISTER,
            lambda made: {"input": {"type": unique("shop.x"), "schema": {"type": "object"}}},
        ),
    ),
]


def _assert_no_secret(data: Any, secrets: list[str]) -> None:
    text = json.dumps(data)
    for secret in secrets:
        assert secret not in text
    for word in ("secret", "hash", "password", "token"):
        assert word not in text.lower().replace("invitationurl", ""), data


def test_the_table_covers_every_built_in_event_type() -> None:
    # audit.pruned is the worker's, not a mutation's: tests/test_audit_retention.py. The
    # webhook_endpoint.* events: tests/test_webhooks_api.py (each change, its event).
    webhook_endpoint = {t for t in BUILTIN_EVENT_TYPES if t.startswith("webhook_endpoint.")}
    covered = {kind.event for kind in MUTATION_KINDS} | {"tenant.created", "audit.pruned"}
    covered |= webhook_endpoint
    # file.uploaded and file.deleted: tests/test_files.py (they need a storage backend).
    covered |= {"file.uploaded", "file.deleted"}
    # meter.created and usage.recorded: tests/test_usage.py.
    covered |= {"meter.created", "usage.recorded"}
    # usage.threshold_reached: tests/test_quotas.py.
    covered |= {"usage.threshold_reached"}
    # apikey.rate_limits_changed: tests/test_plan_rate_limits.py.
    covered |= {"apikey.rate_limits_changed"}
    # agent.*: tests/test_agents.py (each change, its event).
    covered |= {t for t in BUILTIN_EVENT_TYPES if t.startswith("agent.")}
    # support.*: tests/test_support.py (each transition, its event); quota.refused there too
    # (a refused webhook endpoint, kept and read back through supportTimeline).
    covered |= {t for t in BUILTIN_EVENT_TYPES if t.startswith("support.")} | {"quota.refused"}
    assert covered == set(BUILTIN_EVENT_TYPES)


@pytest.mark.parametrize("kind", MUTATION_KINDS, ids=lambda kind: kind.event)
async def test_each_mutation_kind_emits_exactly_its_event(
    client: GraphQLClient, kind: MutationKind
) -> None:
    team = await new_team(client)
    made: dict[str, Any] = {}
    await kind.arrange(team, made)
    before = await team.cursor()

    await kind.act(team, made)

    emitted = await team.events(after=before)
    assert [e["type"] for e in emitted] == [kind.event]
    event = emitted[0]
    assert (event["actorKind"] == "user" and event["actorId"] == team.owner.user_id) or (
        kind.event == "member.joined" and event["actorId"] == made["invitee"].user_id
    )
    Draft202012Validator(BUILTIN_EVENT_TYPES[kind.event].schema).validate(event["data"])
    if kind.names is not None:
        data_field, made_key = kind.names
        assert event["data"][data_field] == made[made_key]
    _assert_no_secret(
        {k: v for k, v in event["data"].items() if k != "invitationUrl"},
        [made["token"]] if "token" in made else [],
    )


async def test_creating_a_tenant_starts_its_stream_with_tenant_created(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    [created] = await team.events()
    assert created["type"] == "tenant.created" and created["sequence"] == 1
    assert created["data"]["tenantId"] == team.tenant_id
    assert created["data"]["ownerUserId"] == team.owner.user_id
    Draft202012Validator(BUILTIN_EVENT_TYPES["tenant.created"].schema).validate(created["data"])


async def test_member_invited_carries_a_link_the_invitee_can_accept_with(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    invitee = await client.sign_up()
    await team.run(INVITE, {"input": {"email": invitee.email, "role": "member"}})

    # An edge app sends the email from the event alone.
    [invited] = await team.events(types=["member.invited"])
    data = invited["data"]
    assert data["email"] == invitee.email and data["role"] == "member" and data["expiresAt"]
    token = parse_qs(urlparse(data["invitationUrl"]).query)["token"][0]
    # The token travels inside the link and nowhere else in the stream.
    everything = json.dumps([e["data"] for e in await team.events()])
    assert everything.count(token) == 1

    accepted = await client.execute(
        "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
        {"t": token},
        actor=invitee,
    )
    membership_id = accepted.ok()["acceptInvitation"]["membership"]["id"]
    [joined] = await team.events(types=["member.joined"])
    assert joined["data"]["membershipId"] == membership_id
    assert joined["data"]["invitationId"] == data["invitationId"]


async def test_tenantless_actions_emit_nothing(client: GraphQLClient) -> None:
    team = await new_team(client)
    before = await team.cursor()
    await client.execute(
        """mutation($input: LoginInput!) { login(input: $input) { accessToken } }""",
        {"input": {"email": team.owner.email, "password": "correct-horse-battery-staple"}},
    )
    assert await team.events(after=before) == []


# --- an edge app's own events ---


async def test_an_edge_app_registers_a_type_and_emits_payloads_that_meet_its_schema(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    app = await client.api_key(team.owner, team.tenant_id, ["events:read", "events:write"])
    registered = await team.register("order.paid", ORDER_PAID, actor=app)
    assert registered["type"] == "order.paid" and registered["schema"] == ORDER_PAID

    catalog = (await team.run(EVENT_TYPES, {}, app))["eventTypes"]
    by_type = {entry["type"]: entry for entry in catalog}
    assert set(BUILTIN_EVENT_TYPES) <= by_type.keys()
    assert by_type["member.invited"]["builtin"] and by_type["member.invited"]["description"]
    assert by_type["order.paid"] == {
        "type": "order.paid",
        "description": "test",
        "schema": ORDER_PAID,
        "builtin": False,
        "registered": {"id": registered["id"], "type": "order.paid"},
    }

    emitted = await team.emit("order.paid", {"amount": 12.5, "currency": "EUR"}, actor=app)
    event = emitted.ok()["emitEvent"]["event"]
    assert event["type"] == "order.paid" and event["environment"] == "LIVE"
    assert event["data"] == {"amount": 12.5, "currency": "EUR"}
    [streamed] = await team.events(types=["order.paid"])
    assert streamed["id"] == event["id"] and streamed["sequence"] == event["sequence"]
    assert streamed["actorKind"] == "api_key"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"amount": "12", "currency": "EUR"}, "$.amount"),
        ({"amount": -1, "currency": "EUR"}, "$.amount"),
        ({"currency": "EUR"}, "$.amount"),
        ({"amount": 1, "currency": "EURO"}, "$.currency"),
        ([1, 2], None),
        ({"amount": 1, "currency": "EU\u0000"}, None),
    ],
)
async def test_a_payload_that_misses_its_schema_is_refused_naming_the_path(
    client: GraphQLClient, data: Any, path: str | None
) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    before = await team.cursor()

    refused = await team.emit("order.paid", data)

    assert refused.codes == ["BAD_USER_INPUT"]
    extensions = refused.errors[0]["extensions"]
    assert extensions["field"] == "data"
    if path is not None:
        assert extensions["path"] == path
    assert await team.events(after=before) == []


@pytest.mark.parametrize(
    ("type_", "schema", "field"),
    [
        ("orderpaid", {"type": "object"}, "type"),  # no namespace
        ("Order.Paid", {"type": "object"}, "type"),
        ("member.promoted", {"type": "object"}, "type"),  # coregraph's namespace
        ("tenant.created", {"type": "object"}, "type"),
        ("order.paid", {"type": "nope"}, "schema"),
        ("order.paid", {"$ref": "https://example.com/schema.json"}, "schema"),
        ("order.paid", ["not", "an", "object"], "schema"),
    ],
)
async def test_a_bad_registration_is_refused(
    client: GraphQLClient, type_: str, schema: Any, field: str
) -> None:
    team = await new_team(client)
    refused = await team.call(
        REGISTER, {"input": {"type": type_, "description": "", "schema": schema}}
    )
    assert refused.codes == ["BAD_USER_INPUT"]
    assert refused.errors[0]["extensions"]["field"] == field
    assert [e["type"] for e in await team.events()] == ["tenant.created"]


async def test_a_type_is_registered_once_and_only_registered_types_are_emitted(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    again = await team.call(
        REGISTER, {"input": {"type": "order.paid", "schema": {"type": "object"}}}
    )
    assert again.codes == ["CONFLICT"]

    unknown = await team.emit("order.refunded", {})
    assert unknown.codes == ["BAD_USER_INPUT"]
    assert unknown.errors[0]["extensions"]["field"] == "type"
    builtin = await team.emit("tenant.created", {})
    assert builtin.codes == ["BAD_USER_INPUT"]
    # Another tenant's registration is not this tenant's.
    other = await new_team(client)
    assert (await other.emit("order.paid", {"amount": 1, "currency": "EUR"})).codes == [
        "BAD_USER_INPUT"
    ]


# --- idempotency ---


async def test_a_repeated_idempotency_key_answers_the_first_event(client: GraphQLClient) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    key = unique("order-42-")

    first = (await team.emit("order.paid", {"amount": 1, "currency": "EUR"}, key)).ok()
    second = (await team.emit("order.paid", {"amount": 2, "currency": "USD"}, key)).ok()

    assert first["emitEvent"]["replayed"] is False and second["emitEvent"]["replayed"] is True
    assert second["emitEvent"]["event"] == first["emitEvent"]["event"]
    assert len(await team.events(types=["order.paid"])) == 1
    # The same key in the test environment is another stream's key.
    test_key = await client.api_key(
        team.owner, team.tenant_id, ["events:read", "events:write"], environment="TEST"
    )
    in_test = await team.emit("order.paid", {"amount": 1, "currency": "EUR"}, key, test_key)
    assert in_test.ok()["emitEvent"]["event"]["environment"] == "TEST"
    assert in_test.ok()["emitEvent"]["event"]["id"] != first["emitEvent"]["event"]["id"]


async def test_concurrent_emits_with_one_key_make_one_event_and_agree_on_it(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    for round_ in range(3):
        key = unique(f"race-{round_}-")
        answers = await asyncio.gather(
            *(team.emit("order.paid", {"amount": n, "currency": "EUR"}, key) for n in range(6))
        )
        ids = {answer.ok()["emitEvent"]["event"]["id"] for answer in answers}
        assert len(ids) == 1
        assert sorted(a.ok()["emitEvent"]["replayed"] for a in answers).count(False) <= 1
    assert len(await team.events(types=["order.paid"])) == 3


# --- who reads what ---


async def test_a_write_only_key_emits_but_cannot_read_events(client: GraphQLClient) -> None:
    team = await new_team(client)
    writer = await client.api_key(team.owner, team.tenant_id, ["events:write"])
    await team.register("order.paid", ORDER_PAID, actor=writer)
    assert (await team.run(EVENT_TYPES, {}, writer))["eventTypes"]  # it may learn the schemas

    blind = await team.call(
        EMIT_BLIND,
        {"input": {"type": "order.paid", "data": {"amount": 1, "currency": "EUR"}}},
        writer,
    )
    event_id = blind.ok()["emitEvent"]["eventId"]
    assert event_id.startswith("evt_")

    seeing = await team.emit("order.paid", {"amount": 2, "currency": "EUR"}, actor=writer)
    assert seeing.codes == ["FORBIDDEN"]
    assert seeing.data["emitEvent"]["eventId"].startswith("evt_")  # emitted nonetheless
    assert (await team.call(EVENTS, {}, writer)).codes == ["FORBIDDEN"]
    node = await team.call("query($id: ID!) { node(id: $id) { id } }", {"id": event_id}, writer)
    assert node.codes == ["FORBIDDEN"]
    assert next(e["id"] for e in await team.events(types=["order.paid"])) == event_id


async def test_another_tenant_and_the_other_environment_see_none_of_it(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    emitted = (await team.emit("order.paid", {"amount": 1, "currency": "EUR"})).ok()
    event_id = emitted["emitEvent"]["event"]["id"]

    other = await new_team(client)
    assert [e["type"] for e in await other.events()] == ["tenant.created"]
    assert "order.paid" not in {t["type"] for t in (await other.run(EVENT_TYPES, {}))["eventTypes"]}
    # Addressing the first tenant: not a member there.
    foreign = await client.execute(EVENTS, {}, actor=other.owner, tenant_id=team.tenant_id)
    assert foreign.codes and foreign.codes[0] in {"FORBIDDEN", "UNAUTHENTICATED"}
    looked_up = await other.call("query($id: ID!) { node(id: $id) { id } }", {"id": event_id})
    assert looked_up.codes == ["NOT_FOUND"]
    entities = await other.call(
        "query($r: [_Any!]!) { _entities(representations: $r) { __typename } }",
        {"r": [{"__typename": "Event", "id": event_id}]},
    )
    assert entities.codes == ["NOT_FOUND"]

    test_reader = await client.api_key(team.owner, team.tenant_id, ["events:read"], "TEST")
    # The test environment's stream holds only what happened there: the key's own issue.
    assert [e["type"] for e in await team.events(actor=test_reader)] == ["apikey.created"]


# --- paging ---


def _sequence_of(cursor: str) -> int:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    assert raw.startswith("seq:")
    return int(raw.removeprefix("seq:"))


async def test_paging_by_cursor_returns_every_event_once_in_sequence_order(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    await team.register("order.shipped", {"type": "object"})
    for n in range(7):
        await team.emit("order.paid", {"amount": n, "currency": "EUR"})
        if n % 2:
            await team.emit("order.shipped", {"n": n})

    pages: list[list[dict[str, Any]]] = []
    variables: dict[str, Any] = {"first": 3}
    while True:
        page = (await team.run(EVENTS, variables))["events"]
        for edge in page["edges"]:
            assert _sequence_of(edge["cursor"]) == edge["node"]["sequence"]
        pages.append([edge["node"] for edge in page["edges"]])
        if not page["pageInfo"]["hasNextPage"]:
            break
        variables["after"] = page["pageInfo"]["endCursor"]
    streamed = [event for page in pages for event in page]
    assert all(len(page) <= 3 for page in pages)
    assert [e["sequence"] for e in streamed] == list(range(1, len(streamed) + 1))
    assert len({e["id"] for e in streamed}) == len(streamed) == 1 + 2 + 7 + 3

    paid = await team.events(types=["order.paid"])
    assert [e["data"]["amount"] for e in paid] == list(range(7))
    shipped = await team.events(types=["order.shipped"], first=1)
    assert [e["data"]["n"] for e in shipped] == [1, 3, 5]
    # from is inclusive, to exclusive: the window of the fourth event holds exactly it.
    fourth = streamed[3]
    window = await team.events(**{"from": fourth["occurredAt"], "to": streamed[4]["occurredAt"]})
    assert fourth["id"] in {e["id"] for e in window}
    assert streamed[4]["id"] not in {e["id"] for e in window}


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"after": "not-a-cursor"}, "after"),
        ({"after": base64.urlsafe_b64encode(b"c1:evt_x").decode()}, "after"),
        ({"types": ["Bad Type"]}, "types"),
        ({"first": -1}, "first"),
        ({"from": "2026-01-01T00:00:00"}, "from"),
    ],
)
async def test_bad_stream_arguments_are_bad_input(
    client: GraphQLClient, variables: dict[str, Any], field: str
) -> None:
    team = await new_team(client)
    refused = await team.call(EVENTS, variables)
    assert refused.codes == ["BAD_USER_INPUT"]
    assert refused.errors[0]["extensions"]["field"] == field


# --- emitEvents: a batch in one transaction ---

EMIT_MANY = """mutation($inputs: [EmitEventInput!]!) { emitEvents(inputs: $inputs) {
    items { eventId replayed event { id type sequence data } } } }"""


def _paid(amount: Any, key: str | None = None) -> dict[str, Any]:
    return {
        "type": "order.paid",
        "data": {"amount": amount, "currency": "EUR"},
        "idempotencyKey": key,
    }


async def _emit_many(
    team: Team, inputs: list[dict[str, Any]], actor: Actor | None = None
) -> Response:
    return await team.call(EMIT_MANY, {"inputs": inputs}, actor)


async def test_a_batch_of_300_takes_one_unbroken_range_of_the_stream(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    app = await client.api_key(team.owner, team.tenant_id, ["events:read", "events:write"])
    await team.register("order.paid", ORDER_PAID)
    before = await team.cursor()

    answer = (await _emit_many(team, [_paid(n) for n in range(300)], app)).ok()

    items = answer["emitEvents"]["items"]
    assert len(items) == 300 and not any(item["replayed"] for item in items)
    sequences = [item["event"]["sequence"] for item in items]
    assert sequences == list(range(sequences[0], sequences[0] + 300))
    assert [item["event"]["data"]["amount"] for item in items] == list(range(300))
    streamed = await team.events(after=before)
    assert [e["id"] for e in streamed] == [item["eventId"] for item in items]
    assert {e["actorKind"] for e in streamed} == {"api_key"}


@pytest.mark.parametrize(
    ("bad", "field", "path"),
    [
        ({"type": "order.paid", "data": {"amount": -1, "currency": "EUR"}}, "data", "$.amount"),
        ({"type": "order.paid", "data": {"amount": 1}}, "data", "$.currency"),
        ({"type": "order.refunded", "data": {}}, "type", None),
        ({"type": "order.paid", "data": [1]}, "data", None),
        ({**_paid(1), "idempotencyKey": ""}, "idempotencyKey", None),
    ],
)
async def test_one_bad_item_refuses_the_whole_batch_naming_its_index(
    client: GraphQLClient, bad: dict[str, Any], field: str, path: str | None
) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    before = await team.cursor()
    inputs = [_paid(n, unique("ok-")) for n in range(10)]
    inputs[7] = bad

    refused = await _emit_many(team, inputs)

    assert refused.codes == ["BAD_USER_INPUT"]
    assert refused.data == {"emitEvents": None}
    extensions = refused.errors[0]["extensions"]
    assert extensions["index"] == 7 and extensions["field"] == field
    assert refused.errors[0]["message"].startswith(f"inputs[7].{field}")
    if path is not None:
        assert extensions["path"] == path
    assert await team.events(after=before) == []
    # None of the good items' keys was spent: the same batch, mended, writes all ten.
    inputs[7] = _paid(7)
    mended = (await _emit_many(team, inputs)).ok()["emitEvents"]["items"]
    assert not any(item["replayed"] for item in mended)
    assert len(await team.events(after=before)) == 10


async def test_idempotency_keys_hold_across_and_within_batches(client: GraphQLClient) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    key_a, key_b, key_c = unique("a-"), unique("b-"), unique("c-")
    single = (await team.emit("order.paid", {"amount": 1, "currency": "EUR"}, key_a)).ok()
    before = await team.cursor()

    items = (
        await _emit_many(
            team, [_paid(2, key_a), _paid(3, key_b), _paid(4), _paid(5, key_b), _paid(6, key_c)]
        )
    ).ok()["emitEvents"]["items"]

    # key_a was used by emitEvent, key_b twice in this batch: the later ones answer the first.
    assert [item["replayed"] for item in items] == [True, False, False, True, False]
    assert items[0]["eventId"] == single["emitEvent"]["event"]["id"]
    assert items[3]["event"] == items[1]["event"] and items[3]["event"]["data"]["amount"] == 3
    written = await team.events(after=before)
    assert [e["data"]["amount"] for e in written] == [3, 4, 6]

    # A second batch with the same keys makes nothing new and answers the same events.
    again = (await _emit_many(team, [_paid(7, key_c), _paid(8, key_b)])).ok()["emitEvents"]
    assert [item["replayed"] for item in again["items"]] == [True, True]
    assert [item["eventId"] for item in again["items"]] == [
        items[4]["eventId"],
        items[1]["eventId"],
    ]
    replayed = (await team.emit("order.paid", {"amount": 9, "currency": "EUR"}, key_b)).ok()
    assert replayed["emitEvent"]["event"]["id"] == items[1]["eventId"]
    assert len(await team.events(after=before)) == 3


async def test_concurrent_batches_sharing_a_key_make_its_event_once(client: GraphQLClient) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    before = await team.cursor()
    shared = unique("shared-")
    answers = await asyncio.gather(
        *(_emit_many(team, [_paid(n), _paid(100 + n, shared)]) for n in range(4))
    )
    ids = {answer.ok()["emitEvents"]["items"][1]["eventId"] for answer in answers}
    assert len(ids) == 1
    written = await team.events(after=before)
    assert sorted(e["data"]["amount"] for e in written if e["data"]["amount"] < 100) == [0, 1, 2, 3]
    assert len(written) == 5
    assert [e["sequence"] for e in written] == list(
        range(written[0]["sequence"], written[0]["sequence"] + 5)
    )


async def test_a_batch_over_the_limit_is_refused_whole(client: GraphQLClient) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    before = await team.cursor()
    limit = 500  # COREGRAPH_MAX_EVENT_BATCH's default

    refused = await _emit_many(team, [_paid(n) for n in range(limit + 1)])

    assert refused.codes == ["BAD_USER_INPUT"]
    assert refused.errors[0]["extensions"]["field"] == "inputs"
    assert str(limit) in refused.errors[0]["message"]
    assert await team.events(after=before) == []
    assert (await _emit_many(team, [])).ok() == {"emitEvents": {"items": []}}


async def test_emitting_a_batch_needs_events_write(client: GraphQLClient) -> None:
    team = await new_team(client)
    await team.register("order.paid", ORDER_PAID)
    before = await team.cursor()
    reader = await client.api_key(team.owner, team.tenant_id, ["events:read"])
    viewer = await client.add_member(team.owner, team.tenant_id, role="viewer")

    for actor in (reader, viewer):
        refused = await _emit_many(team, [_paid(1), _paid(2)], actor)
        assert refused.codes == ["FORBIDDEN"]
    writer = await client.api_key(team.owner, team.tenant_id, ["events:write"])
    blind = await team.call(
        "mutation($i: [EmitEventInput!]!) { emitEvents(inputs: $i) { items { eventId } } }",
        {"i": [_paid(3)]},
        writer,
    )
    assert blind.ok()["emitEvents"]["items"][0]["eventId"].startswith("evt_")
    written = await team.events(after=before, types=["order.paid"])
    assert [e["data"]["amount"] for e in written] == [3]
