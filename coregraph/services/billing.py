"""Plans and entitlements: the catalog, a tenant's plan, and the quota lock.

A plan says what a tenant may do (features), how much (limits per meter and period, hard or
soft) and what it costs (prices: a flat fee, per unit, graduated tiers), plus its operation rate
limits. Plans are defined through the API by the operator's billing managers (the tenant named
by ``COREGRAPH_BILLING_OPERATOR_TENANT``) or loaded from a config file at start
(``COREGRAPH_PLANS_FILE``, JSON or YAML: ``{"plans": [...]}``), both through ``PlanSpec``, so a
plan is checked the same way wherever it comes from. A tenant with no plan of its own is on the
default plan (``COREGRAPH_DEFAULT_PLAN``) or, with none configured, unlimited and without
features.

Amounts are decimals in the currency's minor units (cents for USD): a unit price may be a
fraction of a minor unit (0.05 cents a request); line totals are rounded to whole minor units
(``services.invoices``). Never floats.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from coregraph import ids
from coregraph.errors import BadUserInput, NotFound
from coregraph.models import Plan, Tenant, TenantPlan, TenantPlanPeriod
from coregraph.models.base import utcnow
from coregraph.services.uow import UnitOfWork

_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_FEATURE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_METER_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
MAX_FEATURES = 100
MAX_LIMITS = 50
MAX_PRICES = 50
MAX_TIERS = 20
# Amounts and quantities stay within this magnitude (minor units / meter units).
MAX_AMOUNT = Decimal(10) ** 15
THRESHOLD_PERCENTS = (80, 100)


class Period(enum.StrEnum):
    DAY = "DAY"
    MONTH = "MONTH"


class PriceKind(enum.StrEnum):
    FLAT = "FLAT"
    PER_UNIT = "PER_UNIT"
    GRADUATED = "GRADUATED"


def _amount(value: Decimal, what: str) -> Decimal:
    if not value.is_finite() or value < 0 or value > MAX_AMOUNT:
        raise ValueError(f"{what} must be between 0 and {MAX_AMOUNT}")
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError(f"{what} has more than 6 digits after the point")
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LimitSpec(_Spec):
    """At most ``value`` of ``meter`` per ``period``. A hard limit refuses the action that would
    pass it (``QUOTA_EXCEEDED``); a soft one only warns (threshold events)."""

    meter: str
    value: Decimal
    period: Period = Period.MONTH
    hard: bool = True

    @field_validator("meter")
    @classmethod
    def _meter(cls, value: str) -> str:
        if len(value) > 120 or not _METER_RE.match(value):
            raise ValueError("not a meter key (lowercase dotted segments, e.g. 'api.requests')")
        return value

    @field_validator("value")
    @classmethod
    def _value(cls, value: Decimal) -> Decimal:
        return _amount(value, "value")


class TierSpec(_Spec):
    """Units up to ``upTo`` (inclusive; None for the last tier, which has no end) cost
    ``unitAmount`` each, plus ``flatAmount`` once when usage reaches the tier."""

    up_to: Decimal | None = Field(default=None, alias="upTo")
    unit_amount: Decimal = Field(default=Decimal(0), alias="unitAmount")
    flat_amount: Decimal = Field(default=Decimal(0), alias="flatAmount")

    @field_validator("up_to", "unit_amount", "flat_amount")
    @classmethod
    def _amounts(cls, value: Decimal | None) -> Decimal | None:
        return None if value is None else _amount(value, "amount")


class PriceSpec(_Spec):
    kind: PriceKind
    meter: str | None = None
    # FLAT: the fee per period, in minor units.
    amount: Decimal | None = None
    # PER_UNIT: the price of one unit of ``meter``, in minor units.
    unit_amount: Decimal | None = Field(default=None, alias="unitAmount")
    # GRADUATED: ascending tiers, the last one open-ended.
    tiers: Annotated[list[TierSpec], Field(max_length=MAX_TIERS)] = []
    description: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _shape(self) -> PriceSpec:
        if self.kind is PriceKind.FLAT:
            if self.amount is None or self.meter is not None or self.tiers:
                raise ValueError("a FLAT price has an amount and no meter or tiers")
            _amount(self.amount, "amount")
        elif self.kind is PriceKind.PER_UNIT:
            if self.meter is None or self.unit_amount is None or self.tiers:
                raise ValueError("a PER_UNIT price has a meter and a unitAmount, no tiers")
            _amount(self.unit_amount, "unitAmount")
        else:
            if self.meter is None or not self.tiers or self.amount is not None:
                raise ValueError("a GRADUATED price has a meter and tiers")
            bounds = [t.up_to for t in self.tiers]
            if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
                raise ValueError("only the last tier is open-ended (upTo: null)")
            closed = [b for b in bounds if b is not None]
            if any(b <= a for a, b in itertools.pairwise(closed)) or (closed and closed[0] <= 0):
                raise ValueError("tiers' upTo must be positive and strictly ascending")
        if self.meter is not None and not _METER_RE.match(self.meter):
            raise ValueError("meter: not a meter key")
        return self


class RateLimitSpec(_Spec):
    """Operations a credential may run: per second, per minute, and a cost budget per minute
    (each root field costs 1 unless the operation's cost says more). Each optional."""

    per_second: int | None = Field(default=None, alias="perSecond", ge=1, le=1_000_000)
    per_minute: int | None = Field(default=None, alias="perMinute", ge=1, le=60_000_000)
    cost_per_minute: int | None = Field(default=None, alias="costPerMinute", ge=1, le=10**9)

    def document(self) -> dict[str, int]:
        return self.model_dump(by_alias=True, exclude_none=True)


class PlanSpec(_Spec):
    key: str
    name: str = Field(min_length=1, max_length=200)
    currency: str = "USD"
    self_serve: bool = Field(default=False, alias="selfServe")
    features: Annotated[dict[str, bool], Field(max_length=MAX_FEATURES)] = {}
    limits: Annotated[list[LimitSpec], Field(max_length=MAX_LIMITS)] = []
    prices: Annotated[list[PriceSpec], Field(max_length=MAX_PRICES)] = []
    rate_limits: RateLimitSpec = Field(default_factory=RateLimitSpec, alias="rateLimits")

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not _KEY_RE.match(value):
            raise ValueError("1-64 lowercase letters, digits, '_' or '-', starting with a letter")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not _CURRENCY_RE.match(value):
            raise ValueError("an ISO 4217 code such as 'USD'")
        return value

    @field_validator("features")
    @classmethod
    def _features(cls, value: dict[str, bool]) -> dict[str, bool]:
        for name in value:
            if not _FEATURE_RE.match(name):
                raise ValueError(f"'{name[:70]}' is not a feature name")
        return value

    @model_validator(mode="after")
    def _one_limit_per_meter(self) -> PlanSpec:
        meters = [(limit.meter, limit.period) for limit in self.limits]
        if len(meters) != len(set(meters)):
            raise ValueError("limits: one limit per meter and period")
        return self

    def limit(self, meter: str, period: Period | None = None) -> LimitSpec | None:
        for limit in self.limits:
            if limit.meter == meter and (period is None or limit.period is period):
                return limit
        return None

    @classmethod
    def of(cls, row: Plan) -> PlanSpec:
        return cls.model_validate(
            {
                "key": row.key,
                "name": row.name,
                "currency": row.currency,
                "selfServe": row.self_serve,
                "features": row.features,
                "limits": row.limits,
                "prices": row.prices,
                "rateLimits": row.rate_limits,
            }
        )

    def columns(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json", by_alias=True)
        return {
            "key": self.key,
            "name": self.name,
            "currency": self.currency,
            "self_serve": self.self_serve,
            "features": dumped["features"],
            "limits": dumped["limits"],
            "prices": dumped["prices"],
            "rate_limits": self.rate_limits.document(),
        }


def plan_spec(data: Mapping[str, Any], field: str = "plan") -> PlanSpec:
    """A plan document checked, or BAD_USER_INPUT naming the first wrong path."""
    try:
        return PlanSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise _bad_input(exc, field) from None


def _bad_input(exc: ValidationError, field: str) -> BadUserInput:
    first = exc.errors(include_url=False, include_input=False)[0]
    path = ".".join([field, *(str(p) for p in first["loc"])])
    message = str(first["msg"]).removeprefix("Value error, ")
    return BadUserInput(f"{path}: {message}", field=path)


@dataclass(frozen=True, slots=True)
class CurrentPlan:
    """A tenant's plan as enforcement reads it: ``spec`` None means unlimited, no features."""

    spec: PlanSpec | None
    plan_id: str | None
    assigned: bool  # the tenant's own row, not the default
    row: Plan | None = None

    def feature(self, name: str) -> bool:
        return bool(self.spec and self.spec.features.get(name, False))

    def limit(self, meter: str, period: Period | None = None) -> LimitSpec | None:
        return self.spec.limit(meter, period) if self.spec else None


async def plan_by_key(session: AsyncSession, key: str) -> Plan | None:
    found: Plan | None = await session.scalar(select(Plan).where(Plan.key == key))
    return found


async def current_plan(
    session: AsyncSession, tenant_id: str, default_key: str | None = None
) -> CurrentPlan:
    """The tenant's plan (one query), or the default plan, or none."""
    row = (
        await session.execute(
            select(Plan)
            .join(TenantPlan, TenantPlan.plan_id == Plan.id)
            .where(TenantPlan.tenant_id == tenant_id)
        )
    ).scalar_one_or_none()
    if row is not None:
        return CurrentPlan(PlanSpec.of(row), row.id, assigned=True, row=row)
    if default_key:
        default = await plan_by_key(session, default_key)
        if default is not None:
            return CurrentPlan(PlanSpec.of(default), default.id, assigned=False, row=default)
    return CurrentPlan(None, None, assigned=False)


async def plan_at(
    session: AsyncSession, tenant_id: str, at: datetime, default_key: str | None = None
) -> PlanSpec | None:
    """The plan that prices a period ending at ``at`` (exclusive): the tenant's plan period
    holding the period's last instant, or the default plan when none does, or None (nothing
    to bill) when the tenant was created at or after ``at`` or has no plan in force. A closed
    period is priced by its snapshot of the plan at assignment; the open one by the live plan,
    as enforcement reads it (so a redefinition reprices the months the tenant has been on the
    plan since its last assignment: export a month before redefining its plans)."""
    created = await session.scalar(select(Tenant.created_at).where(Tenant.id == tenant_id))
    if created is None or created >= at:
        return None
    period = await session.scalar(
        select(TenantPlanPeriod)
        .where(
            TenantPlanPeriod.tenant_id == tenant_id,
            TenantPlanPeriod.valid_from < at,
            (TenantPlanPeriod.valid_to.is_(None)) | (TenantPlanPeriod.valid_to >= at),
        )
        .order_by(TenantPlanPeriod.valid_from.desc())
        .limit(1)
    )
    if period is None:
        default = await plan_by_key(session, default_key) if default_key else None
        return PlanSpec.of(default) if default is not None else None
    live = await session.get(Plan, period.plan_id) if period.valid_to is None else None
    return PlanSpec.of(live) if live is not None else PlanSpec.model_validate(period.plan)


async def upsert_plan(session: AsyncSession, spec: PlanSpec) -> tuple[Plan, dict[str, Any] | None]:
    """Insert the plan or replace the one with its key (version + 1); returns the row and its
    document before the change (None when new). Archived plans come back when redefined."""
    row = await plan_by_key(session, spec.key)
    columns = spec.columns()
    now = utcnow()
    if row is None:
        row = Plan(id=ids.new_id("pln"), version=1, created_at=now, updated_at=now, **columns)
        session.add(row)
        await session.flush()
        return row, None
    before = plan_document(row)
    for name, value in columns.items():
        setattr(row, name, value)
    row.version += 1
    row.updated_at = now
    row.archived_at = None
    await session.flush()
    return row, before


def plan_document(row: Plan) -> dict[str, Any]:
    return {
        "key": row.key,
        "name": row.name,
        "currency": row.currency,
        "selfServe": row.self_serve,
        "features": row.features,
        "limits": row.limits,
        "prices": row.prices,
        "rateLimits": row.rate_limits,
    }


async def define_plan(uow: UnitOfWork, operator_tenant_id: str, spec: PlanSpec) -> Plan:
    """Define or replace a plan of the catalog, audited and evented in the operator's tenant."""
    row, before = await upsert_plan(uow.session, spec)
    after = plan_document(row)
    action = "plan.created" if before is None else "plan.updated"
    uow.record(
        action,
        tenant_id=operator_tenant_id,
        target_type="Plan",
        target_id=row.id,
        before=before,
        after=after,
    )
    uow.emit(action, tenant_id=operator_tenant_id, data={"plan": row.key, "version": row.version})
    return row


async def archive_plan(uow: UnitOfWork, operator_tenant_id: str, key: str) -> Plan:
    row = await plan_by_key(uow.session, key)
    if row is None:
        raise NotFound(f"plan: no plan '{key[:64]}'", field="plan")
    if row.archived_at is None:
        row.archived_at = utcnow()
        row.version += 1
        uow.record(
            "plan.archived", tenant_id=operator_tenant_id, target_type="Plan", target_id=row.id
        )
        uow.emit("plan.archived", tenant_id=operator_tenant_id, data={"plan": row.key})
    return row


async def assign_plan(uow: UnitOfWork, tenant_id: str, key: str) -> tuple[Plan, str | None]:
    """Move the tenant to plan ``key`` (audited and evented in that tenant); returns the plan
    and the previous plan's key. Who may assign what is the resolver's check."""
    plan = await plan_by_key(uow.session, key)
    if plan is None or plan.archived_at is not None:
        raise NotFound(f"plan: no assignable plan '{key[:64]}'", field="plan")
    current = await uow.session.get(TenantPlan, tenant_id, with_for_update=True)
    previous = None
    now = utcnow()
    if current is not None:
        previous_row = await uow.session.get(Plan, current.plan_id)
        previous = previous_row.key if previous_row is not None else None
        if current.plan_id == plan.id:
            return plan, previous
        current.plan_id = plan.id
        current.assigned_at = now
        current.assigned_by = uow.principal.actor_id
    else:
        uow.session.add(
            TenantPlan(
                tenant_id=tenant_id,
                plan_id=plan.id,
                assigned_at=now,
                assigned_by=uow.principal.actor_id,
            )
        )
    # The history invoices price by: the open period ends now, the new one starts now.
    await uow.session.execute(
        update(TenantPlanPeriod)
        .where(TenantPlanPeriod.tenant_id == tenant_id, TenantPlanPeriod.valid_to.is_(None))
        .values(valid_to=now)
    )
    uow.session.add(
        TenantPlanPeriod(
            tenant_id=tenant_id,
            plan_id=plan.id,
            plan_version=plan.version,
            plan=plan_document(plan),
            valid_from=now,
            assigned_by=uow.principal.actor_id,
        )
    )
    await uow.session.flush()
    uow.record(
        "plan.assigned",
        tenant_id=tenant_id,
        target_type="Tenant",
        target_id=tenant_id,
        before={"plan": previous},
        after={"plan": plan.key},
    )
    uow.emit(
        "plan.assigned",
        tenant_id=tenant_id,
        data={"plan": plan.key, "previousPlan": previous},
    )
    return plan, previous


def load_plans_document(document: Mapping[str, Any]) -> list[PlanSpec]:
    """The plans of a config file's document (``{"plans": [...]}``), each checked."""
    plans = document.get("plans")
    if not isinstance(plans, list):
        raise BadUserInput("plans file: a top-level 'plans' list is required", field="plans")
    specs = [plan_spec(plan, field=f"plans.{i}") for i, plan in enumerate(plans)]
    keys = [spec.key for spec in specs]
    if len(keys) != len(set(keys)):
        raise BadUserInput("plans file: a plan key is defined twice", field="plans")
    return specs


# --- periods and the quota lock -----------------------------------------------------------


def period_bounds(period: Period, at: datetime | None = None) -> tuple[datetime, datetime]:
    """The UTC period (day or calendar month) holding ``at``: [start, end)."""
    at = (at or utcnow()).astimezone(UTC)
    if period is Period.DAY:
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


async def lock_quota(uow: UnitOfWork, tenant_id: str, meter: str) -> None:
    """Hold the tenant's quota of ``meter`` until the transaction ends: whoever checks it next
    waits, so two requests for the last unit never both fit. A PostgreSQL advisory lock per
    tenant and meter; SQLite has one writer at a time, but Python's driver opens a transaction
    only at the first write, so a read before it would run outside any lock (and
    ``with_for_update`` is a no-op there): a write that changes nothing takes the write lock
    first."""
    if uow.engine.dialect.name == "postgresql":
        await uow.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"coregraph:quota:{tenant_id}:{meter}"},
        )
    else:
        await uow.session.execute(
            update(TenantPlan)
            .where(TenantPlan.tenant_id == tenant_id, TenantPlan.tenant_id.is_(None))
            .values(plan_id=TenantPlan.plan_id)
        )


def rate_limit_spec(data: Mapping[str, Any] | None, field: str = "rateLimits") -> RateLimitSpec:
    try:
        return RateLimitSpec.model_validate(dict(data or {}))
    except ValidationError as exc:
        raise _bad_input(exc, field) from None


def read_plans_file(path: Path) -> list[PlanSpec]:
    """The plans of a config file: JSON, or TOML when its name ends in ``.toml``."""
    raw = path.read_bytes()
    try:
        document = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadUserInput(f"plans file {path.name}: not valid {path.suffix[1:]}: {exc}") from None
    if not isinstance(document, dict):
        raise BadUserInput(f"plans file {path.name}: a top-level object is required")
    return load_plans_document(document)


async def load_plans(engine: AsyncEngine, specs: list[PlanSpec]) -> list[Plan]:
    """Upsert the plans in one transaction (all or none). Unchanged plans keep their version."""
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        rows = []
        for spec in specs:
            row = await plan_by_key(session, spec.key)
            if row is not None and PlanSpec.of(row) == spec and row.archived_at is None:
                rows.append(row)
                continue
            row, _before = await upsert_plan(session, spec)
            rows.append(row)
        return rows
