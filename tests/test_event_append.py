"""A unit of work that only states events: on PostgreSQL its commit is one autocommitted call
(migration 0013's ``append_events``); what it writes and numbers must not change with that."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Select, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db, ids
from coregraph.auth.principal import ANONYMOUS, Principal, PrincipalKind
from coregraph.models import Event, EventType, UsageRecord, UsageRollup
from coregraph.request import RequestMeta
from coregraph.services import identity, tenancy
from coregraph.services.uow import StatedEvent, UnitOfWork
from coregraph.services.usage import usage_row
from tests.streams_support import engine_for
from tests.support import PASSWORD, Server, unique

META = RequestMeta(user_agent="coregraph-tests")


@pytest.fixture
async def engine(server: Server) -> AsyncIterator[AsyncEngine]:
    async with engine_for(server.settings.database_url) as engine:
        yield engine


async def _owner_and_tenant(engine: AsyncEngine, server: Server) -> tuple[Principal, str]:
    async with UnitOfWork(engine, ANONYMOUS, META) as uow:
        user = await identity.create_user(
            uow,
            server.settings,
            email=f"{unique('append')}@example.com",
            password=PASSWORD,
            display_name=None,
        )
        tenant = await tenancy.create_tenant(
            uow, name="Append", slug=unique("append-"), owner_id=user.id
        )
    # create_tenant emitted tenant.created: the tenant's stream stands at 1.
    principal = Principal(
        kind=PrincipalKind.USER,
        user_id=user.id,
        tenant_id=tenant.id,
        tenant_scopes={tenant.id: frozenset({"events:write"})},
    )
    return principal, tenant.id


async def _as_owner(server: Server, statement: Select[Any]) -> list[tuple[Any, ...]]:
    """What the tables' owner (no row-level security) reads."""
    owner = db.create_engine(server.settings, as_owner=True)
    try:
        async with owner.connect() as conn:
            return [tuple(row) for row in await conn.execute(statement)]
    finally:
        await owner.dispose()


async def _stored(server: Server, tenant_id: str) -> list[tuple[Any, ...]]:
    return await _as_owner(
        server,
        select(Event.type, Event.sequence, Event.data)
        .where(Event.tenant_id == tenant_id)
        .order_by(Event.sequence),
    )


async def test_events_stated_alone_follow_the_tenants_stream_without_a_gap(
    engine: AsyncEngine, server: Server
) -> None:
    principal, tenant_id = await _owner_and_tenant(engine, server)
    for batch in (["a.one"], ["b.one", "b.two", "b.three"]):
        async with UnitOfWork(engine, principal, META) as uow:
            for type in batch:
                uow.emit(type, tenant_id=tenant_id, data={"type": type})
    assert [event.sequence for event in uow.events] == [3, 4, 5]
    stored = await _stored(server, tenant_id)
    assert [(type, sequence) for type, sequence, _data in stored] == [
        ("tenant.created", 1),
        ("a.one", 2),
        ("b.one", 3),
        ("b.two", 4),
        ("b.three", 5),
    ]
    assert stored[-1][2] == {"type": "b.three"}


async def test_a_row_added_but_not_flushed_commits_with_the_events(
    engine: AsyncEngine, server: Server
) -> None:
    principal, tenant_id = await _owner_and_tenant(engine, server)
    async with UnitOfWork(engine, principal, META) as uow:
        uow.session.add(
            EventType(id=ids.new_id("etp"), tenant_id=tenant_id, type="c.added", schema={})
        )
        uow.emit("c.added", tenant_id=tenant_id)
    registered = select(EventType.type).where(EventType.tenant_id == tenant_id)
    assert await _as_owner(server, registered) == [("c.added",)]
    assert [type for type, _sequence, _data in await _stored(server, tenant_id)] == [
        "tenant.created",
        "c.added",
    ]


async def test_a_refused_append_writes_nothing_and_leaves_the_stream_where_it_was(
    engine: AsyncEngine, server: Server
) -> None:
    principal, tenant_id = await _owner_and_tenant(engine, server)
    async with UnitOfWork(engine, principal, META) as uow:
        uow.emit("d.first", tenant_id=tenant_id, idempotency_key="same")
    with pytest.raises(IntegrityError):
        async with UnitOfWork(engine, principal, META) as uow:
            uow.emit("d.second", tenant_id=tenant_id)
            uow.emit("d.third", tenant_id=tenant_id, idempotency_key="same")
    async with UnitOfWork(engine, principal, META) as uow:
        uow.emit("d.fourth", tenant_id=tenant_id)
    assert [(type, sequence) for type, sequence, _data in await _stored(server, tenant_id)] == [
        ("tenant.created", 1),
        ("d.first", 2),
        ("d.fourth", 3),
    ]


async def _usage(server: Server, tenant_id: str) -> list[tuple[Any, ...]]:
    return await _as_owner(
        server,
        select(UsageRecord.meter, UsageRecord.quantity, UsageRecord.dimensions)
        .where(UsageRecord.tenant_id == tenant_id, UsageRecord.meter == "events.emitted")
        .order_by(UsageRecord.recorded_at),
    )


async def _rollups(server: Server, tenant_id: str) -> list[tuple[Any, ...]]:
    rollup = UsageRollup
    return await _as_owner(
        server,
        select(rollup.meter, rollup.quantity_sum, rollup.record_count).where(
            rollup.tenant_id == tenant_id, rollup.meter == "events.emitted"
        ),
    )


async def test_usage_recorded_with_the_commit_is_written_with_the_events_in_one_statement(
    engine: AsyncEngine, server: Server
) -> None:
    """What emitEvents does: its usage record rides with the events, so on PostgreSQL the
    commit stays the one autocommitted statement (the tenant's head row is not held across a
    round trip to the client), and on either backend both are written or neither."""
    principal, tenant_id = await _owner_and_tenant(engine, server)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        async with UnitOfWork(engine, principal, META) as uow:
            uow.emit("e.one", tenant_id=tenant_id)
            uow.emit("e.two", tenant_id=tenant_id)
            uow.record_usage(
                [usage_row(tenant_id, principal.environment, "events.emitted", Decimal(2))]
            )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    if engine.dialect.name == "postgresql":
        assert len(statements) == 1 and "append_events" in statements[0], statements
    assert [(type, sequence) for type, sequence, _data in await _stored(server, tenant_id)][
        -2:
    ] == [("e.one", 2), ("e.two", 3)]
    assert await _usage(server, tenant_id) == [("events.emitted", Decimal(2), {})]
    # Its hour's rollup too, in the same statement (the usage query reads rollups).
    assert await _rollups(server, tenant_id) == [("events.emitted", Decimal(2), 1)]
    # Refused (a used idempotency key): neither the events nor the usage record.
    with pytest.raises(IntegrityError):
        async with UnitOfWork(engine, principal, META) as uow:
            uow.emit("e.three", tenant_id=tenant_id, idempotency_key="k")
            uow.emit("e.four", tenant_id=tenant_id, idempotency_key="k")
            uow.record_usage(
                [usage_row(tenant_id, principal.environment, "events.emitted", Decimal(2))]
            )
    assert len(await _stored(server, tenant_id)) == 3
    assert len(await _usage(server, tenant_id)) == 1
    assert await _rollups(server, tenant_id) == [("events.emitted", Decimal(2), 1)]


async def test_concurrent_commits_sharing_a_rollup_never_deadlock(
    engine: AsyncEngine, server: Server
) -> None:
    """Units of work of one tenant, some committing in the one statement (head, then the
    usage rollup), some in their transaction (usage written early, rollup after the head):
    every writer takes the head before the rollup row, so none waits on another in a cycle
    (PostgreSQL detected deadlocks here under concurrent emitEvent before)."""
    principal, tenant_id = await _owner_and_tenant(engine, server)

    async def commit(early: bool) -> None:
        async with UnitOfWork(engine, principal, META) as uow:
            row = usage_row(tenant_id, principal.environment, "events.emitted", Decimal(1))
            if early:
                await uow.insert_usage([row])
            else:
                uow.record_usage([row])
            uow.emit("f.race", tenant_id=tenant_id)

    await asyncio.wait_for(asyncio.gather(*(commit(i % 2 == 0) for i in range(24))), 60)
    assert await _rollups(server, tenant_id) == [("events.emitted", Decimal(24), 24)]
    assert len(await _usage(server, tenant_id)) == 24


async def _count_statements(engine: AsyncEngine, work: Any) -> tuple[Any, list[str]]:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        return await work, statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def test_concurrent_commits_of_one_tenant_each_get_their_own_events_in_one_stream(
    engine: AsyncEngine, server: Server
) -> None:
    """Group commit (services.group_commit): units of work of one tenant committing at the
    same moment share the call on PostgreSQL — and each still gets its own events, numbered
    without a gap in the order they were written, with its usage record."""
    principal, tenant_id = await _owner_and_tenant(engine, server)

    async def commit(index: int) -> list[StatedEvent]:
        async with UnitOfWork(engine, principal, META) as uow:
            for part in range(index % 3 + 1):
                uow.emit("g.grouped", tenant_id=tenant_id, data={"unit": index, "part": part})
            uow.record_usage(
                [usage_row(tenant_id, principal.environment, "events.emitted", Decimal(1))]
            )
        return uow.events

    units, statements = await _count_statements(
        engine, asyncio.wait_for(asyncio.gather(*(commit(i) for i in range(24))), 60)
    )
    if engine.dialect.name == "postgresql":
        assert 1 <= len(statements) < 24, statements  # shared calls
    # Each unit's own events, numbered consecutively within it; all of them without a gap.
    for index, stated in enumerate(units):
        assert [e.data for e in stated] == [
            {"unit": index, "part": part} for part in range(index % 3 + 1)
        ]
        numbers = [e.sequence for e in stated]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    stored = await _stored(server, tenant_id)
    assert [sequence for _type, sequence, _data in stored] == list(range(1, len(stored) + 1))
    by_sequence = {sequence: data for _type, sequence, data in stored}
    assert all(by_sequence[e.sequence] == e.data for stated in units for e in stated)
    assert len(stored) == 1 + sum(len(stated) for stated in units)
    assert len(await _usage(server, tenant_id)) == 24
    assert await _rollups(server, tenant_id) == [("events.emitted", Decimal(24), 24)]


async def test_a_commit_refused_in_a_group_fails_alone(engine: AsyncEngine, server: Server) -> None:
    """One unit of work reusing an idempotency key among concurrent ones: the database refuses
    the shared call, every unit commits again on its own, and only the one at fault fails —
    the stream keeps no gap."""
    principal, tenant_id = await _owner_and_tenant(engine, server)
    async with UnitOfWork(engine, principal, META) as uow:
        uow.emit("h.first", tenant_id=tenant_id, idempotency_key="used")

    async def commit(index: int) -> int:
        async with UnitOfWork(engine, principal, META) as uow:
            key = "used" if index == 5 else f"fresh-{index}"
            uow.emit("h.next", tenant_id=tenant_id, data={"unit": index}, idempotency_key=key)
        return index

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(commit(i) for i in range(12)), return_exceptions=True), 60
    )
    assert isinstance(outcomes[5], IntegrityError)
    assert [o for i, o in enumerate(outcomes) if i != 5] == [i for i in range(12) if i != 5]
    stored = await _stored(server, tenant_id)
    assert [sequence for _type, sequence, _data in stored] == list(range(1, 14))
    assert sorted(data["unit"] for type, _s, data in stored if type == "h.next") == [
        i for i in range(12) if i != 5
    ]
