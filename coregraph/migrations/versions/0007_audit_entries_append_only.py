"""PostgreSQL refuses UPDATE, DELETE and TRUNCATE on the audit trail: the database itself keeps
it append-only, whatever the application (or anyone holding its role) sends.

A trigger rather than revoked privileges: it also stops the table's owner, and its message
says why. The hash chain (``coregraph.services.audit``) still catches what gets past it — a
superuser who disables triggers, a restored backup, SQLite, which has no such trigger here.

A later migration that must rewrite entries (a backfill) disables the trigger around its
statements (``ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only``) and
enables it again. Downgrade drops the trigger and its function, so earlier revisions'
downgrades and backfills run as they did.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "audit_entries_refuse_change"
ROW_TRIGGER = "audit_entries_append_only"
TRUNCATE_TRIGGER = "audit_entries_no_truncate"
MESSAGE = "audit_entries is append-only: % is not allowed"


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _is_postgresql():
        return
    op.execute(
        f"""CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION '{MESSAGE}', TG_OP USING ERRCODE = 'insufficient_privilege';
            END $$"""
    )
    op.execute(
        f"CREATE TRIGGER {ROW_TRIGGER} BEFORE UPDATE OR DELETE ON audit_entries"
        f" FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
    )
    op.execute(
        f"CREATE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON audit_entries"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    )


def downgrade() -> None:
    if not _is_postgresql():
        return
    op.execute(f"DROP TRIGGER IF EXISTS {TRUNCATE_TRIGGER} ON audit_entries")
    op.execute(f"DROP TRIGGER IF EXISTS {ROW_TRIGGER} ON audit_entries")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
