"""Files: one row per stored object of a tenant, walled per tenant; the cleanup's share.

The API role reads and writes files through the tenant wall. ``coregraph files-cleanup`` runs
as the worker role (0009): it must see every tenant's files to tell orphan bytes (no row) from
a file's, and marks files whose bytes it purged, in a transaction scoped to their tenant (its
audit entries pass the tenant wall like the API's). It may read files and change only their
status and purge bookkeeping.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The model's declaration at this revision.
DECLARATION = RowSecurity()
CLEANUP_COLUMNS = ("status", "deleted_at", "purge_after", "purged_at")

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def _worker_role() -> str:
    return str(context.config.attributes.get("database_worker_role") or "coregraph_worker")


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("declared_content_type", sa.String(length=255), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("labels", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("storage_key", sa.String(length=512), nullable=False),
        sa.Column("uploaded_by_kind", sa.String(length=16), nullable=False),
        sa.Column("uploaded_by_id", sa.String(length=64), nullable=True),
        sa.Column("expected_sha256", sa.String(length=64), nullable=True),
        sa.Column("upload_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("upload_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_files_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index(
        "ix_files_tenant_id_environment_id", "files", ["tenant_id", "environment", "id"]
    )
    op.create_index("ix_files_purge_after", "files", ["purge_after"])
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in row_security_statements("files", DECLARATION):
        op.execute(statement)
    worker = _worker_role()
    op.execute(f'GRANT SELECT ON files TO "{worker}"')
    op.execute(f'GRANT UPDATE ({", ".join(CLEANUP_COLUMNS)}) ON files TO "{worker}"')
    op.execute(f'CREATE POLICY worker_cleans ON files TO "{worker}" USING (true) WITH CHECK (true)')


def downgrade() -> None:
    op.drop_index("ix_files_purge_after", table_name="files")
    op.drop_index("ix_files_tenant_id_environment_id", table_name="files")
    op.drop_table("files")
