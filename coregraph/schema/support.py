"""GraphQL types of the support context: support sessions (``coregraph.services.support``)
and the support timeline (``coregraph.services.support_timeline``)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import orjson
import strawberry
from sqlalchemy import select
from strawberry.federation import type as ftype
from strawberry.scalars import JSON

from coregraph import models
from coregraph.auth.principal import SupportMode as SupportModeValue
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.pagination import PageInfo
from coregraph.schema.readable import readable
from coregraph.services import support, support_timeline as timeline

SupportMode = strawberry.enum(
    SupportModeValue,
    description="READ: read the tenant, change nothing. ACT: also work on the tenant's data"
    " (events, files, usage, meters, webhooks), never on who gets in, billing or approvals.",
)


@strawberry.enum(description="Where a support session stands now.")
class SupportSessionStatus(enum.Enum):
    PENDING = support.PENDING
    APPROVED = support.APPROVED
    DENIED = support.DENIED
    REVOKED = support.REVOKED
    EXPIRED = support.EXPIRED


@entity(models.SupportSession)
@ftype(
    keys=["id"],
    policy=[["support_session_reader"]],
    description="Platform staff's access to this tenant: asked for with a reason, decided by"
    " its owners, limited in time, revocable at any moment. Read by the tenant's holders of"
    " support:manage or audit:read and by the staff member who asked.",
)
class SupportSession(Node):
    id: strawberry.ID
    staff_user_id: strawberry.ID = strawberry.field(description="The platform staff member.")
    reason: str
    mode: SupportMode  # type: ignore[valid-type]
    duration_seconds: int
    status: SupportSessionStatus
    created_at: datetime
    request_expires_at: datetime = strawberry.field(
        description="A pending request nobody decided lapses then."
    )
    decided_at: datetime | None
    decided_by_user_id: strawberry.ID | None
    ends_at: datetime | None = strawberry.field(
        description="Approved: when the session ends (approval time + duration)."
    )
    revoked_at: datetime | None
    revoked_by_user_id: strawberry.ID | None
    tenant_id: strawberry.Private[str]

    @strawberry.field(name="tenantId", description="The tenant the session is for.")
    def tenant_ref(self) -> strawberry.ID:
        return strawberry.ID(self.tenant_id)

    @strawberry.field(description="The platform staff member's email: who is let in.")
    async def staff_email(self, info: strawberry.Info) -> str | None:
        rows = await info.context.read(
            select(models.User.email).where(models.User.id == str(self.staff_user_id))
        )
        return str(rows[0].email) if rows else None

    @classmethod
    def from_row(cls, row: Any) -> SupportSession:
        return cls(
            id=strawberry.ID(row.id),
            staff_user_id=strawberry.ID(row.staff_user_id),
            reason=row.reason,
            mode=SupportModeValue(row.mode),
            duration_seconds=row.duration_seconds,
            status=SupportSessionStatus(support.status_of(row)),
            created_at=row.created_at,
            request_expires_at=row.request_expires_at,
            decided_at=row.decided_at,
            decided_by_user_id=None
            if row.decided_by_user_id is None
            else strawberry.ID(row.decided_by_user_id),
            ends_at=row.ends_at,
            revoked_at=row.revoked_at,
            revoked_by_user_id=None
            if row.revoked_by_user_id is None
            else strawberry.ID(row.revoked_by_user_id),
            tenant_id=row.tenant_id,
        )


async def support_session_of(
    info: strawberry.Info, tenant_id: str, support_session_id: str
) -> SupportSession | None:
    """The session an audit entry or an event was made under, as its reader may see it."""
    row = models.SupportSession
    statement = readable(info.context.principal, row, tenant_id=tenant_id).where(
        row.id == support_session_id
    )
    rows = await info.context.read(statement)
    return SupportSession.from_row(rows[0]) if rows else None


@strawberry.type(description="An impersonation token under an approved support session.")
class SupportToken:
    access_token: str = strawberry.field(
        description="Bearer token for the session's tenant only (X-Tenant-Id optional); checked"
        " against the session on every request."
    )
    token_type: str = strawberry.field(description="Always 'Bearer'.")
    expires_at: datetime = strawberry.field(
        description="At most 15 minutes from now, never past the session's end; take another"
        " while the session lasts."
    )
    session: SupportSession


@strawberry.enum(description="Where a timeline entry comes from.")
class TimelineSource(enum.Enum):
    AUDIT = timeline.AUDIT
    EVENT = timeline.EVENT
    WEBHOOK_DELIVERY = timeline.WEBHOOK_DELIVERY
    WEBHOOK_FAILURE = timeline.WEBHOOK_FAILURE
    USAGE_THRESHOLD = timeline.USAGE_THRESHOLD
    QUOTA_REFUSAL = timeline.QUOTA_REFUSAL
    APPROVAL = timeline.APPROVAL


# Sources whose detail is a JSON document (audit changes, event payloads).
_JSON_DETAIL = frozenset(
    {
        timeline.AUDIT,
        timeline.EVENT,
        timeline.USAGE_THRESHOLD,
        timeline.QUOTA_REFUSAL,
        timeline.APPROVAL,
    }
)


@ftype(
    policy=[["in_support_session"]],
    description="One thing that happened to a tenant: an audit entry, an event, a webhook"
    " delivery or failed attempt, a usage threshold reached, a quota refusal or an approval"
    " request's step.",
)
class SupportTimelineEntry:
    at: datetime
    source: TimelineSource
    id: strawberry.ID = strawberry.field(
        description="The row's own id (aud_, evt_, msg_, wha_): node(id:) reads it in full."
    )
    name: str = strawberry.field(
        description="The action, the event type, the delivered event type, or"
        " webhook.attempt_failed."
    )
    actor_kind: str | None
    actor_id: str | None
    acting_for_user_id: str | None
    target_type: str | None
    target_id: str | None
    support_session_id: strawberry.ID | None
    detail: JSON | None = strawberry.field(
        description="Audit changes or the event's payload; a delivery's status; why an attempt"
        " failed (the error, or the HTTP status)."
    )
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any, tenant_id: str) -> SupportTimelineEntry:
        detail: Any = row.detail
        if detail is not None and row.source in _JSON_DETAIL:
            detail = orjson.loads(detail)
        return cls(
            at=row.at,
            source=TimelineSource(row.source),
            id=strawberry.ID(row.id),
            name=row.name,
            actor_kind=row.actor_kind,
            actor_id=row.actor_id,
            acting_for_user_id=row.acting_for_user_id,
            target_type=row.target_type,
            target_id=row.target_id,
            support_session_id=row.support_session_id,
            detail=detail,
            tenant_id=tenant_id,
        )


@strawberry.type
class SupportTimelineEdge:
    node: SupportTimelineEntry
    cursor: str


@strawberry.type(description="A page of a tenant's timeline, newest first.")
class SupportTimelineConnection:
    edges: list[SupportTimelineEdge]
    page_info: PageInfo

    @strawberry.field(description="The entries of this page, without cursors.")
    def nodes(self) -> list[SupportTimelineEntry]:
        return [edge.node for edge in self.edges]
