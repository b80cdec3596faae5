"""``GET /billing/export?period=YYYY-MM``: the billing export over HTTP, for the billing
operator's billing managers.

The same JSON document as ``coregraph billing-export`` (``services.invoices.billing_export``):
every tenant with a plan or LIVE usage in the month (default this month), priced by its plan.
Authenticated like ``/audit/export`` (``Authorization``, ``X-Tenant-Id``); the principal must
act in the operator's tenant (``COREGRAPH_BILLING_OPERATOR_TENANT``) and hold
``billing:manage`` there: it reads every tenant's billing, so nobody else may. On PostgreSQL the
worker role finds the tenants (as the CLI does) and each is read through the API's role inside
its own wall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from fastapi import Request
from fastapi.responses import Response

from coregraph import db, rest
from coregraph.auth.principal import system_principal
from coregraph.errors import CoregraphError, Forbidden
from coregraph.models.base import utcnow
from coregraph.services import invoices

if TYPE_CHECKING:
    from coregraph.app import Runtime


async def billing_export(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    try:
        who = await rest.caller(request, runtime, what="the billing export", scope="billing:manage")
        meta = who.meta
        operator = settings.billing_operator_tenant
        if operator is None or who.tenant_id != operator:
            raise Forbidden(
                "only the billing operator's tenant (COREGRAPH_BILLING_OPERATOR_TENANT) exports"
                " every tenant's billing"
            )
        worker = (
            runtime.engine
            if settings.is_sqlite
            else db.create_engine(settings, role=settings.database_worker_role)
        )
        try:
            document = await invoices.billing_export(
                runtime.engine,
                worker,
                system_principal("http:billing-export"),
                meta,
                period=request.query_params.get("period") or None,
                default_plan=settings.default_plan,
                generated_at=utcnow(),
            )
        finally:
            if worker is not runtime.engine:
                await worker.dispose()
    except rest.Refused as refused:
        return refused.response
    except CoregraphError as exc:
        return rest.error_response(request, exc)
    return Response(orjson.dumps(document), media_type="application/json")
