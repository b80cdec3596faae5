"""What a committed event or audit entry looks like on the wire: the message the relay
publishes to subscribers, and the body a webhook delivers (``coregraph.services.webhooks``).
Built from the committed row alone, so no reader needs a database round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso_time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _actor(row: Any) -> dict[str, Any]:
    """Who acted. ``supportSessionId`` only for what platform staff did under a support
    session: the envelope of everything else is as it always was."""
    actor = {
        "kind": row.actor_kind,
        "id": row.actor_id,
        "actingForUserId": row.acting_for_user_id,
    }
    support_session_id = getattr(row, "support_session_id", None)
    if support_session_id is not None:
        actor["supportSessionId"] = support_session_id
    return actor


def event_message(row: Any) -> dict[str, Any]:
    """What a subscriber receives for an event: the committed row, no database round trip."""
    return {
        "id": row.id,
        "type": row.type,
        "sequence": int(row.sequence),
        "tenant": row.tenant_id,
        "environment": str(row.environment),
        "occurredAt": iso_time(row.occurred_at),
        "actor": _actor(row),
        "data": row.data,
    }


def audit_message(row: Any) -> dict[str, Any]:
    """What a subscriber receives for an audit entry: every column, so field-level checks can
    run on it without a database round trip."""
    return {
        "id": row.id,
        "chain": row.chain_id,
        "position": int(row.position),
        "tenant": row.tenant_id,
        "environment": str(row.environment),
        "action": row.action,
        "actor": _actor(row),
        "target": {"type": row.target_type, "id": row.target_id},
        "changes": row.changes,
        "requestId": row.request_id,
        "ip": row.ip,
        "userAgent": row.user_agent,
        "createdAt": iso_time(row.created_at),
        "previousHash": row.previous_hash,
        "hash": row.hash,
    }
