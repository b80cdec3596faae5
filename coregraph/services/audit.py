"""The audit trail's hash chain: how an entry's hash is made, and how a chain is checked.

An entry's hash is SHA-256 over a canonical encoding of its content and the previous entry's
hash: JSON with sorted keys, no whitespace, UTF-8, times as UTC ISO-8601 with microseconds.
The encoding names every column a reader relies on, so changing any of them — or removing,
inserting or reordering a row — breaks the chain at that row. The database refuses UPDATE and
DELETE on the table on PostgreSQL; the chain catches what gets past that (a superuser, a
restored backup, SQLite).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from coregraph.models import AuditEntry

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
    encoded = orjson.dumps(content, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """The outcome of ``verify_chain``: how many entries were checked and, if the chain is
    broken, the first entry that does not match (and why)."""

    checked: int
    broken_at: Mapping[str, Any] | None = None
    reason: str | None = None

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
    is the anchor) to ``to_position`` (the head), in batches, constant memory."""
    entry = AuditEntry.__table__.c
    table: Any = AuditEntry.__table__
    expected_previous: str | None = None
    if from_position > 1:
        expected_previous = await conn.scalar(
            select(entry.hash).where(
                entry.chain_id == chain_id, entry.position == from_position - 1
            )
        )
        if expected_previous is None:
            return ChainCheck(0, {"position": from_position - 1}, "the anchoring entry is missing")
    else:
        expected_previous = ""
    expected_position = from_position
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
        if not rows:
            return ChainCheck(checked)
        for row in rows:
            where = {"id": row.id, "position": row.position}
            if row.position != expected_position:
                return ChainCheck(
                    checked, {"position": expected_position}, "an entry is missing here"
                )
            if row.previous_hash != expected_previous:
                return ChainCheck(checked, where, "it does not follow the previous entry")
            if entry_hash(row, row.previous_hash) != row.hash:
                return ChainCheck(checked, where, "its content does not match its hash")
            checked += 1
            expected_previous = row.hash
            expected_position += 1
