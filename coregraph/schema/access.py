"""GraphQL types of the access domain: environments, permissions, roles, API keys."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.federation import field, type as ftype

from coregraph import models
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.rows import Columns
from coregraph.schema.billing import PlanRateLimits
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node

if TYPE_CHECKING:
    from coregraph.schema.identity import User

Environment = strawberry.enum(EnvironmentValue, description="live data or test data; never mixed.")


@ftype(authenticated=True, description="A permission from coregraph's catalog.")
class Permission:
    key: str
    description: str


@entity(models.Role)
@ftype(
    keys=["id"],
    requires_scopes=[["members:read"], ["roles:manage"]],
    description="A named set of permissions held by members of a tenant.",
)
class Role(Node):
    id: strawberry.ID
    key: str
    name: str
    description: str
    permissions: list[str]
    builtin: bool = strawberry.field(description="Built-in roles cannot be changed or deleted.")
    created_at: datetime
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any) -> Role:
        id_, key, name, description, permissions, builtin, created_at, tenant_id = _ROLE_COLUMNS(
            row
        )
        return cls(
            id=strawberry.ID(id_),
            key=key,
            name=name,
            description=description,
            permissions=list(permissions),
            builtin=builtin,
            created_at=created_at,
            tenant_id=tenant_id,
        )


# Rows are read by position (coregraph.rows).
_ROLE_COLUMNS = Columns(
    "id", "key", "name", "description", "permissions", "builtin", "created_at", "tenant_id"
)


@strawberry.enum
class ApiKeyStatus(enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


@entity(models.ApiKey)
@ftype(
    keys=["id"],
    requires_scopes=[["apikeys:manage"]],
    description="A credential for a program: bound to one tenant and one environment.",
)
class ApiKey(Node):
    id: strawberry.ID
    name: str
    environment: Environment  # type: ignore[valid-type]
    prefix: str = strawberry.field(description="The secret's first characters, to recognise it.")
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime
    rate_limits: PlanRateLimits | None = strawberry.field(
        description="The key's own operation rate limits, each replacing the tenant plan's"
        " value of its kind (null: the plan's limits apply unchanged)."
    )
    tenant_id: strawberry.Private[str]
    created_by_user_id: strawberry.Private[str | None]

    @strawberry.field
    def status(self) -> ApiKeyStatus:
        if self.revoked_at is not None:
            return ApiKeyStatus.REVOKED
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            return ApiKeyStatus.EXPIRED
        return ApiKeyStatus.ACTIVE

    @field(description="The user who issued the key; its scopes never exceed theirs.")
    async def created_by(
        self, info: strawberry.Info
    ) -> Annotated[User, strawberry.lazy("coregraph.schema.identity")] | None:
        from coregraph.schema.identity import User

        if self.created_by_user_id is None:
            return None
        row = await info.context.loaders.user.load(self.created_by_user_id)
        return User.from_row(row, via_tenant_id=self.tenant_id) if row else None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            environment=EnvironmentValue(row.environment),
            prefix=row.display_prefix,
            scopes=list(row.scopes),
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            last_used_at=row.last_used_at,
            created_at=row.created_at,
            rate_limits=PlanRateLimits(
                per_second=row.rate_limits.get("perSecond"),
                per_minute=row.rate_limits.get("perMinute"),
                cost_per_minute=row.rate_limits.get("costPerMinute"),
            )
            if row.rate_limits
            else None,
            tenant_id=row.tenant_id,
            created_by_user_id=row.created_by_user_id,
        )
