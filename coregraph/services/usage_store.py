"""Writing usage records: the one function every record goes through (``insert_usage``), and
the hourly rollups it keeps in step (``UsageRollup``).

Below ``services.usage`` (validation, ingest, queries) and ``services.uow`` (which writes the
usage a unit of work records for its commit), so both can use it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Table, func, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from coregraph import db
from coregraph.models import UsageRecord, UsageRollup
from coregraph.models.base import Environment


async def insert_usage(
    executor: AsyncSession | AsyncConnection, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert usage records (``services.usage.usage_row``) and add them to their hourly
    rollups (``UsageRollup``), in the caller's transaction, unchecked: the one place records
    are written, so the two never disagree. A unit of work writes through its own
    ``insert_usage``/``record_usage`` instead, which add the rollups with its commit, after
    the streams' heads (``UnitOfWork._add_rollups``). Built-in meters the core feeds (seats,
    storage.bytes, events.emitted, webhooks.delivered) state no ``usage.recorded`` event: the
    action's own event already says what happened."""
    await insert_records(executor, rows)
    await add_rollups(executor, rows)


async def insert_records(
    executor: AsyncSession | AsyncConnection, rows: Sequence[dict[str, Any]]
) -> None:
    """The usage records alone; their rollups are ``add_rollups``'s, later in the same
    transaction."""
    await executor.execute(insert(UsageRecord), list(rows))


async def add_rollups(
    executor: AsyncSession | AsyncConnection, rows: Sequence[dict[str, Any]]
) -> None:
    """Add usage records written in this transaction to their hourly rollups: one upsert,
    rows in key order (concurrent writers lock the rollups they share in the same order)."""
    rollups = rollup_rows(rows)
    if rollups:
        bind = executor if isinstance(executor, AsyncConnection) else executor.get_bind()
        await executor.execute(_rollup_upsert(bind.dialect.name), rollups)


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def dimensions_key(dimensions: dict[str, str] | None) -> str:
    """A dimension set's identity: canonical JSON (sorted keys, no spaces)."""
    return orjson.dumps(dimensions or {}, option=orjson.OPT_SORT_KEYS).decode()


def rollup_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (usage records) added up per tenant, environment, meter, UTC hour and dimension
    set, in key order (concurrent writers then lock the rows they share in the same order).
    Run for every record written: ~1 µs a record (a batch has few dimension sets)."""
    groups: dict[tuple[str, str, str, datetime, str], dict[str, Any]] = {}
    keys: dict[tuple[tuple[str, Any], ...], str] = {}
    for row in rows:
        environment = row["environment"]
        environment = environment.value if isinstance(environment, Environment) else environment
        dimensions = row["dimensions"] or {}
        items = tuple(dimensions.items())
        dims_key = keys.get(items)
        if dims_key is None:
            dims_key = keys[items] = dimensions_key(dimensions)
        at = row["occurred_at"]
        if at.tzinfo is not UTC:
            at = at.astimezone(UTC)
        key = (
            row["tenant_id"],
            environment,
            row["meter"],
            at.replace(minute=0, second=0, microsecond=0),
            dims_key,
        )
        quantity = row["quantity"]
        group = groups.get(key)
        if group is None:
            groups[key] = {
                "tenant_id": key[0],
                "environment": key[1],
                "meter": key[2],
                "hour": key[3],
                "dimensions_key": key[4],
                "dimensions": dimensions,
                "quantity_sum": quantity,
                "record_count": 1,
                "quantity_max": quantity,
            }
        else:
            group["quantity_sum"] += quantity
            group["record_count"] += 1
            if quantity > group["quantity_max"]:
                group["quantity_max"] = quantity
    return [groups[key] for key in sorted(groups)]


@functools.cache
def _rollup_upsert(dialect: str) -> Any:
    table: Table = UsageRollup.__table__  # type: ignore[assignment]
    statement = db.dialect_insert(dialect, table)
    excluded = statement.excluded
    greatest = func.greatest if dialect == "postgresql" else func.max
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={
            "quantity_sum": table.c.quantity_sum + excluded.quantity_sum,
            "record_count": table.c.record_count + excluded.record_count,
            "quantity_max": greatest(table.c.quantity_max, excluded.quantity_max),
        },
    )
