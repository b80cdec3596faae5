"""Billing: the plan catalog, each tenant's plan, and the usage thresholds already announced.

A plan is one row of the platform's catalog (not tenant-owned: every tenant may be assigned
it). Its features, limits, prices and rate limits are one validated document each
(``coregraph.services.billing.PlanSpec`` checks them before they are written), so a plan is read
in one row and loaded from a config file the same way the API defines it. A tenant's current
plan is one row per tenant; its history, which invoices price past months by, is one
``tenant_plan_periods`` row per assignment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    environment_column,
    id_column,
    utcnow,
)


class Plan(Timestamped, Base):
    """A plan of the catalog. ``key`` is how configs, the API and invoices name it."""

    __tablename__ = "plans"
    __id_prefix__ = "pln"

    id: Mapped[str] = id_column()
    key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # ISO 4217 code; every price of the plan is in its minor units.
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    # A tenant's own billing managers may choose a self-serve plan; only the operator assigns
    # the others.
    self_serve: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # {"sso": true, ...}
    features: Mapped[dict[str, bool]] = mapped_column(JSONDocument, nullable=False)
    # [{"meter": "seats", "period": "MONTH", "value": "5", "hard": true}, ...]
    limits: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, nullable=False)
    # [{"kind": "FLAT", "amount": "4900"}, {"kind": "GRADUATED", "meter": ..., "tiers": [...]}]
    prices: Mapped[list[dict[str, Any]]] = mapped_column(JSONDocument, nullable=False)
    # {"perSecond": 20, "perMinute": 600, "costPerMinute": 5000} (each optional)
    rate_limits: Mapped[dict[str, int]] = mapped_column(JSONDocument, nullable=False)
    # Bumped on every change: caches of the plan compare it.
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    # An archived plan can no longer be assigned; tenants on it keep it until moved.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TenantPlan(TenantOwned, Base):
    """A tenant's current plan. Its row is also the lock that serialises a tenant's quota
    checks (``services.billing.lock_quota``): two requests for the last unit never both win."""

    __tablename__ = "tenant_plans"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), nullable=False)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    assigned_by: Mapped[str | None] = mapped_column(String(60))


class TenantPlanPeriod(TenantOwned, Base):
    """One interval [valid_from, valid_to) a tenant was on a plan; valid_to is None while it is
    the current one. ``services.billing.assign_plan`` closes the previous period and opens the
    next in the same unit of work; ``services.invoices`` prices a month by the period holding
    its last instant. ``plan`` is the plan's document at assignment (``plan_version``): a
    closed period is priced by it, so redefining the plan later does not reprice it."""

    __tablename__ = "tenant_plan_periods"
    __table_args__ = (
        Index("ix_tenant_plan_periods_tenant_id_valid_from", "tenant_id", "valid_from"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id"), nullable=False)
    plan_version: Mapped[int] = mapped_column(Integer, nullable=False)
    plan: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    valid_to: Mapped[datetime | None] = mapped_column(UTCDateTime())
    assigned_by: Mapped[str | None] = mapped_column(String(60))


class UsageThreshold(TenantOwned, Base):
    """A threshold (80 or 100 percent of a limit) a tenant's usage reached in one period: the
    unique key makes ``usage.threshold_reached`` fire once per period, also under races."""

    __tablename__ = "usage_thresholds"
    __environment_scoped__ = True
    __table_args__ = (
        UniqueConstraint("tenant_id", "environment", "meter", "period_start", "percent"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    meter: Mapped[str] = mapped_column(String(120), nullable=False)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    percent: Mapped[int] = mapped_column(Integer, nullable=False)
    reached_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
