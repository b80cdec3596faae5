"""PostgreSQL connections that die in the pool: a connection idle past
``db.PING_AFTER_IDLE_SECONDS`` is pinged before use and replaced when dead; one back from use a
moment ago is not pinged, and if it died meanwhile its failure invalidates the pool so the next
checkout connects afresh."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from tests.support import Server


async def _backend(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT pg_backend_pid()")))


async def _terminate(server: Server, pid: int) -> None:
    owner = db.create_engine(server.settings, as_owner=True)
    try:
        async with owner.connect() as conn:
            # Waits (up to 30 s) until the backend has ended.
            ended = await conn.scalar(
                text("SELECT pg_terminate_backend(:pid, 30000)"), {"pid": pid}
            )
            assert ended, "the backend did not end"
    finally:
        await owner.dispose()


@pytest.fixture
def postgresql(server: Server) -> Server:
    if server.settings.is_sqlite:
        pytest.skip("a pool of server connections is PostgreSQL's")
    return server


async def test_an_idle_connection_that_died_is_replaced_before_use(
    postgresql: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    engine = db.create_engine(postgresql.settings)
    try:
        first = await _backend(engine)
        assert await _backend(engine) == first  # the pool gives the same connection back
        await _terminate(postgresql, first)

        replacement = await _backend(engine)

        assert replacement != first
    finally:
        await engine.dispose()


async def test_a_connection_used_a_moment_ago_is_not_pinged_and_a_failure_resets_the_pool(
    postgresql: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = db.create_engine(postgresql.settings)
    try:
        first = await _backend(engine)
        await _terminate(postgresql, first)

        with pytest.raises(DBAPIError) as failed:
            await _backend(engine)
        assert failed.value.connection_invalidated

        assert await _backend(engine) != first
    finally:
        await engine.dispose()


async def test_a_statement_sent_to_the_driver_fails_and_recovers_as_through_sqlalchemy(
    postgresql: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``db.fetch_autocommitted`` (the API key's and the event append's one call) bypasses
    SQLAlchemy's execution but not its exceptions or its pool: a refused statement is the
    same exception class and leaves the connection in use; a lost connection invalidates the
    pool, and the next call connects afresh."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    engine = db.create_engine(postgresql.settings)
    backend = text("SELECT pg_backend_pid() AS pid")
    try:
        row = await db.fetch_autocommitted(engine, backend, {})
        assert row is not None
        first = row["pid"]
        assert await _backend(engine) == first  # one pool, one connection

        with pytest.raises(IntegrityError) as refused:
            await db.fetch_autocommitted(
                engine,
                text("DO $$ BEGIN RAISE unique_violation USING MESSAGE = 'taken'; END $$"),
                {},
            )
        assert not refused.value.connection_invalidated
        with pytest.raises(DBAPIError):
            await db.fetch_autocommitted(engine, text("SELECT 1 / :zero"), {"zero": 0})
        row = await db.fetch_autocommitted(engine, backend, {})
        assert row is not None and row["pid"] == first

        await _terminate(postgresql, first)
        with pytest.raises(DBAPIError) as failed:
            await db.fetch_autocommitted(engine, backend, {})
        assert failed.value.connection_invalidated

        row = await db.fetch_autocommitted(engine, backend, {})
        assert row is not None and row["pid"] != first
    finally:
        await engine.dispose()
