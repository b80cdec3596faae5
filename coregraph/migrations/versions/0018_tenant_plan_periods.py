"""Plan history: one ``tenant_plan_periods`` row per plan assignment, so invoices price a past
month by the plan the tenant was on then. Backfilled with one open period per current
assignment (from its ``assigned_at``, with the plan's document of today). Walled per tenant.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declaration at this revision.
DECLARATION = RowSecurity()

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    periods = op.create_table(
        "tenant_plan_periods",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("plan_id", sa.String(length=30), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("plan", _JSON, nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("assigned_by", sa.String(length=60), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_plan_periods_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["plans.id"], name=op.f("fk_tenant_plan_periods_plan_id_plans")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_plan_periods")),
    )
    op.create_index(
        "ix_tenant_plan_periods_tenant_id_valid_from",
        "tenant_plan_periods",
        ["tenant_id", "valid_from"],
    )
    tenant_plans = sa.table(
        "tenant_plans",
        sa.column("tenant_id", sa.String),
        sa.column("plan_id", sa.String),
        sa.column("assigned_at", sa.DateTime(timezone=True)),
        sa.column("assigned_by", sa.String),
    )
    plans = sa.table(
        "plans",
        *(sa.column(name, sa.String) for name in ("id", "key", "name", "currency")),
        sa.column("self_serve", sa.Boolean),
        sa.column("version", sa.Integer),
        *(sa.column(name, _JSON) for name in ("features", "limits", "prices", "rate_limits")),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(tenant_plans, plans).join(plans, plans.c.id == tenant_plans.c.plan_id)
    ).all()
    if rows:
        op.bulk_insert(
            periods,
            [
                {
                    "tenant_id": row.tenant_id,
                    "plan_id": row.plan_id,
                    "plan_version": row.version,
                    "plan": {
                        "key": row.key,
                        "name": row.name,
                        "currency": row.currency,
                        "selfServe": row.self_serve,
                        "features": row.features,
                        "limits": row.limits,
                        "prices": row.prices,
                        "rateLimits": row.rate_limits,
                    },
                    "valid_from": row.assigned_at,
                    "valid_to": None,
                    "assigned_by": row.assigned_by,
                }
                for row in rows
            ],
        )
    if bind.dialect.name != "postgresql":
        return
    for statement in row_security_statements("tenant_plan_periods", DECLARATION):
        op.execute(statement)
    app = str(context.config.attributes.get("database_role") or "coregraph_app")
    # assign_plan writes periods as the API's role; default privileges cover tables only.
    op.execute(f'GRANT USAGE ON SEQUENCE tenant_plan_periods_id_seq TO "{app}"')


def downgrade() -> None:
    op.drop_index("ix_tenant_plan_periods_tenant_id_valid_from", table_name="tenant_plan_periods")
    op.drop_table("tenant_plan_periods")
