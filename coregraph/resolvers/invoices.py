"""invoicePreview: the current tenant's month priced by its plan (billing:read)."""

from __future__ import annotations

import strawberry
from strawberry.federation import field

from coregraph.context import Context
from coregraph.schema.invoices import InvoicePreview
from coregraph.schema.usage import tenant_meters, usage_records
from coregraph.services import invoices

Info = strawberry.Info[Context, None]


@strawberry.type
class InvoicesQuery:
    @field(
        requires_scopes=[["billing:read"]],
        description="This tenant's invoice for a calendar month in UTC ('YYYY-MM'; default this"
        " month) so far: its plan's prices applied to the month's usage in the request's"
        " environment, with quantities equal to usageSummary's. Amounts in the plan currency's"
        " minor units, each line rounded half-up; no plan: no lines, total 0.",
    )
    async def invoice_preview(self, info: Info, period: str | None = None) -> InvoicePreview | None:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        async with ctx.read_session() as session:
            preview = await invoices.invoice_preview(
                session,
                tenant_id,
                records=usage_records(ctx.principal, tenant_id),
                meters=tenant_meters(ctx.principal, tenant_id),
                environment=ctx.principal.environment,
                period=period,
                default_plan=ctx.settings.default_plan,
                dialect=ctx.runtime.engine.dialect.name,
            )
        return InvoicePreview.of(preview)
