"""Agents (issue 11, first slice): a tenant's non-human principals with scopes of their own,
their own keys and tokens, and acting for a user through a token exchange (RFC 8693) whose
rights are the intersection of the user's, the agent's and the requested ones, re-decided on
every request. Every audit entry of such a request names the agent and the user."""

from __future__ import annotations

from typing import Any

from tests.support import Actor, GraphQLClient, Response, unique
from tests.test_tokens import IdP, rs_idp  # noqa: F401 (the fixture)

CREATE_AGENT = """mutation($input: CreateAgentInput!) { createAgent(input: $input) {
    agent { id name scopes disabled sponsor { id } } } }"""
AGENT_KEY = """mutation($input: CreateAgentKeyInput!) { createAgentKey(input: $input) {
    secret apiKey { id scopes } } }"""
AGENTS = "{ agents { id name disabled } }"
DISABLE = "mutation($id: ID!) { disableAgent(id: $id) { agent { id disabled } } }"
ENABLE = "mutation($id: ID!) { enableAgent(id: $id) { agent { id disabled } } }"
DELETE = "mutation($id: ID!) { deleteAgent(id: $id) { agent { id } } }"
ISSUE = """mutation($id: ID!, $ttl: Int) { issueAgentToken(agentId: $id, expiresIn: $ttl) {
    accessToken tokenType scopes expiresAt } }"""
EXCHANGE = """mutation($s: String!, $a: String!, $scopes: [String!]) {
    exchangeToken(subjectToken: $s, actorToken: $a, scopes: $scopes) {
        accessToken issuedTokenType tokenType scopes } }"""
CREATE_ROLE = """mutation($input: CreateRoleInput!) { createRole(input: $input) { role { id } } }"""
MEMBERS = "{ tenant { members { edges { node { id } } } } }"
AGENT_EVENTS = """{ events(types: ["agent.created", "agent.disabled", "agent.enabled",
    "agent.deleted", "apikey.created"], first: 20) { nodes { type data } } }"""
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id role { key } } } }"""
AUDIT = """query($actor: String, $for: ID) { tenant { auditLog(first: 50, action: "role.created",
    actorId: $actor, actingForUserId: $for) { nodes { action actorKind actorId
    actingForUserId } } } }"""


async def run(
    client: GraphQLClient, query: str, variables: dict[str, Any], actor: Actor, tenant: str
) -> Response:
    return await client.execute(query, variables, actor=actor, tenant_id=tenant)


async def create_role(
    client: GraphQLClient, actor: Actor, tenant: str, grants: str = "tenant:read"
) -> Response:
    """A role granting ``grants`` (which the actor must hold itself)."""
    key = unique("r").replace("-", "_").lower()[:40]
    return await run(
        client,
        CREATE_ROLE,
        {"input": {"key": key, "name": key, "permissions": [grants]}},
        actor,
        tenant,
    )


async def agent_with_key(
    client: GraphQLClient, owner: Actor, tenant: str, scopes: list[str]
) -> tuple[str, Actor]:
    agent = (
        await run(
            client,
            CREATE_AGENT,
            {"input": {"name": "Support bot", "scopes": scopes}},
            owner,
            tenant,
        )
    ).ok()["createAgent"]["agent"]
    assert agent["sponsor"] == {"id": owner.user_id}
    key = (
        await run(
            client, AGENT_KEY, {"input": {"agentId": agent["id"], "name": "k"}}, owner, tenant
        )
    ).ok()["createAgentKey"]
    assert sorted(key["apiKey"]["scopes"]) == sorted(scopes)
    return agent["id"], Actor(token=key["secret"], tenant_id=tenant)


async def test_an_agent_acts_with_its_own_key_within_its_scopes_and_is_audited_as_itself(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    agent_id, bot = await agent_with_key(client, owner, tenant, ["roles:manage", "tenant:read"])

    assert (await create_role(client, bot, tenant)).ok()
    members = await client.execute(MEMBERS, actor=bot)
    assert members.codes == ["FORBIDDEN"], "members:read is not among its scopes"
    audit = (await run(client, AUDIT, {"actor": agent_id}, owner, tenant)).ok()
    assert audit["tenant"]["auditLog"]["nodes"] == [
        {
            "action": "role.created",
            "actorKind": "agent",
            "actorId": agent_id,
            "actingForUserId": None,
        }
    ]
    listed = (await run(client, AGENTS, {}, owner, tenant)).ok()["agents"]
    assert [a["id"] for a in listed] == [agent_id]

    # Disabled: its key stops at once; enabled: works again; deleted: never again.
    await run(client, DISABLE, {"id": agent_id}, owner, tenant)
    assert (await create_role(client, bot, tenant)).codes == ["UNAUTHENTICATED"]
    await run(client, ENABLE, {"id": agent_id}, owner, tenant)
    assert (await create_role(client, bot, tenant)).ok()
    (await run(client, DELETE, {"id": agent_id}, owner, tenant)).ok()
    assert (await create_role(client, bot, tenant)).codes == ["UNAUTHENTICATED"]
    assert (await run(client, AGENTS, {}, owner, tenant)).ok()["agents"] == []

    # Each change, its event (and the key's, naming the agent).
    events = (await run(client, AGENT_EVENTS, {}, owner, tenant)).ok()["events"]["nodes"]
    assert [(e["type"], e["data"].get("agentId")) for e in events] == [
        ("agent.created", agent_id),
        ("apikey.created", agent_id),
        ("agent.disabled", agent_id),
        ("agent.enabled", agent_id),
        ("agent.deleted", agent_id),
    ]


async def test_agents_get_no_more_than_their_creator_holds(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    member = await client.add_member(owner, tenant, role="member")
    refused = await run(
        client, CREATE_AGENT, {"input": {"name": "x", "scopes": ["tenant:read"]}}, member, tenant
    )
    assert refused.codes == ["FORBIDDEN"], "agents:manage is needed"
    # An admin holds agents:manage but not billing:manage: it cannot hand that to an agent.
    admin = await client.add_member(owner, tenant, role="admin")
    beyond = await run(
        client, CREATE_AGENT, {"input": {"name": "x", "scopes": ["billing:manage"]}}, admin, tenant
    )
    assert beyond.codes == ["FORBIDDEN"]
    # An agent key cannot carry more than the agent.
    agent_id, _bot = await agent_with_key(client, owner, tenant, ["tenant:read"])
    wider = await run(
        client,
        AGENT_KEY,
        {"input": {"agentId": agent_id, "name": "k", "scopes": ["roles:manage"]}},
        owner,
        tenant,
    )
    assert wider.codes == ["BAD_USER_INPUT"]


async def test_an_agent_token_is_issued_to_the_agent_itself_or_a_manager(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    agent_id, bot = await agent_with_key(client, owner, tenant, ["roles:manage", "tenant:read"])
    issued = (await run(client, ISSUE, {"id": agent_id, "ttl": 120}, bot, tenant)).ok()
    token = issued["issueAgentToken"]
    assert token["tokenType"] == "Bearer" and token["scopes"] == ["roles:manage", "tenant:read"]
    as_token = Actor(token=token["accessToken"], tenant_id=tenant)
    assert (await create_role(client, as_token, tenant)).ok()
    other_tenant = await client.create_tenant(owner)
    elsewhere = await client.execute(MEMBERS, actor=as_token, tenant_id=other_tenant)
    assert elsewhere.codes == ["FORBIDDEN"], "bound to the agent's tenant"

    member = await client.add_member(owner, tenant, role="member")
    assert (await run(client, ISSUE, {"id": agent_id}, member, tenant)).codes == ["FORBIDDEN"]
    too_long = await run(client, ISSUE, {"id": agent_id, "ttl": 86400}, owner, tenant)
    assert too_long.codes == ["BAD_USER_INPUT"]
    # Disabling the agent stops its tokens too.
    await run(client, DISABLE, {"id": agent_id}, owner, tenant)
    assert (await create_role(client, as_token, tenant)).codes == ["UNAUTHENTICATED"]


async def test_a_delegated_token_does_exactly_the_intersection_and_shrinks_at_once(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    user = await client.add_member(owner, tenant, role="admin")
    agent_id, bot = await agent_with_key(
        client, owner, tenant, ["roles:manage", "members:read", "files:read", "tenant:read"]
    )
    exchanged = (await client.execute(EXCHANGE, {"s": user.token, "a": bot.token})).ok()[
        "exchangeToken"
    ]
    assert exchanged["issuedTokenType"] == "urn:ietf:params:oauth:token-type:access_token"
    # The admin holds all four; the agent only these: their intersection.
    assert exchanged["scopes"] == ["files:read", "members:read", "roles:manage", "tenant:read"]
    delegated = Actor(token=exchanged["accessToken"], tenant_id=tenant)

    assert (await create_role(client, delegated, tenant, "files:read")).ok()
    assert (await client.execute(MEMBERS, actor=delegated)).ok()
    # audit:read: the user holds it, the agent does not.
    audit_read = await client.execute(
        "{ tenant { auditLog(first: 1) { nodes { id } } } }", actor=delegated
    )
    assert audit_read.codes == ["FORBIDDEN"]

    # Audited as the agent acting for the user, found by either.
    by_agent = (await run(client, AUDIT, {"actor": agent_id}, owner, tenant)).ok()
    by_user = (await run(client, AUDIT, {"for": user.user_id}, owner, tenant)).ok()
    expected = [
        {
            "action": "role.created",
            "actorKind": "agent",
            "actorId": agent_id,
            "actingForUserId": user.user_id,
        }
    ]
    assert by_agent["tenant"]["auditLog"]["nodes"] == expected
    assert by_user["tenant"]["auditLog"]["nodes"] == expected

    # The user loses roles:manage (demoted to member): the same token loses it at once.
    membership_id = await client.membership_id(owner, tenant, str(user.user_id))
    (
        await run(
            client,
            CHANGE_ROLE,
            {"input": {"membershipId": membership_id, "role": "member"}},
            owner,
            tenant,
        )
    ).ok()
    assert (await create_role(client, delegated, tenant, "files:read")).codes == ["FORBIDDEN"]
    assert (await client.execute(MEMBERS, actor=delegated)).ok(), "members:read: both still hold it"
    # The agent is disabled: the token stops entirely.
    await run(client, DISABLE, {"id": agent_id}, owner, tenant)
    assert (await client.execute(MEMBERS, actor=delegated)).codes == ["UNAUTHENTICATED"]


async def test_a_token_exchange_refuses_what_it_cannot_vouch_for(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    user = await client.add_member(owner, tenant, role="member")
    _agent_id, bot = await agent_with_key(client, owner, tenant, ["members:read", "roles:manage"])

    # Asking for more than both hold.
    r = await client.execute(
        EXCHANGE, {"s": user.token, "a": bot.token, "scopes": ["roles:manage"]}
    )
    assert r.codes == ["FORBIDDEN"], r.body
    # An ordinary API key is no actor; neither is a user's token.
    plain = await client.api_key(owner, tenant, ["members:read"])
    assert (await client.execute(EXCHANGE, {"s": user.token, "a": plain.token})).codes == [
        "UNAUTHENTICATED"
    ]
    assert (await client.execute(EXCHANGE, {"s": user.token, "a": owner.token})).codes == [
        "UNAUTHENTICATED"
    ]
    # A delegated token is no subject (no chains of delegation).
    ok = (await client.execute(EXCHANGE, {"s": user.token, "a": bot.token})).ok()
    chained = await client.execute(
        EXCHANGE, {"s": ok["exchangeToken"]["accessToken"], "a": bot.token}
    )
    assert chained.codes == ["UNAUTHENTICATED"]
    # A user who is not a member of the agent's tenant.
    stranger = await client.sign_up()
    assert (await client.execute(EXCHANGE, {"s": stranger.token, "a": bot.token})).codes == [
        "FORBIDDEN"
    ]
    # Garbage in either slot: a clear error, not a stack trace.
    garbage = await client.execute(EXCHANGE, {"s": "not-a-token", "a": bot.token})
    assert garbage.codes == ["UNAUTHENTICATED"]
    assert "Traceback" not in str(garbage.body)


async def test_agents_are_rate_limited_by_their_own_credential(client: GraphQLClient) -> None:
    """An agent's key with a limit of its own is counted as the agent's, apart from people."""
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    _agent_id, bot = await agent_with_key(client, owner, tenant, ["tenant:read"])
    key_id = (
        await run(client, "{ tenant { apiKeys(first: 5) { nodes { id } } } }", {}, owner, tenant)
    ).ok()["tenant"]["apiKeys"]["nodes"][0]["id"]
    limited = await run(
        client,
        """mutation($id: ID!) { setApiKeyRateLimits(id: $id, rateLimits: {perMinute: 2}) {
            apiKey { id } } }""",
        {"id": key_id},
        owner,
        tenant,
    )
    assert limited.ok()
    codes = [(await client.execute("{ tenant { name } }", actor=bot)).codes for _ in range(3)]
    assert codes == [[], [], ["RATE_LIMITED"]]
    # The owner is not the agent: still served.
    assert (await run(client, "{ tenant { name } }", {}, owner, tenant)).ok()


REMOVE_MEMBER = """mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }"""
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id } } }"""


async def test_a_manager_cannot_borrow_an_agents_wider_rights_through_its_token(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    admin = await client.add_member(owner, tenant, role="admin")  # no billing:manage
    agent = (
        await run(
            client,
            CREATE_AGENT,
            {"input": {"name": "biller", "scopes": ["billing:manage", "tenant:read"]}},
            owner,
            tenant,
        )
    ).ok()["createAgent"]["agent"]
    refused = await run(client, ISSUE, {"id": agent["id"]}, admin, tenant)
    assert refused.codes == ["FORBIDDEN"], refused.body
    assert refused.errors[0]["extensions"]["lacking"] == ["billing:manage"]
    assert (await run(client, ISSUE, {"id": agent["id"]}, owner, tenant)).ok()


async def test_an_agent_stops_when_its_sponsor_leaves_whoever_made_its_key(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    sponsor = await client.add_member(owner, tenant, role="admin")
    agent = (
        await run(
            client,
            CREATE_AGENT,
            {"input": {"name": "bot", "scopes": ["roles:manage", "tenant:read"]}},
            sponsor,
            tenant,
        )
    ).ok()["createAgent"]["agent"]
    key = (
        await run(
            client, AGENT_KEY, {"input": {"agentId": agent["id"], "name": "k"}}, owner, tenant
        )
    ).ok()["createAgentKey"]["secret"]
    bot = Actor(token=key, tenant_id=tenant)
    assert (await create_role(client, bot, tenant)).ok()
    delegated_token = (await client.execute(EXCHANGE, {"s": owner.token, "a": key})).ok()[
        "exchangeToken"
    ]["accessToken"]
    delegated = Actor(token=delegated_token, tenant_id=tenant)
    assert (await create_role(client, delegated, tenant)).ok()

    membership = await client.membership_id(owner, tenant, str(sponsor.user_id))
    (await run(client, REMOVE_MEMBER, {"id": membership}, owner, tenant)).ok()
    assert (await create_role(client, bot, tenant)).codes == ["UNAUTHENTICATED"]
    assert (await create_role(client, delegated, tenant)).codes == ["UNAUTHENTICATED"]
    assert (await client.execute(EXCHANGE, {"s": owner.token, "a": key})).codes == [
        "UNAUTHENTICATED"
    ]


async def test_agents_never_mint_credentials_that_would_outlive_them(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    user = await client.add_member(owner, tenant, role="admin")
    agent_id, bot = await agent_with_key(
        client, owner, tenant, ["apikeys:manage", "agents:manage", "roles:manage", "tenant:read"]
    )
    delegated = Actor(
        token=(await client.execute(EXCHANGE, {"s": user.token, "a": bot.token})).ok()[
            "exchangeToken"
        ]["accessToken"],
        tenant_id=tenant,
    )
    key_input = {"input": {"name": "persist", "scopes": ["tenant:read"]}}
    agent_input = {"input": {"name": "child", "scopes": ["tenant:read"]}}
    for actor in (bot, delegated):
        assert (await run(client, CREATE_KEY, key_input, actor, tenant)).codes == ["FORBIDDEN"]
        assert (await run(client, CREATE_AGENT, agent_input, actor, tenant)).codes == ["FORBIDDEN"]
        again = {"input": {"agentId": agent_id, "name": "k2"}}
        assert (await run(client, AGENT_KEY, again, actor, tenant)).codes == ["FORBIDDEN"]
    # A delegated token is not the agent itself: it cannot issue the agent's own token.
    assert (await run(client, ISSUE, {"id": agent_id}, delegated, tenant)).codes == ["FORBIDDEN"]


async def test_an_agent_key_scoped_to_an_included_permission_works(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant = await client.create_tenant(owner)
    agent = (
        await run(
            client,
            CREATE_AGENT,
            {"input": {"name": "x", "scopes": ["tenant:manage"]}},
            owner,
            tenant,
        )
    ).ok()["createAgent"]["agent"]
    key = (
        await run(
            client,
            AGENT_KEY,
            {"input": {"agentId": agent["id"], "name": "k", "scopes": ["tenant:read"]}},
            owner,
            tenant,
        )
    ).ok()["createAgentKey"]["secret"]
    assert (
        await client.execute("{ tenant { id } }", actor=Actor(token=key, tenant_id=tenant))
    ).ok()


async def test_an_identity_providers_act_claim_naming_a_known_agent_is_honoured(
    rs_idp: IdP,  # noqa: F811 (the fixture imported above)
) -> None:
    """The IdP's token for a user with act = {sub: <agent>}: the agent acting for the user,
    exactly as after exchangeToken. An act claim that names no known agent of the tenant, or
    that is malformed, is refused — never read as the user's own token."""
    client = rs_idp.client
    user = Actor(token=rs_idp.token(unique("sub-")))
    tenant = await client.create_tenant(user)

    agent = (
        await run(
            client,
            CREATE_AGENT,
            {"input": {"name": "bot", "scopes": ["members:read", "tenant:read"]}},
            user,
            tenant,
        )
    ).ok()["createAgent"]["agent"]
    subject = unique("sub-")
    delegated = Actor(token=rs_idp.token(subject, act={"sub": agent["id"]}))
    # A new IdP user, not a member: nothing to act for.
    assert (await client.execute(MEMBERS, actor=delegated, tenant_id=tenant)).codes == ["FORBIDDEN"]
    # The tenant's owner, through the IdP, with the agent acting: members (both hold it), not
    # roles (the agent lacks roles:manage), and audited as the agent for the owner.
    owner_sub = unique("sub-")
    owner = Actor(token=rs_idp.token(owner_sub))
    owner_tenant = await client.create_tenant(owner)
    agent2 = (
        await run(
            client,
            CREATE_AGENT,
            {"input": {"name": "bot", "scopes": ["members:read", "tenant:read"]}},
            owner,
            owner_tenant,
        )
    ).ok()["createAgent"]["agent"]
    acting = Actor(token=rs_idp.token(owner_sub, act={"sub": agent2["id"]}))
    assert (await client.execute(MEMBERS, actor=acting, tenant_id=owner_tenant)).ok()
    assert (await create_role(client, acting, owner_tenant)).codes == ["FORBIDDEN"]
    # The agent of another tenant, an unknown agent, a malformed act: refused.
    other = Actor(token=rs_idp.token(owner_sub, act={"sub": agent["id"]}))
    unknown = Actor(token=rs_idp.token(owner_sub, act={"sub": "agt_0000000000000000000000000"}))
    for act in ("agt_x", {"sub": 42}, {"client_id": agent2["id"]}):
        malformed = Actor(token=rs_idp.token(owner_sub, act=act))
        r = await client.execute(MEMBERS, actor=malformed, tenant_id=owner_tenant)
        assert r.codes == ["UNAUTHENTICATED"], (act, r.body)
    for actor in (other, unknown):
        r = await client.execute(MEMBERS, actor=actor, tenant_id=owner_tenant)
        assert r.codes == ["UNAUTHENTICATED"], r.body
