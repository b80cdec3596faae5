"""The one write path: a change, its audit entries and its domain events commit together, and
what must follow a commit (``on_commit``) runs only after one. The CLI and external-login
provisioning write through this same class, so they get the same guarantees."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.auth.principal import ANONYMOUS
from coregraph.errors import BadUserInput
from coregraph.models import AuditEntry, Event, User
from coregraph.request import RequestMeta
from coregraph.services import identity, tenancy
from coregraph.services.uow import UnitOfWork
from tests.support import PASSWORD, Server, unique

META = RequestMeta(user_agent="coregraph-tests")


@pytest.fixture
async def engine(server: Server) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(server.settings)
    yield engine
    await engine.dispose()


async def _user_count(engine: AsyncEngine, email: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(User.email == email)) or 0)


async def test_a_committed_change_runs_its_hooks_in_order_after_the_commit(
    engine: AsyncEngine, server: Server
) -> None:
    email = f"{unique('uow')}@example.com"
    seen: list[tuple[str, int]] = []

    async def async_hook() -> None:
        # Runs after the commit: another connection already sees the user.
        seen.append(("async", await _user_count(engine, email)))

    async with UnitOfWork(engine, ANONYMOUS, META) as uow:
        user = await identity.create_user(
            uow, server.settings, email=email, password=PASSWORD, display_name=None
        )
        tenant = await tenancy.create_tenant(
            uow, name="Hooks", slug=unique("hooks-"), owner_id=user.id
        )
        # create_tenant emitted tenant.created (sequence 1); this one follows it.
        event = uow.emit("test.hooked", tenant_id=tenant.id, data={"ownerId": user.id})
        uow.on_commit(lambda: seen.append(("plain", len(uow.events))))
        uow.on_commit(async_hook)
        assert seen == []  # nothing runs before the commit
    assert seen == [("plain", 2), ("async", 1)]
    assert uow.events[-1] == event and event.sequence == 2
    # Entries outside any tenant are invisible to the application's role on PostgreSQL (the
    # user reads them through the API); the table's owner sees them.
    owner = db.create_engine(server.settings, as_owner=True)
    async with owner.connect() as conn:
        actions = (
            await conn.execute(select(AuditEntry.action).where(AuditEntry.target_id == user.id))
        ).scalars()
        assert list(actions) == ["user.signed_up"]
        chain = (
            await conn.execute(
                select(AuditEntry.action, AuditEntry.position)
                .where(AuditEntry.tenant_id == tenant.id)
                .order_by(AuditEntry.position)
            )
        ).all()
        assert [tuple(row) for row in chain] == [("tenant.created", 1), ("member.added", 2)]
        stored = (
            await conn.execute(
                select(Event.type, Event.sequence, Event.data).where(Event.id == event.id)
            )
        ).one()
        assert tuple(stored) == ("test.hooked", 2, {"ownerId": user.id})
    await owner.dispose()


async def test_a_rolled_back_change_leaves_no_trace_and_runs_no_hook(
    engine: AsyncEngine, server: Server
) -> None:
    email = f"{unique('uow')}@example.com"
    ran: list[str] = []
    with pytest.raises(BadUserInput):
        async with UnitOfWork(engine, ANONYMOUS, META) as uow:
            user = await identity.create_user(
                uow, server.settings, email=email, password=PASSWORD, display_name=None
            )
            tenant = await tenancy.create_tenant(
                uow, name="Gone", slug=unique("gone-"), owner_id=user.id
            )
            uow.emit("test.rolled_back", tenant_id=tenant.id)
            uow.on_commit(lambda: ran.append("hook"))
            raise BadUserInput("a later step refused the input")
    assert ran == []
    assert await _user_count(engine, email) == 0


async def test_a_failing_hook_does_not_undo_the_commit_or_stop_the_next_hook(
    engine: AsyncEngine, server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    email = f"{unique('uow')}@example.com"
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("follow-up failed")

    async with UnitOfWork(engine, ANONYMOUS, META) as uow:
        await identity.create_user(
            uow, server.settings, email=email, password=PASSWORD, display_name=None
        )
        uow.on_commit(broken)
        uow.on_commit(lambda: ran.append("next"))
    assert ran == ["next"]
    assert await _user_count(engine, email) == 1
    assert any(r.message == "after-commit hook failed" and r.exc_info for r in caplog.records)
