"""Usage metering: a tenant's own meters and its usage records, both walled per tenant.

A record's quantity is NUMERIC(30, 6) on PostgreSQL and an integer count of millionths on
SQLite (``coregraph.models.usage.Quantity``): exact on both, summed in SQL.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declaration at this revision.
DECLARATION = RowSecurity()

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")
_QUANTITY = sa.Numeric(30, 6).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meters",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("unit", sa.String(length=40), nullable=False),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("dimensions", _JSON, nullable=False),
        sa.Column("unique_dimension", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_meters_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meters")),
        sa.UniqueConstraint("tenant_id", "key", name=op.f("uq_meters_tenant_id_key")),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("meter", sa.String(length=120), nullable=False),
        sa.Column("quantity", _QUANTITY, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dimensions", _JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_records_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint(
            "tenant_id",
            "environment",
            "meter",
            "idempotency_key",
            name=op.f("uq_usage_records_tenant_id_environment_meter_idempotency_key"),
        ),
    )
    op.create_index(
        "ix_usage_records_tenant_meter_occurred",
        "usage_records",
        ["tenant_id", "meter", "occurred_at"],
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in ("meters", "usage_records"):
            for statement in row_security_statements(table, DECLARATION):
                op.execute(statement)


def downgrade() -> None:
    op.drop_index("ix_usage_records_tenant_meter_occurred", table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_table("meters")
