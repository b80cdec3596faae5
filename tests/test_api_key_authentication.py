"""API keys on two API processes: each remembers which tenant a key it has seen belongs to
(``Authenticator._api_key_row``), and a revocation or a change to the creator's rights made
through one still holds for the very next request on the other."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from coregraph.app import Runtime, create_app
from tests.auth_support import assert_unauthenticated
from tests.support import Actor, GraphQLClient, Server

CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id } } }"""
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id status } } }"
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id role { key } } } }"""
REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }"
READ = "{ tenant { id members { totalCount } } }"


@pytest.fixture
async def other_process(server: Server) -> AsyncIterator[GraphQLClient]:
    """A second API process on the same database: a runtime (engine, authenticator) of its
    own, called in this process through ASGI."""
    runtime = Runtime.create(server.settings)
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://other", timeout=30
    ) as http:
        yield GraphQLClient(http, "http://other/graphql")
    await runtime.close()


async def _key(
    client: GraphQLClient, actor: Actor, tenant_id: str, scopes: list[str]
) -> tuple[Actor, str]:
    r = await client.execute(
        CREATE_KEY,
        {"input": {"name": "two processes", "scopes": scopes}},
        actor=actor,
        tenant_id=tenant_id,
    )
    payload = r.ok()["createApiKey"]
    return Actor(token=payload["secret"]), payload["apiKey"]["id"]


async def test_a_key_revoked_on_one_process_fails_at_once_on_the_other(
    client: GraphQLClient, other_process: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    key, key_id = await _key(client, owner, tenant_id, ["tenant:read", "members:read"])
    # Both processes have seen the key (twice: the second time from what they remember).
    for process in (client, other_process, client, other_process):
        assert (await process.execute(READ, actor=key)).ok()["tenant"]["id"] == tenant_id

    r = await client.execute(REVOKE_KEY, {"id": key_id}, actor=owner, tenant_id=tenant_id)
    assert r.ok()["revokeApiKey"]["apiKey"]["status"] == "REVOKED"

    for process in (other_process, client):
        r = await process.execute(READ, actor=key)
        assert r.status == 401
        assert_unauthenticated(r)


async def test_a_creators_demotion_and_removal_bind_their_key_at_once_on_every_process(
    client: GraphQLClient, other_process: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    admin = await client.add_member(owner, tenant_id, role="admin")
    key, _ = await _key(client, admin, tenant_id, ["tenant:read", "members:read", "apikeys:manage"])
    for process in (client, other_process, other_process):
        r = await process.execute("{ tenant { apiKeys { totalCount } } }", actor=key)
        assert r.ok()["tenant"]["apiKeys"]["totalCount"] >= 1

    membership_id = await client.membership_id(owner, tenant_id, str(admin.user_id))
    r = await client.execute(
        CHANGE_ROLE,
        {"input": {"membershipId": membership_id, "role": "viewer"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"]["key"] == "viewer"
    # The viewer role reads members but not keys: so does the key now, on both processes.
    for process in (other_process, client):
        r = await process.execute("{ tenant { id apiKeys { totalCount } } }", actor=key)
        assert r.data["tenant"]["id"] == tenant_id
        assert [e["extensions"]["code"] for e in r.errors] == ["FORBIDDEN"]
        assert r.errors[0]["path"] == ["tenant", "apiKeys"]

    r = await client.execute(REMOVE, {"id": membership_id}, actor=owner, tenant_id=tenant_id)
    r.ok()
    for process in (other_process, client):
        r = await process.execute("{ tenant { id } }", actor=key)
        assert r.codes == ["FORBIDDEN"]
        assert r.data == {"tenant": None}
