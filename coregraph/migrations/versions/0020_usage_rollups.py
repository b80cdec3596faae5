"""Hourly usage rollups: each meter's records added up per tenant, environment, UTC hour and
dimension set, kept in step with the records from now on (``services.usage_store.insert_usage``) and
filled here from the records already written. The worker, which records the usage it feeds,
adds to them too.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declaration at this revision.
DECLARATION = RowSecurity()
_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
_QUANTITY = sa.Numeric(30, 6).with_variant(sa.BigInteger(), "sqlite")
KEY = ("tenant_id", "environment", "meter", "hour", "dimensions_key")


def _worker_role() -> str:
    return str(context.config.attributes.get("database_worker_role") or "coregraph_worker")


def _dimensions_key(dimensions: Any) -> str:
    # As services.usage_store.dimensions_key writes it (orjson, sorted keys): no spaces, UTF-8.
    if isinstance(dimensions, str):
        dimensions = json.loads(dimensions)
    return json.dumps(dimensions or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hour(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("meter", sa.String(length=120), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dimensions_key", sa.String(length=2000), nullable=False),
        sa.Column("dimensions", _JSON, nullable=False),
        sa.Column("quantity_sum", _QUANTITY, nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("quantity_max", _QUANTITY, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_rollups_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint(*KEY, name=op.f("pk_usage_rollups")),
    )
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    records = sa.table(
        "usage_records",
        sa.column("tenant_id", sa.String),
        sa.column("environment", sa.String),
        sa.column("meter", sa.String),
        sa.column("occurred_at", sa.DateTime(timezone=True)),
        sa.column("dimensions", _JSON),
        sa.column("quantity", _QUANTITY),
    )
    hour = (
        sa.func.date_trunc("hour", records.c.occurred_at, "UTC")
        if postgresql
        else sa.func.strftime("%Y-%m-%d %H:00:00", records.c.occurred_at)
    )
    groups = bind.execute(
        sa.select(
            records.c.tenant_id,
            records.c.environment,
            records.c.meter,
            hour.label("hour"),
            records.c.dimensions,
            sa.func.sum(records.c.quantity),
            sa.func.count(),
            sa.func.max(records.c.quantity),
        ).group_by(
            records.c.tenant_id,
            records.c.environment,
            records.c.meter,
            hour,
            records.c.dimensions,
        )
    )
    # Dimension sets written with their keys in another order are one group here.
    rollups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for tenant_id, environment, meter, at, dimensions, total, count, largest in groups:
        dims = json.loads(dimensions) if isinstance(dimensions, str) else dimensions
        key = (tenant_id, environment, meter, _hour(at), _dimensions_key(dims))
        found = rollups.get(key)
        if found is None:
            rollups[key] = {
                **dict(zip(KEY, key, strict=True)),
                "dimensions": dims or {},
                # As stored: NUMERIC on PostgreSQL, millionths (integers) on SQLite.
                "quantity_sum": total,
                "record_count": int(count),
                "quantity_max": largest,
            }
        else:
            found["quantity_sum"] += total
            found["record_count"] += int(count)
            found["quantity_max"] = max(found["quantity_max"], largest)
    if rollups:
        target = sa.table(
            "usage_rollups",
            *(sa.column(name) for name in KEY[:3]),
            sa.column("hour", sa.DateTime(timezone=True)),
            sa.column("dimensions_key", sa.String),
            sa.column("dimensions", _JSON),
            sa.column("quantity_sum", _QUANTITY),
            sa.column("record_count", sa.BigInteger),
            sa.column("quantity_max", _QUANTITY),
        )
        rows = list(rollups.values())
        for start in range(0, len(rows), 1000):
            bind.execute(sa.insert(target), rows[start : start + 1000])
    if not postgresql:
        return
    for statement in row_security_statements("usage_rollups", DECLARATION):
        op.execute(statement)
    worker = _worker_role()
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON usage_rollups TO "{worker}"')
    op.execute(
        f'CREATE POLICY worker_meters ON usage_rollups TO "{worker}" USING (true) WITH CHECK (true)'
    )


def downgrade() -> None:
    op.drop_table("usage_rollups")
