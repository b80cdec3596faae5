"""How far the outbox relays are behind the commits (``coregraph.streams.relay``), for
``/readyz`` (``coregraph.readiness``) and anything else that watches them.

Read from one row per chain in ``stream_heads`` and ``relay_positions``, and, for each chain
behind, its first row not yet published (found by its unique position): cheap whatever the
volume of events, and proportional to the number of chains."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from coregraph.models import AuditEntry, Event, RelayPosition, StreamHead

_HEADS: Table = StreamHead.__table__  # type: ignore[assignment]
_POSITIONS: Table = RelayPosition.__table__  # type: ignore[assignment]
_EVENTS: Table = Event.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditEntry.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class RelayLag:
    """How far the relays are behind the commits: events and audit entries committed and not
    yet published, and the age of the oldest of them (0 when none is waiting)."""

    events: int
    audit_entries: int
    seconds: float


async def measure_lag(conn: AsyncConnection, now: datetime) -> RelayLag:
    """The relays' lag across every chain at ``now``, read in one statement (so from one
    snapshot while relays publish). It reads every tenant's chain: on PostgreSQL, connect as
    the worker role."""
    oldest_event = _oldest_unpublished(
        _EVENTS, "tenant_id", "sequence", "occurred_at", "event_sequence", "events_published"
    )
    oldest_entry = _oldest_unpublished(
        _AUDIT, "chain_id", "position", "created_at", "audit_position", "audit_published"
    )
    heads, positions = _HEADS.alias("all_heads"), _POSITIONS.alias("all_positions")
    behind = [
        func.coalesce(
            func.sum(heads.c[head] - func.coalesce(positions.c[published], 0)),
            0,
        )
        for head, published in (
            ("event_sequence", "events_published"),
            ("audit_position", "audit_published"),
        )
    ]
    row = (
        await conn.execute(
            select(*behind, oldest_event, oldest_entry).select_from(
                heads.outerjoin(positions, positions.c.chain_id == heads.c.chain_id)
            )
        )
    ).one()
    oldest = min((t for t in (row[2], row[3]) if t is not None), default=None)
    return RelayLag(
        events=int(row[0]),
        audit_entries=int(row[1]),
        seconds=max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0,
    )


def _oldest_unpublished(
    rows: Table, chain: str, position: str, moment: str, head: str, published: str
) -> Any:
    """When the oldest of ``rows`` not yet published was written: per chain behind, its first
    unpublished row (found by its unique position). Aliases of its own, so it stays
    uncorrelated inside the statement that reads the totals."""
    heads, positions = _HEADS.alias(), _POSITIONS.alias()
    done = func.coalesce(positions.c[published], 0)
    return (
        select(func.min(rows.c[moment]))
        .select_from(
            heads.outerjoin(positions, positions.c.chain_id == heads.c.chain_id).join(
                rows, and_(rows.c[chain] == heads.c.chain_id, rows.c[position] == done + 1)
            )
        )
        .where(heads.c[head] > done)
        .scalar_subquery()
    )
