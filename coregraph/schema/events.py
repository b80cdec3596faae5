"""GraphQL types of business events: an event, a tenant's own event type, the catalog, and the
event stream's page (cursors are sequence numbers, never ids: DESIGN.md, Streams)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from sqlalchemy import Select
from strawberry.federation import type as ftype
from strawberry.scalars import JSON

from coregraph import models
from coregraph.auth.principal import Principal
from coregraph.errors import BadUserInput
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.schema.access import Environment
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.pagination import PageInfo
from coregraph.schema.readable import readable

if TYPE_CHECKING:
    from coregraph.schema.support import SupportSession

_CURSOR_PREFIX = "seq:"


@entity(models.Event)
@ftype(
    keys=["id"],
    requires_scopes=[["events:read"]],
    description="A business fact, in its tenant's stream: built-in (member.invited) or an edge"
    " app's own (emitEvent).",
)
class Event(Node):
    id: strawberry.ID
    type: str
    sequence: int = strawberry.field(
        description="The event's place in its tenant's stream: gap-free, in commit order."
    )
    occurred_at: datetime
    environment: Environment  # type: ignore[valid-type]
    actor_kind: str = strawberry.field(
        description="user, api_key, system (a CLI command) or anonymous."
    )
    actor_id: str | None
    data: JSON = strawberry.field(description="The payload: ids and changed fields, no secrets.")
    support_session_id: strawberry.ID | None = strawberry.field(
        description="The support session it was stated under (actorId is then the platform"
        " staff member, actorKind support)."
    )
    tenant_id: strawberry.Private[str]

    @strawberry.field(
        description="The support session it was made under: who, why (its reason), in which"
        " mode. Null when none."
    )
    async def support_session(
        self, info: strawberry.Info
    ) -> Annotated[SupportSession, strawberry.lazy("coregraph.schema.support")] | None:
        from coregraph.schema.support import support_session_of

        if self.support_session_id is None or self.tenant_id is None:
            return None
        return await support_session_of(info, self.tenant_id, str(self.support_session_id))

    @classmethod
    def from_row(cls, row: Any) -> Event:
        return cls(
            id=strawberry.ID(row.id),
            type=row.type,
            sequence=row.sequence,
            occurred_at=row.occurred_at,
            environment=EnvironmentValue(row.environment),
            actor_kind=row.actor_kind,
            actor_id=row.actor_id,
            data=row.data,
            support_session_id=getattr(row, "support_session_id", None),
            tenant_id=row.tenant_id,
        )


@entity(models.EventType)
@ftype(
    keys=["id"],
    requires_scopes=[["events:read"], ["events:write"]],
    description="A tenant's own event type, registered with the JSON Schema its payloads meet.",
)
class EventType(Node):
    id: strawberry.ID
    type: str
    description: str
    schema: JSON = strawberry.field(description="A JSON Schema (draft 2020-12).")
    created_at: datetime
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any) -> EventType:
        return cls(
            id=strawberry.ID(row.id),
            type=row.type,
            description=row.description,
            schema=row.schema,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
        )


@strawberry.type(description="An event type in a tenant's catalog: built-in or registered.")
class EventTypeDefinition:
    type: str
    description: str
    schema: JSON = strawberry.field(description="The payload's JSON Schema (draft 2020-12).")
    builtin: bool = strawberry.field(description="Emitted by coregraph itself, never by emitEvent.")
    registered: EventType | None = strawberry.field(
        description="The registration of a tenant's own type; null for a built-in one."
    )


def registered_event_types(principal: Principal, tenant_id: str) -> Select[Any]:
    """The tenant's own event types, by name."""
    return readable(principal, models.EventType, tenant_id=tenant_id).order_by(
        models.EventType.type
    )


def encode_sequence_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{sequence}".encode()).decode().rstrip("=")


def decode_sequence_cursor(cursor: str, field: str = "after") -> int:
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    digits = raw.removeprefix(_CURSOR_PREFIX)
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isascii() or not digits.isdigit():
        raise BadUserInput(f"{field}: not a cursor from an event stream", field=field)
    return int(digits)


@strawberry.type
class EventEdge:
    node: Event

    @strawberry.field(description="The event's sequence number, opaque: resume after it.")
    def cursor(self) -> str:
        return encode_sequence_cursor(self.node.sequence)


@strawberry.type(description="A page of a tenant's event stream, oldest first.")
class EventConnection:
    edges: list[EventEdge]
    page_info: PageInfo

    @strawberry.field(description="The events of this page, without cursors.")
    def nodes(self) -> list[Event]:
        return [edge.node for edge in self.edges]


def event_stream(
    principal: Principal,
    tenant_id: str,
    *,
    types: Sequence[str] | None = None,
    occurred_from: datetime | None = None,
    occurred_to: datetime | None = None,
    after_sequence: int | None = None,
) -> Select[Any]:
    """The tenant's events in the principal's environment, filtered, in sequence order."""
    event = models.Event
    statement = readable(principal, event, tenant_id=tenant_id).where(
        event.environment == principal.environment.value
    )
    if types is not None:
        statement = statement.where(event.type.in_(list(types)))
    if occurred_from is not None:
        statement = statement.where(event.occurred_at >= occurred_from)
    if occurred_to is not None:
        statement = statement.where(event.occurred_at < occurred_to)
    if after_sequence is not None:
        statement = statement.where(event.sequence > after_sequence)
    return statement.order_by(event.sequence)


def event_page(rows: Sequence[Any], size: int, *, resumed: bool) -> EventConnection:
    """One page from up to ``size + 1`` rows read in sequence order."""
    page = [Event.from_row(row) for row in rows[:size]]
    return EventConnection(
        edges=[EventEdge(node=event) for event in page],
        page_info=PageInfo(
            has_next_page=len(rows) > size,
            has_previous_page=resumed,
            start_cursor=encode_sequence_cursor(page[0].sequence) if page else None,
            end_cursor=encode_sequence_cursor(page[-1].sequence) if page else None,
        ),
    )
