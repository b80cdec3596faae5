"""The outbox relay's own table and database role.

``relay_positions`` records, per chain, the last event sequence and audit position the relay
published, so a restarted relay resumes from the first unpublished row.

On PostgreSQL the relay connects as ``COREGRAPH_DATABASE_WORKER_ROLE`` (``coregraph_worker``,
NOLOGIN, granted to the login that migrates, as 0002 does for the application's role). It
reads across tenants through policies of its own, for it alone, next to the tenant walls:
never as an owner or a superuser, and row-level security stays forced. The API's role gets no
privilege on ``relay_positions`` at all (it would show every tenant's activity) and the
worker role no privilege beyond what the relay needs. The role is left in place on
downgrade: roles belong to the cluster, and other databases may use it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "worker_reads"
READ = ("events", "stream_heads", "audit_entries")


def _roles() -> tuple[str, str]:
    attributes = context.config.attributes
    app = str(attributes.get("database_role") or "coregraph_app")
    worker = str(attributes.get("database_worker_role") or "coregraph_worker")
    return app, worker


def upgrade() -> None:
    op.create_table(
        "relay_positions",
        sa.Column("chain_id", sa.String(length=30), nullable=False),
        sa.Column("events_published", sa.BigInteger(), nullable=False),
        sa.Column("audit_published", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_relay_positions")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    app, worker = _roles()
    op.execute(
        f"""DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{worker}') THEN
                CREATE ROLE "{worker}" NOLOGIN;
              END IF;
            END $$"""
    )
    # The login that runs `coregraph worker` switches to it as the application's does to its own.
    op.execute(f'GRANT "{worker}" TO CURRENT_USER')
    op.execute(f'GRANT USAGE ON SCHEMA public TO "{worker}"')
    for table in READ:
        op.execute(f'GRANT SELECT ON {table} TO "{worker}"')
        op.execute(f'CREATE POLICY {POLICY} ON {table} FOR SELECT TO "{worker}" USING (true)')
    # Default privileges (0002) handed the new table to the application's role: take them back.
    op.execute(f'REVOKE ALL ON relay_positions FROM "{app}"')
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON relay_positions TO "{worker}"')
    op.execute("ALTER TABLE relay_positions ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE relay_positions FORCE ROW LEVEL SECURITY")
    op.execute(
        f'CREATE POLICY worker_relays ON relay_positions TO "{worker}"'
        " USING (true) WITH CHECK (true)"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _, worker = _roles()
        for table in READ:
            op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
            op.execute(f'REVOKE SELECT ON {table} FROM "{worker}"')
    op.drop_table("relay_positions")
