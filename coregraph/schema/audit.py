"""GraphQL type of the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.federation import type as ftype
from strawberry.scalars import JSON

from coregraph import models
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.schema.access import Environment
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node


@entity(models.AuditEntry)
@ftype(
    keys=["id"],
    requires_scopes=[["audit:read"]],
    description="One change to production truth: who did what to which object, and when.",
)
class AuditEntry(Node):
    id: strawberry.ID
    action: str = strawberry.field(description="What happened, e.g. member.role_changed.")
    environment: Environment  # type: ignore[valid-type]
    actor_kind: str = strawberry.field(
        description="user, api_key, system (a CLI command) or anonymous."
    )
    actor_id: str | None
    acting_for_user_id: str | None = strawberry.field(
        description="The person an API key acted for (its creator)."
    )
    target_type: str | None
    target_id: str | None
    changes: JSON = strawberry.field(
        description="{before, after} of the fields that changed; secrets are redacted."
    )
    request_id: str | None
    ip: str | None
    user_agent: str | None
    created_at: datetime
    tenant_id: strawberry.Private[str | None]

    @classmethod
    def from_row(cls, row: Any) -> AuditEntry:
        return cls(
            id=strawberry.ID(row.id),
            action=row.action,
            environment=EnvironmentValue(row.environment),
            actor_kind=row.actor_kind,
            actor_id=row.actor_id,
            acting_for_user_id=row.acting_for_user_id,
            target_type=row.target_type,
            target_id=row.target_id,
            changes=row.changes,
            request_id=row.request_id,
            ip=row.ip,
            user_agent=row.user_agent,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
        )
