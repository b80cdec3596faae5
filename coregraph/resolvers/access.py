"""permissions, roles and API keys."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.federation import field

from coregraph.auth.permissions import PERMISSIONS
from coregraph.context import Context
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.schema.access import ApiKey, Environment, Permission, Role
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.billing import RateLimitsInput
from coregraph.services import access

Info = strawberry.Info[Context, None]


@strawberry.input
class CreateRoleInput:
    key: str = strawberry.field(description="Stable identifier, e.g. 'support-agent'.")
    name: str
    description: str = ""
    permissions: list[str]


@strawberry.input
class UpdateRoleInput:
    role_id: strawberry.ID
    name: str | None = None
    description: str | None = None
    permissions: list[str] | None = None


@strawberry.input
class CreateApiKeyInput:
    name: str
    scopes: list[str] = strawberry.field(description="At most the scopes you hold yourself.")
    environment: Environment = EnvironmentValue.LIVE  # type: ignore[valid-type]
    expires_at: datetime | None = None
    rate_limits: RateLimitsInput | None = strawberry.field(
        default=None,
        description="The key's own operation rate limits; each kind named replaces the plan's.",
    )


@strawberry.type
class RolePayload(MutationPayload):
    role: Role | None


@strawberry.type
class DeleteRolePayload(MutationPayload):
    deleted_role_id: strawberry.ID | None


@strawberry.type
class CreateApiKeyPayload(MutationPayload):
    api_key: ApiKey | None
    secret: str | None = strawberry.field(
        description="Shown once and never again; coregraph stores only a hash."
    )


@strawberry.type
class ApiKeyPayload(MutationPayload):
    api_key: ApiKey | None


@strawberry.type
class AccessQuery:
    @field(authenticated=True, description="The permission catalog roles and keys draw from.")
    def permissions(self) -> list[Permission] | None:
        return [Permission(key=p.key, description=p.description) for p in PERMISSIONS]


@strawberry.type
class AccessMutation:
    @field(requires_scopes=[["roles:manage"]])
    async def create_role(self, info: Info, input: CreateRoleInput) -> RolePayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await access.create_role(
                uow,
                ctx.require_tenant(),
                key=input.key,
                name=input.name,
                description=input.description,
                permissions=input.permissions,
            )
        return RolePayload(role=Role.from_row(row))

    @field(requires_scopes=[["roles:manage"]])
    async def update_role(self, info: Info, input: UpdateRoleInput) -> RolePayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await access.update_role(
                uow,
                ctx.require_tenant(),
                str(input.role_id),
                name=input.name,
                description=input.description,
                permissions=input.permissions,
            )
        return RolePayload(role=Role.from_row(row))

    @field(requires_scopes=[["roles:manage"]])
    async def delete_role(self, info: Info, role_id: strawberry.ID) -> DeleteRolePayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await access.delete_role(uow, ctx.require_tenant(), str(role_id))
        return DeleteRolePayload(deleted_role_id=strawberry.ID(row.id))

    @field(requires_scopes=[["apikeys:manage"]])
    async def create_api_key(
        self, info: Info, input: CreateApiKeyInput
    ) -> CreateApiKeyPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row, secret = await access.create_api_key(
                uow,
                ctx.require_tenant(),
                name=input.name,
                scopes=input.scopes,
                environment=EnvironmentValue(input.environment),
                expires_at=input.expires_at,
                rate_limits=input.rate_limits.document() if input.rate_limits else None,
            )
        return CreateApiKeyPayload(api_key=ApiKey.from_row(row), secret=secret)

    @field(requires_scopes=[["apikeys:manage"]])
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> ApiKeyPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await access.revoke_api_key(uow, ctx.require_tenant(), str(id))
        return ApiKeyPayload(api_key=ApiKey.from_row(row))

    @field(
        requires_scopes=[["apikeys:manage"]],
        description="Set an API key's own operation rate limits (null: its plan's apply).",
    )
    async def set_api_key_rate_limits(
        self, info: Info, id: strawberry.ID, rate_limits: RateLimitsInput | None
    ) -> ApiKeyPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await access.set_api_key_rate_limits(
                uow,
                ctx.require_tenant(),
                str(id),
                rate_limits.document() if rate_limits else None,
            )
        return ApiKeyPayload(api_key=ApiKey.from_row(row))
