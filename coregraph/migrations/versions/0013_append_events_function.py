"""append_events(): scope, advance a chain's event sequence and insert its events in one call.

The unit of work's events-only commit on PostgreSQL (``coregraph/services/uow.py``): called as
the one statement of an autocommitted transaction, so the chain's head row is locked by the
advance for that statement and the commit the server runs right after it, with no round trip
to the client inside the locked window (before: the advance-and-insert statement's result went
back to the client, which then sent COMMIT). Sequence numbers stay gap-free and in commit
order: the head is still advanced under its row lock, inside the transaction that inserts.

``SECURITY INVOKER`` (the default, stated): it runs as the caller's role, so row-level security
applies to every statement in it exactly as to the statements it replaces. It scopes its own
transaction first with ``set_config(..., true)``, which is local to that transaction. It
changes no table, grant or policy. No-op on SQLite.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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
    request_ids text[]
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
                        actor_id, acting_for_user_id, data, idempotency_key, request_id)
        SELECT e.id, chain, base + e.n, e.environment, e.type, e.occurred_at, e.actor_kind,
               e.actor_id, e.acting_for_user_id, e.data::jsonb, e.idempotency_key,
               e.request_id
        FROM unnest(ids, environments, types, occurred_ats, actor_kinds, actor_ids,
                    acting_for_user_ids, datas, idempotency_keys, request_ids)
             WITH ORDINALITY AS e(id, environment, type, occurred_at, actor_kind, actor_id,
                                  acting_for_user_id, data, idempotency_key, request_id, n);
    RETURN base;
END
$$
"""

DROP = (
    "DROP FUNCTION IF EXISTS append_events(text, text, text, text, text, text[], text[],"
    " text[], timestamptz[], text[], text[], text[], text[], text[], text[])"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(DROP)
