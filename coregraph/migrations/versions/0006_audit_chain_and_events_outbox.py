"""The audit trail becomes a hash chain per tenant (and per user for entries outside any
tenant); business events get their table, which is also the outbox; each chain's head is a row
the unit of work locks to append in commit order.

Existing entries are chained in the order they were written (their ids are time-ordered), with
the very hash function the application checks with (``coregraph.services.audit.entry_hash``).
On PostgreSQL the audit table is walled with FORCE; the owner running this migration lifts it
for the backfill and the walls are then rebuilt from the new declarations.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity
from coregraph.services.audit import entry_hash

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USER = "current_setting('app.user_id', true)"
DECLARATIONS = {
    "audit_entries": RowSecurity(
        also_visible=f"tenant_id IS NULL AND chain_id = {_USER}",
        also_writable="tenant_id IS NULL",
    ),
    "stream_heads": RowSecurity(
        tenant_column="chain_id",
        also_visible=f"chain_id = {_USER}",
        also_writable=f"chain_id = {_USER}",
    ),
    "events": RowSecurity(),
}


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "stream_heads",
        sa.Column("chain_id", sa.String(length=30), nullable=False),
        sa.Column("audit_position", sa.BigInteger(), nullable=False),
        sa.Column("audit_hash", sa.String(length=64), nullable=False),
        sa.Column("event_sequence", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id", name=op.f("pk_stream_heads")),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=120), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.String(length=30), nullable=True),
        sa.Column("acting_for_user_id", sa.String(length=30), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_events_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("tenant_id", "sequence", name=op.f("uq_events_tenant_id_sequence")),
        sa.UniqueConstraint(
            "tenant_id",
            "environment",
            "idempotency_key",
            name=op.f("uq_events_tenant_id_environment_idempotency_key"),
        ),
    )
    with op.batch_alter_table("events") as batch_op:
        batch_op.create_index(
            "ix_events_tenant_env_type_sequence",
            ["tenant_id", "environment", "type", "sequence"],
            unique=False,
        )
    with op.batch_alter_table("audit_entries") as batch_op:
        batch_op.add_column(sa.Column("chain_id", sa.String(length=30), nullable=True))
        batch_op.add_column(sa.Column("position", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("previous_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    if _is_postgresql():
        op.execute("ALTER TABLE audit_entries NO FORCE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE stream_heads NO FORCE ROW LEVEL SECURITY")
    _chain_existing_entries()
    with op.batch_alter_table("audit_entries") as batch_op:
        batch_op.alter_column("chain_id", existing_type=sa.String(length=30), nullable=False)
        batch_op.alter_column("position", existing_type=sa.BigInteger(), nullable=False)
        batch_op.alter_column("previous_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint(
            op.f("uq_audit_entries_chain_id_position"), ["chain_id", "position"]
        )
    if _is_postgresql():
        for table, security in DECLARATIONS.items():
            for statement in row_security_statements(table, security):
                op.execute(statement)


# The columns the hash covers, typed as at this revision, so rows come back as the
# application reads them (datetimes, JSON) on either backend.
_AUDIT = sa.table(
    "audit_entries",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("environment", sa.String),
    sa.column("actor_kind", sa.String),
    sa.column("actor_id", sa.String),
    sa.column("acting_for_user_id", sa.String),
    sa.column("action", sa.String),
    sa.column("target_type", sa.String),
    sa.column("target_id", sa.String),
    sa.column("changes", sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")),
    sa.column("request_id", sa.String),
    sa.column("ip", sa.String),
    sa.column("user_agent", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _chain_existing_entries() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_AUDIT).order_by(_AUDIT.c.id)).mappings().all()
    heads: dict[str, tuple[int, str]] = {}
    for row in rows:
        entry: dict[str, Any] = dict(row)
        chain_id = entry["tenant_id"]
        if chain_id is None:
            if entry["actor_kind"] == "user" and entry["actor_id"]:
                chain_id = entry["actor_id"]
            else:
                chain_id = entry["target_id"] or entry["actor_id"] or "system"
        position, previous = heads.get(chain_id, (0, ""))
        entry.update(chain_id=chain_id, position=position + 1)
        digest = entry_hash(_Row(entry), previous)
        bind.execute(
            sa.text(
                "UPDATE audit_entries SET chain_id = :chain_id, position = :position,"
                " previous_hash = :previous_hash, hash = :hash WHERE id = :id"
            ),
            {
                "chain_id": chain_id,
                "position": position + 1,
                "previous_hash": previous,
                "hash": digest,
                "id": entry["id"],
            },
        )
        heads[chain_id] = (position + 1, digest)
    tenant_ids = {r[0] for r in bind.execute(sa.text("SELECT id FROM tenants"))}
    for chain_id, (position, digest) in heads.items():
        bind.execute(
            sa.text(
                "INSERT INTO stream_heads (chain_id, audit_position, audit_hash, event_sequence)"
                " VALUES (:c, :p, :h, 0)"
            ),
            {"c": chain_id, "p": position, "h": digest},
        )
    for tenant_id in tenant_ids - heads.keys():
        bind.execute(
            sa.text(
                "INSERT INTO stream_heads (chain_id, audit_position, audit_hash, event_sequence)"
                " VALUES (:c, 0, '', 0)"
            ),
            {"c": tenant_id},
        )


class _Row:
    """Attribute access over a row mapping, as ``entry_hash`` reads an entry."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def downgrade() -> None:
    if _is_postgresql():
        op.execute("DROP POLICY IF EXISTS tenant_wall ON audit_entries")
        for statement in row_security_statements(
            "audit_entries", RowSecurity(also_writable="tenant_id IS NULL")
        ):
            op.execute(statement)
    with op.batch_alter_table("audit_entries") as batch_op:
        batch_op.drop_constraint(op.f("uq_audit_entries_chain_id_position"), type_="unique")
        batch_op.drop_column("hash")
        batch_op.drop_column("previous_hash")
        batch_op.drop_column("position")
        batch_op.drop_column("chain_id")
    op.drop_table("events")
    op.drop_table("stream_heads")
