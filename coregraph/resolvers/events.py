"""eventTypes, events, registerEventType, emitEvent and emitEvents."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import strawberry
from graphql import GraphQLResolveInfo
from strawberry.federation import field
from strawberry.scalars import JSON
from strawberry.types.arguments import InputContext

from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.events import (
    Event,
    EventConnection,
    EventType,
    EventTypeDefinition,
    decode_sequence_cursor,
    event_page,
    event_stream,
    registered_event_types,
)
from coregraph.schema.pagination import page_size
from coregraph.services import events

Info = strawberry.Info[Context, None]
MAX_TYPE_FILTER = 50


@strawberry.input
class RegisterEventTypeInput:
    type: str = strawberry.field(
        description="Dotted, outside coregraph's namespaces (tenant., member., ...): 'order.paid'."
    )
    description: str = ""
    schema: JSON = strawberry.field(
        description="The JSON Schema (draft 2020-12) every payload must meet; self-contained."
    )


@strawberry.input
class EmitEventInput:
    type: str = strawberry.field(description="A type registered in this tenant.")
    data: JSON
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Emitting again with this key (same tenant and environment) answers the"
        " first event instead of making a second one.",
    )


def _emit_event_input(
    cls: type[EmitEventInput], value: Mapping[str, Any], _context: InputContext
) -> EmitEventInput:
    # Built directly: strawberry's generic conversion walks each field's type per item, a
    # third of a 100-event batch's argument handling; the fields need no conversion (two
    # strings and a JSON value, already checked by GraphQL).
    return cls(type=value["type"], data=value["data"], idempotency_key=value.get("idempotencyKey"))


EmitEventInput.__strawberry_definition__.from_input = _emit_event_input  # type: ignore[attr-defined]


@strawberry.type
class EventTypePayload(MutationPayload):
    event_type: EventType | None


@strawberry.type
class EmitEventPayload(MutationPayload):
    event: Event | None
    event_id: strawberry.ID | None = strawberry.field(
        description="The event's id, also for a key that may write events but not read them."
    )
    replayed: bool | None = strawberry.field(
        description="The idempotency key had been used: this is the first event made with it."
    )

    @classmethod
    def of(cls, emitted: events.EmittedEvent) -> EmitEventPayload:
        return cls(
            event=Event.from_row(emitted.event),
            event_id=strawberry.ID(emitted.event.id),
            replayed=emitted.replayed,
        )


@strawberry.type
class EmitEventsPayload(MutationPayload):
    items: list[EmitEventPayload] | None = strawberry.field(
        description="One answer per input, in the inputs' order."
    )


def _moment(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise BadUserInput(f"{field}: must carry a timezone offset", field=field)
    return value


@strawberry.type
class EventsQuery:
    @field(
        requires_scopes=[["events:read"], ["events:write"]],
        description="The event catalog: coregraph's built-in types, then this tenant's own.",
    )
    async def event_types(self, info: Info) -> list[EventTypeDefinition] | None:
        ctx = info.context
        custom = await ctx.read(registered_event_types(ctx.principal, ctx.require_tenant()))
        catalog = [
            EventTypeDefinition(
                type=t.type,
                description=t.description,
                schema=JSON(t.schema),
                builtin=True,
                registered=None,
            )
            for t in events.BUILTIN_EVENT_TYPES.values()
        ]
        catalog += [
            EventTypeDefinition(
                type=row.type,
                description=row.description,
                schema=row.schema,
                builtin=False,
                registered=EventType.from_row(row),
            )
            for row in custom
        ]
        return catalog

    @field(
        requires_scopes=[["events:read"]],
        description="This tenant's events in the request's environment, oldest first (a"
        " stream: resume with the last cursor). from is inclusive, to exclusive.",
    )
    async def events(
        self,
        info: Info,
        types: list[str] | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
        after: str | None = None,
        first: int | None = None,
    ) -> EventConnection | None:
        ctx = info.context
        if types is not None:
            if len(types) > MAX_TYPE_FILTER:
                raise BadUserInput(f"types: at most {MAX_TYPE_FILTER}", field="types")
            types = [events.check_type_name(t, "types") for t in types]
        size = page_size(ctx, first)
        statement = event_stream(
            ctx.principal,
            ctx.require_tenant(),
            types=types,
            occurred_from=_moment(from_, "from"),
            occurred_to=_moment(to, "to"),
            after_sequence=decode_sequence_cursor(after) if after is not None else None,
        )
        rows = await ctx.read(statement.limit(size + 1))
        return event_page(rows, size, resumed=after is not None)


@strawberry.type
class EventsMutation:
    @field(
        requires_scopes=[["events:write"]],
        description="Register one of this tenant's own event types with its payload's JSON"
        " Schema. A registered type is fixed: a new shape is a new type ('order.paid.v2').",
    )
    async def register_event_type(
        self, info: Info, input: RegisterEventTypeInput
    ) -> EventTypePayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await events.register_event_type(
                uow,
                ctx.require_tenant(),
                type=input.type,
                description=input.description,
                schema=input.schema,
            )
        return EventTypePayload(event_type=EventType.from_row(row))

    @field(
        requires_scopes=[["events:write"]],
        description="Emit an event of a registered type; its data must meet the type's schema.",
    )
    async def emit_event(self, info: Info, input: EmitEventInput) -> EmitEventPayload | None:
        ctx = info.context
        emitted = await events.emit_once(
            ctx.unit_of_work,
            ctx.require_tenant(),
            type=input.type,
            data=input.data,
            idempotency_key=input.idempotency_key,
            default_plan=ctx.settings.default_plan,
        )
        return EmitEventPayload.of(emitted)

    @field(
        requires_scopes=[["events:write"]],
        description="Emit several events in one transaction, in order (at most"
        " COREGRAPH_MAX_EVENT_BATCH): all or nothing — one item that fails its type's schema"
        " refuses the whole batch (BAD_USER_INPUT with extensions.index and path). A key"
        " repeated within the batch answers the first item that carried it.",
    )
    async def emit_events(
        self, info: Info, inputs: list[EmitEventInput]
    ) -> EmitEventsPayload | None:
        # Served by emit_events_raw (RAW_RESOLVERS); this body answers the same when
        # strawberry's own resolver runs.
        drafts = [events.EventDraft(i.type, i.data, i.idempotency_key) for i in inputs]
        return await _emit_batch(info.context, drafts)


async def _emit_batch(ctx: Context, drafts: list[events.EventDraft]) -> EmitEventsPayload:
    limit = ctx.settings.max_event_batch
    if len(drafts) > limit:
        raise BadUserInput(f"inputs: at most {limit} events per call", field="inputs")
    emitted = await events.emit_events_once(
        ctx.unit_of_work, ctx.require_tenant(), drafts, default_plan=ctx.settings.default_plan
    )
    return EmitEventsPayload(items=[EmitEventPayload.of(e) for e in emitted])


async def emit_events_raw(
    _: Any, info: GraphQLResolveInfo, inputs: list[dict[str, Any]]
) -> EmitEventsPayload:
    """``emitEvents`` from graphql-core's coerced arguments (dicts of parsed values), without
    strawberry building an ``EmitEventInput`` per event again (as ``recordUsageBatch``)."""
    drafts = [events.EventDraft(i["type"], i["data"], i.get("idempotencyKey")) for i in inputs]
    return await _emit_batch(info.context, drafts)


# Mutation fields served by a graphql-core resolver of their own (coregraph.api).
RAW_RESOLVERS = {"emitEvents": emit_events_raw}
