"""Billing: the plan catalog, each tenant's plan, the usage thresholds already announced, and
per-API-key rate limit overrides. The worker role may read plans and record the usage it feeds
(``webhooks.delivered``) with the thresholds that usage reaches.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declaration at this revision.
DECLARATION = RowSecurity()

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def _worker_role() -> str:
    return str(context.config.attributes.get("database_worker_role") or "coregraph_worker")


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("self_serve", sa.Boolean(), nullable=False),
        sa.Column("features", _JSON, nullable=False),
        sa.Column("limits", _JSON, nullable=False),
        sa.Column("prices", _JSON, nullable=False),
        sa.Column("rate_limits", _JSON, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plans")),
        sa.UniqueConstraint("key", name=op.f("uq_plans_key")),
    )
    op.create_table(
        "tenant_plans",
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("plan_id", sa.String(length=30), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("assigned_by", sa.String(length=60), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_plans_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_tenant_plans_plan_id_plans")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_plans")),
    )
    op.create_table(
        "usage_thresholds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("meter", sa.String(length=120), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("percent", sa.Integer(), nullable=False),
        sa.Column("reached_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_thresholds_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_thresholds")),
        sa.UniqueConstraint(
            "tenant_id",
            "environment",
            "meter",
            "period_start",
            "percent",
            name=op.f("uq_usage_thresholds_tenant_id_environment_meter_period_start_percent"),
        ),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_limits", _JSON, nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in ("tenant_plans", "usage_thresholds"):
        for statement in row_security_statements(table, DECLARATION):
            op.execute(statement)
    worker = _worker_role()
    op.execute(f'GRANT SELECT ON plans, tenant_plans TO "{worker}"')
    op.execute(f'GRANT SELECT, INSERT ON usage_records, usage_thresholds TO "{worker}"')
    op.execute(f'GRANT USAGE ON SEQUENCE usage_thresholds_id_seq TO "{worker}"')
    # The API announces thresholds too (services.quotas); default privileges cover tables only.
    app = str(context.config.attributes.get("database_role") or "coregraph_app")
    op.execute(f'GRANT USAGE ON SEQUENCE usage_thresholds_id_seq TO "{app}"')
    for table in ("tenant_plans", "usage_records", "usage_thresholds"):
        op.execute(
            f'CREATE POLICY worker_meters ON {table} TO "{worker}" USING (true) WITH CHECK (true)'
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        worker = _worker_role()
        for table in ("tenant_plans", "usage_records", "usage_thresholds"):
            op.execute(f"DROP POLICY IF EXISTS worker_meters ON {table}")
        op.execute(f'REVOKE SELECT, INSERT ON usage_records FROM "{worker}"')
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rate_limits")
    op.drop_table("usage_thresholds")
    op.drop_table("tenant_plans")
    op.drop_table("plans")
