"""api_key_principal(): an API key and its creator's (and agent's) current rights in one call.

API-key authentication on PostgreSQL (``coregraph/auth/authenticate.py``): row-level security
shows a transaction the key by its secret's hash, but the creator's membership and role only
within the key's tenant, which the key row tells. Done from the client, that was four round
trips per request (BEGIN, scope, the key and role, ROLLBACK; two more on a process's first
sight of a key). This function does both steps in one autocommitted call: it scopes its own
transaction to the key's hash, reads the key's tenant, scopes it to that tenant as well, and
returns the key with its creator's role permissions, its agent and the agent's sponsor's
role, as the database has them now. Nothing is remembered between calls: a revocation,
expiry, demotion or removal binds the very next request on any process.

``SECURITY INVOKER`` (the default, stated): it runs as the caller's role, so every statement
in it is under row-level security exactly as the statements it replaces; it scopes with
``set_config(..., true)``, local to its transaction, as ``append_events()`` (0013) does. It
changes no table, grant or policy. No-op on SQLite.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREATE = """
CREATE OR REPLACE FUNCTION api_key_principal(digest text)
RETURNS TABLE (
    id text,
    tenant_id text,
    environment text,
    scopes jsonb,
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    created_by_user_id text,
    rate_limits jsonb,
    agent_id text,
    creator_permissions jsonb,
    agent_scopes jsonb,
    agent_disabled_at timestamptz,
    agent_deleted_at timestamptz,
    sponsor_permissions jsonb
)
LANGUAGE plpgsql
SECURITY INVOKER
AS $$
#variable_conflict use_column
DECLARE
    key_tenant text;
BEGIN
    -- This step sees only the key whose secret the caller holds...
    PERFORM set_config('app.tenant_ids', '', true),
        set_config('app.user_id', '', true),
        set_config('app.api_key_hash', digest, true),
        set_config('app.invitation_token_hash', '', true);
    SELECT k.tenant_id INTO key_tenant FROM api_keys k WHERE k.secret_hash = digest;
    IF key_tenant IS NULL THEN
        RETURN;
    END IF;
    -- ...and this one the key's own tenant too, for its creator's and its agent's rights.
    PERFORM set_config('app.tenant_ids', key_tenant, true);
    RETURN QUERY
    SELECT k.id::text, k.tenant_id::text, k.environment::text, k.scopes::jsonb, k.expires_at,
           k.revoked_at, k.last_used_at, k.created_by_user_id::text, k.rate_limits::jsonb,
           k.agent_id::text, r.permissions::jsonb, a.scopes::jsonb, a.disabled_at,
           a.deleted_at, sr.permissions::jsonb
    FROM api_keys k
    LEFT JOIN memberships m ON m.tenant_id = k.tenant_id AND m.user_id = k.created_by_user_id
    LEFT JOIN roles r ON r.id = m.role_id
    LEFT JOIN agents a ON a.id = k.agent_id AND a.tenant_id = k.tenant_id
    LEFT JOIN memberships sm ON sm.tenant_id = a.tenant_id AND sm.user_id = a.sponsor_user_id
    LEFT JOIN roles sr ON sr.id = sm.role_id
    WHERE k.secret_hash = digest;
END
$$
"""

DROP = "DROP FUNCTION IF EXISTS api_key_principal(text)"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(CREATE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(DROP)
