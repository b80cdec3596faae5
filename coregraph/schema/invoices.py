"""GraphQL types of invoice previews: a month's line items priced from usage and the plan.
Amounts are decimals in the currency's minor units (``coregraph.services.invoices``)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import strawberry

from coregraph.schema.billing import PriceKind
from coregraph.services import invoices


@strawberry.type(description="The part of a GRADUATED line one tier prices.")
class InvoiceTier:
    from_: Decimal = strawberry.field(
        name="from", description="The tier's lower bound, exclusive (0 for the first tier)."
    )
    up_to: Decimal | None = strawberry.field(description="Inclusive; null: no end.")
    quantity: Decimal = strawberry.field(description="Units that fell in this tier.")
    unit_amount: Decimal
    flat_amount: Decimal = strawberry.field(
        description="The tier's flat amount when usage reached it, else 0."
    )
    amount: Decimal = strawberry.field(
        description="quantity x unitAmount + flatAmount, exact (not rounded)."
    )


@strawberry.type(description="One price of the plan applied to the period.")
class InvoiceLine:
    kind: PriceKind  # type: ignore[valid-type]
    description: str
    meter: str | None = strawberry.field(description="The priced meter; null for a flat fee.")
    quantity: Decimal = strawberry.field(
        description="The meter's aggregate over the period, as usageSummary shows it (1 for a"
        " flat fee; a negative gauge bills 0)."
    )
    unit_amount: Decimal | None = strawberry.field(
        description="FLAT: the fee; PER_UNIT: one unit's price; null for GRADUATED (tiers)."
    )
    tiers: list[InvoiceTier] = strawberry.field(description="GRADUATED: each tier's share.")
    amount: Decimal = strawberry.field(description="Rounded half-up to a whole minor unit.")

    @classmethod
    def of(cls, line: invoices.InvoiceLine) -> InvoiceLine:
        return cls(
            kind=line.kind,
            description=line.description,
            meter=line.meter,
            quantity=line.quantity,
            unit_amount=line.unit_amount,
            tiers=[
                InvoiceTier(
                    from_=t.from_,
                    up_to=t.up_to,
                    quantity=t.quantity,
                    unit_amount=t.unit_amount,
                    flat_amount=t.flat_amount,
                    amount=t.amount,
                )
                for t in line.tiers
            ],
            amount=line.amount,
        )


@strawberry.type(
    description="What the tenant's plan charges for a calendar month (UTC) so far: not a"
    " bill (an external billing system bills from coregraph's export, LIVE usage only)."
)
class InvoicePreview:
    period: str = strawberry.field(description="'YYYY-MM'.")
    from_: datetime = strawberry.field(name="from", description="Inclusive.")
    to: datetime = strawberry.field(description="Exclusive.")
    environment: str = strawberry.field(
        description="The usage priced: the request's environment ('live' is what is billed)."
    )
    plan: str | None = strawberry.field(description="The plan's key; null: no plan, no lines.")
    currency: str | None = strawberry.field(
        description="ISO 4217; every amount is in its minor units (null without a plan)."
    )
    lines: list[InvoiceLine]
    total: Decimal = strawberry.field(description="The sum of the lines' rounded amounts.")

    @classmethod
    def of(cls, preview: invoices.InvoicePreview) -> InvoicePreview:
        return cls(
            period=preview.period,
            from_=preview.start,
            to=preview.end,
            environment=preview.environment.value,
            plan=preview.plan,
            currency=preview.currency,
            lines=[InvoiceLine.of(line) for line in preview.lines],
            total=preview.total,
        )
