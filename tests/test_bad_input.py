"""Bad input gets a typed error and leaves the database as it was.

Each story sends one wrong thing — an invalid email, a weak password, a taken slug, an unknown
role, a malformed id, an oversize string, an expired or used invitation, a forbidden grant — and
checks three things: the error's ``extensions.code``, that the error names the offending field,
and that nothing changed (the tenant's state and its audit log read the same before and after).
No answer may carry a stack trace or SQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import (
    PASSWORD,
    Actor,
    GraphQLClient,
    Response,
    Server,
    running_server,
    unique,
)

STATE = """{ tenant {
    id name slug
    members(first: 200) { totalCount nodes { id user { id email } role { key } } }
    roles { id key name description permissions }
    apiKeys(first: 200) { totalCount nodes { id name status scopes expiresAt } }
    invitations(first: 200, pendingOnly: false) { totalCount nodes { id email status } }
    auditLog(first: 200) { totalCount nodes { id action targetId } }
} }"""

SECRET = "a-secret-passphrase-Zq9"

# What must never reach a client: a Python stack, or SQL from the database layer.
FORBIDDEN_IN_BODY = ("Traceback", 'File "', "SELECT", "INSERT", "sqlalchemy", "asyncpg")

SIGN_UP = """mutation($input: SignUpInput!) { signUp(input: $input) { user { id } } }"""
LOGIN = """mutation($input: LoginInput!) { login(input: $input) { user { id } } }"""
CREATE_TENANT = """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
    tenant { id slug } } }"""
UPDATE_TENANT = """mutation($input: UpdateTenantInput!) { updateTenant(input: $input) {
    tenant { id name slug } } }"""
INVITE = """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
    token invitation { id status } } }"""
ACCEPT = "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }"
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id role { key } } } }"""
REMOVE_MEMBER = "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }"
CREATE_ROLE = """mutation($input: CreateRoleInput!) { createRole(input: $input) {
    role { id key } } }"""
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id } } }"""


@dataclass
class Team:
    """A tenant with exactly one owner, an admin and a member."""

    owner: Actor
    admin: Actor
    member: Actor
    tenant_id: str
    slug: str
    owner_membership_id: str
    admin_membership_id: str
    member_membership_id: str


@pytest.fixture(scope="module")
async def team(client: GraphQLClient) -> Team:
    owner = await client.sign_up()
    slug = unique("team-")
    tenant_id = await client.create_tenant(owner, slug=slug)
    admin = await client.add_member(owner, tenant_id, role="admin")
    member = await client.add_member(owner, tenant_id, role="member")
    return Team(
        owner=owner,
        admin=admin,
        member=member,
        tenant_id=tenant_id,
        slug=slug,
        owner_membership_id=await client.membership_id(owner, tenant_id, str(owner.user_id)),
        admin_membership_id=await client.membership_id(owner, tenant_id, str(admin.user_id)),
        member_membership_id=await client.membership_id(owner, tenant_id, str(member.user_id)),
    )


async def tenant_state(client: GraphQLClient, owner: Actor, tenant_id: str) -> dict[str, Any]:
    r = await client.execute(STATE, actor=owner, tenant_id=tenant_id)
    state: dict[str, Any] = r.ok()["tenant"]
    return state


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    new_entries = [
        entry for entry in after["auditLog"]["nodes"] if entry not in before["auditLog"]["nodes"]
    ]
    assert not new_entries, f"a failed action was audited: {new_entries}"
    assert after == before


def assert_clean(r: Response) -> None:
    body = json.dumps(r.body)
    for marker in FORBIDDEN_IN_BODY:
        assert marker not in body, f"{marker!r} reached the client: {body[:2000]}"


def assert_error(r: Response, code: str, field: str, operation: str | None = None) -> None:
    """One error with ``code`` that names ``field``; no data for the operation; nothing leaked."""
    assert r.codes == [code], r.body
    error = r.errors[0]
    named = (error.get("extensions") or {}).get("field")
    if named is not None:
        assert named == field, f"the error names {named!r}, not {field!r}: {error}"
    else:
        assert field in error["message"], f"the error does not name {field!r}: {error}"
    if operation is not None and r.data is not None:
        assert r.data.get(operation) is None, r.body
    assert_clean(r)


async def viewer_tenants(client: GraphQLClient, user: Actor) -> list[str]:
    r = await client.execute(
        "{ viewer { memberships { tenant { id } } } }", actor=Actor(token=user.token)
    )
    return [m["tenant"]["id"] for m in r.ok()["viewer"]["memberships"]]


async def can_log_in(client: GraphQLClient, email: str, password: str) -> bool:
    r = await client.execute(LOGIN, {"input": {"email": email, "password": password}})
    assert_clean(r)
    if r.errors:
        assert r.codes == ["UNAUTHENTICATED"], r.body
        return False
    return True


# --- signing up -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "missing-domain@",
        "@missing-local.example",
        "two@@example.com",
        "spaces in@example.com",
        "",
    ],
)
async def test_sign_up_with_an_invalid_email_is_refused(client: GraphQLClient, email: str) -> None:
    r = await client.execute(SIGN_UP, {"input": {"email": email, "password": PASSWORD}})
    assert_error(r, "BAD_USER_INPUT", "email", "signUp")
    assert not await can_log_in(client, email, PASSWORD)


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("Sh0rt!x", id="too short"),
        pytest.param("password123", id="common"),
        pytest.param("PassWord123", id="common in another case"),
        pytest.param("abababababab", id="too few distinct characters"),
        pytest.param("x" * 10 + "yz" * 124, id="too long"),
    ],
)
async def test_sign_up_with_a_weak_password_is_refused(
    client: GraphQLClient, password: str
) -> None:
    email = f"{unique('weak')}@example.com"
    r = await client.execute(SIGN_UP, {"input": {"email": email, "password": password}})
    assert_error(r, "BAD_USER_INPUT", "password", "signUp")
    assert not await can_log_in(client, email, password)
    # No account was made: the same address signs up with a good password.
    await client.sign_up(email=email)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(
            {"email": "a@example.com", "password": SECRET, "extra": 1}, id="unknown field"
        ),
        pytest.param({"password": SECRET}, id="missing field"),
        pytest.param({"email": 7, "password": SECRET}, id="wrong type beside it"),
        pytest.param({"email": "a@example.com", "password": 87654321}, id="wrong type itself"),
    ],
)
async def test_a_bad_variable_is_named_but_its_value_is_not_repeated(
    client: GraphQLClient, value: dict[str, Any]
) -> None:
    """A variable that cannot be coerced is refused, naming where, without quoting the value:
    variables carry passwords and tokens, and error messages reach logs and proxies."""
    r = await client.execute(SIGN_UP, {"input": value})
    assert r.errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert r.errors[0]["message"].startswith("Variable '$input'")
    body = json.dumps(r.body)
    assert SECRET not in body and "87654321" not in body


async def test_sign_up_with_a_taken_email_is_a_conflict(client: GraphQLClient) -> None:
    first = await client.sign_up()
    assert first.email
    for email in (first.email, first.email.upper()):
        r = await client.execute(
            SIGN_UP, {"input": {"email": email, "password": "another-good-passphrase-42"}}
        )
        assert_error(r, "CONFLICT", "email", "signUp")
    # The existing account was neither replaced nor given the second password.
    assert await can_log_in(client, first.email, PASSWORD)
    assert not await can_log_in(client, first.email, "another-good-passphrase-42")


async def test_sign_up_with_oversize_values_is_refused(client: GraphQLClient) -> None:
    long_email = "a" * 250 + "@example.com"
    r = await client.execute(SIGN_UP, {"input": {"email": long_email, "password": PASSWORD}})
    assert_error(r, "BAD_USER_INPUT", "email", "signUp")

    email = f"{unique('long')}@example.com"
    r = await client.execute(
        SIGN_UP, {"input": {"email": email, "password": PASSWORD, "displayName": "n" * 10_000}}
    )
    assert_error(r, "BAD_USER_INPUT", "displayName", "signUp")
    assert not await can_log_in(client, email, PASSWORD)


# --- tenants --------------------------------------------------------------------------------

INVALID_SLUGS = [
    "Has Spaces",
    "UPPERCASE",
    "-leading-hyphen",
    "trailing-hyphen-",
    "under_score",
    "dots.in.slug",
    "é-accent",
    "a" * 64,
    "",
]


async def test_create_tenant_with_a_taken_slug_is_a_conflict(
    client: GraphQLClient, team: Team
) -> None:
    founder = await client.sign_up()
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(
        CREATE_TENANT, {"input": {"name": "Copycat", "slug": team.slug}}, actor=founder
    )
    assert_error(r, "CONFLICT", "slug", "createTenant")
    assert await viewer_tenants(client, founder) == []
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


@pytest.mark.parametrize("slug", INVALID_SLUGS)
async def test_create_tenant_with_an_invalid_slug_is_refused(
    client: GraphQLClient, team: Team, slug: str
) -> None:
    r = await client.execute(
        CREATE_TENANT, {"input": {"name": "Fine Name", "slug": slug}}, actor=Actor(team.admin.token)
    )
    assert_error(r, "BAD_USER_INPUT", "slug", "createTenant")
    assert await viewer_tenants(client, team.admin) == [team.tenant_id]


async def test_create_tenant_with_an_oversize_name_is_refused(
    client: GraphQLClient, team: Team
) -> None:
    slug = unique("long-name-")
    for name in ("n" * 10_000, "   "):
        r = await client.execute(
            CREATE_TENANT, {"input": {"name": name, "slug": slug}}, actor=Actor(team.admin.token)
        )
        assert_error(r, "BAD_USER_INPUT", "name", "createTenant")
    assert await viewer_tenants(client, team.admin) == [team.tenant_id]
    # The slug was not reserved by the failed attempts.
    founder = await client.sign_up()
    await client.create_tenant(founder, slug=slug)


async def test_update_tenant_to_a_taken_slug_is_a_conflict(
    client: GraphQLClient, team: Team
) -> None:
    other_owner = await client.sign_up()
    other_slug = unique("other-")
    other_id = await client.create_tenant(other_owner, slug=other_slug)
    other_before = await tenant_state(client, other_owner, other_id)
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(
        UPDATE_TENANT, {"input": {"name": "Renamed", "slug": other_slug}}, actor=team.owner
    )
    assert_error(r, "CONFLICT", "slug", "updateTenant")
    # Neither the name (sent in the same input) nor the slug changed, in either tenant.
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))
    assert_unchanged(other_before, await tenant_state(client, other_owner, other_id))


@pytest.mark.parametrize("slug", INVALID_SLUGS)
async def test_update_tenant_with_an_invalid_slug_is_refused(
    client: GraphQLClient, team: Team, slug: str
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(UPDATE_TENANT, {"input": {"slug": slug}}, actor=team.owner)
    assert_error(r, "BAD_USER_INPUT", "slug", "updateTenant")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_update_tenant_with_an_oversize_name_is_refused(
    client: GraphQLClient, team: Team
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(UPDATE_TENANT, {"input": {"name": "n" * 10_000}}, actor=team.owner)
    assert_error(r, "BAD_USER_INPUT", "name", "updateTenant")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


# --- invitations and members ----------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "two@@example.com", "a" * 250 + "@example.com", ""],
    ids=["no at", "two ats", "longer than 254", "empty"],
)
async def test_invite_with_an_invalid_email_is_refused(
    client: GraphQLClient, team: Team, email: str
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(
        INVITE, {"input": {"email": email, "role": "member"}}, actor=team.admin
    )
    assert_error(r, "BAD_USER_INPUT", "email", "inviteMember")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_unknown_role_is_bad_input(client: GraphQLClient, team: Team) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    for role in ("superuser", "", "OWNER"):
        r = await client.execute(
            INVITE, {"input": {"email": "new@example.com", "role": role}}, actor=team.admin
        )
        assert_error(r, "BAD_USER_INPUT", "role", "inviteMember")
        r = await client.execute(
            CHANGE_ROLE,
            {"input": {"membershipId": team.member_membership_id, "role": role}},
            actor=team.admin,
        )
        assert_error(r, "BAD_USER_INPUT", "role", "changeMemberRole")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_an_expired_invitation_is_refused(
    client: GraphQLClient, team: Team, database_url: str
) -> None:
    """A second server on the same database hands out invitations that live one second."""
    invitee = await client.sign_up()
    with running_server(make_settings(database_url, invitation_ttl_seconds=1)) as short_lived:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await GraphQLClient(http, short_lived.url).execute(
                INVITE, {"input": {"email": invitee.email, "role": "member"}}, actor=team.owner
            )
            invited = r.ok()["inviteMember"]

    # Wait (bounded) until the invitation reads as expired; accepting any earlier would join.
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        r = await client.execute(
            "query($id: ID!) { node(id: $id) { ... on Invitation { status } } }",
            {"id": invited["invitation"]["id"]},
            actor=team.owner,
        )
        status = r.ok()["node"]["status"]
        if status == "EXPIRED":
            break
        await asyncio.sleep(0.05)  # poll interval; the deadline above bounds the wait
    assert status == "EXPIRED", "the one-second invitation did not expire within 15 s"
    before = await tenant_state(client, team.owner, team.tenant_id)

    r = await client.execute(ACCEPT, {"t": invited["token"]}, actor=invitee)
    assert_error(r, "BAD_USER_INPUT", "token", "acceptInvitation")
    assert "expired" in r.errors[0]["message"]
    assert await viewer_tenants(client, invitee) == []
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_a_used_invitation_is_a_conflict(client: GraphQLClient, team: Team) -> None:
    invitee = await client.sign_up()
    r = await client.execute(
        INVITE, {"input": {"email": invitee.email, "role": "viewer"}}, actor=team.owner
    )
    token = r.ok()["inviteMember"]["token"]
    r = await client.execute(ACCEPT, {"t": token}, actor=invitee)
    r.ok()
    before = await tenant_state(client, team.owner, team.tenant_id)

    stranger = await client.sign_up()
    for who in (invitee, stranger):
        r = await client.execute(ACCEPT, {"t": token}, actor=who)
        assert_error(r, "CONFLICT", "token", "acceptInvitation")
    assert await viewer_tenants(client, invitee) == [team.tenant_id]
    assert await viewer_tenants(client, stranger) == []
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_the_last_owner_cannot_be_removed_or_demoted(
    client: GraphQLClient, team: Team
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(REMOVE_MEMBER, {"id": team.owner_membership_id}, actor=team.owner)
    assert_error(r, "CONFLICT", "membershipId", "removeMember")
    for role in ("admin", "member", "viewer"):
        r = await client.execute(
            CHANGE_ROLE,
            {"input": {"membershipId": team.owner_membership_id, "role": role}},
            actor=team.owner,
        )
        assert_error(r, "CONFLICT", "membershipId", "changeMemberRole")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_an_admin_cannot_grant_or_take_the_owner_role(
    client: GraphQLClient, team: Team
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        (
            "changeMemberRole",
            CHANGE_ROLE,
            {"input": {"membershipId": team.member_membership_id, "role": "owner"}},
        ),
        (
            "changeMemberRole",
            CHANGE_ROLE,
            {"input": {"membershipId": team.admin_membership_id, "role": "owner"}},
        ),
        (
            "changeMemberRole",
            CHANGE_ROLE,
            {"input": {"membershipId": team.owner_membership_id, "role": "admin"}},
        ),
        ("inviteMember", INVITE, {"input": {"email": "boss@example.com", "role": "owner"}}),
        ("removeMember", REMOVE_MEMBER, {"id": team.owner_membership_id}),
    ]
    for operation, query, variables in attempts:
        r = await client.execute(query, variables, actor=team.admin)
        assert_error(r, "FORBIDDEN", "role", operation)
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_an_oversize_role_key_is_unknown_and_not_echoed(
    client: GraphQLClient, team: Team
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(
        INVITE, {"input": {"email": "new@example.com", "role": "r" * 100_000}}, actor=team.admin
    )
    assert_error(r, "BAD_USER_INPUT", "role", "inviteMember")
    assert len(json.dumps(r.body)) < 2_000
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


# --- roles and API keys ---------------------------------------------------------------------


async def test_unknown_permission_is_bad_input(client: GraphQLClient, team: Team) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    for permissions in (["members:read", "root:everything"], ["MEMBERS:READ"], ["*"]):
        r = await client.execute(
            CREATE_ROLE,
            {"input": {"key": unique("r"), "name": "Role", "permissions": permissions}},
            actor=team.admin,
        )
        assert_error(r, "BAD_USER_INPUT", "permissions", "createRole")
        r = await client.execute(
            CREATE_KEY, {"input": {"name": "key", "scopes": permissions}}, actor=team.admin
        )
        assert_error(r, "BAD_USER_INPUT", "scopes", "createApiKey")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_a_taken_role_key_is_a_conflict(client: GraphQLClient, team: Team) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    for key in ("member", "owner"):
        r = await client.execute(
            CREATE_ROLE,
            {"input": {"key": key, "name": "Shadow", "permissions": ["members:read"]}},
            actor=team.admin,
        )
        assert_error(r, "CONFLICT", "key", "createRole")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_oversize_role_and_key_fields_are_refused(client: GraphQLClient, team: Team) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    role = {"key": unique("r"), "name": "Role", "permissions": ["members:read"]}
    for field, value in (("name", "n" * 10_000), ("description", "d" * 10_000), ("key", "k" * 64)):
        r = await client.execute(CREATE_ROLE, {"input": {**role, field: value}}, actor=team.admin)
        assert_error(r, "BAD_USER_INPUT", field, "createRole")
    r = await client.execute(
        CREATE_KEY, {"input": {"name": "n" * 10_000, "scopes": ["members:read"]}}, actor=team.admin
    )
    assert_error(r, "BAD_USER_INPUT", "name", "createApiKey")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


@pytest.mark.parametrize(
    "expires_at",
    [
        (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "2000-01-01T00:00:00+00:00",
        (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat(),
    ],
    ids=["yesterday", "long ago", "without a timezone"],
)
async def test_api_key_expiry_in_the_past_or_without_offset_is_refused(
    client: GraphQLClient, team: Team, expires_at: str
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(
        CREATE_KEY,
        {"input": {"name": "stale", "scopes": ["members:read"], "expiresAt": expires_at}},
        actor=team.admin,
    )
    assert_error(r, "BAD_USER_INPUT", "expiresAt", "createApiKey")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_api_key_scopes_beyond_the_creators_are_forbidden(
    client: GraphQLClient, team: Team
) -> None:
    # Admins lack billing:manage; a key holding only apikeys:manage lacks everything else.
    limited = await client.api_key(team.owner, team.tenant_id, ["apikeys:manage"])
    before = await tenant_state(client, team.owner, team.tenant_id)
    for actor, scopes in (
        (team.admin, ["members:read", "billing:manage"]),
        (limited, ["members:read"]),
        (limited, ["apikeys:manage", "audit:read"]),
    ):
        r = await client.execute(
            CREATE_KEY, {"input": {"name": "escalate", "scopes": scopes}}, actor=actor
        )
        assert_error(r, "FORBIDDEN", "scopes", "createApiKey")
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


# --- malformed ids, cursors and headers -----------------------------------------------------

MALFORMED_IDS = [
    ("node", "query($id: ID!) { node(id: $id) { id } }", "nope", "id"),
    ("node", "query($id: ID!) { node(id: $id) { id } }", "ten_" + "u" * 26, "id"),
    ("removeMember", REMOVE_MEMBER, "mem_bad", "membershipId"),
    (
        "changeMemberRole",
        """mutation($id: ID!) { changeMemberRole(input: {membershipId: $id, role: "viewer"}) {
            membership { id } } }""",
        "mem_bad",
        "membershipId",
    ),
    (
        "revokeApiKey",
        "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id } } }",
        "garbage",
        "id",
    ),
    (
        "revokeApiKey",
        "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id } } }",
        "'; DROP TABLE api_keys; --",
        "id",
    ),
    (
        "updateRole",
        """mutation($id: ID!) { updateRole(input: {roleId: $id, name: "x"}) { role { id } } }""",
        "rol_bad",
        "roleId",
    ),
    (
        "deleteRole",
        "mutation($id: ID!) { deleteRole(roleId: $id) { deletedRoleId } }",
        "x" * 10_000,
        "roleId",
    ),
    (
        "revokeInvitation",
        "mutation($id: ID!) { revokeInvitation(id: $id) { invitation { id } } }",
        "inv_bad",
        "id",
    ),
]


@pytest.mark.parametrize(
    ("operation", "query", "bad_id", "field"),
    MALFORMED_IDS,
    ids=[f"{op} {bad_id[:16]}" for op, _, bad_id, _ in MALFORMED_IDS],
)
async def test_malformed_id_is_bad_input(
    client: GraphQLClient, team: Team, operation: str, query: str, bad_id: str, field: str
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(query, {"id": bad_id}, actor=team.owner)
    assert_error(r, "BAD_USER_INPUT", field, operation)
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


@pytest.mark.parametrize(
    ("arguments", "field"),
    [("first: 100000", "first"), ("first: -1", "first"), ('after: "not-a-cursor"', "after")],
)
async def test_bad_page_arguments_are_bad_input(
    client: GraphQLClient, team: Team, arguments: str, field: str
) -> None:
    r = await client.execute(
        f"{{ tenant {{ members({arguments}) {{ nodes {{ id }} }} }} }}", actor=team.admin
    )
    assert r.codes == ["BAD_USER_INPUT"], r.body
    assert r.errors[0]["extensions"]["field"] == field
    assert r.data == {"tenant": {"members": None}}
    assert_clean(r)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Tenant-Id", "not-a-tenant"),
        ("X-Tenant-Id", "usr_" + "0" * 26),
        ("X-Environment", "prod"),
    ],
)
async def test_malformed_headers_are_bad_input(
    client: GraphQLClient, team: Team, header: str, value: str
) -> None:
    r = await client.execute(
        "{ tenant { id } }", actor=Actor(team.admin.token), headers={header: value}
    )
    assert r.status == 400, r.body
    assert r.codes == ["BAD_USER_INPUT"], r.body
    assert r.errors[0]["extensions"]["field"] == header
    assert_clean(r)


# --- control characters ---------------------------------------------------------------------
# PostgreSQL refuses a NUL byte in text; it must be refused as bad input before it gets there,
# on every backend, not surface as an internal error.

NUL = "bad\x00name"
NUL_CURSOR = base64.urlsafe_b64encode(b"c1:\x00").decode().rstrip("=")
CONTROL_CHARACTERS = [
    ("updateTenant", UPDATE_TENANT, {"input": {"name": NUL}}, "name"),
    ("updateTenant", UPDATE_TENANT, {"input": {"name": "bell\x07"}}, "name"),
    ("createTenant", CREATE_TENANT, {"input": {"name": NUL, "slug": "nul-name"}}, "name"),
    (
        "createRole",
        CREATE_ROLE,
        {"input": {"key": "nul-role", "name": NUL, "permissions": []}},
        "name",
    ),
    (
        "createRole",
        CREATE_ROLE,
        {"input": {"key": "nul-role", "name": "ok", "description": NUL, "permissions": []}},
        "description",
    ),
    ("createApiKey", CREATE_KEY, {"input": {"name": NUL, "scopes": ["members:read"]}}, "name"),
    ("inviteMember", INVITE, {"input": {"email": "x@example.com", "role": "member\x00"}}, "role"),
    ("inviteMember", INVITE, {"input": {"email": "x\x00@example.com", "role": "member"}}, "email"),
]


@pytest.mark.parametrize(
    ("operation", "query", "variables", "field"),
    CONTROL_CHARACTERS,
    ids=[f"{op} {field} {i}" for i, (op, _, _, field) in enumerate(CONTROL_CHARACTERS)],
)
async def test_control_characters_are_bad_input(
    client: GraphQLClient,
    team: Team,
    operation: str,
    query: str,
    variables: dict[str, Any],
    field: str,
) -> None:
    before = await tenant_state(client, team.owner, team.tenant_id)
    r = await client.execute(query, variables, actor=team.owner)
    assert_error(r, "BAD_USER_INPUT", field, operation)
    assert_unchanged(before, await tenant_state(client, team.owner, team.tenant_id))


async def test_sign_up_and_login_with_a_nul_byte(client: GraphQLClient) -> None:
    email = f"{unique('nul')}@example.com"
    r = await client.execute(
        SIGN_UP, {"input": {"email": email, "password": PASSWORD, "displayName": NUL}}
    )
    assert_error(r, "BAD_USER_INPUT", "displayName", "signUp")
    assert not await can_log_in(client, email, PASSWORD)
    assert not await can_log_in(client, "x\x00@example.com", PASSWORD)


@pytest.mark.parametrize(
    ("arguments", "variables", "field"),
    [
        ("action: $v", {"v": "member.added\x00"}, "action"),
        ("action: $v", {"v": "a" * 10_000}, "action"),
        ("targetId: $v", {"v": "not-an-id"}, "targetId"),
        ("after: $v", {"v": NUL_CURSOR}, "after"),
    ],
    ids=["nul action", "oversize action", "malformed target", "nul cursor"],
)
async def test_bad_audit_log_filters_are_bad_input(
    client: GraphQLClient, team: Team, arguments: str, variables: dict[str, Any], field: str
) -> None:
    type_ = "ID" if field == "targetId" else "String"
    r = await client.execute(
        f"query($v: {type_}!) {{ tenant {{ auditLog({arguments}) {{ totalCount }} }} }}",
        variables,
        actor=team.owner,
    )
    assert_error(r, "BAD_USER_INPUT", field)
    assert r.data == {"tenant": {"auditLog": None}}


# --- field repetition -----------------------------------------------------------------------
# A few hundred tokens can ask for any number of fields: the same field again and again, or a
# fragment spread again and again (each spread counts its fields again). Validation caps the
# fields of an operation after fragments are expanded.


def repeated(field: str, times: int) -> str:
    return " ".join([field] * times)


FIELD_BOMBS = {
    "one field 600 times": "{ viewer { " + repeated("id", 600) + " } }",
    "inline fragments": "{ viewer { "
    + repeated("... on User { " + repeated("id", 20) + " }", 15)
    + " ... { "
    + repeated("displayName", 300)
    + " } } }",
    "a fragment spread 60 times": "{ viewer { "
    + repeated("...Ten", 60)
    + " } } fragment Ten on User { "
    + repeated("id", 10)
    + " }",
    # 10 ** 12 fields in under 200 tokens: counting must not expand them one by one.
    "fragments of fragments": "{ viewer { ...F0 } } "
    + " ".join(f"fragment F{i} on User {{ {repeated(f'...F{i + 1}', 10)} }}" for i in range(11))
    + " fragment F11 on User { id }",
}


@pytest.mark.parametrize("name", sorted(FIELD_BOMBS))
async def test_an_operation_of_too_many_fields_is_refused(
    client: GraphQLClient, team: Team, name: str
) -> None:
    started = time.monotonic()
    r = await client.execute(FIELD_BOMBS[name], actor=team.member)
    # Refused at once: measuring a document must not cost what running it would.
    assert time.monotonic() - started < 5
    assert r.status == 400, r.body
    assert "data" not in r.body
    assert r.codes == ["GRAPHQL_VALIDATION_FAILED"], r.body
    assert "fields" in r.errors[0]["message"], r.errors
    assert_clean(r)


async def test_the_field_limit_counts_exactly_and_survives_fragment_cycles(
    client: GraphQLClient, team: Team, server: Server
) -> None:
    limit = server.settings.max_fields
    # `viewer` is one field, its `id`s the rest: at the limit it runs, one more is refused.
    at_limit = "{ viewer { " + repeated("id", limit - 1) + " } }"
    assert (await client.execute(at_limit, actor=team.member)).ok() == {
        "viewer": {"id": team.member.user_id}
    }
    r = await client.execute("{ viewer { " + repeated("id", limit) + " } }", actor=team.member)
    assert r.codes == ["GRAPHQL_VALIDATION_FAILED"], r.body
    assert str(limit) in r.errors[0]["message"]
    # A cycle is its own validation error, never a hang or an internal error.
    r = await client.execute(
        "{ viewer { ...A } } fragment A on User { id ...B } fragment B on User { ...A }",
        actor=team.member,
    )
    assert r.status == 400 and set(r.codes) == {"GRAPHQL_VALIDATION_FAILED"}, r.body
    # The whole state of a tenant, as the tests read it, is far below the limit.
    assert (await client.execute(STATE, actor=team.owner)).ok()["tenant"]["id"] == team.tenant_id


# --- the same duplicate, sent concurrently --------------------------------------------------
# The "already taken?" checks run before the insert; when several requests pass them at once,
# the database's unique constraint decides, and the losers still get CONFLICT, not a 500.

RACERS = 6


def assert_one_wins(results: list[Response], field: str, operation: str) -> None:
    """Of RACERS identical writes, exactly one succeeds; each other one is a CONFLICT on
    ``field``."""
    assert sorted(tuple(r.codes) for r in results) == [()] + [("CONFLICT",)] * (RACERS - 1)
    for r in results:
        if r.errors:
            assert_error(r, "CONFLICT", field, operation)


async def test_concurrent_sign_ups_with_one_email_make_one_account(client: GraphQLClient) -> None:
    email = f"{unique('race')}@example.com"
    results = await asyncio.gather(
        *(
            client.execute(SIGN_UP, {"input": {"email": email, "password": PASSWORD}})
            for _ in range(RACERS)
        )
    )
    assert_one_wins(results, "email", "signUp")
    assert await can_log_in(client, email, PASSWORD)


async def test_concurrent_tenants_with_one_slug_make_one_tenant(client: GraphQLClient) -> None:
    founder = await client.sign_up()
    slug = unique("race-")
    results = await asyncio.gather(
        *(
            client.execute(CREATE_TENANT, {"input": {"name": "Race", "slug": slug}}, actor=founder)
            for _ in range(RACERS)
        )
    )
    assert_one_wins(results, "slug", "createTenant")
    assert len(await viewer_tenants(client, founder)) == 1


async def test_concurrent_acceptances_of_one_invitation_make_one_membership(
    client: GraphQLClient, team: Team
) -> None:
    invitee = await client.sign_up()
    r = await client.execute(
        INVITE, {"input": {"email": invitee.email, "role": "viewer"}}, actor=team.owner
    )
    invited = r.ok()["inviteMember"]
    results = await asyncio.gather(
        *(client.execute(ACCEPT, {"t": invited["token"]}, actor=invitee) for _ in range(RACERS))
    )
    assert_one_wins(results, "token", "acceptInvitation")
    assert await viewer_tenants(client, invitee) == [team.tenant_id]
    state = await tenant_state(client, team.owner, team.tenant_id)
    accepted = [
        e
        for e in state["auditLog"]["nodes"]
        if e["action"] == "invitation.accepted" and e["targetId"] == invited["invitation"]["id"]
    ]
    assert len(accepted) == 1, accepted
