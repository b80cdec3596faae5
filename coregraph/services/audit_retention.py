"""Audit retention: a tenant's entries older than its ``audit_retention_days`` are pruned,
oldest first, without losing the chain's tamper evidence.

A prune deletes a run of the chain's oldest entries and, in the same transaction, records the
last deleted entry's position and hash in the chain's head (``audit_pruned_position`` /
``audit_pruned_hash``): verification starts at the first retained entry, anchored on that hash
(``coregraph.services.audit``). So the chain still proves that nothing after the anchor was
removed or changed, and an entry deleted any other way still breaks it. A prune changes
production truth, so like any other change it is written through a unit of work with an
``audit.pruned`` entry in the tenant's chain and an ``audit.pruned`` event in its stream (what
was removed: count, position range and the cutoff time), committed with the deletion or not at
all. Only entries the outbox relay has published are pruned.

On PostgreSQL this runs as ``COREGRAPH_DATABASE_WORKER_ROLE``, the only role the append-only
trigger lets delete, and only entries older than the tenant's retention (migration 0010); the
transaction is scoped to the one tenant it prunes, so the tenant wall holds for its writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph.auth.principal import system_principal
from coregraph.models import AuditEntry, RelayPosition, StreamHead, Tenant
from coregraph.models.base import utcnow
from coregraph.request import RequestMeta
from coregraph.services.uow import UnitOfWork

log = logging.getLogger("coregraph.audit_retention")

MIN_RETENTION_DAYS = 7
MAX_RETENTION_DAYS = 3650
ACTOR = "worker:prune"

_HEADS: Table = StreamHead.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditEntry.__table__  # type: ignore[assignment]
_TENANTS: Table = Tenant.__table__  # type: ignore[assignment]
_POSITIONS: Table = RelayPosition.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Pruned:
    """One prune of one tenant's chain: entries ``first_position``..``last_position``."""

    tenant_id: str
    count: int
    first_position: int
    last_position: int


async def prune_tenant(
    engine: AsyncEngine, tenant_id: str, retention_days: int, *, batch: int = 500
) -> Pruned | None:
    """Delete up to ``batch`` of ``tenant_id``'s oldest entries that are older than
    ``retention_days``, in one transaction with the new anchor and the ``audit.pruned`` entry.
    Only a run from the chain's start is taken: it stops at the first entry still retained, so
    the chain keeps one unbroken stretch. None when nothing was old enough."""
    meta = RequestMeta(user_agent="coregraph worker (audit retention)")
    async with UnitOfWork(engine, system_principal(ACTOR), meta) as uow:
        await uow.allow_tenant(tenant_id)
        session = uow.session
        # The head row is held to the commit: two workers never prune one chain at once, and
        # appends wait for this short transaction.
        head = (
            await session.execute(
                select(_HEADS.c.audit_pruned_position)
                .where(_HEADS.c.chain_id == tenant_id)
                .with_for_update()
            )
        ).first()
        if head is None:
            return None
        cutoff = await _now(uow) - timedelta(days=retention_days)
        # Never past what the relay has published: it resumes from its own position, and a
        # subscriber replaying from storage would find the rows it missed gone.
        published = (
            select(_POSITIONS.c.audit_published)
            .where(_POSITIONS.c.chain_id == tenant_id)
            .scalar_subquery()
        )
        candidates = (
            await session.execute(
                select(_AUDIT.c.position, _AUDIT.c.hash, _AUDIT.c.created_at)
                .where(
                    _AUDIT.c.chain_id == tenant_id,
                    _AUDIT.c.position > head.audit_pruned_position,
                    _AUDIT.c.position <= func.coalesce(published, 0),
                )
                .order_by(_AUDIT.c.position)
                .limit(batch)
            )
        ).all()
        expired = []
        for row in candidates:
            if row.created_at >= cutoff:
                break
            expired.append(row)
        if not expired:
            return None
        first, last = expired[0], expired[-1]
        await session.execute(
            delete(_AUDIT).where(
                _AUDIT.c.chain_id == tenant_id,
                _AUDIT.c.position >= first.position,
                _AUDIT.c.position <= last.position,
            )
        )
        await session.execute(
            update(_HEADS)
            .where(_HEADS.c.chain_id == tenant_id)
            .values(audit_pruned_position=last.position, audit_pruned_hash=last.hash)
        )
        pruned = {
            "count": len(expired),
            "fromPosition": int(first.position),
            "toPosition": int(last.position),
            "cutoff": cutoff.isoformat(),
            "retentionDays": retention_days,
        }
        uow.record(
            "audit.pruned",
            tenant_id=tenant_id,
            target_type="Tenant",
            target_id=tenant_id,
            after=pruned,
        )
        # In the live environment, where a tenant's own changes (tenant.updated) are stated.
        uow.emit("audit.pruned", tenant_id=tenant_id, data={"tenantId": tenant_id, **pruned})
    return Pruned(tenant_id, len(expired), int(first.position), int(last.position))


async def _now(uow: UnitOfWork) -> datetime:
    """The transaction's clock on PostgreSQL: the append-only trigger measures age by the
    same ``now()``, so the two never disagree about an entry at the boundary."""
    if uow.engine.dialect.name == "postgresql":
        value = await uow.session.scalar(select(func.now()))
        assert value is not None
        return value
    return utcnow()


async def prune_expired(engine: AsyncEngine, *, batch: int = 500) -> list[Pruned]:
    """One pass over every tenant with a retention: each one's expired entries, a batch per
    transaction, until none is left."""
    async with engine.connect() as conn:
        tenants = (
            await conn.execute(
                select(_TENANTS.c.id, _TENANTS.c.audit_retention_days)
                .where(_TENANTS.c.audit_retention_days.is_not(None))
                .order_by(_TENANTS.c.id)
            )
        ).all()
    done: list[Pruned] = []
    for tenant in tenants:
        try:
            while True:
                pruned = await prune_tenant(
                    engine, tenant.id, int(tenant.audit_retention_days), batch=batch
                )
                if pruned is None:
                    break
                done.append(pruned)
                if pruned.count < batch:
                    break
        except Exception:
            # One tenant's failure (rolled back whole) must not keep the others' entries.
            log.exception("audit pruning failed for a tenant", extra={"tenant_id": tenant.id})
    return done
