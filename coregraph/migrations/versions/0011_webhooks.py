"""Webhooks: endpoints, deliveries and attempts, walled per tenant; the worker role's share.

The API role reads and writes them through the tenant wall like every tenant-owned table. The
worker role (0009) schedules deliveries as the relay publishes events, claims and sends them
for every tenant, and records attempts, so it gets policies of its own on these tables: it
reads endpoints (their encrypted secrets included: it signs) and may only change their
failure bookkeeping and whether they are enabled; it inserts and updates deliveries and
inserts attempts. It also gets INSERT on ``events``: an endpoint that keeps failing is
disabled by the worker with a ``webhook_endpoint.disabled`` event, written through the unit of
work in a transaction scoped to that endpoint's tenant, so the tenant wall still applies.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from coregraph.db import row_security_statements
from coregraph.models.base import RowSecurity

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The models' declarations at this revision.
DECLARATIONS = {
    "webhook_endpoints": RowSecurity(),
    "webhook_deliveries": RowSecurity(),
    "webhook_attempts": RowSecurity(),
}
ENDPOINT_BOOKKEEPING = (
    "enabled",
    "disabled_reason",
    "consecutive_failures",
    "failing_since",
    "updated_at",
)

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def _worker_role() -> str:
    return str(context.config.attributes.get("database_worker_role") or "coregraph_worker")


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("event_types", _JSON, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=16), nullable=True),
        sa.Column("secret", sa.String(length=500), nullable=False),
        sa.Column("previous_secret", sa.String(length=500), nullable=True),
        sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_endpoints_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_index(
        op.f("ix_webhook_endpoints_tenant_id"), "webhook_endpoints", ["tenant_id"], unique=False
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("environment", sa.String(length=8), nullable=False),
        sa.Column("endpoint_id", sa.String(length=30), nullable=False),
        sa.Column("event_id", sa.String(length=30), nullable=True),
        sa.Column("event_type", sa.String(length=120), nullable=False),
        sa.Column("payload", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("succeeded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_deliveries_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_deliveries_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "endpoint_id", "event_id", name=op.f("uq_webhook_deliveries_endpoint_id_event_id")
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_created_at",
        "webhook_deliveries",
        ["endpoint_id", "created_at"],
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.String(length=30), nullable=False),
        sa.Column("tenant_id", sa.String(length=30), nullable=False),
        sa.Column("delivery_id", sa.String(length=30), nullable=False),
        sa.Column("endpoint_id", sa.String(length=30), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.String(length=1024), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_webhook_attempts_tenant_id_tenants")
        ),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["webhook_deliveries.id"],
            name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["webhook_endpoints.id"],
            name=op.f("fk_webhook_attempts_endpoint_id_webhook_endpoints"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
        sa.UniqueConstraint(
            "delivery_id", "attempt", name=op.f("uq_webhook_attempts_delivery_id_attempt")
        ),
    )
    op.create_index(
        "ix_webhook_attempts_endpoint_id_started_at",
        "webhook_attempts",
        ["endpoint_id", "started_at"],
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, declaration in DECLARATIONS.items():
        for statement in row_security_statements(table, declaration):
            op.execute(statement)
    worker = _worker_role()
    op.execute(f'GRANT SELECT ON webhook_endpoints TO "{worker}"')
    op.execute(
        f'GRANT UPDATE ({", ".join(ENDPOINT_BOOKKEEPING)}) ON webhook_endpoints TO "{worker}"'
    )
    op.execute(
        f'CREATE POLICY worker_delivers ON webhook_endpoints TO "{worker}"'
        " USING (true) WITH CHECK (true)"
    )
    op.execute(f'GRANT SELECT, INSERT, UPDATE ON webhook_deliveries TO "{worker}"')
    op.execute(f'GRANT SELECT, INSERT ON webhook_attempts TO "{worker}"')
    for table in ("webhook_deliveries", "webhook_attempts"):
        op.execute(
            f'CREATE POLICY worker_delivers ON {table} TO "{worker}" USING (true) WITH CHECK (true)'
        )
    op.execute(f'GRANT INSERT ON events TO "{worker}"')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'REVOKE INSERT ON events FROM "{_worker_role()}"')
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
