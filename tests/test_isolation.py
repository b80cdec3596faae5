"""Tenant isolation: nobody in tenant A can read or change anything of tenant B.

Two tenants are arranged through the public API. Tenant B has its own owner, a member, a custom
role, an API key and a pending invitation. Then two attackers from tenant A — an admin (the
strongest non-owner) and an API key holding every scope — try every path there is to B's members,
roles, keys, invitations, audit entries and tenant record: ``node(id:)``, ``_entities``, the lists
of the tenant they address, mutation arguments carrying B's ids, and a forged ``X-Tenant-Id``.
Every attempt is answered with FORBIDDEN or NOT_FOUND, and no response carries any of B's ids,
emails or names. Finally B's owner checks that nothing in B changed and that A's actors left no
trace in B's audit log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from coregraph.auth.permissions import PERMISSION_KEYS
from tests.support import Actor, GraphQLClient, Response, unique

DENIED = {"FORBIDDEN", "NOT_FOUND"}
ATTACKERS = ["admin", "api_key"]

SNAPSHOT = """{ tenant {
    id name slug
    members(first: 200) { totalCount nodes { id user { id email } role { id key } } }
    roles { id key name description permissions builtin }
    apiKeys(first: 200) { totalCount nodes { id name status scopes revokedAt expiresAt } }
    invitations(first: 200, pendingOnly: false) { totalCount nodes { id email status } }
    auditLog(first: 200) { totalCount nodes { id action actorKind actorId actingForUserId
        targetId } }
} }"""


@dataclass
class TenantB:
    """The victim: everything an attacker from A must neither see nor change."""

    owner: Actor
    member: Actor
    tenant_id: str
    name: str
    slug: str
    owner_membership_id: str
    member_membership_id: str
    custom_role_id: str
    custom_role_key: str
    custom_role_name: str
    member_role_id: str
    api_key: Actor
    api_key_id: str
    api_key_name: str
    invitation_id: str
    invitation_email: str
    audit_entry_id: str
    snapshot: dict[str, Any]

    def secrets(self) -> list[str]:
        """Strings that identify B's data; none may appear in any response to an attacker."""
        assert self.owner.user_id and self.member.user_id
        assert self.owner.email and self.member.email
        return [
            self.tenant_id,
            self.name,
            self.slug,
            self.owner.user_id,
            self.owner.email,
            self.member.user_id,
            self.member.email,
            self.owner_membership_id,
            self.member_membership_id,
            self.custom_role_id,
            self.custom_role_key,
            self.custom_role_name,
            self.member_role_id,
            self.api_key_id,
            self.api_key_name,
            self.invitation_id,
            self.invitation_email,
            self.audit_entry_id,
            *(role["id"] for role in self.snapshot["roles"]),
            *(entry["id"] for entry in self.snapshot["auditLog"]["nodes"]),
        ]


@dataclass
class World:
    a_tenant_id: str
    a_owner: Actor
    a_admin: Actor
    a_member: Actor
    a_key: Actor
    a_key_id: str
    b: TenantB

    def attacker(self, kind: str) -> Actor:
        return {"admin": self.a_admin, "api_key": self.a_key}[kind]

    def a_actor_ids(self) -> set[str]:
        ids = {self.a_owner.user_id, self.a_admin.user_id, self.a_member.user_id, self.a_key_id}
        return {i for i in ids if i}


async def issue_api_key(
    client: GraphQLClient, creator: Actor, tenant_id: str, scopes: list[str], name: str
) -> tuple[Actor, str]:
    r = await client.execute(
        """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
            secret apiKey { id } } }""",
        {"input": {"name": name, "scopes": scopes}},
        actor=creator,
        tenant_id=tenant_id,
    )
    payload = r.ok()["createApiKey"]
    return Actor(token=payload["secret"]), payload["apiKey"]["id"]


async def snapshot(client: GraphQLClient, owner: Actor, tenant_id: str) -> dict[str, Any]:
    r = await client.execute(SNAPSHOT, actor=owner, tenant_id=tenant_id)
    tenant: dict[str, Any] = r.ok()["tenant"]
    return tenant


async def arrange_tenant_b(client: GraphQLClient) -> TenantB:
    tag = unique("b")
    owner = await client.sign_up(email=f"{tag}-owner@victim.example", name=f"Bea Owner {tag}")
    slug = f"victim-{tag}"
    tenant_id = await client.create_tenant(owner, slug=slug)
    member = await client.add_member(
        owner,
        tenant_id,
        role="member",
        email=f"{tag}-member@victim.example",
        name=f"Bo Member {tag}",
    )
    member_membership_id = str(member.membership_id)

    role_key = f"b-secret-{tag}"
    role_name = f"B Secret Role {tag}"
    r = await client.execute(
        """mutation($input: CreateRoleInput!) { createRole(input: $input) { role { id } } }""",
        {
            "input": {
                "key": role_key,
                "name": role_name,
                "description": "only in B",
                "permissions": ["tenant:read", "members:read"],
            }
        },
        actor=owner,
        tenant_id=tenant_id,
    )
    custom_role_id = r.ok()["createRole"]["role"]["id"]

    key_name = f"B key {tag}"
    api_key, api_key_id = await issue_api_key(
        client, owner, tenant_id, ["tenant:read", "members:read"], key_name
    )
    invitation_email = f"{tag}-invitee@victim.example"
    r = await client.execute(
        """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
            invitation { id status } } }""",
        {"input": {"email": invitation_email, "role": role_key}},
        actor=owner,
        tenant_id=tenant_id,
    )
    invitation = r.ok()["inviteMember"]["invitation"]
    assert invitation["status"] == "PENDING"

    state = await snapshot(client, owner, tenant_id)
    memberships = {m["user"]["id"]: m for m in state["members"]["nodes"]}
    roles = {role["key"]: role["id"] for role in state["roles"]}
    return TenantB(
        owner=owner,
        member=member,
        tenant_id=tenant_id,
        name=state["name"],
        slug=slug,
        owner_membership_id=memberships[owner.user_id]["id"],
        member_membership_id=member_membership_id,
        custom_role_id=custom_role_id,
        custom_role_key=role_key,
        custom_role_name=role_name,
        member_role_id=roles["member"],
        api_key=api_key,
        api_key_id=api_key_id,
        api_key_name=key_name,
        invitation_id=invitation["id"],
        invitation_email=invitation_email,
        audit_entry_id=state["auditLog"]["nodes"][0]["id"],
        snapshot=state,
    )


@pytest.fixture(scope="module")
async def world(client: GraphQLClient) -> World:
    a_owner = await client.sign_up(name="Alice Owner")
    a_tenant_id = await client.create_tenant(a_owner)
    a_admin = await client.add_member(a_owner, a_tenant_id, role="admin")
    a_member = await client.add_member(a_owner, a_tenant_id, role="member")
    # The owner holds every permission, so the key does too.
    a_key, a_key_id = await issue_api_key(
        client, a_owner, a_tenant_id, sorted(PERMISSION_KEYS), "A all-scopes key"
    )
    await client.execute(
        """mutation($input: InviteMemberInput!) { inviteMember(input: $input) { token } }""",
        {"input": {"email": f"{unique('a')}@attacker.example", "role": "viewer"}},
        actor=a_owner,
        tenant_id=a_tenant_id,
    )
    b = await arrange_tenant_b(client)
    return World(a_tenant_id, a_owner, a_admin, a_member, a_key, a_key_id, b)


def assert_no_leak(r: Response, b: TenantB, allowed: tuple[str, ...] = ()) -> None:
    body = json.dumps(r.body)
    leaked = [s for s in b.secrets() if s not in allowed and s in body]
    assert not leaked, f"response leaks B's data {leaked}: {body}"


def assert_denied(r: Response, b: TenantB, field: str | None = None) -> None:
    """An error coded FORBIDDEN or NOT_FOUND, no data for the field, nothing of B's."""
    assert r.errors, f"expected a denial, got {r.body}"
    assert set(r.codes) <= DENIED, r.body
    if field is not None and r.data is not None:
        assert r.data.get(field) is None, r.body
    assert_no_leak(r, b)


# --- reading B's objects by id -------------------------------------------------------------

NODE = """query($id: ID!) { node(id: $id) {
    id
    ... on Tenant { name slug }
    ... on Membership { user { id email } role { key } }
    ... on User { email displayName }
    ... on Role { key name permissions }
    ... on ApiKey { name prefix scopes }
    ... on Invitation { inviteeEmail: email status }
    ... on AuditEntry { action actorId targetId }
} }"""

B_OBJECTS: dict[str, tuple[str, Callable[[TenantB], str]]] = {
    "tenant": ("Tenant", lambda b: b.tenant_id),
    "owner membership": ("Membership", lambda b: b.owner_membership_id),
    "member membership": ("Membership", lambda b: b.member_membership_id),
    "owner user": ("User", lambda b: str(b.owner.user_id)),
    "member user": ("User", lambda b: str(b.member.user_id)),
    "custom role": ("Role", lambda b: b.custom_role_id),
    "built-in role": ("Role", lambda b: b.member_role_id),
    "api key": ("ApiKey", lambda b: b.api_key_id),
    "invitation": ("Invitation", lambda b: b.invitation_id),
    "audit entry": ("AuditEntry", lambda b: b.audit_entry_id),
}


@pytest.mark.parametrize("target", list(B_OBJECTS))
@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_node_with_an_id_of_b_is_not_found(
    client: GraphQLClient, world: World, attacker: str, target: str
) -> None:
    _, b_id = B_OBJECTS[target]
    r = await client.execute(NODE, {"id": b_id(world.b)}, actor=world.attacker(attacker))
    assert_denied(r, world.b, "node")
    assert "NOT_FOUND" in r.codes


ENTITY_FIELDS = {
    "Tenant": "id name slug",
    "Membership": "id user { id email } role { key }",
    "User": "id email displayName",
    "Role": "id key name permissions",
    "ApiKey": "id name prefix scopes",
    "Invitation": "id email status",
    "AuditEntry": "id action actorId targetId",
}


@pytest.mark.parametrize("target", list(B_OBJECTS))
@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_entities_with_an_id_of_b_resolve_to_nothing(
    client: GraphQLClient, world: World, attacker: str, target: str
) -> None:
    """A gateway would ask ``_entities`` for B's objects if a client passed their ids along."""
    typename, b_id = B_OBJECTS[target]
    r = await client.execute(
        f"""query($r: [_Any!]!) {{ _entities(representations: $r) {{
            __typename ... on {typename} {{ {ENTITY_FIELDS[typename]} }} }} }}""",
        {"r": [{"__typename": typename, "id": b_id(world.b)}]},
        actor=world.attacker(attacker),
    )
    assert r.errors, r.body
    assert set(r.codes) <= DENIED, r.body
    assert r.data is None or r.data["_entities"] in (None, [None]), r.body
    assert_no_leak(r, world.b)


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_entities_batch_mixing_a_and_b_returns_only_a(
    client: GraphQLClient, world: World, attacker: str
) -> None:
    """In one batch, A's own objects resolve and each of B's comes back as null with an error."""
    b = world.b
    a_admin_membership = await client.membership_id(
        world.a_owner, world.a_tenant_id, str(world.a_admin.user_id)
    )
    representations = [
        {"__typename": "Tenant", "id": world.a_tenant_id},
        {"__typename": "Tenant", "id": b.tenant_id},
        {"__typename": "Membership", "id": a_admin_membership},
        {"__typename": "Membership", "id": b.member_membership_id},
        {"__typename": "ApiKey", "id": world.a_key_id},
        {"__typename": "ApiKey", "id": b.api_key_id},
    ]
    r = await client.execute(
        """query($r: [_Any!]!) { _entities(representations: $r) {
            __typename ... on Tenant { id name } ... on Membership { id user { email } }
            ... on ApiKey { id name } } }""",
        {"r": representations},
        actor=world.attacker(attacker),
    )
    entities = r.data["_entities"]
    assert [e and e["id"] for e in entities] == [
        world.a_tenant_id,
        None,
        a_admin_membership,
        None,
        world.a_key_id,
        None,
    ]
    assert sorted(e["path"][1] for e in r.errors) == [1, 3, 5], r.body
    assert set(r.codes) <= DENIED, r.body
    assert_no_leak(r, b)


# --- lists of the addressed tenant ----------------------------------------------------------

LISTS = """{ tenant {
    id name slug
    members(first: 200) { nodes { id user { id email displayName } role { id key } tenant { id } } }
    roles { id key name }
    apiKeys(first: 200) { nodes { id name createdBy { id email } } }
    invitations(first: 200, pendingOnly: false) { nodes { id email role { id key } } }
    auditLog(first: 200) { nodes { id actorId targetId changes } }
} }"""


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_lists_of_the_addressed_tenant_show_only_a(
    client: GraphQLClient, world: World, attacker: str
) -> None:
    r = await client.execute(LISTS, actor=world.attacker(attacker))
    tenant = r.ok()["tenant"]
    assert tenant["id"] == world.a_tenant_id
    assert {m["user"]["id"] for m in tenant["members"]["nodes"]} == {
        world.a_owner.user_id,
        world.a_admin.user_id,
        world.a_member.user_id,
    }
    assert {m["tenant"]["id"] for m in tenant["members"]["nodes"]} == {world.a_tenant_id}
    assert {k["id"] for k in tenant["apiKeys"]["nodes"]} == {world.a_key_id}
    assert len(tenant["invitations"]["nodes"]) >= 1
    assert tenant["auditLog"]["nodes"]
    assert_no_leak(r, world.b)


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_audit_log_filtered_by_a_target_in_b_is_empty(
    client: GraphQLClient, world: World, attacker: str
) -> None:
    b = world.b
    for target in (b.tenant_id, b.member_membership_id, b.custom_role_id, b.api_key_id):
        r = await client.execute(
            """query($t: ID!) { tenant { auditLog(targetId: $t) { totalCount nodes { id } } } }""",
            {"t": target},
            actor=world.attacker(attacker),
        )
        assert r.ok()["tenant"]["auditLog"] == {"totalCount": 0, "nodes": []}
        assert_no_leak(r, b)


async def test_a_users_own_memberships_show_only_their_tenant(
    client: GraphQLClient, world: World
) -> None:
    query = "{ viewer { id memberships { id tenant { id name } role { key } } } }"
    for tenant_id in (world.a_tenant_id, None):
        headers_actor = Actor(token=world.a_admin.token, tenant_id=tenant_id)
        r = await client.execute(query, actor=headers_actor)
        memberships = r.ok()["viewer"]["memberships"]
        assert [(m["tenant"]["id"], m["role"]["key"]) for m in memberships] == [
            (world.a_tenant_id, "admin")
        ]
        assert_no_leak(r, world.b)


async def test_an_api_key_has_no_viewer_memberships(client: GraphQLClient, world: World) -> None:
    r = await client.execute("{ viewer { id memberships { id } } }", actor=world.a_key)
    assert r.ok() == {"viewer": None}


# --- changing B's objects through mutation arguments ----------------------------------------

MUTATIONS: dict[str, tuple[str, str, Callable[[TenantB], dict[str, Any]]]] = {
    "removeMember": (
        "removeMember",
        "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
        lambda b: {"id": b.member_membership_id},
    ),
    "removeMember (owner)": (
        "removeMember",
        "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
        lambda b: {"id": b.owner_membership_id},
    ),
    "changeMemberRole": (
        "changeMemberRole",
        """mutation($id: ID!) { changeMemberRole(input: {membershipId: $id, role: "admin"}) {
            membership { id role { key } user { email } } } }""",
        lambda b: {"id": b.member_membership_id},
    ),
    "updateRole": (
        "updateRole",
        """mutation($id: ID!) { updateRole(input: {roleId: $id, name: "pwned",
            permissions: ["tenant:read"]}) { role { id name key } } }""",
        lambda b: {"id": b.custom_role_id},
    ),
    "updateRole (built-in)": (
        "updateRole",
        """mutation($id: ID!) { updateRole(input: {roleId: $id, name: "pwned"}) {
            role { id name } } }""",
        lambda b: {"id": b.member_role_id},
    ),
    "deleteRole": (
        "deleteRole",
        "mutation($id: ID!) { deleteRole(roleId: $id) { deletedRoleId } }",
        lambda b: {"id": b.custom_role_id},
    ),
    "revokeApiKey": (
        "revokeApiKey",
        "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id name status } } }",
        lambda b: {"id": b.api_key_id},
    ),
    "revokeInvitation": (
        "revokeInvitation",
        "mutation($id: ID!) { revokeInvitation(id: $id) { invitation { id email status } } }",
        lambda b: {"id": b.invitation_id},
    ),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_mutation_with_an_id_of_b_is_not_found(
    client: GraphQLClient, world: World, attacker: str, mutation: str
) -> None:
    field, query, variables = MUTATIONS[mutation]
    r = await client.execute(query, variables(world.b), actor=world.attacker(attacker))
    assert_denied(r, world.b, field)
    assert r.codes == ["NOT_FOUND"], r.body
    # Nothing changed in B, checked right away (the last test checks everything once more).
    assert await snapshot(client, world.b.owner, world.b.tenant_id) == world.b.snapshot


@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_a_role_key_of_b_is_unknown_in_a(
    client: GraphQLClient, world: World, attacker: str
) -> None:
    """Roles are looked up by key inside the addressed tenant: B's custom role does not exist
    in A, so it can be neither granted nor offered there."""
    b = world.b
    a_member_membership = await client.membership_id(
        world.a_owner, world.a_tenant_id, str(world.a_member.user_id)
    )
    attempts = [
        (
            "changeMemberRole",
            """mutation($id: ID!, $role: String!) { changeMemberRole(
                input: {membershipId: $id, role: $role}) { membership { role { id key } } } }""",
            {"id": a_member_membership, "role": b.custom_role_key},
        ),
        (
            "inviteMember",
            """mutation($role: String!) { inviteMember(input: {
                email: "someone@attacker.example", role: $role}) { invitation { id } } }""",
            {"role": b.custom_role_key},
        ),
    ]
    for field, query, variables in attempts:
        r = await client.execute(query, variables, actor=world.attacker(attacker))
        assert r.codes == ["BAD_USER_INPUT"], r.body
        assert (r.data or {}).get(field) is None
        assert r.errors[0]["extensions"]["field"] == "role"
        # The key the attacker sent may be echoed back; nothing else of B's may be.
        assert_no_leak(r, b, allowed=(b.custom_role_key,))
    r = await client.execute(
        "{ tenant { members(first: 200) { nodes { id role { key } } } } }", actor=world.a_owner
    )
    roles = {m["id"]: m["role"]["key"] for m in r.ok()["tenant"]["members"]["nodes"]}
    assert roles[a_member_membership] == "member"


# --- a forged X-Tenant-Id -------------------------------------------------------------------

FORGED: dict[str, tuple[str, Callable[[TenantB], dict[str, Any] | None]]] = {
    "read tenant": ("{ tenant { id name slug } }", lambda b: None),
    "read members": (
        "{ tenant { members { nodes { id user { email } } } } }",
        lambda b: None,
    ),
    "read roles": ("{ tenant { roles { id key name } } }", lambda b: None),
    "read api keys": ("{ tenant { apiKeys { nodes { id name } } } }", lambda b: None),
    "read invitations": ("{ tenant { invitations { nodes { id email } } } }", lambda b: None),
    "read audit log": ("{ tenant { auditLog { nodes { id action } } } }", lambda b: None),
    "read node": (NODE, lambda b: {"id": b.member_membership_id}),
    "updateTenant": (
        """mutation { updateTenant(input: {name: "pwned", slug: "pwned-by-a"}) {
            tenant { id name slug } } }""",
        lambda b: None,
    ),
    "inviteMember": (
        """mutation { inviteMember(input: {email: "spy@attacker.example", role: "owner"}) {
            token invitation { id } } }""",
        lambda b: None,
    ),
    "removeMember": (
        "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
        lambda b: {"id": b.member_membership_id},
    ),
    "changeMemberRole": (
        """mutation($id: ID!) { changeMemberRole(input: {membershipId: $id, role: "viewer"}) {
            membership { id } } }""",
        lambda b: {"id": b.member_membership_id},
    ),
    "createRole": (
        """mutation { createRole(input: {key: "spy", name: "Spy", permissions: ["audit:read"]}) {
            role { id } } }""",
        lambda b: None,
    ),
    "updateRole": (
        """mutation($id: ID!) { updateRole(input: {roleId: $id, name: "pwned"}) {
            role { id } } }""",
        lambda b: {"id": b.custom_role_id},
    ),
    "deleteRole": (
        "mutation($id: ID!) { deleteRole(roleId: $id) { deletedRoleId } }",
        lambda b: {"id": b.custom_role_id},
    ),
    "createApiKey": (
        """mutation { createApiKey(input: {name: "spy", scopes: ["members:read"]}) {
            secret apiKey { id } } }""",
        lambda b: None,
    ),
    "revokeApiKey": (
        "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id } } }",
        lambda b: {"id": b.api_key_id},
    ),
    "revokeInvitation": (
        "mutation($id: ID!) { revokeInvitation(id: $id) { invitation { id } } }",
        lambda b: {"id": b.invitation_id},
    ),
}


@pytest.mark.parametrize("operation", list(FORGED))
@pytest.mark.parametrize("attacker", ATTACKERS)
async def test_forged_tenant_header_is_forbidden(
    client: GraphQLClient, world: World, attacker: str, operation: str
) -> None:
    """A user who is not a member of B, or a key of A, cannot address B at all."""
    b = world.b
    query, variables = FORGED[operation]
    r = await client.execute(
        query, variables(b), actor=world.attacker(attacker), tenant_id=b.tenant_id
    )
    assert r.status == 403, r.body
    assert r.codes == ["FORBIDDEN"], r.body
    assert r.errors[0]["extensions"].get("field") == "X-Tenant-Id"
    assert r.data is None
    assert_no_leak(r, b)


async def test_a_member_of_a_without_rights_is_forbidden_not_escalated(
    client: GraphQLClient, world: World
) -> None:
    """A plain member of A forging B's header is refused before any right is considered."""
    r = await client.execute(
        "{ tenant { id name members { nodes { id } } } }",
        actor=world.a_member,
        tenant_id=world.b.tenant_id,
    )
    assert r.status == 403 and r.codes == ["FORBIDDEN"], r.body
    assert_no_leak(r, world.b)


# --- the victim's view ----------------------------------------------------------------------


async def test_tenant_b_is_unchanged_after_every_attempt(
    client: GraphQLClient, world: World
) -> None:
    """Runs last in this module: B's owner finds B exactly as it was arranged."""
    b = world.b
    now = await snapshot(client, b.owner, b.tenant_id)
    assert (now["name"], now["slug"]) == (b.name, b.slug)
    assert {(m["user"]["id"], m["role"]["key"]) for m in now["members"]["nodes"]} == {
        (b.owner.user_id, "owner"),
        (b.member.user_id, "member"),
    }
    assert now["roles"] == b.snapshot["roles"]
    assert {(k["id"], k["status"]) for k in now["apiKeys"]["nodes"]} == {(b.api_key_id, "ACTIVE")}
    assert [
        (i["id"], i["status"]) for i in now["invitations"]["nodes"] if i["status"] == "PENDING"
    ] == [(b.invitation_id, "PENDING")]
    assert now == b.snapshot
    a_actors = world.a_actor_ids()
    for entry in now["auditLog"]["nodes"]:
        assert entry["actorId"] not in a_actors, entry
        assert entry["actingForUserId"] not in a_actors, entry

    # B's key still works: nobody in A revoked it or changed its creator's rights.
    r = await client.execute("{ tenant { id members { totalCount } } }", actor=b.api_key)
    assert r.ok()["tenant"] == {"id": b.tenant_id, "members": {"totalCount": 2}}


async def test_a_test_key_finds_no_live_row_by_id(client: GraphQLClient) -> None:
    """Environments never mix: a test-environment key that may read events does not reach a
    live event through ``node(id:)`` or ``_entities`` (nor a file's or a webhook's, which are
    scoped the same way: ``TenantOwned.__environment_scoped__``)."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(
        "{ events(first: 1) { edges { node { id environment } } } }",
        actor=owner,
        tenant_id=tenant_id,
    )
    [edge] = r.ok()["events"]["edges"]
    live_id = edge["node"]["id"]
    assert edge["node"]["environment"] == "LIVE"
    r = await client.execute(
        """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }""",
        {"input": {"name": "test key", "scopes": ["events:read"], "environment": "TEST"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    test_key = Actor(token=r.ok()["createApiKey"]["secret"])
    r = await client.execute(
        """query($id: ID!, $r: [_Any!]!) { node(id: $id) { id }
            _entities(representations: $r) { ... on Event { id } } }""",
        {"id": live_id, "r": [{"__typename": "Event", "id": live_id}]},
        actor=test_key,
    )
    assert r.data == {"node": None, "_entities": [None]}, r.body
    # The same lookups with a live credential find it: the refusal is the environment's.
    r = await client.execute(
        """query($id: ID!) { node(id: $id) { id } }""", {"id": live_id}, actor=owner
    )
    assert r.ok()["node"] == {"id": live_id}
