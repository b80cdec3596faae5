"""Quotas: how much of a meter a tenant has used against its plan's limits, enforcement of the
hard ones, and the threshold events of all of them.

What "used" means per meter (``current_value``):

- ``seats``: the tenant's members now. An invitation reserves a seat from the moment it is
  sent until it is accepted, revoked or expires, so inviting counts the pending invitations
  too (a tenant cannot hand out more links than it has seats); accepting counts the members
  only (its seat was reserved when it was sent; it is refused only when the members alone are
  at the limit, e.g. after a smaller plan was assigned).
- ``storage.bytes``: the files domain's used bytes (``services.files.used_bytes``: ready
  files, reserved upload URLs, deleted files not purged yet): what the files quota counts.
- ``events.emitted``, ``webhooks.delivered``, ``api.requests`` and the tenant's own meters:
  the period's aggregate of the usage records in SQL (``services.usage.usage_statement``),
  in the environment asked about.

``seats`` and ``storage.bytes`` are the tenant's whole (members and stored bytes are shared by
both environments, as the files quota already was): their records and thresholds are always
in the live environment. The others count in the environment they happen in.

The api.requests seam: its counter (``services.api_requests``) flushes ``api.requests``
through the usage ingest, so the records hold all but the last flush interval; ``quota`` and
``current_value`` take its ``PendingUsage`` (the counts not recorded yet) and add it to the
records' aggregate.
``enforce`` takes the quota lock and reads the aggregate: too dear for every request, so a
request path should check a cached ``quota()`` and leave ``enforce`` to actions that must be
exact.

Every check of a hard limit holds ``billing.lock_quota`` (tenant and meter) until the
transaction ends, so concurrent requests for the last units are served one after another.
Thresholds (80 and 100 percent of any limit, hard or soft) are announced once per period by
inserting into ``usage_thresholds``, whose unique key ignores the second insert (``INSERT ...
ON CONFLICT DO NOTHING`` / ``INSERT OR IGNORE``: the transaction stays usable), and the event
``usage.threshold_reached`` is emitted in the same unit of work.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from coregraph import db
from coregraph.errors import NotFound, QuotaExceeded
from coregraph.models import Invitation, Membership, Meter, UsageRecord, UsageThreshold
from coregraph.models.base import Environment, utcnow
from coregraph.services import billing, files, usage
from coregraph.services.billing import CurrentPlan, LimitSpec, Period
from coregraph.services.uow import UnitOfWork

SEATS = "seats"
STORAGE_BYTES = "storage.bytes"
# Meters counted over the whole tenant (both environments), recorded in the live one.
TENANT_WIDE = frozenset({SEATS, STORAGE_BYTES})
# Meters whose value is the state now, not a period's aggregate of records.
GAUGES = TENANT_WIDE

# How long one process trusts what it read of a tenant's limited meters (``limited_meters``).
LIMITED_METERS_SECONDS = 5.0
_LIMITED_CACHE_SIZE = 10_000
_LIMITED: OrderedDict[tuple[str, str | None], tuple[float, frozenset[str]]] = OrderedDict()

# (tenant id, environment) -> usage counted but not yet in usage_records (api.requests).
PendingUsage = Callable[[str, Environment], Awaitable[Decimal]]


def environment_of(meter: str, environment: Environment) -> Environment:
    """The environment ``meter`` is counted in: the live one for the tenant-wide meters."""
    return Environment.LIVE if meter in TENANT_WIDE else environment


def number(value: Decimal) -> int | str:
    """A quantity in an error's extensions or an event's data: an integer when whole (bytes,
    seats), else its exact decimal digits as a string, never a float."""
    if value == value.to_integral_value():
        return int(value)
    return format(value.normalize(), "f")


async def member_count(session: AsyncSession, tenant_id: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Membership).where(Membership.tenant_id == tenant_id)
    )
    return int(count or 0)


async def pending_invitations(session: AsyncSession, tenant_id: str) -> int:
    """Invitations that still reserve a seat: not accepted, not revoked, not expired."""
    count = await session.scalar(
        select(func.count())
        .select_from(Invitation)
        .where(
            Invitation.tenant_id == tenant_id,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > datetime.now(UTC),
        )
    )
    return int(count or 0)


async def _meter_spec(session: AsyncSession, tenant_id: str, meter: str) -> usage.MeterSpec | None:
    builtin = usage.BUILTIN_METERS.get(meter)
    if builtin is not None:
        return builtin
    row = await session.scalar(
        select(Meter).where(Meter.tenant_id == tenant_id, Meter.key == meter)
    )
    return usage.MeterSpec.of(row) if row is not None else None


async def current_value(
    session: AsyncSession,
    tenant_id: str,
    environment: Environment,
    meter: str,
    *,
    period: Period = Period.MONTH,
    at: datetime | None = None,
    count_invitations: bool = False,
    pending: PendingUsage | None = None,
) -> Decimal:
    """How much of ``meter`` the tenant uses: now (gauges), or in the ``period`` holding
    ``at`` (the others; a meter the tenant has not created has used nothing), plus what
    ``pending`` counted and has not recorded yet."""
    if meter == SEATS:
        seats = await member_count(session, tenant_id)
        if count_invitations:
            seats += await pending_invitations(session, tenant_id)
        return Decimal(seats)
    if meter == STORAGE_BYTES:
        return Decimal(await files.used_bytes(session, tenant_id))
    spec = await _meter_spec(session, tenant_id, meter)
    value = Decimal(0)
    if spec is not None:
        start, end = billing.period_bounds(period, at)
        dialect = session.get_bind().dialect.name
        records = select(UsageRecord).where(
            UsageRecord.tenant_id == tenant_id, UsageRecord.environment == environment.value
        )
        statement = usage.usage_statement(
            records, spec, start=start, end=end, granularity=None, group_by=(), dialect=dialect
        )
        points = usage.usage_points(
            list(await session.execute(statement)),
            spec,
            granularity=None,
            group_by=(),
            dialect=dialect,
        )
        if points:
            value = points[0].value
    if pending is not None:
        value += await pending(tenant_id, environment)
    return value


@dataclass(frozen=True, slots=True)
class Quota:
    """A meter of a tenant against one of its plan's limits (``limit`` None: unlimited)."""

    meter: str
    plan: CurrentPlan
    limit: LimitSpec | None
    used: Decimal

    @property
    def remaining(self) -> Decimal | None:
        if self.limit is None:
            return None
        return max(self.limit.value - self.used, Decimal(0))


async def limited_meters(
    session: AsyncSession, tenant_id: str, default_plan: str | None
) -> frozenset[str]:
    """The meters the tenant's plan limits, read at most once per ``LIMITED_METERS_SECONDS``
    per tenant and process: for the high-volume feeds (events.emitted, webhooks.delivered),
    which check their thresholds only when their meter is limited. After a plan change a
    process may skip the check for that long; the next write after it announces whatever the
    period's sum has reached, so a threshold is late, never lost."""
    cached = remembered_limited_meters(tenant_id, default_plan)
    if cached is not None:
        return cached
    key = (tenant_id, default_plan)
    now = time.monotonic()
    plan = await billing.current_plan(session, tenant_id, default_plan)
    meters = frozenset(limit.meter for limit in plan.spec.limits) if plan.spec else frozenset()
    _LIMITED[key] = (now + LIMITED_METERS_SECONDS, meters)
    _LIMITED.move_to_end(key)
    while len(_LIMITED) > _LIMITED_CACHE_SIZE:
        _LIMITED.popitem(last=False)
    return meters


def remembered_limited_meters(tenant_id: str, default_plan: str | None) -> frozenset[str] | None:
    """``limited_meters`` as this process read it less than ``LIMITED_METERS_SECONDS`` ago,
    or None: for a caller that would otherwise open a session only to be told."""
    key = (tenant_id, default_plan)
    cached = _LIMITED.get(key)
    if cached is None or cached[0] <= time.monotonic():
        return None
    _LIMITED.move_to_end(key)
    return cached[1]


def _limits(plan: CurrentPlan, meter: str) -> list[LimitSpec]:
    return [limit for limit in plan.spec.limits if limit.meter == meter] if plan.spec else []


async def quota(
    session: AsyncSession,
    tenant_id: str,
    environment: Environment,
    meter: str,
    *,
    default_plan: str | None,
    pending: PendingUsage | None = None,
) -> Quota:
    """The tenant's standing on ``meter`` (``quota(meter)``): of several limits (a day's and a
    month's), the one with the least remaining. A meter that is neither built in, nor the
    tenant's, nor limited by its plan is NOT_FOUND. Seats count the pending invitations
    too: they are reserved, an invitation more would be refused. ``pending``: the meter's
    counts not recorded yet (``api.requests``' counter)."""
    plan = await billing.current_plan(session, tenant_id, default_plan)
    limits = _limits(plan, meter)
    environment = environment_of(meter, environment)
    reserved = meter == SEATS
    if not limits:
        if meter not in GAUGES and await _meter_spec(session, tenant_id, meter) is None:
            raise NotFound("meter not found", field="meter")
        used = await current_value(
            session, tenant_id, environment, meter, count_invitations=reserved, pending=pending
        )
        return Quota(meter, plan, None, used)
    answers = [
        Quota(
            meter,
            plan,
            limit,
            await current_value(
                session,
                tenant_id,
                environment,
                meter,
                period=limit.period,
                count_invitations=reserved,
                pending=pending,
            ),
        )
        for limit in limits
    ]
    return min(answers, key=lambda q: q.remaining or Decimal(0))


async def enforce(
    uow: UnitOfWork,
    tenant_id: str,
    meter: str,
    adding: Decimal | int,
    *,
    default_plan: str | None,
    environment: Environment | None = None,
    count_invitations: bool = False,
) -> CurrentPlan:
    """Refuse (QUOTA_EXCEEDED with meter, limit, current, period) an action that would take
    ``meter`` past a hard limit of the tenant's plan by ``adding``; soft limits never refuse.
    The quota lock is held until the transaction ends, so whoever checks next sees this
    action's effect. Returns the plan, for ``after_change``."""
    await billing.lock_quota(uow, tenant_id, meter)
    plan = await billing.current_plan(uow.session, tenant_id, default_plan)
    env = environment_of(meter, environment or uow.principal.environment)
    for limit in _limits(plan, meter):
        if not limit.hard:
            continue
        current = await current_value(
            uow.session,
            tenant_id,
            env,
            meter,
            period=limit.period,
            count_invitations=count_invitations,
        )
        if current + Decimal(adding) > limit.value:
            raise QuotaExceeded(
                f"{meter}: the plan's limit of {number(limit.value)} per"
                f" {limit.period.value.lower()} would be exceeded ({number(current)} used,"
                f" {number(Decimal(adding))} more asked)",
                meter=meter,
                limit=number(limit.value),
                current=number(current),
                period=limit.period.value,
            )
    return plan


def _insert_ignoring_duplicates(dialect: str, values: dict[str, Any]) -> Any:
    statement = db.dialect_insert(dialect, UsageThreshold).values(**values)
    if dialect == "postgresql":
        return statement.on_conflict_do_nothing()
    return statement.prefix_with("OR IGNORE")


async def after_change(
    uow: UnitOfWork,
    tenant_id: str,
    environment: Environment,
    meter: str,
    new_value: Decimal | None = None,
    *,
    default_plan: str | None = None,
    plan: CurrentPlan | None = None,
    at: datetime | None = None,
) -> None:
    """Announce the thresholds (80 and 100 percent) of every limit on ``meter`` that its value
    reached in the period holding ``at`` (now by default), each once per period, with a
    ``usage.threshold_reached`` event in this unit of work. ``new_value``: the gauge's value
    after the change; None: each limit's period aggregate is read."""
    if plan is None:
        plan = await billing.current_plan(uow.session, tenant_id, default_plan)
    limits = _limits(plan, meter)
    if not limits:
        return
    environment = environment_of(meter, environment)
    dialect = uow.engine.dialect.name
    if new_value is None:
        # Concurrent writers of the meter read its sum one after another, each after the
        # previous one committed: else each could see only its own records and every one of
        # them miss the threshold they crossed together.
        await billing.lock_quota(uow, tenant_id, meter)
    for limit in limits:
        value = new_value
        if value is None:
            value = await current_value(
                uow.session, tenant_id, environment, meter, period=limit.period, at=at
            )
        if value <= 0:
            continue
        start, _end = billing.period_bounds(limit.period, at)
        for percent in billing.THRESHOLD_PERCENTS:
            if value * 100 < limit.value * percent:
                continue
            inserted = await uow.session.execute(
                _insert_ignoring_duplicates(
                    dialect,
                    {
                        "tenant_id": tenant_id,
                        "environment": environment.value,
                        "meter": meter,
                        "period_start": start,
                        "percent": percent,
                        "reached_at": utcnow(),
                    },
                )
            )
            if inserted.rowcount != 1:  # type: ignore[attr-defined]
                continue  # announced already in this period
            uow.emit(
                "usage.threshold_reached",
                tenant_id=tenant_id,
                environment=environment,
                data={
                    "meter": meter,
                    "percent": percent,
                    "limit": number(limit.value),
                    "value": number(value),
                    "period": limit.period.value,
                    "periodStart": start.isoformat(),
                    "hard": limit.hard,
                },
            )


async def record_gauge(
    uow: UnitOfWork,
    tenant_id: str,
    meter: str,
    value: Decimal,
    *,
    default_plan: str | None = None,
    plan: CurrentPlan | None = None,
    thresholds: bool = True,
) -> None:
    """Record a tenant-wide gauge's value after a change (a usage record in the live
    environment, no event of its own), then announce its thresholds."""
    await uow.insert_usage([usage.usage_row(tenant_id, Environment.LIVE, meter, value)])
    if thresholds:
        await after_change(
            uow, tenant_id, Environment.LIVE, meter, value, default_plan=default_plan, plan=plan
        )


async def seats_changed(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    default_plan: str | None = None,
    plan: CurrentPlan | None = None,
    thresholds: bool = True,
) -> None:
    """After a membership change: the ``seats`` record (members now) and its thresholds."""
    await uow.session.flush()
    seats = Decimal(await member_count(uow.session, tenant_id))
    await record_gauge(
        uow, tenant_id, SEATS, seats, default_plan=default_plan, plan=plan, thresholds=thresholds
    )


async def storage_changed(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    default_plan: str | None = None,
    thresholds: bool = True,
) -> None:
    """After an upload, a reservation, a deletion or a purge: the ``storage.bytes`` record
    (the tenant's used bytes now) and its thresholds."""
    await uow.session.flush()
    used = Decimal(await files.used_bytes(uow.session, tenant_id))
    await record_gauge(
        uow, tenant_id, STORAGE_BYTES, used, default_plan=default_plan, thresholds=thresholds
    )


async def usage_recorded(
    uow: UnitOfWork,
    tenant_id: str,
    recorded: Iterable[tuple[str, datetime]],
    *,
    default_plan: str | None,
) -> None:
    """After usage was recorded (``(meter, occurredAt)`` of each new record): the thresholds
    of every limited meter, in each period the records landed in (a late record announces
    its own period's). Nothing is refused: usage that happened is never lost."""
    plan = await billing.current_plan(uow.session, tenant_id, default_plan)
    if plan.spec is None:
        return
    limited = {limit.meter for limit in plan.spec.limits}
    moments: dict[tuple[str, datetime], datetime] = {}
    for meter, occurred_at in recorded:
        if meter not in limited:
            continue
        for limit in _limits(plan, meter):
            start, _end = billing.period_bounds(limit.period, occurred_at)
            moments.setdefault((meter, start), occurred_at)
    environment = uow.principal.environment
    for (meter, _start), occurred_at in sorted(moments.items()):
        await after_change(uow, tenant_id, environment, meter, plan=plan, at=occurred_at)
