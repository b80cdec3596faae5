"""requestSupportAccess, approveSupportAccess, denySupportAccess, revokeSupportAccess,
startSupportSession, supportSessions and staffSupportSessions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import strawberry
from sqlalchemy import Select
from strawberry.federation import field

from coregraph.auth.principal import SupportMode as SupportModeValue
from coregraph.context import Context
from coregraph.errors import Forbidden
from coregraph.models import SupportSession as SupportSessionRow
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.pagination import Connection, PageInfo, page_size, paginate
from coregraph.schema.readable import readable
from coregraph.schema.support import (
    SupportMode,
    SupportSession,
    SupportTimelineConnection,
    SupportTimelineEdge,
    SupportTimelineEntry,
    SupportToken,
)
from coregraph.services import support, support_timeline as timeline, validation

Info = strawberry.Info[Context, None]


@strawberry.input
class RequestSupportAccessInput:
    tenant_id: strawberry.ID
    reason: str = strawberry.field(description="Why: shown to the tenant's owners and kept.")
    duration: int = strawberry.field(
        description="Seconds the session lasts once approved: 300 to 86400 (24 hours)."
    )
    mode: SupportMode = SupportModeValue.READ  # type: ignore[valid-type]


@strawberry.type
class SupportSessionPayload(MutationPayload):
    support_session: SupportSession | None


@strawberry.type
class StartSupportSessionPayload(MutationPayload):
    token: SupportToken | None


async def _newest_first(
    ctx: Context, statement: Select[Any], first: int | None, after: str | None
) -> Connection[SupportSession]:
    return await paginate(
        ctx,
        statement,
        SupportSessionRow.id,
        first,
        after,
        SupportSession.from_row,
        newest_first=True,
    )


@strawberry.type
class SupportQuery:
    @field(
        requires_scopes=[["support:manage"], ["audit:read"]],
        description="Platform staff's support sessions in this tenant, newest first.",
    )
    async def support_sessions(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[SupportSession] | None:
        ctx = info.context
        statement = readable(ctx.principal, SupportSessionRow, tenant_id=ctx.require_tenant())
        return await _newest_first(ctx, statement, first, after)

    @field(
        authenticated=True,
        description="Platform staff: your own support requests and sessions, in every tenant,"
        " newest first.",
    )
    async def staff_support_sessions(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[SupportSession] | None:
        ctx = info.context
        staff_user_id = support.staff_of(ctx.principal, "staffSupportSessions")
        statement = SupportSessionRow.__table__.select().where(
            SupportSessionRow.staff_user_id == staff_user_id
        )
        return await _newest_first(ctx, statement, first, after)

    @field(
        policy=[["in_support_session"]],
        description="What happened to this customer, newest first: audit entries, events,"
        " webhook deliveries and failed attempts, usage thresholds and quota refusals,"
        " optionally of one user (as actor, acted for, or target) and in [from, to). Readable"
        " only inside an approved support session for this tenant.",
    )
    async def support_timeline(
        self,
        info: Info,
        tenant_id: strawberry.ID,
        user_id: strawberry.ID | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> SupportTimelineConnection | None:
        ctx = info.context
        principal = ctx.principal
        if str(tenant_id) != principal.tenant_id:
            raise Forbidden(
                "tenantId: your support session is for another tenant", field="tenantId"
            )
        if user_id is not None:
            validation.object_id(str(user_id), "usr", "userId")
        start, end = validation.time_range(from_, to)
        size = page_size(ctx, first)
        query = timeline.TimelineQuery(
            tenant_id=str(tenant_id),
            environment=principal.environment,
            user_id=None if user_id is None else str(user_id),
            start=start,
            end=end,
            before=None if after is None else timeline.decode_cursor(after),
            limit=size + 1,
        )
        rows = await ctx.read(timeline.statement(query))
        edges = [
            SupportTimelineEdge(
                node=SupportTimelineEntry.from_row(row, query.tenant_id),
                cursor=timeline.encode_cursor(row.at, row.id),
            )
            for row in rows[:size]
        ]
        return SupportTimelineConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=len(rows) > size,
                has_previous_page=after is not None,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
        )


@strawberry.type
class SupportMutation:
    @field(
        authenticated=True,
        description="Platform staff: ask a tenant's owners for access to it, with a reason,"
        " for a duration, to READ or to ACT.",
    )
    async def request_support_access(
        self, info: Info, input: RequestSupportAccessInput
    ) -> SupportSessionPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await support.request_access(
                uow,
                str(input.tenant_id),
                reason=input.reason,
                duration_seconds=input.duration,
                mode=SupportModeValue(input.mode),
            )
        return SupportSessionPayload(support_session=SupportSession.from_row(row))

    @field(
        requires_scopes=[["support:manage"]],
        description="Let the platform staff member in, from now for the duration asked.",
    )
    async def approve_support_access(
        self, info: Info, id: strawberry.ID
    ) -> SupportSessionPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await support.decide(uow, ctx.require_tenant(), str(id), approve=True)
        return SupportSessionPayload(support_session=SupportSession.from_row(row))

    @field(requires_scopes=[["support:manage"]], description="Refuse a support request.")
    async def deny_support_access(
        self, info: Info, id: strawberry.ID
    ) -> SupportSessionPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await support.decide(uow, ctx.require_tenant(), str(id), approve=False)
        return SupportSessionPayload(support_session=SupportSession.from_row(row))

    @field(
        requires_scopes=[["support:manage"]],
        description="End a support session (or withdraw a request) now: its tokens fail from"
        " their next request.",
    )
    async def revoke_support_access(
        self, info: Info, id: strawberry.ID
    ) -> SupportSessionPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await support.revoke(uow, ctx.require_tenant(), str(id))
        return SupportSessionPayload(support_session=SupportSession.from_row(row))

    @field(
        authenticated=True,
        description="Platform staff: an impersonation token under your approved session.",
    )
    async def start_support_session(
        self, info: Info, id: strawberry.ID
    ) -> StartSupportSessionPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            issued = await support.start(uow, ctx.runtime.tokens, str(id))
        return StartSupportSessionPayload(
            token=SupportToken(
                access_token=issued.access_token,
                token_type="Bearer",
                expires_at=issued.expires_at,
                session=SupportSession.from_row(issued.session),
            )
        )
