"""GraphQL types of plans and entitlements: the plan catalog as a tenant sees it, and the inputs
that define a plan (checked by ``coregraph.services.billing.PlanSpec``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry

from coregraph.models import Plan as PlanRow
from coregraph.services import billing

PlanPeriod = strawberry.enum(
    billing.Period, name="PlanPeriod", description="A limit's period: a UTC day or month."
)
PriceKind = strawberry.enum(
    billing.PriceKind,
    name="PriceKind",
    description="FLAT: a fee per period; PER_UNIT: a price per unit of a meter; GRADUATED:"
    " tiers, each unit priced by the tier it falls in.",
)


@strawberry.type(description="A boolean capability a plan includes or not.")
class PlanFeature:
    name: str
    enabled: bool


@strawberry.type(description="At most `value` of a meter per period.")
class PlanLimit:
    meter: str
    value: Decimal
    period: PlanPeriod  # type: ignore[valid-type]
    hard: bool = strawberry.field(
        description="A hard limit refuses the action that would pass it (QUOTA_EXCEEDED); a"
        " soft one only announces thresholds."
    )


@strawberry.type(description="A graduated price's tier. Amounts in the currency's minor units.")
class PriceTier:
    up_to: Decimal | None = strawberry.field(description="Inclusive; null: no end.")
    unit_amount: Decimal
    flat_amount: Decimal


@strawberry.type(description="A price of a plan. Amounts in the currency's minor units.")
class PlanPrice:
    kind: PriceKind  # type: ignore[valid-type]
    meter: str | None
    amount: Decimal | None = strawberry.field(description="FLAT: the fee per month.")
    unit_amount: Decimal | None = strawberry.field(description="PER_UNIT: one unit's price.")
    tiers: list[PriceTier]
    description: str | None


@strawberry.type(description="Operation rate limits (null: no limit of that kind).")
class PlanRateLimits:
    per_second: int | None
    per_minute: int | None
    cost_per_minute: int | None


@strawberry.type(description="A plan of the catalog: features, limits, prices, rate limits.")
class Plan:
    key: str
    name: str
    currency: str = strawberry.field(description="ISO 4217; prices are in its minor units.")
    self_serve: bool = strawberry.field(
        description="A tenant's own billing managers may choose it (assignPlan)."
    )
    features: list[PlanFeature]
    limits: list[PlanLimit]
    prices: list[PlanPrice]
    rate_limits: PlanRateLimits
    version: int
    archived_at: datetime | None

    @classmethod
    def from_row(cls, row: PlanRow) -> Plan:
        spec = billing.PlanSpec.of(row)
        return cls(
            key=spec.key,
            name=spec.name,
            currency=spec.currency,
            self_serve=spec.self_serve,
            features=[PlanFeature(name=k, enabled=v) for k, v in sorted(spec.features.items())],
            limits=[
                PlanLimit(meter=lim.meter, value=lim.value, period=lim.period, hard=lim.hard)
                for lim in spec.limits
            ],
            prices=[
                PlanPrice(
                    kind=p.kind,
                    meter=p.meter,
                    amount=p.amount,
                    unit_amount=p.unit_amount,
                    tiers=[
                        PriceTier(
                            up_to=t.up_to, unit_amount=t.unit_amount, flat_amount=t.flat_amount
                        )
                        for t in p.tiers
                    ],
                    description=p.description,
                )
                for p in spec.prices
            ],
            rate_limits=PlanRateLimits(
                per_second=spec.rate_limits.per_second,
                per_minute=spec.rate_limits.per_minute,
                cost_per_minute=spec.rate_limits.cost_per_minute,
            ),
            version=row.version,
            archived_at=row.archived_at,
        )


@strawberry.type(description="Whether the tenant's plan includes a feature.")
class Entitlement:
    feature: str
    enabled: bool
    plan: str | None = strawberry.field(description="The plan that answers; null: no plan.")


@strawberry.type(description="How much of a meter the tenant has used against its plan.")
class Quota:
    meter: str
    limit: Decimal | None = strawberry.field(description="null: no limit on this meter.")
    period: PlanPeriod | None = strawberry.field(  # type: ignore[valid-type]
        description="The limit's period (used counts within the current one); null: no limit."
    )
    hard: bool | None = strawberry.field(
        description="A hard limit refuses what would pass it (QUOTA_EXCEEDED); null: no limit."
    )
    used: Decimal = strawberry.field(
        description="seats and storage.bytes: now, over the whole tenant; other meters: this"
        " period's aggregate in the request's environment (the calendar month without a limit)."
    )
    remaining: Decimal | None = strawberry.field(description="null: unlimited.")
    plan: str | None = strawberry.field(description="The plan that answers; null: no plan.")


@strawberry.input
class PlanFeatureInput:
    name: str
    enabled: bool = True


@strawberry.input
class PlanLimitInput:
    meter: str = strawberry.field(description="A meter key: 'seats', 'api.requests', 'ai.tokens'.")
    value: Decimal
    period: PlanPeriod = billing.Period.MONTH  # type: ignore[valid-type]
    hard: bool = True


@strawberry.input
class PriceTierInput:
    up_to: Decimal | None = None
    unit_amount: Decimal = Decimal(0)
    flat_amount: Decimal = Decimal(0)


@strawberry.input
class PlanPriceInput:
    kind: PriceKind  # type: ignore[valid-type]
    meter: str | None = None
    amount: Decimal | None = None
    unit_amount: Decimal | None = None
    tiers: list[PriceTierInput] = strawberry.field(default_factory=list)
    description: str | None = None


@strawberry.input
class RateLimitsInput:
    per_second: int | None = None
    per_minute: int | None = None
    cost_per_minute: int | None = None

    def document(self) -> dict[str, Any]:
        values = {
            "perSecond": self.per_second,
            "perMinute": self.per_minute,
            "costPerMinute": self.cost_per_minute,
        }
        return {k: v for k, v in values.items() if v is not None}


@strawberry.input(description="A plan, defined (or replaced, by key) whole.")
class DefinePlanInput:
    key: str
    name: str
    currency: str = "USD"
    self_serve: bool = False
    features: list[PlanFeatureInput] = strawberry.field(default_factory=list)
    limits: list[PlanLimitInput] = strawberry.field(default_factory=list)
    prices: list[PlanPriceInput] = strawberry.field(default_factory=list)
    rate_limits: RateLimitsInput | None = None

    def document(self) -> dict[str, Any]:
        features: dict[str, bool] = {}
        for feature in self.features:
            features[feature.name] = feature.enabled
        return {
            "key": self.key,
            "name": self.name,
            "currency": self.currency,
            "selfServe": self.self_serve,
            "features": features,
            "limits": [
                {"meter": x.meter, "value": x.value, "period": x.period, "hard": x.hard}
                for x in self.limits
            ],
            "prices": [
                {
                    k: v
                    for k, v in {
                        "kind": p.kind,
                        "meter": p.meter,
                        "amount": p.amount,
                        "unitAmount": p.unit_amount,
                        "tiers": [
                            {
                                "upTo": t.up_to,
                                "unitAmount": t.unit_amount,
                                "flatAmount": t.flat_amount,
                            }
                            for t in p.tiers
                        ],
                        "description": p.description,
                    }.items()
                    if v is not None and v != []
                }
                for p in self.prices
            ],
            "rateLimits": self.rate_limits.document() if self.rate_limits else {},
        }
