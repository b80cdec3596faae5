"""Audit retention per tenant: the setting, the chain's new anchor, and who may prune.

``tenants.audit_retention_days`` (NULL keeps entries forever). When the worker prunes a
tenant's oldest entries it records the last deleted entry's position and hash in the chain's
head (``stream_heads.audit_pruned_position`` / ``audit_pruned_hash``), and verification
anchors the first retained entry there; an entry deleted any other way still breaks the chain.

On PostgreSQL the append-only trigger (0007) keeps refusing UPDATE, DELETE and TRUNCATE to
everyone, owner included, except one case: ``COREGRAPH_DATABASE_WORKER_ROLE`` deleting an entry
older than its tenant's retention. The worker role gets DELETE (and INSERT, for the
``audit.pruned`` entry each prune leaves in the chain) on ``audit_entries``, the UPDATE of the
head columns a unit of work and a prune move, and reads ``tenants``' retention only (a column
grant: no names or slugs). Its writes pass the tenant wall like the API's: the prune's
transaction is scoped to the one tenant it prunes. Row-level security stays forced.

Downgrade restores 0007's function (refuse everything) and drops the columns.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "audit_entries_refuse_change"
MESSAGE = "audit_entries is append-only: % is not allowed"
HEAD_COLUMNS = (
    "audit_position",
    "audit_hash",
    "event_sequence",
    "audit_pruned_position",
    "audit_pruned_hash",
)


def _worker_role() -> str:
    return str(context.config.attributes.get("database_worker_role") or "coregraph_worker")


def upgrade() -> None:
    op.add_column("tenants", sa.Column("audit_retention_days", sa.Integer(), nullable=True))
    op.add_column(
        "stream_heads",
        sa.Column("audit_pruned_position", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "stream_heads",
        sa.Column("audit_pruned_hash", sa.String(length=64), server_default="", nullable=False),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    worker = _worker_role()
    # The age is measured against now(), the transaction's start, so a prune that computes its
    # cutoff from the same transaction's now() agrees with this check to the microsecond.
    op.execute(
        f"""CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
              retention integer;
            BEGIN
              -- Nested: OLD is unassigned for TRUNCATE, and AND does not short-circuit.
              IF TG_OP = 'DELETE' AND current_user = '{worker}' THEN
                SELECT audit_retention_days INTO retention FROM tenants WHERE id = OLD.tenant_id;
                IF retention IS NOT NULL
                   AND OLD.created_at < now() - make_interval(secs => retention * 86400.0) THEN
                  RETURN OLD;
                END IF;
              END IF;
              RAISE EXCEPTION '{MESSAGE}', TG_OP USING ERRCODE = 'insufficient_privilege';
            END $$"""
    )
    op.execute(f'GRANT SELECT (id, audit_retention_days) ON tenants TO "{worker}"')
    op.execute(f'CREATE POLICY worker_reads ON tenants FOR SELECT TO "{worker}" USING (true)')
    op.execute(f'GRANT INSERT, DELETE ON audit_entries TO "{worker}"')
    op.execute(f'GRANT UPDATE ({", ".join(HEAD_COLUMNS)}) ON stream_heads TO "{worker}"')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        worker = _worker_role()
        op.execute(f'REVOKE UPDATE ({", ".join(HEAD_COLUMNS)}) ON stream_heads FROM "{worker}"')
        op.execute(f'REVOKE INSERT, DELETE ON audit_entries FROM "{worker}"')
        op.execute("DROP POLICY IF EXISTS worker_reads ON tenants")
        op.execute(f'REVOKE SELECT (id, audit_retention_days) ON tenants FROM "{worker}"')
        op.execute(
            f"""CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  RAISE EXCEPTION '{MESSAGE}', TG_OP USING ERRCODE = 'insufficient_privilege';
                END $$"""
        )
    op.drop_column("stream_heads", "audit_pruned_hash")
    op.drop_column("stream_heads", "audit_pruned_position")
    op.drop_column("tenants", "audit_retention_days")
