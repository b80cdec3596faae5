"""A tenant's own event types: a name, a description and the JSON Schema that emitted
payloads are checked against (``coregraph.services.events``), walled per tenant.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The model's declaration at this revision.
DECLARATION = RowSecurity()


def upgrade() -> None:
    op.create_table(
        "event_types",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("type", sa.String(length=120), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column(
            "schema",
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_event_types_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_types")),
        sa.UniqueConstraint("tenant_id", "type", name=op.f("uq_event_types_tenant_id_type")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in row_security_statements("event_types", DECLARATION):
            op.execute(statement)


def downgrade() -> None:
    op.drop_table("event_types")
