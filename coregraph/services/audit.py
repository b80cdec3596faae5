"""The audit trail's hash chain: how an entry's hash is made, and how a chain is checked.

An entry's hash is SHA-256 over a canonical encoding of its content and the previous entry's
hash: JSON with sorted keys, no whitespace, UTF-8, times as UTC ISO-8601 with microseconds.
The encoding names every column a reader relies on, so changing any of them — or removing,
inserting or reordering a row — breaks the chain at that row. The database refuses UPDATE and
DELETE on the table on PostgreSQL; the chain catches what gets past that (a superuser, a
restored backup, SQLite). Retention (``coregraph.services.audit_retention``) removes a chain's
oldest entries and records the last one's position and hash in the head: the chain then
starts at the first retained entry, anchored there.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coregraph import db
from coregraph.models import AuditEntry, StreamHead

# The columns the hash covers, in the encoding's key names.
HASHED = (
    "id",
    "chain_id",
    "position",
    "tenant_id",
    "environment",
    "actor_kind",
    "actor_id",
    "acting_for_user_id",
    "action",
    "target_type",
    "target_id",
    "changes",
    "request_id",
    "ip",
    "user_agent",
    "created_at",
)
# Columns added after entries were first hashed: covered only when set, so every entry written
# before they existed (where they are null) keeps the hash it was given.
HASHED_WHEN_SET = ("support_session_id",)


def _canonical_time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def entry_hash(entry: Any, previous_hash: str) -> str:
    """The hash of an entry (a model instance or a row with the same attribute names)."""
    content: dict[str, Any] = {"previous_hash": previous_hash}
    for name in HASHED:
        value = getattr(entry, name)
        if isinstance(value, datetime):
            value = _canonical_time(value)
        elif name == "environment":
            value = str(value)
        content[name] = value
    for name in HASHED_WHEN_SET:
        value = getattr(entry, name, None)
        if value is not None:
            content[name] = value
    encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The outcome of ``verify_chain``: how many entries were checked and, if the chain is
    broken, the first entry that does not match (and why). ``last_position`` is the last
    entry that checked out (the anchor's position when none did)."""

    checked: int
    broken_at: Mapping[str, Any] | None = None
    reason: str | None = None
    last_position: int = 0

    @property
    def ok(self) -> bool:
        return self.broken_at is None


async def verify_chain(
    conn: AsyncConnection,
    chain_id: str,
    *,
    from_position: int = 1,
    to_position: int | None = None,
    batch: int = 1000,
) -> ChainCheck:
    """Recompute ``chain_id``'s hashes from ``from_position`` (its previous entry's stored hash
    is the anchor) to ``to_position`` (the head), in batches, constant memory.

    Entries retention pruned are not checked: the chain then starts at the first retained
    entry, anchored on the hash the prune recorded in the head. A prune that commits during
    the check moves that anchor; a gap is only a break if the anchor does not cover it."""
    entry = AuditEntry.__table__.c
    table: Any = AuditEntry.__table__
    pruned_position, pruned_hash = await _pruned(conn, chain_id)
    expected_position = max(from_position, pruned_position + 1)
    expected_previous: str | None
    if expected_position == pruned_position + 1:
        expected_previous = pruned_hash
    else:
        expected_previous = await conn.scalar(
            select(entry.hash).where(
                entry.chain_id == chain_id, entry.position == expected_position - 1
            )
        )
        if expected_previous is None:
            return ChainCheck(
                0, {"position": expected_position - 1}, "the anchoring entry is missing"
            )
    checked = 0
    while True:
        stmt = (
            select(table)
            .where(entry.chain_id == chain_id, entry.position >= expected_position)
            .order_by(entry.position)
            .limit(batch)
        )
        if to_position is not None:
            stmt = stmt.where(entry.position <= to_position)
        rows = (await conn.execute(stmt)).all()
        last = expected_position - 1
        if not rows:
            return ChainCheck(checked, last_position=last)
        for row in rows:
            where = {"id": row.id, "position": row.position}
            if row.position != expected_position:
                pruned_position, pruned_hash = await _pruned(conn, chain_id)
                if pruned_position >= expected_position:
                    # Pruned meanwhile: carry on from the new anchor.
                    expected_position = pruned_position + 1
                    expected_previous = pruned_hash
                    break
                return ChainCheck(
                    checked,
                    {"position": expected_position},
                    "an entry is missing here",
                    last_position=last,
                )
            if row.previous_hash != expected_previous:
                return ChainCheck(
                    checked, where, "it does not follow the previous entry", last_position=last
                )
            if entry_hash(row, row.previous_hash) != row.hash:
                return ChainCheck(
                    checked, where, "its content does not match its hash", last_position=last
                )
            checked += 1
            expected_previous = row.hash
            last = expected_position
            expected_position += 1


@asynccontextmanager
async def tenant_reader(engine: AsyncEngine, tenant_id: str) -> AsyncIterator[AsyncConnection]:
    """A short-lived connection that reads one tenant (row-level security scoped to it on
    PostgreSQL), for reads that run in batches of their own: chain checks and exports."""
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=(tenant_id,))
        yield conn


async def _head(conn: AsyncConnection, chain_id: str) -> tuple[int, str]:
    head = StreamHead.__table__.c
    row = (
        await conn.execute(
            select(head.audit_position, head.audit_hash).where(head.chain_id == chain_id)
        )
    ).first()
    return (int(row.audit_position), str(row.audit_hash)) if row is not None else (0, "")


async def _pruned(conn: AsyncConnection, chain_id: str) -> tuple[int, str]:
    """Where retention left the chain's start: the last pruned position and its hash."""
    head = StreamHead.__table__.c
    row = (
        await conn.execute(
            select(head.audit_pruned_position, head.audit_pruned_hash).where(
                head.chain_id == chain_id
            )
        )
    ).first()
    return (int(row.audit_pruned_position), str(row.audit_pruned_hash)) if row else (0, "")


async def verify_chain_to_head(
    conn: AsyncConnection,
    chain_id: str,
    *,
    from_position: int = 1,
    to_position: int | None = None,
) -> ChainCheck:
    """``verify_chain`` anchored at the chain's head row: entries missing at the end (which
    leave no gap behind them) and a last entry that is not the one the head recorded are
    breaks too. The head is read first, so entries committed during the check are not
    mistaken for anything."""
    head_position, head_hash = await _head(conn, chain_id)
    end = head_position if to_position is None else min(to_position, head_position)
    if from_position > end:
        return ChainCheck(0)
    check = await verify_chain(conn, chain_id, from_position=from_position, to_position=end)
    if not check.ok or (check.last_position >= end and check.checked == 0):
        # Broken, or everything asked for was pruned: nothing more to hold it against.
        return check
    if check.last_position < end:
        return ChainCheck(
            check.checked,
            {"position": check.last_position + 1},
            "an entry is missing here",
            last_position=check.last_position,
        )
    if end == head_position:
        entry = AuditEntry.__table__.c
        tail = (
            await conn.execute(
                select(entry.id, entry.hash).where(
                    entry.chain_id == chain_id, entry.position == end
                )
            )
        ).one()
        if tail.hash != head_hash:
            return ChainCheck(
                check.checked - 1,
                {"id": tail.id, "position": end},
                "it is not the entry the chain's head recorded",
                last_position=end - 1,
            )
    return check


async def export_entries(
    engine: AsyncEngine,
    tenant_id: str,
    *,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    batch: int = 500,
) -> AsyncIterator[Row[Any]]:
    """A tenant's audit entries in chain order, optionally those created in
    [``created_from``, ``created_to``), read in keyset batches of ``batch`` rows on a fresh
    connection each: constant memory, and no pooled connection is held while the consumer
    (a slow HTTP client) takes its time. The chain's head is read first: entries committed
    during the export are left to the next one, so an export is one consistent range."""
    async with tenant_reader(engine, tenant_id) as conn:
        until, _ = await _head(conn, tenant_id)
    entry = AuditEntry.__table__.c
    table: Any = AuditEntry.__table__
    after = 0
    while after < until:
        stmt = (
            select(table)
            .where(
                entry.chain_id == tenant_id,
                entry.tenant_id == tenant_id,
                entry.position > after,
                entry.position <= until,
            )
            .order_by(entry.position)
            .limit(batch)
        )
        if created_from is not None:
            stmt = stmt.where(entry.created_at >= created_from)
        if created_to is not None:
            stmt = stmt.where(entry.created_at < created_to)
        async with tenant_reader(engine, tenant_id) as conn:
            rows = (await conn.execute(stmt)).all()
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        after = rows[-1].position
