"""Row-level security rebuilt from each model's declaration (``__row_security__``).

Same walls as 0002, now built by ``coregraph.db.row_security_statements`` — the one builder
every later migration uses for a new tenant-owned table — and commented with the declaration
they come from, so ``tests/test_row_level_security.py`` can tell when a model's declaration
and the database's policy disagree. The declarations are copied here, not imported from the
models: a migration says what the database was made to be at that revision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USER = "current_setting('app.user_id', true)"
DECLARATIONS = {
    "tenants": RowSecurity(tenant_column="id"),
    "roles": RowSecurity(
        also_visible=f"id IN (SELECT role_id FROM memberships WHERE user_id = {_USER})"
    ),
    "memberships": RowSecurity(also_visible=f"user_id = {_USER}"),
    "invitations": RowSecurity(
        also_visible="token_hash = current_setting('app.invitation_token_hash', true)",
        also_writable="token_hash = current_setting('app.invitation_token_hash', true)",
    ),
    "api_keys": RowSecurity(
        also_visible="secret_hash = current_setting('app.api_key_hash', true)",
        also_writable="secret_hash = current_setting('app.api_key_hash', true)",
    ),
    "audit_entries": RowSecurity(also_writable="tenant_id IS NULL"),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, security in DECLARATIONS.items():
        for statement in row_security_statements(table, security):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # 0002 made the same walls; only the record of where they came from goes.
    for table in DECLARATIONS:
        op.execute(f"COMMENT ON POLICY tenant_wall ON {table} IS NULL")
