"""Lookups by a client-supplied id, shared by ``node(id:)`` and ``_entities``.

Each returns the object only when it belongs to a tenant the principal is a member of (users:
yourself, or a member of the addressed tenant); anything else is ``None``, so "does not exist"
and "not yours" look the same.
"""

from __future__ import annotations

from typing import Any

from coregraph import ids, models
from coregraph.context import Context
from coregraph.schema.access import ApiKey, Role
from coregraph.schema.audit import AuditEntry
from coregraph.schema.identity import User
from coregraph.schema.tenancy import Invitation, Membership, Tenant


async def _tenant_row(ctx: Context, model: Any, id_: str, prefix: str) -> Any | None:
    if not ids.is_valid(id_, prefix):
        return None
    return await ctx.loaders.rows_of(model).load(id_)


async def tenant(ctx: Context, id_: str) -> Tenant | None:
    if not ids.is_valid(id_, "ten"):
        return None
    row = await ctx.loaders.tenant.load(id_)
    return Tenant.from_row(row) if row else None


async def role(ctx: Context, id_: str) -> Role | None:
    row = await _tenant_row(ctx, models.Role, id_, "rol")
    return Role.from_row(row) if row else None


async def membership(ctx: Context, id_: str) -> Membership | None:
    row = await _tenant_row(ctx, models.Membership, id_, "mem")
    return Membership.from_row(row) if row else None


async def invitation(ctx: Context, id_: str) -> Invitation | None:
    row = await _tenant_row(ctx, models.Invitation, id_, "inv")
    return Invitation.from_row(row) if row else None


async def api_key(ctx: Context, id_: str) -> ApiKey | None:
    row = await _tenant_row(ctx, models.ApiKey, id_, "key")
    return ApiKey.from_row(row) if row else None


async def audit_entry(ctx: Context, id_: str) -> AuditEntry | None:
    row = await _tenant_row(ctx, models.AuditEntry, id_, "aud")
    return AuditEntry.from_row(row) if row else None


async def user(ctx: Context, id_: str) -> User | None:
    """Yourself, or a member of the tenant this request addresses."""
    if not ids.is_valid(id_, "usr"):
        return None
    principal = ctx.principal
    if id_ == principal.user_id:
        row = await ctx.loaders.user.load(id_)
        return User.from_row(row, via_tenant_id=principal.tenant_id) if row else None
    row = await ctx.loaders.addressed_tenant_user.load(id_)
    return User.from_row(row, via_tenant_id=principal.tenant_id) if row else None


BY_TYPE = {
    "Tenant": tenant,
    "Role": role,
    "Membership": membership,
    "Invitation": invitation,
    "ApiKey": api_key,
    "AuditEntry": audit_entry,
    "User": user,
}


async def node(ctx: Context, id_: str) -> Any | None:
    type_name = ids.type_of(id_)
    find = BY_TYPE.get(type_name or "")
    return await find(ctx, id_) if find else None
