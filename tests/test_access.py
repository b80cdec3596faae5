"""Roles, the permission catalog and API keys."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from coregraph.auth import permissions, secrets
from tests.auth_support import all_text_in_db, assert_unauthenticated, db_rows
from tests.support import Actor, GraphQLClient, Response, Server, unique

BUILTIN_KEYS = {"owner", "admin", "member", "viewer", "billing"}
ACCESS_SOURCE = Path(permissions.__file__).read_text()

ROLES = "{ tenant { roles { id key name permissions builtin } } }"
CREATE_ROLE = """mutation($input: CreateRoleInput!) { createRole(input: $input) {
    role { id key name description permissions builtin } } }"""
UPDATE_ROLE = """mutation($input: UpdateRoleInput!) { updateRole(input: $input) {
    role { id key name permissions builtin } } }"""
DELETE_ROLE = "mutation($id: ID!) { deleteRole(roleId: $id) { deletedRoleId } }"
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id name prefix environment scopes status expiresAt lastUsedAt
                    createdBy { id } } } }"""
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id status revokedAt } } }"
KEYS = """{ tenant { apiKeys(first: 200) { nodes {
    id prefix environment scopes status lastUsedAt revokedAt } } } }"""
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id role { key } } } }"""
AUDIT = """query($action: String!) { tenant { auditLog(first: 200, action: $action) { nodes {
    action actorKind actorId actingForUserId targetType targetId environment changes } } } }"""


def forbidden_at(r: Response, *path: str | int) -> None:
    """The field at ``path`` was denied: FORBIDDEN, that path, and null there."""
    matching = [e for e in r.errors if e.get("path") == list(path)]
    assert matching, r.body
    assert all(e["extensions"]["code"] == "FORBIDDEN" for e in matching), r.body
    node: Any = r.data
    for step in path:
        node = node[step] if node is not None else None
    assert node is None, r.body


async def owner_and_tenant(client: GraphQLClient) -> tuple[Actor, str]:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    return owner, tenant_id


async def create_role(
    client: GraphQLClient, owner: Actor, tenant_id: str, permissions: list[str], **fields: Any
) -> Response:
    payload = {
        "key": fields.pop("key", unique("role-")),
        "name": fields.pop("name", "Custom role"),
        "permissions": permissions,
        **fields,
    }
    return await client.execute(CREATE_ROLE, {"input": payload}, actor=owner, tenant_id=tenant_id)


async def create_key(
    client: GraphQLClient, actor: Actor, tenant_id: str, scopes: list[str], **fields: Any
) -> Response:
    payload = {"name": fields.pop("name", unique("key-")), "scopes": scopes, **fields}
    return await client.execute(CREATE_KEY, {"input": payload}, actor=actor, tenant_id=tenant_id)


async def issued_key(
    client: GraphQLClient, actor: Actor, tenant_id: str, scopes: list[str], **fields: Any
) -> tuple[Actor, dict[str, Any]]:
    payload = (await create_key(client, actor, tenant_id, scopes, **fields)).ok()["createApiKey"]
    return Actor(token=payload["secret"]), payload


async def audit(client: GraphQLClient, owner: Actor, tenant_id: str, action: str) -> list[Any]:
    r = await client.execute(AUDIT, {"action": action}, actor=owner, tenant_id=tenant_id)
    return list(r.ok()["tenant"]["auditLog"]["nodes"])


# --- roles and the permission catalog ---


async def test_a_new_tenant_has_the_builtin_roles(client: GraphQLClient) -> None:
    owner, _ = await owner_and_tenant(client)
    roles = (await client.execute(ROLES, actor=owner)).ok()["tenant"]["roles"]
    assert {r["key"] for r in roles} == BUILTIN_KEYS
    for role in roles:
        assert role["builtin"] is True
        assert set(role["permissions"]) == permissions.BUILTIN_ROLES[role["key"]].permissions
    by_key = {r["key"]: set(r["permissions"]) for r in roles}
    assert by_key["owner"] == set(permissions.PERMISSION_KEYS)
    assert "billing:manage" not in by_key["admin"]
    assert by_key["viewer"] < by_key["member"]


async def test_the_permission_catalog_lists_every_permission(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    r = await client.execute("{ permissions { key description } }", actor=owner)
    catalog = {p["key"]: p["description"] for p in r.ok()["permissions"]}
    assert all(catalog.values())
    # Every permission the access service names anywhere (catalog, built-in roles) is listed.
    named = set(re.findall(r'"([a-z]+:[a-z]+)"', ACCESS_SOURCE))
    assert named, "no permission names found in coregraph/auth/permissions.py"
    assert named <= set(catalog), named - set(catalog)
    assert set(catalog) == set(permissions.PERMISSION_KEYS)
    assert (await client.execute("{ permissions { key } }")).codes == ["UNAUTHENTICATED"]


async def test_owner_creates_updates_and_deletes_a_role(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    key = unique("support-")
    r = await create_role(
        client,
        owner,
        tenant_id,
        ["tenant:read", "members:read", "tenant:read"],
        key=key,
        name="Support",
        description="Answers tickets",
    )
    role = r.ok()["createRole"]["role"]
    assert role["key"] == key
    assert role["builtin"] is False
    assert role["description"] == "Answers tickets"
    assert sorted(role["permissions"]) == ["members:read", "tenant:read"]

    r = await client.execute(
        UPDATE_ROLE,
        {"input": {"roleId": role["id"], "name": "Support L2", "permissions": ["audit:read"]}},
        actor=owner,
    )
    updated = r.ok()["updateRole"]["role"]
    assert updated == {**updated, "id": role["id"], "name": "Support L2", "key": key}
    assert updated["permissions"] == ["audit:read"]
    roles = (await client.execute(ROLES, actor=owner)).ok()["tenant"]["roles"]
    assert {"id": role["id"], "permissions": ["audit:read"]}.items() <= next(
        r for r in roles if r["key"] == key
    ).items()

    r = await client.execute(DELETE_ROLE, {"id": role["id"]}, actor=owner)
    assert r.ok()["deleteRole"] == {"deletedRoleId": role["id"]}
    roles = (await client.execute(ROLES, actor=owner)).ok()["tenant"]["roles"]
    assert key not in {r["key"] for r in roles}

    # Invalid input is refused with the field named.
    r = await create_role(client, owner, tenant_id, ["tenant:read", "root:everything"])
    assert r.codes == ["BAD_USER_INPUT"]
    assert r.errors[0]["extensions"]["field"] == "permissions"
    r = await create_role(client, owner, tenant_id, ["tenant:read"], key="admin")
    assert r.codes == ["CONFLICT"]


async def test_builtin_roles_cannot_be_changed_or_deleted(client: GraphQLClient) -> None:
    owner, _ = await owner_and_tenant(client)
    before = (await client.execute(ROLES, actor=owner)).ok()["tenant"]["roles"]
    for role in before:
        r = await client.execute(
            UPDATE_ROLE,
            {"input": {"roleId": role["id"], "permissions": ["tenant:read"], "name": "Pwned"}},
            actor=owner,
        )
        assert r.codes == ["BAD_USER_INPUT"], r.body
        assert r.data == {"updateRole": None}
        r = await client.execute(DELETE_ROLE, {"id": role["id"]}, actor=owner)
        assert r.codes == ["BAD_USER_INPUT"], r.body
    after = (await client.execute(ROLES, actor=owner)).ok()["tenant"]["roles"]
    assert after == before


async def test_a_role_in_use_cannot_be_deleted(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    role = (await create_role(client, owner, tenant_id, ["tenant:read"])).ok()["createRole"]["role"]
    member = await client.add_member(owner, tenant_id, role=role["key"])

    r = await client.execute(DELETE_ROLE, {"id": role["id"]}, actor=owner)
    assert r.codes == ["CONFLICT"], r.body
    assert r.data == {"deleteRole": None}

    membership_id = await client.membership_id(owner, tenant_id, str(member.user_id))
    r = await client.execute(
        CHANGE_ROLE, {"input": {"membershipId": membership_id, "role": "viewer"}}, actor=owner
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"]["key"] == "viewer"

    # Still offered by a pending invitation: not deletable either.
    r = await client.execute(
        """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
            invitation { id } } }""",
        {"input": {"email": f"{unique('later')}@example.com", "role": role["key"]}},
        actor=owner,
        tenant_id=tenant_id,
    )
    invitation_id = r.ok()["inviteMember"]["invitation"]["id"]
    r = await client.execute(DELETE_ROLE, {"id": role["id"]}, actor=owner)
    assert r.codes == ["CONFLICT"], r.body
    r = await client.execute(
        "mutation($id: ID!) { revokeInvitation(id: $id) { invitation { status } } }",
        {"id": invitation_id},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.ok()["revokeInvitation"]["invitation"]["status"] == "REVOKED"

    # Held by nobody and offered to nobody: it goes (spent invitations do not pin it).
    r = await client.execute(DELETE_ROLE, {"id": role["id"]}, actor=owner)
    assert r.ok()["deleteRole"]["deletedRoleId"] == role["id"]
    r = await client.execute(
        "{ tenant { members { nodes { user { id } role { key } } } } }", actor=owner
    )
    assert {"user": {"id": member.user_id}, "role": {"key": "viewer"}} in (
        r.ok()["tenant"]["members"]["nodes"]
    )


async def test_only_holders_of_roles_manage_can_manage_roles(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    member = await client.add_member(owner, tenant_id, role="member")
    r = await create_role(client, member, tenant_id, ["tenant:read"])
    assert r.codes == ["FORBIDDEN"]
    assert r.errors[0]["path"] == ["createRole"]
    viewer_role = next(
        role
        for role in (await client.execute(ROLES, actor=owner)).ok()["tenant"]["roles"]
        if role["key"] == "viewer"
    )
    r = await client.execute(DELETE_ROLE, {"id": viewer_role["id"]}, actor=member)
    assert r.codes == ["FORBIDDEN"]
    # Another tenant's owner cannot touch this tenant's roles by id.
    stranger, _ = await owner_and_tenant(client)
    custom = (await create_role(client, owner, tenant_id, ["tenant:read"])).ok()["createRole"]
    r = await client.execute(DELETE_ROLE, {"id": custom["role"]["id"]}, actor=stranger)
    assert r.codes == ["NOT_FOUND"], r.body


async def test_a_custom_role_grants_exactly_its_permissions(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    role = (await create_role(client, owner, tenant_id, ["tenant:read"])).ok()["createRole"]["role"]
    member = await client.add_member(owner, tenant_id, role=role["key"])

    r = await client.execute("{ tenant { id name } }", actor=member)
    assert r.ok()["tenant"]["id"] == tenant_id

    r = await client.execute("{ tenant { name members { totalCount } } }", actor=member)
    assert r.data["tenant"]["name"]
    forbidden_at(r, "tenant", "members")
    for field in ("roles { key }", "apiKeys { totalCount }", "auditLog { totalCount }"):
        r = await client.execute(f"{{ tenant {{ id {field} }} }}", actor=member)
        forbidden_at(r, "tenant", field.split()[0])
    r = await create_key(client, member, tenant_id, ["tenant:read"])
    assert r.codes == ["FORBIDDEN"]
    # Role is declared on its type (members:read or roles:manage): its own membership is
    # visible to the member, the role object is not, denied once where it would appear.
    r = await client.execute("{ viewer { memberships { id role { key name } } } }", actor=member)
    (membership,) = r.data["viewer"]["memberships"]
    assert membership["id"] and membership["role"] is None
    assert [(e["path"], e["extensions"]["code"]) for e in r.errors] == [
        (["viewer", "memberships", 0, "role"], "FORBIDDEN")
    ]

    # Changing the role changes what its holders may do, from the next request on.
    r = await client.execute(
        UPDATE_ROLE,
        {"input": {"roleId": role["id"], "permissions": ["tenant:read", "members:read"]}},
        actor=owner,
    )
    r.ok()
    r = await client.execute("{ tenant { members { totalCount } } }", actor=member)
    assert r.ok()["tenant"]["members"]["totalCount"] == 2


# --- API keys ---


async def test_api_key_secret_is_shown_once_with_its_environment_prefix(
    client: GraphQLClient, server: Server
) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    live = (await create_key(client, owner, tenant_id, ["tenant:read"])).ok()["createApiKey"]
    test = (await create_key(client, owner, tenant_id, ["tenant:read"], environment="TEST")).ok()[
        "createApiKey"
    ]
    assert live["secret"].startswith("cg_live_")
    assert test["secret"].startswith("cg_test_")
    assert live["apiKey"]["environment"] == "LIVE"
    assert test["apiKey"]["environment"] == "TEST"
    for payload in (live, test):
        assert len(payload["secret"]) >= 40
        assert payload["apiKey"]["prefix"] == payload["secret"][: len(payload["apiKey"]["prefix"])]
        assert len(payload["apiKey"]["prefix"]) < len(payload["secret"]) - 20
        assert payload["apiKey"]["createdBy"] == {"id": owner.user_id}
        assert payload["apiKey"]["status"] == "ACTIVE"

    # Listed afterwards: no secret anywhere in the answer.
    r = await client.execute(KEYS, actor=owner)
    listed = r.ok()["tenant"]["apiKeys"]["nodes"]
    assert {k["id"] for k in listed} == {live["apiKey"]["id"], test["apiKey"]["id"]}
    assert live["secret"] not in str(r.body)
    assert test["secret"] not in str(r.body)

    # Stored only as a hash: the secret (or its random part) is nowhere in the database.
    dump = await all_text_in_db(server)
    for payload in (live, test):
        secret = payload["secret"]
        assert secret not in dump
        assert secret[len("cg_live_") :] not in dump
        rows = await db_rows(
            server, "SELECT secret_hash FROM api_keys WHERE id = :id", id=payload["apiKey"]["id"]
        )
        assert rows == [{"secret_hash": secrets.digest(secret)}]


async def test_an_api_key_authenticates_within_its_scopes(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    key, _ = await issued_key(client, owner, tenant_id, ["tenant:read"])
    assert key.headers() == {"Authorization": f"Bearer {key.token}"}

    r = await client.execute("{ tenant { id name } }", actor=key)
    assert r.ok()["tenant"]["id"] == tenant_id
    r = await client.execute("{ tenant { id members { totalCount } } }", actor=key)
    assert r.data["tenant"]["id"] == tenant_id
    forbidden_at(r, "tenant", "members")
    r = await create_key(client, key, tenant_id, ["tenant:read"])
    assert r.codes == ["FORBIDDEN"]

    # The scheme matters, and a key is bound to its own tenant.
    r = await client.execute("{ tenant { id } }", headers={"Authorization": f"Basic {key.token}"})
    assert r.codes == ["UNAUTHENTICATED"]
    _, other_tenant = await owner_and_tenant(client)
    r = await client.execute("{ tenant { id } }", actor=key, tenant_id=other_tenant)
    assert r.codes == ["FORBIDDEN"]
    # A key can never hold more than its creator.
    member = await client.add_member(owner, tenant_id, role="admin")
    r = await create_key(client, member, tenant_id, ["billing:manage"])
    assert r.codes == ["FORBIDDEN"]
    assert r.errors[0]["extensions"]["field"] == "scopes"


async def test_last_used_at_is_set_after_use(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    key, payload = await issued_key(client, owner, tenant_id, ["tenant:read"])
    assert payload["apiKey"]["lastUsedAt"] is None
    before = datetime.now(UTC) - timedelta(seconds=5)

    (await client.execute("{ tenant { id } }", actor=key)).ok()

    listed = (await client.execute(KEYS, actor=owner)).ok()["tenant"]["apiKeys"]["nodes"]
    used = next(k for k in listed if k["id"] == payload["apiKey"]["id"])
    assert used["lastUsedAt"] is not None
    last_used = datetime.fromisoformat(used["lastUsedAt"])
    assert last_used.tzinfo is not None
    assert before <= last_used <= datetime.now(UTC) + timedelta(seconds=5)


async def test_a_revoked_key_fails(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    key, payload = await issued_key(client, owner, tenant_id, ["tenant:read"])
    (await client.execute("{ tenant { id } }", actor=key)).ok()

    r = await client.execute(REVOKE_KEY, {"id": payload["apiKey"]["id"]}, actor=owner)
    revoked = r.ok()["revokeApiKey"]["apiKey"]
    assert revoked["status"] == "REVOKED"
    assert revoked["revokedAt"]

    r = await client.execute("{ tenant { id } }", actor=key)
    assert r.status == 401
    assert_unauthenticated(r)
    # Revoking again changes nothing and records nothing more.
    r = await client.execute(REVOKE_KEY, {"id": payload["apiKey"]["id"]}, actor=owner)
    assert r.ok()["revokeApiKey"]["apiKey"]["revokedAt"] == revoked["revokedAt"]
    entries = await audit(client, owner, tenant_id, "api_key.revoked")
    assert [e["targetId"] for e in entries] == [payload["apiKey"]["id"]]


async def test_an_expired_key_fails(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    r = await create_key(
        client,
        owner,
        tenant_id,
        ["tenant:read"],
        expiresAt=(datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
    )
    assert r.codes == ["BAD_USER_INPUT"]

    expires = datetime.now(UTC) + timedelta(seconds=2)
    key, payload = await issued_key(
        client, owner, tenant_id, ["tenant:read"], expiresAt=expires.isoformat()
    )
    assert (await client.execute("{ tenant { id } }", actor=key)).ok()

    deadline = time.monotonic() + 20
    while True:
        r = await client.execute("{ tenant { id } }", actor=key)
        if r.errors or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert datetime.now(UTC) >= expires
    assert r.status == 401
    assert_unauthenticated(r)
    listed = (await client.execute(KEYS, actor=owner)).ok()["tenant"]["apiKeys"]["nodes"]
    assert next(k for k in listed if k["id"] == payload["apiKey"]["id"])["status"] == "EXPIRED"


async def test_a_key_shrinks_when_its_creator_is_demoted(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    admin = await client.add_member(owner, tenant_id, role="admin")
    key, payload = await issued_key(
        client,
        admin,
        tenant_id,
        ["tenant:read", "members:read", "apikeys:manage", "members:manage", "audit:read"],
    )
    r = await client.execute(
        "{ tenant { apiKeys { totalCount } auditLog { totalCount } } }", actor=key
    )
    assert r.ok()["tenant"]["apiKeys"]["totalCount"] >= 1
    child = (await create_key(client, key, tenant_id, ["tenant:read"])).ok()["createApiKey"]
    assert child["apiKey"]["createdBy"] == {"id": admin.user_id}

    membership_id = await client.membership_id(owner, tenant_id, str(admin.user_id))
    r = await client.execute(
        CHANGE_ROLE, {"input": {"membershipId": membership_id, "role": "viewer"}}, actor=owner
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"]["key"] == "viewer"

    r = await client.execute(
        "{ tenant { id members { totalCount } apiKeys { totalCount } auditLog { totalCount } } }",
        actor=key,
    )
    assert r.data["tenant"]["id"] == tenant_id
    assert r.data["tenant"]["members"]["totalCount"] == 2
    forbidden_at(r, "tenant", "apiKeys")
    forbidden_at(r, "tenant", "auditLog")
    r = await create_key(client, key, tenant_id, ["tenant:read"])
    assert r.codes == ["FORBIDDEN"]
    r = await client.execute(REVOKE_KEY, {"id": payload["apiKey"]["id"]}, actor=key)
    assert r.codes == ["FORBIDDEN"]
    r = await client.execute(
        """mutation { inviteMember(input: {email: "x@example.com", role: "viewer"}) {
            token } }""",
        actor=key,
    )
    assert r.codes == ["FORBIDDEN"]

    # Removed altogether: the key authenticates but may do nothing in the tenant.
    r = await client.execute(
        "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
        {"id": membership_id},
        actor=owner,
    )
    r.ok()
    r = await client.execute("{ tenant { id } }", actor=key)
    assert r.codes == ["FORBIDDEN"]
    assert r.data == {"tenant": None}


async def test_a_key_is_bound_to_its_environment(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    test_key, _ = await issued_key(client, owner, tenant_id, ["tenant:read"], environment="TEST")
    live_key, _ = await issued_key(client, owner, tenant_id, ["tenant:read"])

    for key, env in ((test_key, "test"), (live_key, "live")):
        r = await client.execute("{ tenant { id } }", actor=key)
        assert r.ok()["tenant"]["id"] == tenant_id
        r = await client.execute("{ tenant { id } }", actor=key, headers={"X-Environment": env})
        assert r.ok()["tenant"]["id"] == tenant_id

    for key, env in ((test_key, "live"), (test_key, "LIVE"), (live_key, "test")):
        r = await client.execute("{ tenant { id } }", actor=key, headers={"X-Environment": env})
        assert r.status == 403, r.body
        assert r.codes == ["FORBIDDEN"]
        assert r.errors[0]["extensions"]["field"] == "X-Environment"
        assert r.data is None


async def test_audit_entries_for_keys_and_roles(client: GraphQLClient) -> None:
    owner, tenant_id = await owner_and_tenant(client)
    key, created = await issued_key(
        client, owner, tenant_id, ["tenant:read", "apikeys:manage"], environment="TEST"
    )
    (await client.execute(REVOKE_KEY, {"id": created["apiKey"]["id"]}, actor=owner)).ok()
    admin_key, admin_key_payload = await issued_key(
        client, owner, tenant_id, ["tenant:read", "apikeys:manage"]
    )
    by_key = (await create_key(client, admin_key, tenant_id, ["tenant:read"])).ok()["createApiKey"]
    role = (await create_role(client, owner, tenant_id, ["tenant:read"])).ok()["createRole"]["role"]
    (
        await client.execute(
            UPDATE_ROLE, {"input": {"roleId": role["id"], "name": "Renamed"}}, actor=owner
        )
    ).ok()
    (await client.execute(DELETE_ROLE, {"id": role["id"]}, actor=owner)).ok()

    created_entries = {
        e["targetId"]: e for e in await audit(client, owner, tenant_id, "api_key.created")
    }
    entry = created_entries[created["apiKey"]["id"]]
    assert entry["actorKind"] == "user"
    assert entry["actorId"] == owner.user_id
    assert entry["targetType"] == "ApiKey"
    assert entry["environment"] == "TEST"
    assert entry["changes"]["after"]["secret_hash"] == "[redacted]"
    assert entry["changes"]["after"]["scopes"] == ["apikeys:manage", "tenant:read"]
    # A key issued by a key: the key acted, for its creator.
    entry = created_entries[by_key["apiKey"]["id"]]
    assert entry["actorKind"] == "api_key"
    assert entry["actorId"] == admin_key_payload["apiKey"]["id"]
    assert entry["actingForUserId"] == owner.user_id

    (revoked,) = await audit(client, owner, tenant_id, "api_key.revoked")
    assert revoked["actorId"] == owner.user_id
    assert revoked["targetId"] == created["apiKey"]["id"]
    assert revoked["changes"]["after"]["revokedAt"]
    assert revoked["changes"]["before"]["revokedAt"] is None

    for action in ("role.created", "role.updated", "role.deleted"):
        (entry,) = await audit(client, owner, tenant_id, action)
        assert entry["actorId"] == owner.user_id, action
        assert entry["targetType"] == "Role"
        assert entry["targetId"] == role["id"]
    (updated,) = await audit(client, owner, tenant_id, "role.updated")
    assert updated["changes"] == {
        "before": {"name": "Custom role"},
        "after": {"name": "Renamed"},
    }

    # No secret and no hash of one anywhere in the tenant's audit trail.
    r = await client.execute(
        "{ tenant { auditLog(first: 200) { nodes { changes } } } }", actor=owner
    )
    trail = str(r.ok())
    for secret in (key.token, admin_key.token):
        assert secret not in trail
        assert secrets.digest(secret) not in trail


async def test_managing_includes_reading_what_a_mutation_returns(client: GraphQLClient) -> None:
    """A key that may re-role members gets the membership it changed back in the payload,
    without holding members:read: managing a thing includes seeing it. Write permissions on
    data do not include reading it (write-only keys are a use of their own)."""
    owner, tenant_id = await owner_and_tenant(client)
    role = (await create_role(client, owner, tenant_id, ["tenant:read"])).ok()["createRole"]["role"]
    member = await client.add_member(owner, tenant_id, role=role["key"])
    # The key holds what the viewer role grants, except members:read, which members:manage
    # includes (a key grants no more than it holds: tests/test_grants.py).
    viewer = permissions.BUILTIN_ROLES["viewer"].permissions - {"members:read"}
    key = await client.api_key(owner, tenant_id, ["members:manage", *sorted(viewer)])
    r = await client.execute(
        CHANGE_ROLE, {"input": {"membershipId": member.membership_id, "role": "viewer"}}, actor=key
    )
    assert r.ok()["changeMemberRole"]["membership"] == {
        "id": member.membership_id,
        "role": {"key": "viewer"},
    }

    reader = await client.api_key(owner, tenant_id, ["tenant:read", "usage:write"])
    r = await client.execute("{ tenant { members { totalCount } } }", actor=reader)
    assert r.codes == ["FORBIDDEN"], r.body
