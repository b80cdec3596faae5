"""Support context: platform staff, support sessions, and what was done under them.

- ``users.platform_role``: platform:support or platform:admin for staff (``coregraph
  create-staff``); staff are members of no tenant.
- ``support_sessions``: a staff member's request to read or act in one tenant, decided by its
  owners; walled per tenant, and visible to the staff member who asked.
- ``audit_entries.support_session_id`` and ``events.support_session_id``: the session a change
  was made under. The hash covers the audit column only when it is set, so no existing entry's
  hash changes. ``append_events()`` (0016) is left as it is: events stated under a support
  session are inserted inside their unit of work's transaction instead.
- The indexes ``supportTimeline`` pages by: each source's rows of a tenant by time, newest first.
- Built-in owner roles of existing tenants gain ``support:manage`` (new tenants get it from the
  catalog); admins do not: letting platform staff in is the owners' call.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from coregraph.db import row_security_statements
from coregraph.migrations.builtin_roles import grant_to_builtin_roles
from coregraph.models.base import RowSecurity

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The model's declaration at this revision.
DECLARATION = RowSecurity(also_visible="staff_user_id = current_setting('app.user_id', true)")
PERMISSION = "support:manage"
ROLES = ("owner",)
TIMELINE_INDEXES = (
    ("ix_audit_entries_tenant_created", "audit_entries", ["tenant_id", "created_at", "id"]),
    ("ix_events_tenant_occurred", "events", ["tenant_id", "occurred_at", "id"]),
    (
        "ix_webhook_deliveries_tenant_created",
        "webhook_deliveries",
        ["tenant_id", "created_at", "id"],
    ),
)
# Failed attempts only (partial): a page of failures never walks past the successes around them.
FAILED_ATTEMPTS_INDEX = "ix_webhook_attempts_tenant_failed"


def upgrade() -> None:
    op.add_column("users", sa.Column("platform_role", sa.String(length=32), nullable=True))
    op.add_column(
        "audit_entries", sa.Column("support_session_id", sa.String(length=30), nullable=True)
    )
    op.add_column("events", sa.Column("support_session_id", sa.String(length=30), nullable=True))
    op.create_table(
        "support_sessions",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("staff_user_id", sa.String(length=30), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by_user_id", sa.String(length=30), nullable=True),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by_user_id", sa.String(length=30), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_support_sessions_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["staff_user_id"], ["users.id"], name=op.f("fk_support_sessions_staff_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_sessions")),
    )
    op.create_index(
        "ix_support_sessions_tenant_id_created_at",
        "support_sessions",
        ["tenant_id", "created_at"],
    )
    op.create_index("ix_support_sessions_staff_user_id", "support_sessions", ["staff_user_id"])
    for name, table, columns in TIMELINE_INDEXES:
        op.create_index(name, table, columns)
    op.create_index(
        FAILED_ATTEMPTS_INDEX,
        "webhook_attempts",
        ["tenant_id", "started_at", "id"],
        postgresql_where=sa.text("NOT succeeded"),
        sqlite_where=sa.text("NOT succeeded"),
    )
    grant_to_builtin_roles(PERMISSION, ROLES)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for statement in row_security_statements("support_sessions", DECLARATION):
            op.execute(statement)


def downgrade() -> None:
    op.drop_index(FAILED_ATTEMPTS_INDEX, table_name="webhook_attempts")
    for name, table, _columns in TIMELINE_INDEXES:
        op.drop_index(name, table_name=table)
    op.drop_index("ix_support_sessions_staff_user_id", table_name="support_sessions")
    op.drop_index("ix_support_sessions_tenant_id_created_at", table_name="support_sessions")
    op.drop_table("support_sessions")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("support_session_id")
    with op.batch_alter_table("audit_entries") as batch:
        batch.drop_column("support_session_id")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("platform_role")
