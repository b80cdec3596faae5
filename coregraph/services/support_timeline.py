"""What happened to this customer: one tenant's audit entries, events, webhook deliveries and
their failed attempts, usage thresholds, quota refusals and approvals, merged newest first.

Each source is one function from the query to a ``SELECT`` of the same columns (``COLUMNS``),
already narrowed to the tenant, the time range, the cursor and the user, ordered newest first
and limited to one page. The page is their ``UNION ALL`` ordered and limited once more, all in
one statement: the database merges, never Python, and each branch walks an index of its table
on (tenant_id, time, id) backwards for at most a page of rows. One more source (approval
requests, ...) is one more function in ``SOURCES``.

The order is (time, id) descending; ids are unique across tables (their prefixes differ), so
the cursor (time, id) of the last row is a total order and a page never repeats or skips a row
that was there when the previous page was read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    bindparam,
    case,
    cast,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
)

from coregraph.errors import BadUserInput
from coregraph.models import AuditEntry, Event, WebhookAttempt, WebhookDelivery
from coregraph.models.base import Environment

# The columns every source selects, in this order.
COLUMNS = (
    "at",
    "source",
    "id",
    "name",
    "actor_kind",
    "actor_id",
    "acting_for_user_id",
    "target_type",
    "target_id",
    "support_session_id",
    "detail",
)
AUDIT, EVENT, WEBHOOK_DELIVERY, WEBHOOK_FAILURE, USAGE_THRESHOLD, QUOTA_REFUSAL, APPROVAL = (
    "audit",
    "event",
    "webhook_delivery",
    "webhook_failure",
    "usage_threshold",
    "quota_refusal",
    "approval",
)
# Events that are a source of their own in the timeline.
THRESHOLD_EVENT = "usage.threshold_reached"
REFUSAL_EVENT = "quota.refused"
# Each step of an approval request is an event (services.approvals: approval.requested, ...).
APPROVAL_EVENTS = "approval."
_CURSOR_PREFIX = "tl1:"


@dataclass(frozen=True, slots=True)
class TimelineQuery:
    tenant_id: str
    environment: Environment
    user_id: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive
    # The last row of the previous page: (time, id).
    before: tuple[datetime, str] | None = None
    limit: int = 50


def _page(
    query: TimelineQuery, at: Any, id_: Any, statement: Select[Any], where: Sequence[Any]
) -> Select[Any]:
    """A source's branch: the range, the cursor, newest first, one page at most."""
    conditions = list(where)
    if query.start is not None:
        conditions.append(at >= query.start)
    if query.end is not None:
        conditions.append(at < query.end)
    if query.before is not None:
        before_at, before_id = query.before
        conditions.append(
            tuple_(at, id_)
            < tuple_(bindparam(None, before_at, type_=at.type), bindparam(None, before_id))
        )
    return statement.where(*conditions).order_by(at.desc(), id_.desc()).limit(query.limit)


def _text(value: Any) -> ColumnElement[Any]:
    return cast(value, String)


def _constant(value: str) -> ColumnElement[Any]:
    """A constant column, written into the statement (no parameter for the planner to type)."""
    return literal_column(f"'{value}'", String)


def audit_entries(query: TimelineQuery) -> Select[Any]:
    entry = AuditEntry
    where: list[Any] = [entry.tenant_id == query.tenant_id]
    if query.user_id is not None:
        where.append(
            or_(
                entry.actor_id == query.user_id,
                entry.acting_for_user_id == query.user_id,
                entry.target_id == query.user_id,
            )
        )
    statement = select(
        entry.created_at.label("at"),
        _constant(AUDIT).label("source"),
        entry.id.label("id"),
        entry.action.label("name"),
        entry.actor_kind.label("actor_kind"),
        entry.actor_id.label("actor_id"),
        entry.acting_for_user_id.label("acting_for_user_id"),
        entry.target_type.label("target_type"),
        entry.target_id.label("target_id"),
        entry.support_session_id.label("support_session_id"),
        _text(entry.changes).label("detail"),
    )
    return _page(query, entry.created_at, entry.id, statement, where)


def events(query: TimelineQuery) -> Select[Any]:
    """Events, usage thresholds reached, quota refusals and approval requests' steps (all
    stated as events)."""
    where: list[Any] = [Event.tenant_id == query.tenant_id, Event.environment == query.environment]
    if query.user_id is not None:
        where.append(
            or_(Event.actor_id == query.user_id, Event.acting_for_user_id == query.user_id)
        )
    source = case(
        (Event.type == THRESHOLD_EVENT, _constant(USAGE_THRESHOLD)),
        (Event.type == REFUSAL_EVENT, _constant(QUOTA_REFUSAL)),
        (Event.type.startswith(APPROVAL_EVENTS, autoescape=True), _constant(APPROVAL)),
        else_=_constant(EVENT),
    )
    statement = select(
        Event.occurred_at.label("at"),
        source.label("source"),
        Event.id.label("id"),
        Event.type.label("name"),
        Event.actor_kind.label("actor_kind"),
        Event.actor_id.label("actor_id"),
        Event.acting_for_user_id.label("acting_for_user_id"),
        null().label("target_type"),
        null().label("target_id"),
        Event.support_session_id.label("support_session_id"),
        _text(Event.data).label("detail"),
    )
    return _page(query, Event.occurred_at, Event.id, statement, where)


def _no_user(query: TimelineQuery) -> list[Any]:
    # Deliveries and attempts are the system's, no person's: a timeline narrowed to a user
    # leaves them out.
    return [false()] if query.user_id is not None else []


def webhook_deliveries(query: TimelineQuery) -> Select[Any]:
    delivery = WebhookDelivery
    where = [
        delivery.tenant_id == query.tenant_id,
        delivery.environment == query.environment,
        *_no_user(query),
    ]
    statement = select(
        delivery.created_at.label("at"),
        _constant(WEBHOOK_DELIVERY).label("source"),
        delivery.id.label("id"),
        delivery.event_type.label("name"),
        _constant("system").label("actor_kind"),
        null().label("actor_id"),
        null().label("acting_for_user_id"),
        _constant("WebhookEndpoint").label("target_type"),
        delivery.endpoint_id.label("target_id"),
        null().label("support_session_id"),
        _text(delivery.status).label("detail"),
    )
    return _page(query, delivery.created_at, delivery.id, statement, where)


def webhook_failures(query: TimelineQuery) -> Select[Any]:
    """Failed attempts: what the endpoint answered, or why there was no answer."""
    attempt = WebhookAttempt
    delivery = WebhookDelivery
    where = [
        attempt.tenant_id == query.tenant_id,
        # As the partial index says it (ix_webhook_attempts_tenant_failed), so it serves.
        text("NOT webhook_attempts.succeeded"),
        # Attempts carry no environment: their delivery does (joined by its key; the column's
        # statistics tell the planner how selective this is, so it still walks the
        # failed-attempts index backwards and stops after a page).
        delivery.environment == query.environment,
        *_no_user(query),
    ]
    statement = select(
        attempt.started_at.label("at"),
        _constant(WEBHOOK_FAILURE).label("source"),
        attempt.id.label("id"),
        _constant("webhook.attempt_failed").label("name"),
        _constant("system").label("actor_kind"),
        null().label("actor_id"),
        null().label("acting_for_user_id"),
        _constant("WebhookDelivery").label("target_type"),
        attempt.delivery_id.label("target_id"),
        null().label("support_session_id"),
        func.coalesce(attempt.error, _text(attempt.status_code)).label("detail"),
    ).join(delivery, delivery.id == attempt.delivery_id)
    return _page(query, attempt.started_at, attempt.id, statement, where)


TimelineSource = Callable[[TimelineQuery], Select[Any]]
# Every source of the timeline; one more is one more function here.
SOURCES: list[TimelineSource] = [audit_entries, events, webhook_deliveries, webhook_failures]


def statement(query: TimelineQuery, sources: Sequence[TimelineSource] = ()) -> Select[Any]:
    """One page of the timeline (``limit`` rows), newest first, as one statement."""
    branches = [select(source(query).subquery()) for source in (sources or SOURCES)]
    merged = union_all(*branches).subquery("timeline")
    return (
        select(*(merged.c[name] for name in COLUMNS))
        .order_by(merged.c.at.desc(), merged.c.id.desc())
        .limit(query.limit)
    )


def encode_cursor(at: datetime, id_: str) -> str:
    raw = f"{_CURSOR_PREFIX}{at.isoformat()}|{id_}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, field: str = "after") -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
        moment, _, id_ = raw.removeprefix(_CURSOR_PREFIX).partition("|")
        at = datetime.fromisoformat(moment)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw, at, id_ = "", None, ""  # type: ignore[assignment]
    if not raw.startswith(_CURSOR_PREFIX) or at is None or at.tzinfo is None or not id_:
        raise BadUserInput(f"{field}: not a cursor from supportTimeline", field=field)
    return at, id_
