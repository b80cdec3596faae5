"""Agents: a tenant's non-human principals, walled per tenant, and agent-marked API keys. The
built-in owner and admin roles of existing tenants gain ``agents:manage`` (new tenants get it
from the catalog).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from coregraph.db import row_security_statements
from coregraph.migrations.builtin_roles import grant_to_builtin_roles
from coregraph.models.base import RowSecurity

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declaration at this revision.
DECLARATION = RowSecurity()
PERMISSION = "agents:manage"
ROLES = ("owner", "admin")

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("scopes", _JSON, nullable=False),
        sa.Column("sponsor_user_id", sa.String(length=30), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_agents_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["sponsor_user_id"], ["users.id"], name=op.f("fk_agents_sponsor_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
    )
    op.create_index("ix_agents_tenant_id_id", "agents", ["tenant_id", "id"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("agent_id", sa.String(length=30), nullable=True))
        batch.create_foreign_key(
            op.f("fk_api_keys_agent_id_agents"), "agents", ["agent_id"], ["id"]
        )
    grant_to_builtin_roles(PERMISSION, ROLES)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for statement in row_security_statements("agents", DECLARATION):
            op.execute(statement)


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("fk_api_keys_agent_id_agents"), type_="foreignkey")
        batch.drop_column("agent_id")
    op.drop_index("ix_agents_tenant_id_id", table_name="agents")
    op.drop_table("agents")
