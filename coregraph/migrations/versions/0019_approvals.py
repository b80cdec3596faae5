"""Approval gates: policies, requests and decisions, walled per tenant. The worker reads and
expires requests across tenants. The built-in owner and admin roles of existing tenants gain
``approvals:manage`` (new tenants get it from the catalog).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from coregraph.db import row_security_statements
from coregraph.migrations.builtin_roles import grant_to_builtin_roles
from coregraph.models.base import RowSecurity

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declaration at this revision.
DECLARATION = RowSecurity()
PERMISSION = "approvals:manage"
ROLES = ("owner", "admin")
# What the worker's expiry writes.
EXPIRY_COLUMNS = ("status", "decided_at")

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def _worker_role() -> str:
    return str(context.config.attributes.get("database_worker_role") or "coregraph_worker")


def _timestamps() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "approval_policies",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("actions", _JSON, nullable=False),
        sa.Column("principal_kinds", _JSON, nullable=False),
        sa.Column("argument_path", sa.String(length=200), nullable=True),
        sa.Column("argument_matches", sa.String(length=200), nullable=True),
        sa.Column("approvals_required", sa.Integer(), nullable=False),
        sa.Column("reviewer_permission", sa.String(length=64), nullable=False),
        sa.Column("reviewer_role", sa.String(length=64), nullable=True),
        sa.Column("expires_in_seconds", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=30), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_approval_policies_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_policies")),
    )
    op.create_index(
        "ix_approval_policies_tenant_env", "approval_policies", ["tenant_id", "environment"]
    )
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("policy_id", sa.String(length=30), nullable=True),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=100), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("variables", _JSON, nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.Column("requester", _JSON, nullable=False),
        sa.Column("requester_user_id", sa.String(length=30), nullable=True),
        sa.Column("approvals_required", sa.Integer(), nullable=False),
        sa.Column("reviewer_permission", sa.String(length=64), nullable=False),
        sa.Column("reviewer_role", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", _JSON, nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.String(length=1000), nullable=True),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_approval_requests_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
    )
    op.create_index(
        "ix_approval_requests_tenant_env_id",
        "approval_requests",
        ["tenant_id", "environment", "id"],
    )
    op.create_index(
        "ix_approval_requests_status_expires", "approval_requests", ["status", "expires_at"]
    )
    op.create_table(
        "approval_decisions",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("request_id", sa.String(length=30), nullable=False),
        sa.Column("reviewer_user_id", sa.String(length=30), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("comment", sa.String(length=1000), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_approval_decisions_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_decisions_request_id_approval_requests"),
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_user_id"],
            ["users.id"],
            name=op.f("fk_approval_decisions_reviewer_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_decisions")),
        sa.UniqueConstraint(
            "request_id",
            "reviewer_user_id",
            name=op.f("uq_approval_decisions_request_id_reviewer_user_id"),
        ),
    )
    grant_to_builtin_roles(PERMISSION, ROLES)
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in ("approval_policies", "approval_requests", "approval_decisions"):
        for statement in row_security_statements(table, DECLARATION):
            op.execute(statement)
    worker = _worker_role()
    op.execute(f'GRANT SELECT ON approval_requests TO "{worker}"')
    op.execute(f'GRANT UPDATE ({", ".join(EXPIRY_COLUMNS)}) ON approval_requests TO "{worker}"')
    op.execute(
        f'CREATE POLICY worker_expires ON approval_requests TO "{worker}"'
        " USING (true) WITH CHECK (true)"
    )


def downgrade() -> None:
    op.drop_table("approval_decisions")
    op.drop_index("ix_approval_requests_status_expires", table_name="approval_requests")
    op.drop_index("ix_approval_requests_tenant_env_id", table_name="approval_requests")
    op.drop_table("approval_requests")
    op.drop_index("ix_approval_policies_tenant_env", table_name="approval_policies")
    op.drop_table("approval_policies")
