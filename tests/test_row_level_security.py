"""PostgreSQL's row-level security is the second wall: even a query that forgets the tenant
filter only sees the tenants its transaction was scoped to, and cannot write into another."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coregraph import db
from tests.support import GraphQLClient, Server


@pytest.fixture
def postgres_only(server: Server) -> None:
    if server.settings.is_sqlite:
        pytest.skip("row-level security is PostgreSQL's; run with COREGRAPH_DATABASE_URL")


@pytest.mark.usefixtures("postgres_only")
async def test_unfiltered_queries_see_only_the_scoped_tenant(
    client: GraphQLClient, server: Server
) -> None:
    owner_a = await client.sign_up()
    tenant_a = await client.create_tenant(owner_a)
    await client.api_key(owner_a, tenant_a, ["tenant:read"])
    owner_b = await client.sign_up()
    tenant_b = await client.create_tenant(owner_b)
    await client.api_key(owner_b, tenant_b, ["tenant:read"])

    engine = db.create_engine(server.settings)  # the application's role
    try:
        async with engine.connect() as conn:
            role = await conn.scalar(text("SELECT current_user"))
            assert role == server.settings.database_role
            for table in ("tenants", "memberships", "roles", "api_keys", "audit_entries"):
                unscoped = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
                assert unscoped == 0, f"{table} is readable without a tenant scope"
            await conn.rollback()
            # A rollback (the pool does one on every return) must not undo the role switch.
            assert await conn.scalar(text("SELECT current_user")) == role

            await db.scope_transaction(conn, tenant_ids=[tenant_a])
            seen = {
                table: set(
                    (await conn.execute(text(f"SELECT DISTINCT {column} FROM {table}"))).scalars()
                )
                for table, column in (
                    ("tenants", "id"),
                    ("memberships", "tenant_id"),
                    ("roles", "tenant_id"),
                    ("api_keys", "tenant_id"),
                    ("audit_entries", "tenant_id"),
                )
            }
            assert all(values == {tenant_a} for values in seen.values()), seen
            with pytest.raises(DBAPIError, match="row-level security"):
                await conn.execute(
                    text(
                        "INSERT INTO roles (id, tenant_id, key, name, description,"
                        " permissions, builtin, created_at) VALUES ('rol_x', :b, 'x', 'x', '',"
                        " '[]', false, now())"
                    ),
                    {"b": tenant_b},
                )
            await conn.rollback()

            await db.scope_transaction(conn, tenant_ids=[tenant_a])
            changed = await conn.execute(
                text("UPDATE tenants SET name = 'taken over' WHERE id = :b"), {"b": tenant_b}
            )
            assert changed.rowcount == 0
            await conn.rollback()
    finally:
        await engine.dispose()

    r = await client.execute("{ tenant { name } }", actor=owner_b, tenant_id=tenant_b)
    assert r.ok()["tenant"]["name"] != "taken over"
