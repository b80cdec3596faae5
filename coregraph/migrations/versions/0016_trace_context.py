"""Trace context on events and webhook deliveries; append_events() carries it.

``events.trace_parent`` is the W3C ``traceparent`` of the span that stated the event (the
mutation's), written only while tracing is on (``coregraph.telemetry``); the relay copies it
to the event's ``webhook_deliveries.trace_parent``, and the relay's publish span and the
worker's delivery span continue that trace. A column rather than a key inside ``events.data``
or ``webhook_deliveries.payload``: those are what subscribers and receivers get, and a trace
id is coregraph's own bookkeeping, not the tenant's data.

``append_events()`` (migration 0013) inserts the events of an events-only commit itself, so it
takes one more array, ``trace_parents``: the old signature is dropped and the new one made
(``SECURITY INVOKER`` as before; it changes no table, grant or policy). The worker role's
grants are per table (``events``: INSERT, ``webhook_deliveries``: SELECT, INSERT, UPDATE), so
they cover the new columns.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# "00-" + 32 + "-" + 16 + "-" + 2 hex digits
TRACEPARENT_LENGTH = 55

CREATE = """
CREATE OR REPLACE FUNCTION append_events(
    scope_tenant_ids text,
    scope_user_id text,
    scope_api_key_hash text,
    scope_invitation_token_hash text,
    chain text,
    ids text[],
    environments text[],
    types text[],
    occurred_ats timestamptz[],
    actor_kinds text[],
    actor_ids text[],
    acting_for_user_ids text[],
    datas text[],
    idempotency_keys text[],
    request_ids text[],
    trace_parents text[]
) RETURNS bigint
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
DECLARE
    added bigint := cardinality(ids);
    base bigint;
BEGIN
    PERFORM set_config('app.tenant_ids', scope_tenant_ids, true),
        set_config('app.user_id', scope_user_id, true),
        set_config('app.api_key_hash', scope_api_key_hash, true),
        set_config('app.invitation_token_hash', scope_invitation_token_hash, true);
    UPDATE stream_heads SET event_sequence = event_sequence + added
        WHERE chain_id = chain RETURNING event_sequence - added INTO base;
    IF base IS NULL THEN
        -- The chain's first event. A concurrent first writer may insert the head too: the
        -- insert then does nothing and the update waits for that writer's commit.
        INSERT INTO stream_heads (chain_id, audit_position, audit_hash, event_sequence)
            VALUES (chain, 0, '', 0) ON CONFLICT (chain_id) DO NOTHING;
        UPDATE stream_heads SET event_sequence = event_sequence + added
            WHERE chain_id = chain RETURNING event_sequence - added INTO STRICT base;
    END IF;
    INSERT INTO events (id, tenant_id, sequence, environment, type, occurred_at, actor_kind,
                        actor_id, acting_for_user_id, data, idempotency_key, request_id,
                        trace_parent)
        SELECT e.id, chain, base + e.n, e.environment, e.type, e.occurred_at, e.actor_kind,
               e.actor_id, e.acting_for_user_id, e.data::jsonb, e.idempotency_key,
               e.request_id, e.trace_parent
        FROM unnest(ids, environments, types, occurred_ats, actor_kinds, actor_ids,
                    acting_for_user_ids, datas, idempotency_keys, request_ids, trace_parents)
             WITH ORDINALITY AS e(id, environment, type, occurred_at, actor_kind, actor_id,
                                  acting_for_user_id, data, idempotency_key, request_id,
                                  trace_parent, n);
    RETURN base;
END
$$
"""

DROP = (
    "DROP FUNCTION IF EXISTS append_events(text, text, text, text, text, text[], text[],"
    " text[], timestamptz[], text[], text[], text[], text[], text[], text[], text[])"
)


def _revision_0013() -> object:
    """Migration 0013's module: its function is what a downgrade restores."""
    path = Path(__file__).with_name("0013_append_events_function.py")
    spec = importlib.util.spec_from_file_location("coregraph_migration_0013", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.add_column("events", sa.Column("trace_parent", sa.String(TRACEPARENT_LENGTH)))
    op.add_column("webhook_deliveries", sa.Column("trace_parent", sa.String(TRACEPARENT_LENGTH)))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_revision_0013().DROP)  # type: ignore[attr-defined]
        op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP)
        op.execute(_revision_0013().CREATE)  # type: ignore[attr-defined]
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_column("trace_parent")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("trace_parent")
