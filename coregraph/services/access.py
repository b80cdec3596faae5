"""Roles, API keys, and the rule that grants never exceed the grantor.

A role is a named set of permissions from the catalog (``coregraph.auth.permissions``); an API
key is a tenant-and-environment-bound credential whose scopes never exceed its creator's.
``ensure_grantable`` and ``ensure_not_own_membership`` are the one place every grant (a role, a
role change, an invitation, a key) and every removal is checked against who makes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select

from coregraph import ids
from coregraph.auth import secrets
from coregraph.auth.permissions import BUILTIN_ROLES, PERMISSION_KEYS
from coregraph.auth.principal import PrincipalKind
from coregraph.errors import BadUserInput, Conflict, Forbidden
from coregraph.models import ApiKey, Invitation, Membership, Role
from coregraph.models.base import Environment
from coregraph.services import billing, validation
from coregraph.services.uow import UnitOfWork, diff


def check_permissions(values: list[str], field: str) -> list[str]:
    unknown = sorted(set(values) - PERMISSION_KEYS)
    if unknown:
        raise BadUserInput(f"{field}: unknown permission(s) {', '.join(unknown)}", field=field)
    return sorted(set(values))


def ensure_grantable(
    uow: UnitOfWork, tenant_id: str, permissions: Iterable[str], field: str, action: str
) -> None:
    """Refuse ``action`` unless the acting principal holds every one of ``permissions`` in
    ``tenant_id`` (its effective scopes there: role permissions narrowed by the token's or
    key's own scopes, with what each includes).

    Applied to what is granted (a new or changed role's permissions, the role assigned or
    invited into, a key's scopes) and, as Kubernetes' RBAC escalation rule has it, to what is
    changed or taken away (a role, or a member's role, holding more than the grantor): nobody
    rewrites, demotes or removes what they could not have granted themselves.
    """
    lacking = sorted(frozenset(permissions) - uow.principal.scopes_in(tenant_id))
    if lacking:
        raise Forbidden(
            f"{field}: {action} needs permission(s) you do not hold: {', '.join(lacking)}",
            field=field,
            lacking=lacking,
        )


def ensure_not_own_membership(uow: UnitOfWork, membership: Membership) -> None:
    """Nobody changes their own role, not even downwards: another member who holds the rights
    does it. For an API key, "own" is its creator's membership (the key acts for them)."""
    acting_user_id = uow.principal.user_id or uow.principal.acting_for_user_id
    if acting_user_id is not None and membership.user_id == acting_user_id:
        raise Forbidden(
            "membershipId: you cannot change your own role; ask another member who may",
            field="membershipId",
        )


def builtin_role_rows(tenant_id: str) -> list[Role]:
    return [
        Role(
            id=ids.new_id("rol"),
            tenant_id=tenant_id,
            key=r.key,
            name=r.name,
            description=r.description,
            permissions=sorted(r.permissions),
            builtin=True,
        )
        for r in BUILTIN_ROLES.values()
    ]


def role_snapshot(role: Role) -> dict[str, object]:
    return {
        "key": role.key,
        "name": role.name,
        "description": role.description,
        "permissions": list(role.permissions),
    }


async def get_role(uow: UnitOfWork, tenant_id: str, role_id: str, field: str = "roleId") -> Role:
    validation.object_id(role_id, "rol", field)
    role = await uow.session.scalar(
        select(Role).where(Role.tenant_id == tenant_id, Role.id == role_id)
    )
    if role is None:
        raise validation.not_found("role", field)
    return role


async def get_role_by_key(uow: UnitOfWork, tenant_id: str, key: str, field: str = "role") -> Role:
    if not validation.is_key(key):
        # No role has such a key; don't echo it (it may be huge, or hold a NUL byte that
        # PostgreSQL refuses in a query).
        raise await _unknown_role(uow, tenant_id, field, "")
    role = await uow.session.scalar(
        select(Role).where(Role.tenant_id == tenant_id, Role.key == key)
    )
    if role is None:
        raise await _unknown_role(uow, tenant_id, field, f" '{key}'")
    return role


async def _unknown_role(uow: UnitOfWork, tenant_id: str, field: str, named: str) -> BadUserInput:
    keys = await uow.session.scalars(
        select(Role.key).where(Role.tenant_id == tenant_id).order_by(Role.builtin.desc(), Role.key)
    )
    return BadUserInput(
        f"{field}: unknown role{named}; this tenant's roles are {', '.join(keys)}", field=field
    )


async def create_role(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    key: str,
    name: str,
    description: str,
    permissions: list[str],
) -> Role:
    key = validation.key(key)
    name = validation.text(name, "name", max_length=120)
    description = validation.text(description, "description", max_length=500, min_length=0)
    perms = check_permissions(permissions, "permissions")
    ensure_grantable(uow, tenant_id, perms, "permissions", "granting these permissions")
    exists = await uow.session.scalar(
        select(func.count()).where(Role.tenant_id == tenant_id, Role.key == key)
    )
    taken = Conflict(f"key: a role '{key}' already exists in this tenant", field="key")
    if exists:
        raise taken
    role = Role(
        id=ids.new_id("rol"),
        tenant_id=tenant_id,
        key=key,
        name=name,
        description=description,
        permissions=perms,
        builtin=False,
    )
    uow.session.add(role)
    await uow.flush_unique(taken)
    uow.record(
        "role.created",
        tenant_id=tenant_id,
        target_type="Role",
        target_id=role.id,
        after=role_snapshot(role),
    )
    uow.emit("role.created", tenant_id=tenant_id, data={"roleId": role.id, **role_snapshot(role)})
    return role


async def update_role(
    uow: UnitOfWork,
    tenant_id: str,
    role_id: str,
    *,
    name: str | None,
    description: str | None,
    permissions: list[str] | None,
) -> Role:
    role = await get_role(uow, tenant_id, role_id)
    if role.builtin:
        raise BadUserInput("roleId: built-in roles cannot be changed", field="roleId")
    ensure_grantable(uow, tenant_id, role.permissions, "roleId", "changing this role")
    before = role_snapshot(role)
    if name is not None:
        role.name = validation.text(name, "name", max_length=120)
    if description is not None:
        role.description = validation.text(description, "description", max_length=500, min_length=0)
    if permissions is not None:
        perms = check_permissions(permissions, "permissions")
        ensure_grantable(uow, tenant_id, perms, "permissions", "granting these permissions")
        role.permissions = perms
    role.updated_at = datetime.now(UTC)
    uow.record(
        "role.updated",
        tenant_id=tenant_id,
        target_type="Role",
        target_id=role.id,
        before=before,
        after=role_snapshot(role),
    )
    uow.emit(
        "role.updated",
        tenant_id=tenant_id,
        data={"roleId": role.id, "key": role.key, **diff(before, role_snapshot(role))},
    )
    return role


async def delete_role(uow: UnitOfWork, tenant_id: str, role_id: str) -> Role:
    role = await get_role(uow, tenant_id, role_id)
    if role.builtin:
        raise BadUserInput("roleId: built-in roles cannot be deleted", field="roleId")
    in_use = await uow.session.scalar(
        select(func.count()).where(Membership.tenant_id == tenant_id, Membership.role_id == role.id)
    )
    if in_use:
        raise Conflict(
            f"roleId: the role is held by {in_use} member(s); change their role first",
            field="roleId",
        )
    now = datetime.now(UTC)
    pending = await uow.session.scalar(
        select(func.count()).where(
            Invitation.tenant_id == tenant_id,
            Invitation.role_id == role.id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > now,
        )
    )
    if pending:
        raise Conflict(
            f"roleId: the role is offered by {pending} pending invitation(s); revoke them first",
            field="roleId",
        )
    # Spent invitations (accepted, revoked, expired) still point at the role; they are dead
    # tokens whose history lives in the audit trail, and would otherwise pin the role forever.
    await uow.session.execute(
        delete(Invitation)
        .where(Invitation.tenant_id == tenant_id, Invitation.role_id == role.id)
        .execution_options(synchronize_session=False)
    )
    uow.record(
        "role.deleted",
        tenant_id=tenant_id,
        target_type="Role",
        target_id=role.id,
        before=role_snapshot(role),
    )
    uow.emit("role.deleted", tenant_id=tenant_id, data={"roleId": role.id, "key": role.key})
    await uow.session.delete(role)
    return role


def api_key_snapshot(key: ApiKey) -> dict[str, object]:
    return {
        "name": key.name,
        "environment": str(key.environment),
        "scopes": list(key.scopes),
        "expiresAt": key.expires_at,
        "revokedAt": key.revoked_at,
        "rateLimits": key.rate_limits,
        "agentId": key.agent_id,
        "secret_hash": key.secret_hash,
    }


async def create_api_key(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    name: str,
    scopes: list[str],
    environment: Environment,
    expires_at: datetime | None,
    rate_limits: Mapping[str, int] | None = None,
    agent_id: str | None = None,
) -> tuple[ApiKey, str]:
    """Issue a key; returns the row and the secret, which is never retrievable again.
    ``rate_limits``: the key's own operation rate limits (``services.plan_limits``).
    ``agent_id``: an agent's key, which authenticates as that agent (``services.agents``)."""
    principal = uow.principal
    if principal.kind is PrincipalKind.AGENT:
        # A key outlives the request; an agent (alone or acting for a user) could otherwise
        # mint one that survives its deletion and the user's session (services.agents).
        raise Forbidden("createApiKey: agents cannot create credentials; a person does")
    name = validation.text(name, "name", max_length=120)
    wanted = set(check_permissions(scopes, "scopes"))
    if not wanted:
        raise BadUserInput("scopes: name at least one permission", field="scopes")
    ensure_grantable(uow, tenant_id, wanted, "scopes", "issuing a key with these scopes")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise BadUserInput("expiresAt: must carry a timezone offset", field="expiresAt")
        if expires_at <= datetime.now(UTC):
            raise BadUserInput("expiresAt: must be in the future", field="expiresAt")
    own_limits = billing.rate_limit_spec(rate_limits, "rateLimits").document() or None
    secret = secrets.generate(secrets.API_KEY_PREFIX[str(environment)])
    key = ApiKey(
        id=ids.new_id("key"),
        tenant_id=tenant_id,
        environment=environment,
        name=name,
        display_prefix=secret[:16],
        secret_hash=secrets.digest(secret),
        scopes=sorted(wanted),
        created_by_user_id=principal.user_id or principal.acting_for_user_id,
        expires_at=expires_at,
        rate_limits=own_limits,
        agent_id=agent_id,
    )
    uow.session.add(key)
    await uow.session.flush()
    uow.record(
        "api_key.created",
        tenant_id=tenant_id,
        environment=environment,
        target_type="ApiKey",
        target_id=key.id,
        after=api_key_snapshot(key),
    )
    uow.emit(
        "apikey.created",
        tenant_id=tenant_id,
        environment=environment,
        data={
            "apiKeyId": key.id,
            "name": key.name,
            "environment": str(environment),
            "scopes": list(key.scopes),
            "expiresAt": key.expires_at.isoformat() if key.expires_at else None,
            "createdByUserId": key.created_by_user_id,
            "agentId": key.agent_id,
        },
    )
    return key, secret


async def _api_key(uow: UnitOfWork, tenant_id: str, key_id: str) -> ApiKey:
    validation.object_id(key_id, "key", "id")
    key = await uow.session.scalar(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id)
    )
    if key is None:
        raise validation.not_found("API key", "id")
    return key


def _key_changed(
    uow: UnitOfWork, key: ApiKey, before: dict[str, object], change: str, data: dict[str, Any]
) -> None:
    """The audit entry (``api_key.<change>``) and the event (``apikey.<change>``) of a change
    to a key."""
    uow.record(
        f"api_key.{change}",
        tenant_id=key.tenant_id,
        environment=key.environment,
        target_type="ApiKey",
        target_id=key.id,
        before=before,
        after=api_key_snapshot(key),
    )
    uow.emit(f"apikey.{change}", tenant_id=key.tenant_id, environment=key.environment, data=data)


async def revoke_api_key(uow: UnitOfWork, tenant_id: str, key_id: str) -> ApiKey:
    key = await _api_key(uow, tenant_id, key_id)
    if key.revoked_at is None:
        before = api_key_snapshot(key)
        key.revoked_at = datetime.now(UTC)
        _key_changed(
            uow,
            key,
            before,
            "revoked",
            {"apiKeyId": key.id, "name": key.name, "environment": str(key.environment)},
        )
    return key


async def set_api_key_rate_limits(
    uow: UnitOfWork, tenant_id: str, key_id: str, rate_limits: Mapping[str, int] | None
) -> ApiKey:
    """Replace a key's own operation rate limits (None or empty: the plan's apply again).
    They apply from the key's next request (they are read with it)."""
    own_limits = billing.rate_limit_spec(rate_limits, "rateLimits").document() or None
    key = await _api_key(uow, tenant_id, key_id)
    if key.rate_limits != own_limits:
        before = api_key_snapshot(key)
        key.rate_limits = own_limits
        _key_changed(
            uow,
            key,
            before,
            "rate_limits_changed",
            {"apiKeyId": key.id, "name": key.name, "rateLimits": own_limits},
        )
    return key
