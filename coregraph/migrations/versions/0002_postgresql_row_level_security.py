"""PostgreSQL row-level security: the second wall behind the application's tenant filters.

Every tenant-owned table shows a transaction only the rows of the tenants named in
``app.tenant_ids`` (set per transaction by ``coregraph.db.scope_transaction``), plus the few rows
an unauthenticated step must find by a secret it holds (an API key by its hash, an invitation by
its token's hash) and a user's own memberships. A missing setting matches no row. The
application connects as (or switches to) a role that owns no table, and tables FORCE row-level
security, so neither ownership nor a forgotten filter opens the wall. No-op on SQLite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANTS = "string_to_array(current_setting('app.tenant_ids', true), ',')"
USER = "current_setting('app.user_id', true)"

# table -> (who may see a row, who may write one)
POLICIES = {
    "tenants": (f"id = ANY ({TENANTS})", f"id = ANY ({TENANTS})"),
    "roles": (
        f"tenant_id = ANY ({TENANTS}) OR id IN "
        f"(SELECT role_id FROM memberships WHERE user_id = {USER})",
        f"tenant_id = ANY ({TENANTS})",
    ),
    "memberships": (
        f"tenant_id = ANY ({TENANTS}) OR user_id = {USER}",
        f"tenant_id = ANY ({TENANTS})",
    ),
    "invitations": (
        f"tenant_id = ANY ({TENANTS}) OR "
        "token_hash = current_setting('app.invitation_token_hash', true)",
        f"tenant_id = ANY ({TENANTS}) OR "
        "token_hash = current_setting('app.invitation_token_hash', true)",
    ),
    "api_keys": (
        f"tenant_id = ANY ({TENANTS}) OR secret_hash = current_setting('app.api_key_hash', true)",
        f"tenant_id = ANY ({TENANTS}) OR secret_hash = current_setting('app.api_key_hash', true)",
    ),
    # Entries outside any tenant (sign-up, login) are written by anyone and read by no one
    # through the application; support reads them as the owner.
    "audit_entries": (
        f"tenant_id = ANY ({TENANTS})",
        f"tenant_id IS NULL OR tenant_id = ANY ({TENANTS})",
    ),
}


def _role() -> str:
    return str(context.config.attributes.get("database_role") or "coregraph_app")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    role = _role()
    op.execute(
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE "{role}" NOLOGIN;
              END IF;
            END $$"""
    )
    # The login role that runs the application must be allowed to SET ROLE to it.
    op.execute(f'GRANT "{role}" TO CURRENT_USER')
    op.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
    op.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{role}"'
    )
    for table, (visible, writable) in POLICIES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_wall ON {table} USING ({visible}) WITH CHECK ({writable})"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in POLICIES:
        op.execute(f"DROP POLICY IF EXISTS tenant_wall ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
