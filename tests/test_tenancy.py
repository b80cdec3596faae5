"""Tenants, invitations, membership changes, and the audit entry every mutation leaves."""

from __future__ import annotations

from tests.support import Actor, GraphQLClient

AUDIT = """query($action: String) { tenant { auditLog(first: 200, action: $action) { edges { node {
    id action actorKind actorId actingForUserId targetType targetId changes requestId ip
    userAgent environment createdAt } } } } }"""


async def audit(client: GraphQLClient, owner: Actor, tenant_id: str, action: str) -> list[dict]:
    r = await client.execute(AUDIT, {"action": action}, actor=owner, tenant_id=tenant_id)
    return [e["node"] for e in r.ok()["tenant"]["auditLog"]["edges"]]


async def test_invitation_round_trip_is_single_use_and_audited(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    invitee = await client.sign_up()
    r = await client.execute(
        """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
            invitationUrl token invitation { id email status role { key } } } }""",
        {"input": {"email": invitee.email, "role": "viewer"}},
        actor=owner,
        tenant_id=tenant_id,
        headers={"X-Request-Id": "invite-req-1", "User-Agent": "portal/1.0"},
    )
    invite = r.ok()["inviteMember"]
    assert invite["invitation"]["status"] == "PENDING"
    assert invite["invitation"]["role"] == {"key": "viewer"}
    assert invite["token"] in invite["invitationUrl"]

    r = await client.execute(
        "{ tenant { invitations { nodes { id email } } } }", actor=owner, tenant_id=tenant_id
    )
    assert r.ok()["tenant"]["invitations"]["nodes"] == [
        {"id": invite["invitation"]["id"], "email": invitee.email}
    ]

    accept = """mutation($t: String!) { acceptInvitation(token: $t) {
        membership { id role { key } tenant { id } } } }"""
    r = await client.execute(accept, {"t": invite["token"]}, actor=invitee)
    membership = r.ok()["acceptInvitation"]["membership"]
    assert membership["role"] == {"key": "viewer"} and membership["tenant"]["id"] == tenant_id

    r = await client.execute(accept, {"t": invite["token"]}, actor=invitee)
    assert r.codes == ["CONFLICT"]

    [created] = await audit(client, owner, tenant_id, "invitation.created")
    assert created["actorKind"] == "user" and created["actorId"] == owner.user_id
    assert created["targetType"] == "Invitation"
    assert created["targetId"] == invite["invitation"]["id"]
    assert created["requestId"] == "invite-req-1" and created["userAgent"] == "portal/1.0"
    assert created["ip"] == "127.0.0.1" and created["environment"] == "LIVE"
    assert created["changes"]["after"]["email"] == invitee.email
    assert invite["token"] not in str(created)
    [accepted] = await audit(client, owner, tenant_id, "invitation.accepted")
    assert accepted["actorId"] == invitee.user_id


async def test_invitation_for_another_email_cannot_be_taken(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(
        'mutation { inviteMember(input: {email: "someone@example.com", role: "member"}) '
        "{ token } }",
        actor=owner,
        tenant_id=tenant_id,
    )
    token = r.ok()["inviteMember"]["token"]
    stranger = await client.sign_up()
    r = await client.execute(
        "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
        {"t": token},
        actor=stranger,
    )
    assert r.codes == ["FORBIDDEN"] and r.data == {"acceptInvitation": None}


async def test_change_role_and_remove_member(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    member = await client.add_member(owner, tenant_id, role="member")
    membership_id = await client.membership_id(owner, tenant_id, member.user_id or "")

    r = await client.execute(
        """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
            membership { id role { key } } } }""",
        {"input": {"membershipId": membership_id, "role": "admin"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"] == {"key": "admin"}
    [changed] = await audit(client, owner, tenant_id, "member.role_changed")
    assert changed["changes"] == {"before": {"role": "member"}, "after": {"role": "admin"}}

    # The new admin can now manage members: their token picks up the role on the next request.
    r = await client.execute("{ tenant { invitations { totalCount } } }", actor=member)
    assert r.ok()["tenant"]["invitations"]["totalCount"] == 0

    r = await client.execute(
        "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
        {"id": membership_id},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.ok()["removeMember"]["removedMembershipId"] == membership_id
    r = await client.execute("{ tenant { name } }", actor=member)
    assert r.status == 403 and r.codes == ["FORBIDDEN"]
    [removed] = await audit(client, owner, tenant_id, "member.removed")
    assert removed["changes"]["before"] == {"userId": member.user_id, "role": "admin"}


async def test_owner_transfers_ownership_then_steps_down(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    successor = await client.add_member(owner, tenant_id, role="admin")
    successor_membership = await client.membership_id(owner, tenant_id, successor.user_id or "")
    owner_membership = await client.membership_id(owner, tenant_id, owner.user_id or "")
    change = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
        membership { role { key } } } }"""

    remove = "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }"

    r = await client.execute(remove, {"id": owner_membership}, actor=owner)
    assert r.codes == ["CONFLICT"], "the last owner cannot leave"
    r = await client.execute(
        change, {"input": {"membershipId": successor_membership, "role": "owner"}}, actor=owner
    )
    r.ok()
    # Nobody changes their own role (tests/test_grants.py): the new owner steps the old one down.
    r = await client.execute(
        change, {"input": {"membershipId": owner_membership, "role": "member"}}, actor=successor
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"] == {"key": "member"}


async def test_update_tenant_is_audited_with_before_and_after(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(
        'mutation { updateTenant(input: {name: "Renamed"}) { tenant { name slug } } }',
        actor=owner,
    )
    assert r.ok()["updateTenant"]["tenant"]["name"] == "Renamed"
    [entry] = await audit(client, owner, tenant_id, "tenant.updated")
    assert entry["changes"]["after"] == {"name": "Renamed"}
    assert entry["changes"]["before"]["name"].startswith("Tenant ")
    assert "slug" not in entry["changes"]["after"], "only changed fields are recorded"


async def test_every_mutation_of_a_session_leaves_audit_entries(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    await client.add_member(owner, tenant_id)
    await client.api_key(owner, tenant_id, ["tenant:read"])
    r = await client.execute(AUDIT, {"action": None}, actor=owner, tenant_id=tenant_id)
    actions = [e["node"]["action"] for e in r.ok()["tenant"]["auditLog"]["edges"]]
    # Newest first, as every audit product lists them.
    assert actions == [
        "api_key.created",
        "member.added",
        "invitation.accepted",
        "invitation.created",
        "member.added",
        "tenant.created",
    ]


async def test_audit_log_pages_with_cursors(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    for i in range(4):
        r = await client.execute(
            "mutation($n: String!) { updateTenant(input: {name: $n}) { tenant { id } } }",
            {"n": f"Name {i}"},
            actor=owner,
            tenant_id=tenant_id,
        )
        r.ok()
    seen: list[str] = []
    after = None
    for _ in range(10):
        r = await client.execute(
            """query($after: String) { tenant { auditLog(first: 2, after: $after) {
                edges { node { id } } pageInfo { hasNextPage endCursor } } } }""",
            {"after": after},
            actor=owner,
            tenant_id=tenant_id,
        )
        page = r.ok()["tenant"]["auditLog"]
        seen += [e["node"]["id"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    # Newest first: the latest rename opens the first page, the tenant's creation ends the last.
    assert len(seen) == 6 and len(set(seen)) == 6 and seen == sorted(seen, reverse=True)
    r = await client.execute(
        "{ tenant { auditLog(first: 1) { nodes { id action changes } } } }",
        actor=owner,
        tenant_id=tenant_id,
    )
    (newest,) = r.ok()["tenant"]["auditLog"]["nodes"]
    assert newest["id"] == seen[0] and newest["action"] == "tenant.updated"
    assert "Name 3" in str(newest["changes"])
    r = await client.execute(
        '{ tenant { auditLog(after: "garbage") { totalCount } } }', actor=owner
    )
    assert r.codes == ["BAD_USER_INPUT"]


async def test_a_member_always_sees_their_own_membership(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(
        """mutation { createRole(input: {key: "auditor", name: "Auditor",
            permissions: ["tenant:read", "audit:read"]}) { role { id } } }""",
        actor=owner,
    )
    r.ok()
    auditor = await client.sign_up()
    r = await client.execute(
        """mutation($e: String!) { inviteMember(input: {email: $e, role: "auditor"}) { token } }""",
        {"e": auditor.email},
        actor=owner,
    )
    token = r.ok()["inviteMember"]["token"]
    r = await client.execute(
        """mutation($t: String!) { acceptInvitation(token: $t) {
            membership { id tenant { id } } } }""",
        {"t": token},
        actor=auditor,
    )
    membership = r.ok()["acceptInvitation"]["membership"]
    assert membership["tenant"] == {"id": tenant_id}
    r = await client.execute("{ viewer { memberships { id tenant { name } } } }", actor=auditor)
    assert [m["id"] for m in r.ok()["viewer"]["memberships"]] == [membership["id"]]
    # ...but not the other members: the role lacks members:read.
    r = await client.execute(
        "{ tenant { members { totalCount } } }", actor=auditor, tenant_id=tenant_id
    )
    assert r.codes == ["FORBIDDEN"]


async def test_inviting_again_replaces_the_pending_invitation(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    invitee = await client.sign_up()
    invite = """mutation($e: String!, $r: String!) { inviteMember(input: {email: $e, role: $r}) {
        token invitation { id } } }"""
    first = (await client.execute(invite, {"e": invitee.email, "r": "viewer"}, actor=owner)).ok()
    second = (await client.execute(invite, {"e": invitee.email, "r": "admin"}, actor=owner)).ok()

    r = await client.execute("{ tenant { invitations { nodes { id } } } }", actor=owner)
    assert r.ok()["tenant"]["invitations"]["nodes"] == [
        {"id": second["inviteMember"]["invitation"]["id"]}
    ]
    accept = "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }"
    r = await client.execute(accept, {"t": first["inviteMember"]["token"]}, actor=invitee)
    assert r.codes == ["NOT_FOUND"], "the superseded link no longer works"
    r = await client.execute(accept, {"t": second["inviteMember"]["token"]}, actor=invitee)
    r.ok()
    [revoked] = await audit(client, owner, tenant_id, "invitation.revoked")
    assert revoked["targetId"] == first["inviteMember"]["invitation"]["id"]
