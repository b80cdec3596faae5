"""Order is commit order (DESIGN.md, Streams). Ids are made before commit, by several
processes, so "id > cursor" could skip a row that commits late; audit positions and event
sequence numbers are handed out as each unit of work commits, so a stream read by position
never skips one and the hash chain follows the order the database committed in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.auth.permissions import PERMISSION_KEYS
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.models import AuditEntry, Event
from coregraph.request import RequestMeta
from coregraph.services.audit import verify_chain
from coregraph.services.uow import UnitOfWork
from tests.support import GraphQLClient, Server
from tests.test_audit_trail import ENTRIES

META = RequestMeta(user_agent="coregraph-tests")


@pytest.fixture
async def owner_engine(server: Server) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(server.settings, as_owner=True)
    yield engine
    await engine.dispose()


async def test_the_writer_that_started_first_but_committed_last_comes_last(
    client: GraphQLClient, server: Server, owner_engine: AsyncEngine
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    principal = Principal(
        kind=PrincipalKind.USER,
        user_id=owner.user_id,
        tenant_id=tenant_id,
        tenant_scopes={tenant_id: PERMISSION_KEYS},
    )
    # The application's own role: row-level security applies to these writes too.
    engine = db.create_engine(server.settings)
    async with UnitOfWork(engine, principal, META) as first:
        early_entry = first.record("test.started_first", tenant_id=tenant_id)
        early_event = first.emit("test.started_first", tenant_id=tenant_id)
        # A second writer starts later and commits while the first is still open.
        async with UnitOfWork(engine, principal, META) as second:
            late_entry = second.record("test.started_second", tenant_id=tenant_id)
            late_event = second.emit("test.started_second", tenant_id=tenant_id)
    await engine.dispose()
    assert early_entry.id < late_entry.id and early_event.id < late_event.id  # made in that order
    assert late_entry.position + 1 == early_entry.position  # ...committed in the other
    assert late_event.sequence + 1 == early_event.sequence

    async with owner_engine.connect() as conn:
        by_position = (
            await conn.execute(
                select(AuditEntry.action)
                .where(AuditEntry.chain_id == tenant_id)
                .order_by(AuditEntry.position.desc())
                .limit(2)
            )
        ).scalars()
        assert list(by_position) == ["test.started_first", "test.started_second"]
        by_sequence = (
            await conn.execute(
                select(Event.type).where(Event.tenant_id == tenant_id).order_by(Event.sequence)
            )
        ).scalars()
        assert list(by_sequence)[-2:] == ["test.started_second", "test.started_first"]
        assert (await verify_chain(conn, tenant_id)).ok

    # The auditLog query is newest first in that same order, and its cursors are positions:
    # paging one entry at a time meets each once, the late committer first, filtered or not.
    async def paged(**filters: Any) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        after = None
        while True:
            r = await client.execute(
                ENTRIES, {"first": 1, "after": after, **filters}, actor=owner, tenant_id=tenant_id
            )
            page = r.ok()["tenant"]["auditLog"]
            seen += page["nodes"]
            if not page["pageInfo"]["hasNextPage"]:
                return seen
            after = page["pageInfo"]["endCursor"]

    everything = await paged()
    assert [e["position"] for e in everything] == list(range(early_entry.position, 0, -1))
    assert [e["id"] for e in everything[:2]] == [early_entry.id, late_entry.id]
    assert [e["id"] for e in await paged(action="test.")] == [early_entry.id, late_entry.id]


async def test_concurrent_writers_leave_a_gap_free_verified_chain(
    client: GraphQLClient, owner_engine: AsyncEngine
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    mutation = """mutation($input: UpdateTenantInput!) { updateTenant(input: $input) {
        tenant { name } } }"""
    results = await asyncio.gather(
        *(
            client.execute(mutation, {"input": {"name": f"Name {n}"}}, actor=owner)
            for n in range(24)
        )
    )
    for r in results:
        r.ok()
    async with owner_engine.connect() as conn:
        positions = (
            await conn.execute(
                select(AuditEntry.position)
                .where(AuditEntry.chain_id == tenant_id)
                .order_by(AuditEntry.position)
            )
        ).scalars()
        # tenant.created and member.added, then the 24 renames: no gap, no duplicate.
        assert list(positions) == list(range(1, 27))
        check = await verify_chain(conn, tenant_id)
        assert check.ok and check.checked == 26
