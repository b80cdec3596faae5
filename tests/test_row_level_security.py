"""PostgreSQL's row-level security is the second wall: even a query that forgets the tenant
filter only sees the tenants its transaction was scoped to, and cannot write into another."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from coregraph import db
from coregraph.models import Base
from coregraph.models.base import TenantOwned, tenant_owned_models
from tests.support import GraphQLClient, Server

TENANT_OWNED = {model.__tablename__: model for model in tenant_owned_models()}


def test_every_table_with_a_tenant_column_is_declared_tenant_owned() -> None:
    """A new table that holds tenant data must say so, or it would miss the wall below."""
    undeclared = [
        mapper.class_.__tablename__
        for mapper in Base.registry.mappers
        if "tenant_id" in mapper.class_.__table__.columns
        and not issubclass(mapper.class_, TenantOwned)
    ]
    assert not undeclared, f"tenant data without a TenantOwned declaration: {undeclared}"
    assert {"tenants", "memberships", "roles", "invitations", "api_keys", "audit_entries"} <= set(
        TENANT_OWNED
    )


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
            for table in TENANT_OWNED:
                unscoped = await conn.scalar(text(f"SELECT count(*) FROM {table}"))
                assert unscoped == 0, f"{table} is readable without a tenant scope"
            await conn.rollback()
            # A rollback (the pool does one on every return) must not undo the role switch.
            assert await conn.scalar(text("SELECT current_user")) == role

            await db.scope_transaction(conn, tenant_ids=[tenant_a])
            seen = {
                table: set(
                    (
                        await conn.execute(
                            text(f"SELECT DISTINCT {column} FROM {table}"),
                        )
                    ).scalars()
                )
                for table, column in (
                    (name, model.__row_security__.tenant_column)
                    for name, model in TENANT_OWNED.items()
                )
            }
            assert all(values <= {tenant_a} for values in seen.values()), seen
            # What the arrange step wrote for tenant A is there (so the check saw rows at all).
            for table in ("tenants", "memberships", "roles", "api_keys", "audit_entries"):
                assert seen[table] == {tenant_a}, table
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


@pytest.mark.usefixtures("postgres_only")
async def test_every_tenant_owned_table_is_walled_as_its_model_declares(server: Server) -> None:
    engine = db.create_engine(server.settings, as_owner=True)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
                        " obj_description(p.oid, 'pg_policy') AS declared"
                        " FROM pg_class c LEFT JOIN pg_policy p"
                        " ON p.polrelid = c.oid AND p.polname = :policy"
                        " WHERE c.relname = ANY(:tables)"
                    ),
                    {"policy": db.ROW_SECURITY_POLICY, "tables": list(TENANT_OWNED)},
                )
            ).all()
    finally:
        await engine.dispose()
    found = {row.relname: row for row in rows}
    assert set(found) == set(TENANT_OWNED)
    for table, model in TENANT_OWNED.items():
        row = found[table]
        assert row.relrowsecurity and row.relforcerowsecurity, f"{table} is not walled"
        # A declaration changed in a model without a migration that applies it shows here.
        assert row.declared == db.describe_row_security(model.__row_security__), table
