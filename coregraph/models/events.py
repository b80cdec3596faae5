"""Business events: what happened, as subscribers and webhooks receive it.

The table is also the outbox (DESIGN.md, Streams): a unit of work inserts its events in the
same transaction as the change, each with the tenant's next ``sequence`` number — gap-free and
in commit order, because the tenant's ``StreamHead`` is locked to take it — and the relay
publishes them afterwards. Every stream cursor is a sequence number, never an id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    environment_column,
    id_column,
)


class Event(TenantOwned, Base):
    __tablename__ = "events"
    __id_prefix__ = "evt"
    __environment_scoped__ = True
    __table_args__ = (
        UniqueConstraint("tenant_id", "sequence"),
        # A repeated idempotency key finds the first event instead of making a second one.
        UniqueConstraint("tenant_id", "environment", "idempotency_key"),
        Index("ix_events_tenant_env_type_sequence", "tenant_id", "environment", "type", "sequence"),
        # supportTimeline: a tenant's events newest first, keyset on (occurred_at, id).
        Index("ix_events_tenant_occurred", "tenant_id", "occurred_at", "id"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    sequence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    type: Mapped[str] = mapped_column(String(120), nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(String(30))
    acting_for_user_id: Mapped[str | None] = mapped_column(String(30))
    data: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_id: Mapped[str | None] = mapped_column(String(64))
    # W3C traceparent of the span that stated it, while tracing is on (coregraph.telemetry):
    # the relay and the webhook worker continue that trace.
    trace_parent: Mapped[str | None] = mapped_column(String(55))
    # The support session the event was stated under (``actor_id`` is then the staff member).
    support_session_id: Mapped[str | None] = mapped_column(String(30))


class EventType(TenantOwned, Timestamped, Base):
    """A tenant's own event type (``order.paid``): its description and the JSON Schema
    (draft 2020-12) that every emitted payload is checked against. Built-in types are not
    stored; they are ``coregraph.services.events.BUILTIN_EVENT_TYPES``."""

    __tablename__ = "event_types"
    __id_prefix__ = "etp"
    __table_args__ = (UniqueConstraint("tenant_id", "type"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    type: Mapped[str] = mapped_column(String(120), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    schema: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
