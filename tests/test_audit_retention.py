"""Audit retention: a tenant keeps its audit entries for as many days as it chose (forever by
default); the worker prunes older ones oldest first, leaves an ``audit.pruned`` entry, and the
chain still verifies from its new anchor, while any other deletion still breaks it. On
PostgreSQL only the worker's role may delete, and only expired entries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.auth.principal import system_principal
from coregraph.models import RelayPosition, StreamHead
from coregraph.models.base import utcnow
from coregraph.request import RequestMeta
from coregraph.services import tenancy
from coregraph.services.audit_retention import Pruned, prune_expired
from coregraph.services.events import BUILTIN_EVENT_TYPES
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings
from coregraph.streams.broker import InProcessBroker
from coregraph.streams.relay import Relay
from tests.conftest import make_settings
from tests.support import (
    Actor,
    GraphQLClient,
    Server,
    create_test_database,
    drop_test_database,
    env_database_url,
    running_server,
    unique,
)
from tests.test_audit_trail import owner_connection, tamper, verify

WAIT = 20.0

UPDATE = """mutation($input: UpdateTenantInput!) { updateTenant(input: $input) {
    tenant { id name auditRetentionDays } } }"""

LOG = """{ tenant { auditRetentionDays auditLog(first: 200) {
    nodes { action actorKind actorId position changes } } } }"""


@asynccontextmanager
async def worker_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The engine `coregraph worker` prunes with: the worker's role on PostgreSQL."""
    engine = db.create_engine(settings, role=settings.database_worker_role)
    try:
        yield engine
    finally:
        await engine.dispose()


async def tenant_with_history(settings: Settings, owner: Actor, *, days_ago: int) -> str:
    """A tenant whose first entries (creation and three renames) were written ``days_ago``
    days ago: the unit of work is coregraph's own, only the entries' clock is moved back."""
    engine = db.create_engine(settings)
    try:
        async with UnitOfWork(engine, system_principal("test:history"), RequestMeta()) as uow:
            slug = unique("old-")
            assert owner.user_id is not None
            tenant = await tenancy.create_tenant(uow, name="Old", slug=slug, owner_id=owner.user_id)
            for n in range(3):
                await tenancy.update_tenant(uow, tenant.id, name=f"Old {n}", slug=None)
            for entry in uow.audit_entries:
                entry.created_at = utcnow() - timedelta(days=days_ago)
    finally:
        await engine.dispose()
    owner.tenant_id = tenant.id
    return tenant.id


async def published(settings: Settings, tenant_id: str, *, relay: bool = True) -> None:
    """Until the relay has published the tenant's chain (retention never prunes past it). A
    relay of this test's own joins the server's, as several relays do in production, unless
    ``relay`` is false: then the server's alone (its subscribers hear every entry)."""
    async with worker_engine(settings) as engine:
        own = Relay(engine, InProcessBroker()) if relay else None
        async with asyncio.timeout(WAIT):
            while True:
                if own is not None:
                    await own.publish_pending()
                async with engine.connect() as conn:
                    head = await conn.scalar(
                        select(StreamHead.audit_position).where(StreamHead.chain_id == tenant_id)
                    )
                    done = await conn.scalar(
                        select(RelayPosition.audit_published).where(
                            RelayPosition.chain_id == tenant_id
                        )
                    )
                if done is not None and done >= (head or 0):
                    return
                await asyncio.sleep(0.05)


async def prune(settings: Settings, tenant_id: str, *, relay: bool = True) -> list[Pruned]:
    await published(settings, tenant_id, relay=relay)
    async with worker_engine(settings) as engine:
        return [p for p in await prune_expired(engine) if p.tenant_id == tenant_id]


async def audit_log(client: GraphQLClient, owner: Actor, tenant_id: str) -> dict[str, Any]:
    r = await client.execute(LOG, actor=owner, tenant_id=tenant_id)
    return dict(r.ok()["tenant"])


async def pruned_events(
    client: GraphQLClient, owner: Actor, tenant_id: str
) -> list[dict[str, Any]]:
    r = await client.execute(
        """{ events(types: ["audit.pruned"], first: 10) {
            nodes { data actorKind actorId environment } } }""",
        actor=owner,
        tenant_id=tenant_id,
    )
    return list(r.ok()["events"]["nodes"])


async def set_retention(
    client: GraphQLClient, actor: Actor, tenant_id: str, days: int | None
) -> Any:
    return await client.execute(
        UPDATE, {"input": {"auditRetentionDays": days}}, actor=actor, tenant_id=tenant_id
    )


async def test_a_prune_removes_exactly_the_expired_entries_and_the_chain_still_verifies(
    client: GraphQLClient, server: Server
) -> None:
    owner = await client.sign_up()
    tenant_id = await tenant_with_history(server.settings, owner, days_ago=40)
    (await set_retention(client, owner, tenant_id, 30)).ok()
    await client.add_member(owner, tenant_id, "viewer")
    before = await audit_log(client, owner, tenant_id)
    assert before["auditRetentionDays"] == 30
    positions = sorted(e["position"] for e in before["auditLog"]["nodes"])

    started = utcnow()
    assert await prune(server.settings, tenant_id) == [Pruned(tenant_id, 5, 1, 5)]

    after = (await audit_log(client, owner, tenant_id))["auditLog"]["nodes"]
    newest = after[0]
    assert newest["action"] == "audit.pruned"
    assert (newest["actorKind"], newest["actorId"]) == ("system", "worker:prune")
    recorded = newest["changes"]["after"]
    cutoff = datetime.fromisoformat(recorded.pop("cutoff"))
    assert recorded == {"count": 5, "fromPosition": 1, "toPosition": 5, "retentionDays": 30}
    # The cutoff is the prune's own clock less the retention (the database's, on PostgreSQL).
    assert timedelta(0) <= cutoff - (started - timedelta(days=30)) < timedelta(minutes=1)
    # The tenant's stream says so too, for an edge app to act on: one audit.pruned event with
    # the same facts, committed with the prune.
    [event] = await pruned_events(client, owner, tenant_id)
    Draft202012Validator(BUILTIN_EVENT_TYPES["audit.pruned"].schema).validate(event["data"])
    assert event["data"] == {
        "tenantId": tenant_id,
        "count": 5,
        "fromPosition": 1,
        "toPosition": 5,
        "cutoff": cutoff.isoformat(),
        "retentionDays": 30,
    }
    assert (event["actorKind"], event["actorId"], event["environment"]) == (
        "system",
        "worker:prune",
        "LIVE",
    )
    assert sorted(e["position"] for e in after[1:]) == positions[5:]
    check = await verify(client, owner, tenant_id)
    assert check == {"ok": True, "checked": len(after), "brokenAt": None, "reason": None}
    # Asking for the pruned stretch checks nothing and finds nothing wrong.
    assert (await verify(client, owner, tenant_id, to=5))["ok"] is True
    # Nothing else has expired: a second pass leaves the tenant alone, and says nothing.
    assert await prune(server.settings, tenant_id) == []
    assert len(await pruned_events(client, owner, tenant_id)) == 1


async def test_deleting_a_retained_entry_by_hand_still_breaks_the_chain(
    client: GraphQLClient, server: Server
) -> None:
    owner = await client.sign_up()
    tenant_id = await tenant_with_history(server.settings, owner, days_ago=40)
    (await set_retention(client, owner, tenant_id, 30)).ok()
    await client.add_member(owner, tenant_id, "viewer")
    assert len(await prune(server.settings, tenant_id)) == 1

    # The first retained entry, the one the anchor vouches for, removed behind coregraph's back.
    await tamper(
        server, "DELETE FROM audit_entries WHERE chain_id = :t AND position = 6", t=tenant_id
    )
    check = await verify(client, owner, tenant_id)
    assert check["ok"] is False
    assert check["brokenAt"] == {"id": None, "position": 6}


async def test_a_tenant_without_retention_keeps_everything(
    client: GraphQLClient, server: Server
) -> None:
    owner = await client.sign_up()
    tenant_id = await tenant_with_history(server.settings, owner, days_ago=4000)
    before = await audit_log(client, owner, tenant_id)
    assert before["auditRetentionDays"] is None

    assert await prune(server.settings, tenant_id) == []

    after = await audit_log(client, owner, tenant_id)
    assert after["auditLog"]["nodes"] == before["auditLog"]["nodes"]
    assert (await verify(client, owner, tenant_id))["ok"] is True


async def test_entries_younger_than_the_retention_stay(
    client: GraphQLClient, server: Server
) -> None:
    owner = await client.sign_up()
    tenant_id = await tenant_with_history(server.settings, owner, days_ago=20)
    (await set_retention(client, owner, tenant_id, 30)).ok()

    assert await prune(server.settings, tenant_id) == []
    assert len((await audit_log(client, owner, tenant_id))["auditLog"]["nodes"]) == 6


async def test_update_tenant_sets_retention_within_bounds_with_tenant_manage(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    for days in (6, 3651, -1, 0):
        r = await set_retention(client, owner, tenant_id, days)
        assert r.codes == ["BAD_USER_INPUT"], days
        assert r.errors[0]["extensions"]["field"] == "auditRetentionDays"
    assert (await audit_log(client, owner, tenant_id))["auditRetentionDays"] is None

    r = await set_retention(client, owner, tenant_id, 7)
    assert r.ok()["updateTenant"]["tenant"]["auditRetentionDays"] == 7
    # Left out, it stays as it is; null keeps entries forever again.
    r = await client.execute(
        UPDATE, {"input": {"name": "Renamed"}}, actor=owner, tenant_id=tenant_id
    )
    assert r.ok()["updateTenant"]["tenant"]["auditRetentionDays"] == 7
    r = await set_retention(client, owner, tenant_id, None)
    assert r.ok()["updateTenant"]["tenant"]["auditRetentionDays"] is None

    # Audited and evented like any other change to the tenant.
    changes = [
        e["changes"]
        for e in (await audit_log(client, owner, tenant_id))["auditLog"]["nodes"]
        if e["action"] == "tenant.updated"
    ]
    assert changes[0] == {
        "before": {"auditRetentionDays": 7},
        "after": {"auditRetentionDays": None},
    }
    r = await client.execute(
        '{ events(types: ["tenant.updated"], first: 10) { nodes { data } } }',
        actor=owner,
        tenant_id=tenant_id,
    )
    data = [e["data"] for e in r.ok()["events"]["nodes"]]
    assert data[0] == {
        "tenantId": tenant_id,
        "before": {"auditRetentionDays": None},
        "after": {"auditRetentionDays": 7},
    }

    admin = await client.add_member(owner, tenant_id, "member")
    r = await set_retention(client, admin, tenant_id, 30)
    assert r.codes == ["FORBIDDEN"]


@pytest.fixture
def postgres_only(server: Server) -> None:
    if server.settings.is_sqlite:
        pytest.skip("the append-only trigger is PostgreSQL's; run with COREGRAPH_DATABASE_URL")


DELETE_AT = "DELETE FROM audit_entries WHERE chain_id = :t AND position = :p"


@pytest.mark.usefixtures("postgres_only")
async def test_postgresql_lets_only_the_worker_delete_only_expired_entries(
    client: GraphQLClient, server: Server
) -> None:
    owner = await client.sign_up()
    tenant_id = await tenant_with_history(server.settings, owner, days_ago=40)
    (await set_retention(client, owner, tenant_id, 30)).ok()
    young = 5 + 1  # the entry that set the retention

    # The application's role cannot delete, however old the entry.
    app = db.create_engine(server.settings)
    try:
        async with app.connect() as conn:
            await db.scope_transaction(conn, tenant_ids=[tenant_id])
            with pytest.raises(DBAPIError, match="audit_entries is append-only"):
                await conn.execute(text(DELETE_AT), {"t": tenant_id, "p": 1})
            await conn.rollback()
    finally:
        await app.dispose()
    # Nor the tables' owner.
    with pytest.raises(DBAPIError, match="audit_entries is append-only"):
        async with owner_connection(server) as conn:
            await conn.execute(text(DELETE_AT), {"t": tenant_id, "p": 1})

    async with worker_engine(server.settings) as engine, engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        # Not an entry younger than the tenant's retention, even as the worker...
        with pytest.raises(DBAPIError, match="audit_entries is append-only"):
            await conn.execute(text(DELETE_AT), {"t": tenant_id, "p": young})
        await conn.rollback()
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        # ...nor an update of an expired one (it holds no such privilege to begin with);
        # deleting the expired one is what it may do.
        with pytest.raises(DBAPIError, match="permission denied for table audit_entries"):
            await conn.execute(
                text("UPDATE audit_entries SET action = 'x' WHERE chain_id = :t AND position = 1"),
                {"t": tenant_id},
            )
        await conn.rollback()
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        deleted = await conn.execute(text(DELETE_AT), {"t": tenant_id, "p": 1})
        assert deleted.rowcount == 1
        await conn.rollback()
    assert (await verify(client, owner, tenant_id))["ok"] is True


async def test_the_worker_prunes_on_its_interval(tmp_path: Path) -> None:
    """`coregraph serve` on the embedded defaults (here forced) runs pruning next to the relay,
    on a database of its own so no other relay shares its chains."""
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    settings = make_settings(url, run_relay="true", audit_prune_interval_seconds=0.2)
    try:
        with running_server(settings) as srv:
            import httpx

            async with httpx.AsyncClient(timeout=30) as http:
                client = GraphQLClient(http, srv.url)
                owner = await client.sign_up()
                tenant_id = await tenant_with_history(settings, owner, days_ago=40)
                (await set_retention(client, owner, tenant_id, 30)).ok()
                async with asyncio.timeout(WAIT):
                    while True:
                        log = await audit_log(client, owner, tenant_id)
                        actions = [e["action"] for e in log["auditLog"]["nodes"]]
                        if actions[0] == "audit.pruned":
                            break
                        await asyncio.sleep(0.1)
                assert actions == ["audit.pruned", "tenant.updated"]
                assert (await verify(client, owner, tenant_id))["ok"] is True
    finally:
        if name and base:
            await drop_test_database(base, name)
