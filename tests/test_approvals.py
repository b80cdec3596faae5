"""Approval gates (issue 11): a tenant's policies hold sensitive mutations back until other
people approve. The gated mutation does not run: its payload answers approvalRequired with
the stored request; the last approval runs it once, as the requester, with the requester's
rights as they are then. Self-approval, an agent's sponsor approving it, replays, racing
approvers, expiry and a requester demoted meanwhile — each with its answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from graphql import get_named_type

from coregraph.api import build_schema
from coregraph.schema.approvals import MutationPayload
from coregraph.services import approvals
from coregraph.settings import Settings
from tests.streams_support import engine_for, subscribed
from tests.support import Actor, GraphQLClient, Response, Server, unique
from tests.test_agents import agent_with_key

POLICY = """mutation($input: CreateApprovalPolicyInput!) { createApprovalPolicy(input: $input) {
    policy { id actions approvalsRequired principalKinds } } }"""
DELETE_POLICY = """mutation($id: ID!) { deleteApprovalPolicy(id: $id) { deletedPolicyId
    approvalRequired { request { id } } } }"""
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id } approvalRequired { request { id status action reason
    requestedBy { kind userId } input } } } }"""
UPDATE_TENANT = """mutation($input: UpdateTenantInput!) { updateTenant(input: $input) {
    tenant { name } approvalRequired { request { id status } } } }"""
APPROVE = """mutation($id: ID!, $comment: String) { approveRequest(id: $id, comment: $comment) {
    request { id status result errorCode errorMessage decisions { reviewerUserId approved } }
} }"""
REJECT = """mutation($id: ID!) { rejectRequest(id: $id, comment: "no") {
    request { id status } } }"""
REQUEST = """query($id: ID!) { node(id: $id) { ... on ApprovalRequest { id status result
    errorCode } } }"""
REQUESTS = """query($status: [ApprovalStatus!]) { approvalRequests(status: $status, first: 50) {
    nodes { id status action } } }"""
REQUEST_EXPIRY = """query($id: ID!) { node(id: $id) { ... on ApprovalRequest { expiresAt } } }"""
TENANT_NAME = "{ tenant { name } }"
KEYS = "{ tenant { apiKeys(first: 100) { nodes { name } } } }"
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id } } }"""


def why(reason: str = "a partner integration needs it") -> dict[str, str]:
    return {"X-Approval-Reason": reason}


async def run(
    client: GraphQLClient,
    query: str,
    variables: dict[str, Any] | None,
    actor: Actor,
    tenant: str,
    **headers: str,
) -> Response:
    return await client.execute(query, variables, actor=actor, tenant_id=tenant, headers=headers)


async def policy(client: GraphQLClient, owner: Actor, tenant: str, **fields: Any) -> str:
    r = await run(client, POLICY, {"input": {"name": unique("policy"), **fields}}, owner, tenant)
    return str(r.ok()["createApprovalPolicy"]["policy"]["id"])


async def team(client: GraphQLClient) -> tuple[str, Actor, Actor, Actor]:
    """A tenant with its owner and two admins (admins hold approvals:review)."""
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    first = await client.add_member(owner, tenant, "admin")
    second = await client.add_member(owner, tenant, "admin")
    return tenant, owner, first, second


async def ask_for_manage_key(
    client: GraphQLClient, actor: Actor, tenant: str, name: str | None = None
) -> dict[str, Any]:
    r = await client.execute(
        CREATE_KEY,
        {"input": {"name": name or unique("key"), "scopes": ["apikeys:manage"]}},
        actor=actor,
        tenant_id=tenant,
        headers=why(),
    )
    payload = r.ok()["createApiKey"]
    assert payload["secret"] is None and payload["apiKey"] is None, "it must not have run"
    return dict(payload["approvalRequired"]["request"])


def test_every_mutation_payload_can_answer_approval_required() -> None:
    """Every Mutation field returns a MutationPayload, and every field is either gated by an
    action of the catalog or named as never gated: a new mutation cannot slip past gates."""
    schema = build_schema(Settings())
    mutation = schema._schema.mutation_type
    assert mutation is not None
    for name, field in mutation.fields.items():
        payload = get_named_type(field.type)
        assert "MutationPayload" in [i.name for i in payload.interfaces], name  # type: ignore[union-attr]
        assert (
            name in approvals.ACTIONS
            or name in approvals.EVENT_ACTIONS
            or name in approvals.UNGATED
        ), name
        if name in approvals.UNGATED:
            continue
        # Held back, its other fields answer null: none may be non-null.
        for inner_name, inner in payload.fields.items():  # type: ignore[union-attr]
            assert not str(inner.type).endswith("!"), f"{name}: {inner_name}"
    assert issubclass(MutationPayload, object)


async def test_a_manage_scoped_key_waits_for_a_second_person_and_runs_once_approved(
    client: GraphQLClient,
) -> None:
    tenant, owner, admin, _ = await team(client)
    await policy(
        client,
        owner,
        tenant,
        actions=["api_key.create"],
        argumentPath="input.scopes",
        argumentMatches="*:manage",
    )
    # A key without a manage scope is not held back.
    r = await run(
        client,
        CREATE_KEY,
        {"input": {"name": unique("key"), "scopes": ["tenant:read"]}},
        owner,
        tenant,
    )
    plain = r.ok()["createApiKey"]
    assert plain["secret"] and plain["approvalRequired"] is None
    # Without a reason, a gated mutation is refused before anything is stored.
    r = await run(
        client,
        CREATE_KEY,
        {"input": {"name": "x", "scopes": ["apikeys:manage"]}},
        owner,
        tenant,
    )
    assert r.codes == ["BAD_USER_INPUT"]
    assert r.errors[0]["extensions"]["field"] == "X-Approval-Reason"

    name = unique("partner-key")
    request = await ask_for_manage_key(client, owner, tenant, name)
    assert request["status"] == "PENDING"
    assert request["action"] == "api_key.create"
    assert request["reason"] == "a partner integration needs it"
    assert request["requestedBy"] == {"kind": "USER", "userId": owner.user_id}
    assert request["input"] == {"input": {"name": name, "scopes": ["apikeys:manage"]}}
    keys = (await run(client, KEYS, None, owner, tenant)).ok()["tenant"]["apiKeys"]["nodes"]
    assert name not in [k["name"] for k in keys], "the key must not exist before approval"

    # The requester cannot approve its own request.
    r = await run(client, APPROVE, {"id": request["id"]}, owner, tenant)
    assert r.codes == ["FORBIDDEN"]
    # A second person does: the mutation runs, as the requester.
    r = await run(client, APPROVE, {"id": request["id"], "comment": "ok"}, admin, tenant)
    decided = r.ok()["approveRequest"]["request"]
    assert decided["status"] == "APPROVED"
    assert decided["decisions"] == [{"reviewerUserId": admin.user_id, "approved": True}]
    assert decided["result"]["secret"] == "[redacted]", "credentials are the requester's"
    mine = (await run(client, REQUEST, {"id": request["id"]}, owner, tenant)).ok()["node"]
    secret = mine["result"]["secret"]
    assert secret.startswith("cg_live_")
    # The key works, and was made by the requester.
    r = await client.execute(TENANT_NAME, actor=Actor(token=secret), tenant_id=tenant)
    assert r.codes == ["FORBIDDEN"], "apikeys:manage alone does not read the tenant"
    keys = (await run(client, KEYS, None, owner, tenant)).ok()["tenant"]["apiKeys"]["nodes"]
    assert [k["name"] for k in keys].count(name) == 1
    # No replay: the request is decided.
    r = await run(client, APPROVE, {"id": request["id"]}, admin, tenant)
    assert r.codes == ["CONFLICT"]

    # Audited and evented, each step.
    events = await run(
        client,
        """{ events(types: ["approval.requested", "approval.approved", "approval.executed"],
            first: 50) { nodes { type data } } }""",
        None,
        owner,
        tenant,
    )
    steps = [
        e["type"]
        for e in events.ok()["events"]["nodes"]
        if e["data"].get("requestId") == request["id"]
    ]
    assert steps == ["approval.requested", "approval.approved", "approval.executed"]


async def test_rejected_requests_never_run_and_reviewers_need_the_permission(
    client: GraphQLClient,
) -> None:
    tenant, owner, admin, _ = await team(client)
    member = await client.add_member(owner, tenant, "member")
    key = await client.api_key(owner, tenant, ["approvals:review", "tenant:read"])
    await policy(client, owner, tenant, actions=["tenant.*"])
    r = await run(client, UPDATE_TENANT, {"input": {"name": "Renamed"}}, admin, tenant, **why())
    request = r.ok()["updateTenant"]["approvalRequired"]["request"]
    # A member without approvals:review, and an API key (not a person), may not decide.
    assert (await run(client, APPROVE, {"id": request["id"]}, member, tenant)).codes == [
        "FORBIDDEN"
    ]
    assert (await run(client, APPROVE, {"id": request["id"]}, key, tenant)).codes == ["FORBIDDEN"]
    # Another tenant's reviewer does not even see it.
    other_owner = await client.sign_up()
    other = await client.create_tenant(other_owner)
    r = await run(client, APPROVE, {"id": request["id"]}, other_owner, other)
    assert r.codes == ["NOT_FOUND"]
    r = await run(client, REJECT, {"id": request["id"]}, owner, tenant)
    assert r.ok()["rejectRequest"]["request"]["status"] == "REJECTED"
    name = (await run(client, TENANT_NAME, None, owner, tenant)).ok()["tenant"]["name"]
    assert name != "Renamed"
    assert (await run(client, APPROVE, {"id": request["id"]}, owner, tenant)).codes == ["CONFLICT"]
    # The requester sees its own requests; a member sees none of them.
    mine = (await run(client, REQUESTS, None, admin, tenant)).ok()["approvalRequests"]["nodes"]
    assert [(r["id"], r["status"]) for r in mine] == [(request["id"], "REJECTED")]
    theirs = await run(client, REQUESTS, None, member, tenant)
    assert theirs.ok()["approvalRequests"]["nodes"] == []


async def test_the_sponsor_of_an_agent_cannot_approve_its_request(
    client: GraphQLClient,
) -> None:
    tenant, owner, admin, _ = await team(client)
    agent_id, agent = await agent_with_key(client, owner, tenant, ["tenant:manage"])
    await policy(client, owner, tenant, actions=["*"], principalKinds=["AGENT"])
    # The policy is for agents: the owner's own change runs.
    r = await run(client, UPDATE_TENANT, {"input": {"name": "By owner"}}, owner, tenant)
    assert r.ok()["updateTenant"]["tenant"]["name"] == "By owner"
    r = await run(client, UPDATE_TENANT, {"input": {"name": "By agent"}}, agent, tenant, **why())
    request = r.ok()["updateTenant"]["approvalRequired"]["request"]
    r = await run(client, APPROVE, {"id": request["id"]}, owner, tenant)
    assert r.codes == ["FORBIDDEN"]
    assert "sponsor" in r.errors[0]["message"]
    r = await run(client, APPROVE, {"id": request["id"]}, admin, tenant)
    assert r.ok()["approveRequest"]["request"]["status"] == "APPROVED"
    name = (await run(client, TENANT_NAME, None, owner, tenant)).ok()["tenant"]["name"]
    assert name == "By agent"
    # What the approved run changed names the request, and the agent as its actor.
    audit = await run(
        client,
        """{ tenant { auditLog(first: 20, action: "tenant.updated") { nodes { requestId
            actorKind actorId } } } }""",
        None,
        owner,
        tenant,
    )
    entries = audit.ok()["tenant"]["auditLog"]["nodes"]
    assert [e for e in entries if e["requestId"] == request["id"]] == [
        {"requestId": request["id"], "actorKind": "agent", "actorId": agent_id}
    ]


async def test_a_requester_demoted_before_approval_gets_forbidden_and_the_request_says_so(
    client: GraphQLClient,
) -> None:
    tenant, owner, admin, second = await team(client)
    await policy(client, owner, tenant, actions=["tenant.update"])
    r = await run(client, UPDATE_TENANT, {"input": {"name": "By admin"}}, admin, tenant, **why())
    request = r.ok()["updateTenant"]["approvalRequired"]["request"]
    r = await run(
        client,
        CHANGE_ROLE,
        {"input": {"membershipId": admin.membership_id, "role": "viewer"}},
        owner,
        tenant,
    )
    r.ok()
    r = await run(client, APPROVE, {"id": request["id"]}, second, tenant)
    decided = r.ok()["approveRequest"]["request"]
    assert (decided["status"], decided["errorCode"]) == ("FAILED", "FORBIDDEN")
    assert decided["result"] is None
    name = (await run(client, TENANT_NAME, None, owner, tenant)).ok()["tenant"]["name"]
    assert name != "By admin"


async def test_two_approvers_racing_on_the_last_approval_run_it_exactly_once(
    client: GraphQLClient,
) -> None:
    tenant, owner, first, second = await team(client)
    third = await client.add_member(owner, tenant, "admin")
    await policy(client, owner, tenant, actions=["api_key.create"], approvalsRequired=2)
    name = unique("raced")
    request = await ask_for_manage_key(client, owner, tenant, name)
    r = await run(client, APPROVE, {"id": request["id"]}, first, tenant)
    assert r.ok()["approveRequest"]["request"]["status"] == "PENDING"
    racing = await asyncio.gather(
        run(client, APPROVE, {"id": request["id"]}, second, tenant),
        run(client, APPROVE, {"id": request["id"]}, third, tenant),
    )
    outcomes = sorted(
        "CONFLICT" if r.codes else r.ok()["approveRequest"]["request"]["status"] for r in racing
    )
    assert outcomes == ["APPROVED", "CONFLICT"]
    keys = (await run(client, KEYS, None, owner, tenant)).ok()["tenant"]["apiKeys"]["nodes"]
    assert [k["name"] for k in keys].count(name) == 1


async def test_requests_expire_and_an_expired_request_cannot_be_approved(
    client: GraphQLClient, database_url: str
) -> None:
    tenant, owner, admin, _ = await team(client)
    await policy(client, owner, tenant, actions=["tenant.update"], expiresInSeconds=1)
    r = await run(client, UPDATE_TENANT, {"input": {"name": "Too late"}}, admin, tenant, **why())
    request = r.ok()["updateTenant"]["approvalRequired"]["request"]

    r = await run(client, REQUEST_EXPIRY, {"id": request["id"]}, owner, tenant)
    expires_at = datetime.fromisoformat(r.ok()["node"]["expiresAt"])
    for _ in range(50):  # bounded: the request lives 1 s
        if datetime.now(UTC) > expires_at:
            break
        await asyncio.sleep(0.05)
    r = await run(client, APPROVE, {"id": request["id"]}, owner, tenant)
    assert r.codes == ["CONFLICT"]
    assert "expired" in r.errors[0]["message"]
    # The worker marks it expired (here, or already by the server's own expiry loop).
    async with engine_for(database_url, worker=True) as engine:
        await approvals.expire_due(engine)
    r = await run(client, REQUEST, {"id": request["id"]}, owner, tenant)
    assert r.ok()["node"]["status"] == "EXPIRED"
    name = (await run(client, TENANT_NAME, None, owner, tenant)).ok()["tenant"]["name"]
    assert name != "Too late"


async def test_deleting_a_policy_can_itself_be_gated(client: GraphQLClient) -> None:
    tenant, owner, admin, _ = await team(client)
    guard = await policy(client, owner, tenant, actions=["approval_policy.*"])
    r = await run(client, DELETE_POLICY, {"id": guard}, owner, tenant, **why("cleanup"))
    payload = r.ok()["deleteApprovalPolicy"]
    assert payload["deletedPolicyId"] is None and payload["approvalRequired"]["request"]["id"]
    r = await run(
        client, APPROVE, {"id": payload["approvalRequired"]["request"]["id"]}, admin, tenant
    )
    assert r.ok()["approveRequest"]["request"]["status"] == "APPROVED"
    listed = await run(client, "{ approvalPolicies { id } }", None, owner, tenant)
    assert listed.ok()["approvalPolicies"] == []


@pytest.mark.parametrize("kind", ["*", "api_key.create"])
async def test_policy_input_is_checked(client: GraphQLClient, kind: str) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    for bad, field in (
        ({"actions": ["Not An Action"]}, "actions"),
        ({"actions": [kind], "approvalsRequired": 0}, "approvalsRequired"),
        ({"actions": [kind], "reviewerPermission": "nope"}, "reviewerPermission"),
        ({"actions": [kind], "argumentPath": "input.scopes"}, "argumentMatches"),
        ({"actions": [kind], "reviewerRole": "no-such-role"}, "reviewerRole"),
    ):
        r = await run(client, POLICY, {"input": {"name": "p", **bad}}, owner, tenant)
        assert r.codes == ["BAD_USER_INPUT"], bad
        assert r.errors[0]["extensions"]["field"] == field


async def test_reviewers_follow_requests_on_a_subscription(
    client: GraphQLClient, server: Server
) -> None:
    tenant, owner, admin, _ = await team(client)
    await policy(client, owner, tenant, actions=["tenant.update"])
    history = await run(client, "{ events(first: 200) { edges { cursor } } }", None, owner, tenant)
    after = history.ok()["events"]["edges"][-1]["cursor"]
    r = await run(client, UPDATE_TENANT, {"input": {"name": "Live"}}, admin, tenant, **why())
    request = r.ok()["updateTenant"]["approvalRequired"]["request"]
    query = """subscription($after: String) { approvalRequests(after: $after) {
        cursor event { type } request { id status reason } } }"""
    async with subscribed(
        server, owner.headers(tenant), query, {"after": after}, field="approvalRequests"
    ) as sub:
        items = await sub.items_count(1)
    assert items[0]["event"]["type"] == "approval.requested"
    assert items[0]["request"]["id"] == request["id"]
    assert items[0]["request"]["reason"] == "a partner integration needs it"


REGISTER = """mutation($input: RegisterEventTypeInput!) { registerEventType(input: $input) {
    eventType { type } } }"""
EMIT = """mutation($input: EmitEventInput!) { emitEvent(input: $input) { eventId replayed
    approvalRequired { request { id action input } } } }"""
EMIT_MANY = """mutation($inputs: [EmitEventInput!]!) { emitEvents(inputs: $inputs) {
    items { eventId } approvalRequired { request { id action } } } }"""


async def test_custom_event_types_are_gated_by_type(client: GraphQLClient) -> None:
    tenant, owner, admin, _ = await team(client)
    for type_ in ("refund.issued", "order.paid"):
        r = await run(
            client,
            REGISTER,
            {"input": {"type": type_, "schema": {"type": "object"}}},
            owner,
            tenant,
        )
        r.ok()
    await policy(client, owner, tenant, actions=["refund.*"])
    # Another type is not held back.
    r = await run(client, EMIT, {"input": {"type": "order.paid", "data": {}}}, admin, tenant)
    assert r.ok()["emitEvent"]["eventId"]
    data = {"type": "refund.issued", "data": {"amount": 100}}
    r = await run(client, EMIT, {"input": data}, admin, tenant, **why("customer asked"))
    held = r.ok()["emitEvent"]
    assert held["eventId"] is None and held["replayed"] is None
    request = held["approvalRequired"]["request"]
    assert request["action"] == "refund.issued"
    assert request["input"] == {"input": data}
    # A batch holding one gated type waits whole.
    r = await run(
        client,
        EMIT_MANY,
        {"inputs": [{"type": "order.paid", "data": {}}, data]},
        admin,
        tenant,
        **why("batch"),
    )
    batch = r.ok()["emitEvents"]
    assert batch["items"] is None
    assert batch["approvalRequired"]["request"]["action"] == "order.paid, refund.issued"
    r = await run(client, APPROVE, {"id": request["id"]}, owner, tenant)
    result = r.ok()["approveRequest"]["request"]
    assert result["status"] == "APPROVED" and result["result"]["eventId"].startswith("evt_")
    events = await run(
        client,
        '{ events(types: ["refund.issued"]) { nodes { data actorId } } }',
        None,
        owner,
        tenant,
    )
    assert events.ok()["events"]["nodes"] == [{"data": {"amount": 100}, "actorId": admin.user_id}]
