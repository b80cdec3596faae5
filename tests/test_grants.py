"""No one grants what they do not hold (DESIGN.md, "Security rules").

A role, a role change, an invitation or an API key carries only permissions its maker holds in
that tenant; nobody changes their own role; and, as Kubernetes' escalation rules have it, nobody
changes or removes what they could not have granted (a role, or a member, holding more than they
do). Every refusal is FORBIDDEN, names what is lacking and the field, and leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from coregraph.auth.permissions import BUILTIN_ROLES, PERMISSION_KEYS
from tests.support import Actor, GraphQLClient, Response, unique

ALL = sorted(PERMISSION_KEYS)
VIEWER = sorted(BUILTIN_ROLES["viewer"].permissions)
ADMIN = sorted(BUILTIN_ROLES["admin"].permissions)

CREATE_ROLE = """mutation($input: CreateRoleInput!) { createRole(input: $input) {
    role { id key permissions } } }"""
UPDATE_ROLE = """mutation($input: UpdateRoleInput!) { updateRole(input: $input) {
    role { id key name permissions } } }"""
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id role { key } } } }"""
INVITE = """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
    token invitation { id role { key } } } }"""
CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id scopes } } }"""
REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }"

# Everything a grant could have touched, read back through the API by the owner.
STATE = """{ tenant {
    roles { id key name description permissions }
    members(first: 200) { nodes { id user { id } role { key } } }
    invitations(first: 200, pendingOnly: false) { nodes { id email status role { key } } }
    apiKeys(first: 200) { nodes { id scopes status } }
    auditLog { totalCount } } }"""


@dataclass
class Team:
    client: GraphQLClient
    owner: Actor
    tenant_id: str

    async def run(self, query: str, variables: dict[str, Any], actor: Actor) -> Response:
        return await self.client.execute(query, variables, actor=actor, tenant_id=self.tenant_id)

    async def role(self, permissions: list[str], key: str | None = None) -> dict[str, Any]:
        """A custom role made by the owner (who may grant anything)."""
        r = await self.run(
            CREATE_ROLE,
            {
                "input": {
                    "key": key or unique("role-"),
                    "name": "Custom",
                    "permissions": permissions,
                }
            },
            self.owner,
        )
        return dict(r.ok()["createRole"]["role"])

    async def member(self, role_key: str) -> Actor:
        return await self.client.add_member(self.owner, self.tenant_id, role=role_key)

    async def state(self) -> dict[str, Any]:
        return dict((await self.run(STATE, {}, self.owner)).ok()["tenant"])


async def new_team(client: GraphQLClient) -> Team:
    owner = await client.sign_up()
    return Team(client, owner, await client.create_tenant(owner))


def refused(r: Response, mutation: str, field: str, lacking: str | None = None) -> None:
    """FORBIDDEN at ``mutation``, pointing at ``field`` and naming what the grantor lacks."""
    assert r.codes == ["FORBIDDEN"], r.body
    assert r.data == {mutation: None}, r.body
    (error,) = r.errors
    assert error["path"] == [mutation]
    assert error["extensions"]["field"] == field, error
    if lacking is not None:
        assert lacking in error["message"], error
        assert lacking in error["extensions"]["lacking"], error


# --- the table: every role-changing mutation x a grantor lacking one permission ---

# Each row arranges (as the owner) what the mutation acts on and returns its variables.
Arrange = Callable[[Team, str], Awaitable[dict[str, Any]]]


async def a_role_holding_it(team: Team, perm: str) -> dict[str, Any]:
    payload = {"key": unique("role-"), "name": "Escalated", "permissions": ["tenant:read", perm]}
    return {"input": payload}


async def widening_a_role_with_it(team: Team, perm: str) -> dict[str, Any]:
    role = await team.role(["tenant:read"])
    return {"input": {"roleId": role["id"], "permissions": ["tenant:read", perm]}}


async def narrowing_a_role_holding_it(team: Team, perm: str) -> dict[str, Any]:
    # Changing a role the grantor could not have made is refused even when it takes rights
    # away: otherwise anyone with roles:manage could strip an owner-made role.
    role = await team.role(["tenant:read", perm])
    return {"input": {"roleId": role["id"], "name": "Renamed", "permissions": ["tenant:read"]}}


async def moving_a_member_into_a_role_holding_it(team: Team, perm: str) -> dict[str, Any]:
    role = await team.role(["tenant:read", perm])
    target = await team.member("viewer")
    return {"input": {"membershipId": target.membership_id, "role": role["key"]}}


async def moving_a_member_holding_it(team: Team, perm: str) -> dict[str, Any]:
    role = await team.role(["tenant:read", perm])
    target = await team.member(role["key"])
    return {"input": {"membershipId": target.membership_id, "role": "viewer"}}


async def inviting_into_a_role_holding_it(team: Team, perm: str) -> dict[str, Any]:
    role = await team.role(["tenant:read", perm])
    return {"input": {"email": f"{unique('invitee')}@example.com", "role": role["key"]}}


async def a_key_holding_it(team: Team, perm: str) -> dict[str, Any]:
    return {"input": {"name": unique("key-"), "scopes": ["tenant:read", perm]}}


async def removing_a_member_holding_it(team: Team, perm: str) -> dict[str, Any]:
    role = await team.role(["tenant:read", perm])
    target = await team.member(role["key"])
    return {"id": target.membership_id}


@dataclass(frozen=True)
class Grant:
    arrange: Arrange
    query: str
    mutation: str
    field: str  # where the refusal points


GRANTS = [
    Grant(a_role_holding_it, CREATE_ROLE, "createRole", "permissions"),
    Grant(widening_a_role_with_it, UPDATE_ROLE, "updateRole", "permissions"),
    Grant(narrowing_a_role_holding_it, UPDATE_ROLE, "updateRole", "roleId"),
    Grant(moving_a_member_into_a_role_holding_it, CHANGE_ROLE, "changeMemberRole", "role"),
    Grant(moving_a_member_holding_it, CHANGE_ROLE, "changeMemberRole", "membershipId"),
    Grant(inviting_into_a_role_holding_it, INVITE, "inviteMember", "role"),
    Grant(a_key_holding_it, CREATE_KEY, "createApiKey", "scopes"),
    Grant(removing_a_member_holding_it, REMOVE, "removeMember", "membershipId"),
]
GRANT_IDS = [f"{g.mutation}-{g.arrange.__name__}" for g in GRANTS]
# A read (audit:read) and a manage permission (billing:manage, which the built-in admin lacks).
LACKING = ["audit:read", "billing:manage"]


async def grantor_holding(team: Team, kind: str, permissions: list[str]) -> Actor:
    """A grantor, not an owner, holding exactly ``permissions``: a member with a custom role,
    or an API key the owner issued with those scopes (a key is limited by its own scopes)."""
    if kind == "member":
        return await team.member((await team.role(permissions))["key"])
    return await team.client.api_key(team.owner, team.tenant_id, permissions)


@pytest.mark.parametrize("kind", ["member", "api_key"])
@pytest.mark.parametrize("lacking", LACKING)
@pytest.mark.parametrize("grant", GRANTS, ids=GRANT_IDS)
async def test_a_grantor_lacking_a_permission_cannot_grant_it(
    client: GraphQLClient, grant: Grant, lacking: str, kind: str
) -> None:
    team = await new_team(client)
    grantor = await grantor_holding(team, kind, [p for p in ALL if p != lacking])
    variables = await grant.arrange(team, lacking)
    before = await team.state()

    r = await team.run(grant.query, variables, grantor)

    refused(r, grant.mutation, grant.field, lacking)
    assert await team.state() == before


@pytest.mark.parametrize("kind", ["member", "api_key"])
@pytest.mark.parametrize("grant", GRANTS, ids=GRANT_IDS)
async def test_the_same_grants_pass_for_a_grantor_holding_the_permission(
    client: GraphQLClient, grant: Grant, kind: str
) -> None:
    """The table's control: a grantor holding every permission, though not an owner, makes
    each of the same changes."""
    team = await new_team(client)
    grantor = await grantor_holding(team, kind, ALL)
    for perm in LACKING:
        variables = await grant.arrange(team, perm)
        r = await team.run(grant.query, variables, grantor)
        assert r.ok()[grant.mutation] is not None


# --- the attacks that worked before ---


async def test_a_role_manager_cannot_widen_its_own_role_and_mint_a_key(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    ops = await team.role(["tenant:read", "members:read", "roles:manage", "apikeys:manage"])
    mallory = await team.member(ops["key"])
    before = await team.state()

    r = await team.run(UPDATE_ROLE, {"input": {"roleId": ops["id"], "permissions": ALL}}, mallory)
    refused(r, "updateRole", "permissions", "billing:manage")
    r = await team.run(CREATE_KEY, {"input": {"name": "all", "scopes": ALL}}, mallory)
    refused(r, "createApiKey", "scopes", "billing:manage")
    assert await team.state() == before


async def test_an_admin_cannot_make_a_billing_role_and_take_it(client: GraphQLClient) -> None:
    team = await new_team(client)
    admin = await team.member("admin")
    before = await team.state()

    payload = {"key": "treasurer", "name": "Treasurer", "permissions": ["billing:manage"]}
    r = await team.run(CREATE_ROLE, {"input": payload}, admin)
    refused(r, "createRole", "permissions", "billing:manage")
    assert await team.state() == before

    # Even with such a role in place (the owner made it), the admin cannot take it.
    await team.role(["tenant:read", "billing:manage"], key="treasurer")
    before = await team.state()
    change = {"membershipId": admin.membership_id, "role": "treasurer"}
    r = await team.run(CHANGE_ROLE, {"input": change}, admin)
    refused(r, "changeMemberRole", "membershipId")
    assert await team.state() == before


async def test_a_members_manager_cannot_make_itself_admin(client: GraphQLClient) -> None:
    team = await new_team(client)
    hr = await team.role(["tenant:read", "members:manage"])
    mallory = await team.member(hr["key"])
    before = await team.state()

    change = {"membershipId": mallory.membership_id, "role": "admin"}
    r = await team.run(CHANGE_ROLE, {"input": change}, mallory)
    refused(r, "changeMemberRole", "membershipId")
    assert await team.state() == before


async def test_an_admin_cannot_invite_into_the_billing_role(client: GraphQLClient) -> None:
    team = await new_team(client)
    admin = await team.member("admin")
    before = await team.state()

    invite = {"email": f"{unique('accomplice')}@example.com", "role": "billing"}
    r = await team.run(INVITE, {"input": invite}, admin)
    refused(r, "inviteMember", "role", "billing:manage")
    assert await team.state() == before


# --- nobody changes their own role ---


async def members_manager(team: Team) -> tuple[Actor, str | None]:
    actor = await team.member((await team.role([*VIEWER, "members:manage"]))["key"])
    return actor, actor.membership_id


async def admin(team: Team) -> tuple[Actor, str | None]:
    actor = await team.member("admin")
    return actor, actor.membership_id


async def an_owner_among_two(team: Team) -> tuple[Actor, str | None]:
    # A second owner, so stepping down would not leave the tenant without one.
    await team.member("owner")
    return team.owner, await team.client.membership_id(
        team.owner, team.tenant_id, str(team.owner.user_id)
    )


async def an_api_key_of_an_admin(team: Team) -> tuple[Actor, str | None]:
    creator = await team.member("admin")
    key = await team.client.api_key(creator, team.tenant_id, ADMIN)
    return key, creator.membership_id


@pytest.mark.parametrize(
    "who", [members_manager, admin, an_owner_among_two, an_api_key_of_an_admin]
)
async def test_nobody_changes_their_own_role(
    client: GraphQLClient, who: Callable[[Team], Awaitable[tuple[Actor, str | None]]]
) -> None:
    team = await new_team(client)
    actor, own_membership = await who(team)
    before = await team.state()

    # Not even downwards, into a role well within what they hold: only the rule on one's own
    # role stands in the way.
    change = {"membershipId": own_membership, "role": "viewer"}
    r = await team.run(CHANGE_ROLE, {"input": change}, actor)
    refused(r, "changeMemberRole", "membershipId")
    assert "own role" in r.errors[0]["message"]
    assert await team.state() == before


# --- what still works ---


async def test_an_owner_grants_anything(client: GraphQLClient) -> None:
    team = await new_team(client)
    everything = await team.role(ALL)
    member = await team.member("viewer")
    r = await team.run(
        CHANGE_ROLE, {"input": {"membershipId": member.membership_id, "role": "owner"}}, team.owner
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"] == {"key": "owner"}
    invite = {"email": f"{unique('cfo')}@example.com", "role": everything["key"]}
    assert (await team.run(INVITE, {"input": invite}, team.owner)).ok()["inviteMember"]
    r = await team.run(CREATE_KEY, {"input": {"name": "all", "scopes": ALL}}, team.owner)
    assert sorted(r.ok()["createApiKey"]["apiKey"]["scopes"]) == ALL
    # ...and an owner may still remove another owner.
    r = await team.run(REMOVE, {"id": member.membership_id}, team.owner)
    assert r.ok()["removeMember"] == {"removedMembershipId": member.membership_id}


async def test_an_admin_grants_what_it_holds(client: GraphQLClient) -> None:
    team = await new_team(client)
    admin = await team.member("admin")
    member = await team.member("member")
    # members:read is held through members:manage: what a permission includes counts.
    support = ["tenant:read", "members:read", "audit:read"]
    role = (
        await team.run(
            CREATE_ROLE,
            {"input": {"key": unique("support-"), "name": "Support", "permissions": support}},
            admin,
        )
    ).ok()["createRole"]["role"]
    r = await team.run(
        UPDATE_ROLE,
        {"input": {"roleId": role["id"], "permissions": [*support, "files:read"]}},
        admin,
    )
    assert "files:read" in r.ok()["updateRole"]["role"]["permissions"]
    change = {"membershipId": member.membership_id, "role": role["key"]}
    r = await team.run(CHANGE_ROLE, {"input": change}, admin)
    assert r.ok()["changeMemberRole"]["membership"]["role"] == {"key": role["key"]}
    invite = {"email": f"{unique('peer')}@example.com", "role": "admin"}
    assert (await team.run(INVITE, {"input": invite}, admin)).ok()["inviteMember"]
    r = await team.run(CREATE_KEY, {"input": {"name": "ci", "scopes": support}}, admin)
    assert sorted(r.ok()["createApiKey"]["apiKey"]["scopes"]) == sorted(support)
    r = await team.run(REMOVE, {"id": member.membership_id}, admin)
    assert r.ok()["removeMember"] == {"removedMembershipId": member.membership_id}


# --- unknown roles ---


@pytest.mark.parametrize("role", ["no-such-role", "NOT A KEY\u0000"])
async def test_an_unknown_role_lists_the_tenants_roles(client: GraphQLClient, role: str) -> None:
    team = await new_team(client)
    custom = await team.role(["tenant:read"])
    member = await team.member("viewer")
    invite = {"email": f"{unique('x')}@example.com", "role": role}
    change = {"membershipId": member.membership_id, "role": role}
    for query, variables in ((INVITE, {"input": invite}), (CHANGE_ROLE, {"input": change})):
        r = await team.run(query, variables, team.owner)
        assert r.codes == ["BAD_USER_INPUT"], r.body
        (error,) = r.errors
        assert error["extensions"]["field"] == "role"
        for key in [*BUILTIN_ROLES, custom["key"]]:
            assert key in error["message"], error
