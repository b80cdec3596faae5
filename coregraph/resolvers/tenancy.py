"""tenant, createTenant, updateTenant, invitations and membership changes.

Mutations answer with payload types, never bare entities, so that a later approval gate can
answer "approval required" in the same payload without breaking clients.
"""

from __future__ import annotations

import strawberry
from strawberry.federation import field

from coregraph import models
from coregraph.auth import permissions
from coregraph.context import Context
from coregraph.errors import Forbidden
from coregraph.schema import lookup
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.tenancy import Invitation, Membership, Tenant
from coregraph.services import tenancy

Info = strawberry.Info[Context, None]


@strawberry.input
class CreateTenantInput:
    name: str
    slug: str


@strawberry.input
class UpdateTenantInput:
    name: str | None = None
    slug: str | None = None
    audit_retention_days: int | None = strawberry.field(
        default=strawberry.UNSET,
        description="Days audit entries are kept (7 to 3650); null keeps them forever (the "
        "default). Left out: unchanged.",
    )


@strawberry.input
class InviteMemberInput:
    email: str
    role: str = strawberry.field(
        description="A role key: owner, admin, member, viewer, billing or a custom role's key."
    )


@strawberry.input
class ChangeMemberRoleInput:
    membership_id: strawberry.ID
    role: str


@strawberry.type
class TenantPayload(MutationPayload):
    tenant: Tenant | None


@strawberry.type
class MembershipPayload(MutationPayload):
    membership: Membership | None


@strawberry.type
class RemoveMemberPayload(MutationPayload):
    removed_membership_id: strawberry.ID | None


@strawberry.type
class InviteMemberPayload(MutationPayload):
    invitation: Invitation | None
    invitation_url: str | None = strawberry.field(
        description="Shown once: send it to the invitee (coregraph sends no email)."
    )
    token: str | None = strawberry.field(description="The single-use token inside the URL.")


@strawberry.type
class InvitationPayload(MutationPayload):
    invitation: Invitation | None


@strawberry.type
class TenancyQuery:
    @field(
        requires_scopes=[["tenant:read"]],
        description="The tenant this request addresses (X-Tenant-Id, or the API key's).",
    )
    async def tenant(self, info: Info) -> Tenant | None:
        return await lookup.find(info.context, "Tenant", info.context.require_tenant())


@strawberry.type
class TenancyMutation:
    @field(authenticated=True, description="Create a tenant; you become its owner.")
    async def create_tenant(self, info: Info, input: CreateTenantInput) -> TenantPayload | None:
        ctx = info.context
        user_id = ctx.principal.user_id
        if user_id is None:
            raise Forbidden("only a signed-in user can create a tenant")
        async with ctx.unit_of_work() as uow:
            row = await tenancy.create_tenant(
                uow, name=input.name, slug=input.slug, owner_id=user_id
            )
        ctx.grant_for_this_request(
            row.id, permissions.BUILTIN_ROLES[permissions.OWNER_ROLE_KEY].permissions
        )
        return TenantPayload(tenant=Tenant.from_row(row))

    @field(requires_scopes=[["tenant:manage"]])
    async def update_tenant(self, info: Info, input: UpdateTenantInput) -> TenantPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await tenancy.update_tenant(
                uow,
                ctx.require_tenant(),
                name=input.name,
                slug=input.slug,
                audit_retention_days=(
                    tenancy.UNCHANGED
                    if input.audit_retention_days is strawberry.UNSET
                    else input.audit_retention_days
                ),
            )
        return TenantPayload(tenant=Tenant.from_row(row))

    @field(requires_scopes=[["members:manage"]])
    async def invite_member(
        self, info: Info, input: InviteMemberInput
    ) -> InviteMemberPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            issued = await tenancy.invite_member(
                uow, ctx.settings, ctx.require_tenant(), email=input.email, role_key=input.role
            )
        return InviteMemberPayload(
            invitation=Invitation.from_row(issued.invitation),
            invitation_url=issued.url,
            token=issued.token,
        )

    @field(requires_scopes=[["members:manage"]])
    async def revoke_invitation(self, info: Info, id: strawberry.ID) -> InvitationPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await tenancy.revoke_invitation(uow, ctx.require_tenant(), str(id))
        return InvitationPayload(invitation=Invitation.from_row(row))

    @field(authenticated=True, description="Join a tenant with an invitation token.")
    async def accept_invitation(self, info: Info, token: str) -> MembershipPayload | None:
        ctx = info.context
        user_id = ctx.principal.user_id
        if user_id is None:
            raise Forbidden("only a signed-in user can accept an invitation")
        await ctx.limit("accept_invitation", account=user_id)
        async with ctx.unit_of_work() as uow:
            row = await tenancy.accept_invitation(
                uow, token=token, user_id=user_id, default_plan=ctx.settings.default_plan
            )
            role = await uow.session.get(models.Role, row.role_id)
        ctx.grant_for_this_request(row.tenant_id, frozenset(role.permissions if role else ()))
        return MembershipPayload(membership=Membership.from_row(row))

    @field(requires_scopes=[["members:manage"]])
    async def remove_member(
        self, info: Info, membership_id: strawberry.ID
    ) -> RemoveMemberPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await tenancy.remove_member(uow, ctx.require_tenant(), str(membership_id))
        return RemoveMemberPayload(removed_membership_id=strawberry.ID(row.id))

    @field(requires_scopes=[["members:manage"]])
    async def change_member_role(
        self, info: Info, input: ChangeMemberRoleInput
    ) -> MembershipPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await tenancy.change_member_role(
                uow, ctx.require_tenant(), str(input.membership_id), input.role
            )
        return MembershipPayload(membership=Membership.from_row(row))
