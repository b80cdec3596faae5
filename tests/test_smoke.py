"""A newcomer's first story: sign up, create a tenant, invite a colleague, issue a key."""

from __future__ import annotations

from tests.support import GraphQLClient


async def test_sign_up_create_tenant_invite_and_query(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    colleague = await client.add_member(owner, tenant_id, role="admin")

    r = await client.execute(
        """{ viewer { id email memberships { role { key } tenant { id } } }
             tenant { id name members(first: 10) { totalCount edges { node {
               user { email } role { key } } } } } }""",
        actor=colleague,
    )
    data = r.ok()
    assert data["viewer"]["email"] == colleague.email
    assert data["viewer"]["memberships"] == [
        {"role": {"key": "admin"}, "tenant": {"id": tenant_id}}
    ]
    members = {
        (e["node"]["user"]["email"], e["node"]["role"]["key"])
        for e in data["tenant"]["members"]["edges"]
    }
    assert members == {(owner.email, "owner"), (colleague.email, "admin")}
    assert data["tenant"]["members"]["totalCount"] == 2

    key = await client.api_key(owner, tenant_id, ["members:read", "tenant:read"])
    r = await client.execute("{ tenant { id members { totalCount } } }", actor=key)
    assert r.ok()["tenant"] == {"id": tenant_id, "members": {"totalCount": 2}}
