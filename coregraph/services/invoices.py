"""Invoice previews: a period's line items from the usage and the tenant's plan prices.

A foundation for an external billing system, not a payment processor: ``invoice_preview``
prices one tenant's month, ``billing_export`` the month of every tenant with a plan or usage
(``coregraph billing-export``), as the document that system consumes.

- **Quantities** are the meters' aggregates over the calendar month, computed by
  ``usage.period_values``, the same SQL that answers ``usageSummary``: an invoice line and the
  summary never disagree. A meter a price names that the tenant does not have, or a gauge (MAX,
  LATEST) with no record in the period, bills 0; a negative gauge bills 0 as well.
- **Only LIVE usage is billed.** Test-environment usage (test API keys) is for trying an
  integration out; the export reads the live environment only. ``invoicePreview`` answers in the
  request's environment, so a test key previews what its test usage would cost and never sees
  live data, and states the environment.
- **Amounts** are ``Decimal`` in the currency's minor units (cents for USD), never floats. Unit
  prices may be fractions of a minor unit; each line's amount is rounded half-up to a whole
  minor unit (0.5 cent up to 1 cent), tier breakdowns keep their exact amounts, and the total is
  the sum of the rounded lines, so it equals what an external system adds up from the lines.
- **The plan** is the one in force at the end of the month (its last instant), from the
  tenant's plan history (``tenant_plan_periods``), or the default plan before any assignment:
  no proration, and a plan chosen after the month ended never reprices it. A month that ends
  before the tenant existed, or with no plan in force, has no lines and totals 0. A closed
  plan period is priced by its snapshot of the plan at assignment, so redefining the plan
  later does not reprice it; the open one by the live plan, as enforcement reads it
  (``billing.plan_at``).
- **Prices**: FLAT is the fee per period; PER_UNIT is quantity x unit amount; GRADUATED prices
  each unit by the tier it falls in (upTo inclusive: with tiers up to 1,000 and up to 5,000,
  unit 1,000 is in the first and unit 1,001 in the second) and adds the flat amount of every
  tier some usage reached (quantity above the tier's lower bound), as Stripe's graduated tiers
  do. A quantity of 0 reaches no tier.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Select, select, union
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from coregraph.auth.principal import Principal
from coregraph.models import Meter, Tenant, TenantPlan, UsageRecord
from coregraph.models.base import Environment
from coregraph.request import RequestMeta
from coregraph.services import billing, usage
from coregraph.services.uow import UnitOfWork

ZERO = Decimal(0)
_WHOLE = Decimal(1)

Reader = Callable[[Select[Any]], Awaitable[Sequence[Any]]]


def session_reader(session: AsyncSession) -> Reader:
    """Reads through ``session``: the plan and the usage from one transaction."""

    async def read(statement: Select[Any]) -> Sequence[Any]:
        return (await session.execute(statement)).all()

    return read


def round_minor(amount: Decimal) -> Decimal:
    """``amount`` (minor units) rounded half-up to a whole minor unit."""
    return amount.quantize(_WHOLE, rounding=ROUND_HALF_UP)


def _plain(value: Decimal) -> Decimal:
    """The same digits whatever the arithmetic left: no trailing zeros, no exponent."""
    return Decimal(format(value.normalize(), "f")) if value else ZERO


@dataclass(frozen=True, slots=True)
class TierCharge:
    """The part of a graduated line one tier prices."""

    from_: Decimal  # the tier's lower bound (exclusive; 0 for the first)
    up_to: Decimal | None
    quantity: Decimal  # units that fell in the tier
    unit_amount: Decimal
    flat_amount: Decimal  # charged when the tier was reached, else 0
    amount: Decimal  # exact: quantity x unit_amount + flat_amount


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    kind: billing.PriceKind
    description: str
    meter: str | None
    quantity: Decimal
    unit_amount: Decimal | None
    tiers: tuple[TierCharge, ...]
    amount: Decimal  # rounded half-up to a whole minor unit

    def document(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "description": self.description,
            "meter": self.meter,
            "quantity": str(self.quantity),
            "unitAmount": None if self.unit_amount is None else str(self.unit_amount),
            "tiers": [
                {
                    "from": str(t.from_),
                    "upTo": None if t.up_to is None else str(t.up_to),
                    "quantity": str(t.quantity),
                    "unitAmount": str(t.unit_amount),
                    "flatAmount": str(t.flat_amount),
                    "amount": str(t.amount),
                }
                for t in self.tiers
            ],
            "amount": str(self.amount),
        }


@dataclass(frozen=True, slots=True)
class InvoicePreview:
    tenant_id: str
    environment: Environment
    period: str
    start: datetime
    end: datetime
    plan: str | None
    currency: str | None
    lines: tuple[InvoiceLine, ...] = ()
    total: Decimal = field(default=ZERO)

    def document(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "currency": self.currency,
            "lines": [line.document() for line in self.lines],
            "total": str(self.total),
        }


def graduated(quantity: Decimal, tiers: Sequence[billing.TierSpec]) -> tuple[TierCharge, ...]:
    """Each tier's share of ``quantity``: the units in (lower, upTo] at its unit amount, plus
    its flat amount when some usage reached it."""
    charges: list[TierCharge] = []
    lower = ZERO
    for tier in tiers:
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(ZERO, top - lower)
        reached = quantity > lower
        flat = tier.flat_amount if reached else ZERO
        charges.append(
            TierCharge(
                from_=lower,
                up_to=tier.up_to,
                quantity=_plain(units),
                unit_amount=tier.unit_amount,
                flat_amount=flat,
                amount=_plain(units * tier.unit_amount + flat),
            )
        )
        if tier.up_to is None:
            break
        lower = tier.up_to
    return tuple(charges)


def _describe(price: billing.PriceSpec, names: dict[str, str]) -> str:
    if price.description:
        return price.description
    if price.kind is billing.PriceKind.FLAT:
        return "Flat fee"
    assert price.meter is not None
    return names.get(price.meter, price.meter)


def price_lines(
    spec: billing.PlanSpec, quantities: dict[str, Decimal | None], names: dict[str, str]
) -> tuple[InvoiceLine, ...]:
    """The plan's prices applied to the meters' period quantities, in the plan's order."""
    lines: list[InvoiceLine] = []
    for price in spec.prices:
        description = _describe(price, names)
        if price.kind is billing.PriceKind.FLAT:
            assert price.amount is not None
            lines.append(
                InvoiceLine(
                    price.kind,
                    description,
                    None,
                    Decimal(1),
                    price.amount,
                    (),
                    round_minor(price.amount),
                )
            )
            continue
        assert price.meter is not None
        quantity = max(ZERO, quantities.get(price.meter) or ZERO)
        if price.kind is billing.PriceKind.PER_UNIT:
            assert price.unit_amount is not None
            exact = quantity * price.unit_amount
            lines.append(
                InvoiceLine(
                    price.kind,
                    description,
                    price.meter,
                    quantity,
                    price.unit_amount,
                    (),
                    round_minor(exact),
                )
            )
        else:
            tiers = graduated(quantity, price.tiers)
            exact = sum((t.amount for t in tiers), ZERO)
            lines.append(
                InvoiceLine(
                    price.kind, description, price.meter, quantity, None, tiers, round_minor(exact)
                )
            )
    return tuple(lines)


async def invoice_preview(
    session: AsyncSession,
    tenant_id: str,
    *,
    records: Select[Any],
    meters: Select[Any],
    environment: Environment,
    period: str | None,
    default_plan: str | None,
    dialect: str,
) -> InvoicePreview:
    """The tenant's invoice for a calendar month ('YYYY-MM'; None: this month) so far, priced
    by the plan in force at the month's end (``billing.plan_at``). ``records``: the tenant's
    usage records in ``environment``; ``meters``: its own meters
    (``session`` reads them and the plan, in one transaction)."""
    name, start, end = usage.month_range(period)
    plan = await billing.plan_at(session, tenant_id, end, default_plan)
    if plan is None:
        return InvoicePreview(tenant_id, environment, name, start, end, None, None)
    read = session_reader(session)
    specs = usage.catalog(await read(meters))
    priced = {p.meter for p in plan.prices if p.meter is not None}
    quantities = await usage.period_values(
        read,
        records,
        [s for s in specs if s.key in priced],
        start=start,
        end=end,
        dialect=dialect,
    )
    lines = price_lines(plan, quantities, {s.key: s.name for s in specs})
    return InvoicePreview(
        tenant_id,
        environment,
        name,
        start,
        end,
        plan.key,
        plan.currency,
        lines,
        sum((line.amount for line in lines), ZERO),
    )


# --- the export: every tenant with a plan or usage, LIVE only ------------------------------


async def billable_tenants(
    worker: AsyncConnection, *, start: datetime, end: datetime, default_plan: str | None
) -> list[str]:
    """Tenants with a plan of their own or live usage in [start, end) — every tenant when a
    default plan applies to those without one (a tenant created after the month is listed
    with nothing to charge). ``worker`` acts as the worker role on PostgreSQL, which reads
    every tenant's plan and usage (migration 0015)."""
    if default_plan:
        return sorted(await worker.scalars(select(Tenant.__table__.c.id)))
    records = UsageRecord.__table__.c
    with_usage = (
        select(records.tenant_id)
        .where(
            records.environment == Environment.LIVE.value,
            records.occurred_at >= start,
            records.occurred_at < end,
        )
        .distinct()
    )
    with_plan = select(TenantPlan.__table__.c.tenant_id)
    return sorted(await worker.scalars(union(with_usage, with_plan)))


async def tenant_preview(
    uow: UnitOfWork, tenant_id: str, *, period: str, default_plan: str | None
) -> tuple[Tenant, InvoicePreview]:
    """One tenant's LIVE invoice for the export, read inside that tenant's wall."""
    await uow.allow_tenant(tenant_id)
    tenant = await uow.session.get(Tenant, tenant_id)
    assert tenant is not None

    live = Environment.LIVE
    preview = await invoice_preview(
        uow.session,
        tenant_id,
        records=select(UsageRecord.__table__).where(
            UsageRecord.tenant_id == tenant_id, UsageRecord.environment == live.value
        ),
        meters=select(Meter.__table__).where(Meter.tenant_id == tenant_id).order_by(Meter.key),
        environment=live,
        period=period,
        default_plan=default_plan,
        dialect=uow.engine.dialect.name,
    )
    return tenant, preview


async def billing_export(
    engine: AsyncEngine,
    worker: AsyncEngine,
    principal: Principal,
    meta: RequestMeta,
    *,
    period: str | None,
    default_plan: str | None,
    generated_at: datetime,
) -> dict[str, Any]:
    """The JSON document of a month's billable (LIVE) usage per tenant, by tenant id. The
    worker role finds the tenants; each one is then read through ``engine`` (the API's role)
    inside that tenant's wall, as a consistent snapshot per tenant."""
    name, start, end = usage.month_range(period)
    async with worker.connect() as conn:
        tenant_ids = await billable_tenants(conn, start=start, end=end, default_plan=default_plan)
    tenants: list[dict[str, Any]] = []
    for tenant_id in tenant_ids:
        async with UnitOfWork(engine, principal, meta) as uow:
            tenant, preview = await tenant_preview(
                uow, tenant_id, period=name, default_plan=default_plan
            )
        tenants.append({"tenantId": tenant.id, "slug": tenant.slug, **preview.document()})
    return {
        "period": name,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "environment": Environment.LIVE.value,
        "amountsIn": "minor units of each tenant's currency, lines rounded half-up",
        "generatedAt": generated_at.isoformat(),
        "tenants": tenants,
    }
