"""The Subscription root: a tenant's events and audit trail, live, resumable with ``after``.

Both are replay-then-live streams (``coregraph.streams.subscription``); each item is the same
GraphQL type the queries return, with the cursor to resume after it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import strawberry
from strawberry.federation import field

from coregraph import models
from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.resolvers.events import MAX_TYPE_FILTER
from coregraph.schema.audit import (
    AuditEntry,
    AuditFilter,
    AuditLogFilter,
    AuditStreamEdge,
    decode_position_cursor,
    tenant_chain,
)
from coregraph.schema.events import Event, EventEdge, decode_sequence_cursor, event_stream
from coregraph.schema.readable import readable
from coregraph.services import events as event_service
from coregraph.streams.broker import audit_topic, events_topic
from coregraph.streams.subscription import (
    ReadAfter,
    Stream,
    audit_row,
    event_row,
    replay_then_live,
)

Info = strawberry.Info[Context, None]


def _event_types(types: list[str] | None) -> frozenset[str] | None:
    if types is None:
        return None
    if len(types) > MAX_TYPE_FILTER:
        raise BadUserInput(f"types: at most {MAX_TYPE_FILTER}", field="types")
    return frozenset(event_service.check_type_name(t, "types") for t in types)


def event_positions(
    ctx: Context, tenant_id: str, types: list[str] | None
) -> tuple[ReadAfter, Callable[[], Awaitable[int]]]:
    """A tenant's event stream for ``replay_then_live``: its events of ``types`` (all: None)
    after a sequence number, and the head of its sequence."""

    async def read(after: int, before: int | None, limit: int) -> Sequence[Any]:
        # The current principal: a subscription's rights are rechecked while it runs.
        statement = event_stream(ctx.principal, tenant_id, types=types, after_sequence=after)
        if before is not None:
            statement = statement.where(models.Event.sequence < before)
        return await ctx.read(statement.limit(limit))

    async def head() -> int:
        # The tenant's sequence spans its environments: the head is over all of them.
        event = models.Event
        statement = readable(ctx.principal, event, tenant_id=tenant_id)
        rows = await ctx.read(statement.order_by(event.sequence.desc()).limit(1))
        return int(rows[0].sequence) if rows else 0

    return read, head


@strawberry.type
class StreamsSubscription:
    @field(
        is_subscription=True,
        requires_scopes=[["events:read"]],
        description="This tenant's events in the connection's environment as they are"
        " committed, oldest first. With after (a cursor from the events query or from this"
        " subscription), first everything after it, then live, with no gap and no duplicate."
        " Ends with SUBSCRIBER_TOO_SLOW when the client falls too far behind, and with"
        " UNAUTHENTICATED or FORBIDDEN when the subscriber loses its rights.",
    )
    async def events(
        self, info: Info, types: list[str] | None = None, after: str | None = None
    ) -> AsyncGenerator[EventEdge, None]:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        wanted = _event_types(types)
        start = decode_sequence_cursor(after) if after is not None else None

        read, head = event_positions(ctx, tenant_id, None if wanted is None else sorted(wanted))
        stream = Stream(
            topic=events_topic(tenant_id, ctx.principal.environment),
            position="sequence",
            read=read,
            head=head,
            row_of=event_row,
            matches=lambda row: wanted is None or row.type in wanted,
            item_of=lambda row: EventEdge(node=Event.from_row(row)),
            tenant_id=tenant_id,
            scope="events:read",
            where="Subscription.events",
        )
        async for edge in replay_then_live(ctx, stream, start):
            yield edge

    @field(
        is_subscription=True,
        requires_scopes=[["audit:read"]],
        description="Changes to this tenant as they are committed, oldest first, filtered as"
        " Tenant.auditLog filters. With after (a cursor from this subscription or from the"
        " auditLog query), first everything after it, then live, with no gap and no duplicate.",
    )
    async def audit_log(
        self, info: Info, filter: AuditLogFilter | None = None, after: str | None = None
    ) -> AsyncGenerator[AuditStreamEdge, None]:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        wanted = filter.checked() if filter is not None else AuditFilter()
        # A position (this subscription's cursor or the auditLog query's): it stays a place in
        # the chain after retention pruned its entry, and replay resumes from the next one kept.
        start = decode_position_cursor(after) if after is not None else None
        entry = models.AuditEntry

        def chain() -> Any:
            # The current principal: a subscription's rights are rechecked while it runs.
            return tenant_chain(ctx.principal, tenant_id)

        async def read(after: int, before: int | None, limit: int) -> Sequence[Any]:
            statement = wanted.where(chain()).where(entry.position > after)
            if before is not None:
                statement = statement.where(entry.position < before)
            return await ctx.read(statement.order_by(entry.position).limit(limit))

        async def head() -> int:
            rows = await ctx.read(chain().order_by(entry.position.desc()).limit(1))
            return int(rows[0].position) if rows else 0

        stream = Stream(
            topic=audit_topic(tenant_id),
            position="position",
            read=read,
            head=head,
            row_of=audit_row,
            matches=wanted.matches,
            item_of=lambda row: AuditStreamEdge(node=AuditEntry.from_row(row)),
            tenant_id=tenant_id,
            scope="audit:read",
            where="Subscription.auditLog",
        )
        async for edge in replay_then_live(ctx, stream, start):
            yield edge
