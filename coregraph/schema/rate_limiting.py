"""The plan's limits on every operation, after validation and before execution: the
operation rate limits (``services.plan_limits``), then the monthly ``api.requests`` cap and
the meter itself (``services.api_requests``).

Only operations of an authenticated principal addressing a tenant are limited and metered:
anonymous operations are bounded by the login limiter and the abuse limits, and a tenant-less
operation has no plan. The same hook runs for HTTP and for every WebSocket operation (a
subscription counts once, when it starts). A refusal is raised out of ``on_execute``, so the
operation never runs: HTTP answers 429 with the RateLimit headers (``coregraph.http``), a
socket an ``error`` message for that operation.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

from strawberry.extensions import SchemaExtension

from coregraph.errors import QuotaExceeded
from coregraph.models.base import utcnow
from coregraph.schema.operation_limits import measure_operation
from coregraph.services import billing
from coregraph.services.plan_limits import OperationRateLimited, credential, policy_header

TOO_MANY_REQUESTS = 429
# Measures of recent documents by (query, operation name); a document's measure never changes.
_MEASURES: dict[tuple[str, str | None], tuple[int, int]] = {}
_MEASURES_KEPT = 1024


class PlanLimitsExtension(SchemaExtension):
    async def on_execute(self) -> AsyncIterator[None]:
        execution = self.execution_context
        context = execution.context
        principal = getattr(context, "principal", None)
        who = credential(principal) if principal is not None else None
        if who is None or principal is None or principal.tenant_id is None:
            yield
            return
        runtime = context.runtime
        limits = await runtime.plan_limits.of_tenant(principal.tenant_id)
        # The plan's limits, or the key's own (which apply also where the plan sets none).
        if limits.rate.document() or principal.rate_limits:
            key = (execution.query or "", execution.operation_name)
            measured = _MEASURES.get(key)
            if measured is None:
                assert execution.graphql_document is not None
                measured = measure_operation(execution.graphql_document, execution.operation_name)
                if len(_MEASURES) >= _MEASURES_KEPT:
                    _MEASURES.clear()
                _MEASURES[key] = measured
            root_fields, cost = measured
            try:
                applied = await runtime.plan_limits.check(
                    principal, limits, root_fields=root_fields, cost=cost
                )
            except OperationRateLimited as refused:
                context.refused_status = TOO_MANY_REQUESTS
                context.response_headers = {
                    "RateLimit-Policy": policy_header(refused.applied),
                    "RateLimit": f'"{refused.policy.name}";r=0;t={refused.retry_after}',
                    "Retry-After": str(refused.retry_after),
                }
                raise
            if applied:
                context.response_headers = {"RateLimit-Policy": policy_header(applied)}
        try:
            await runtime.api_requests.count(
                principal.tenant_id, principal.environment, who, limits.monthly_requests
            )
        except QuotaExceeded:
            start, end = billing.period_bounds(billing.Period.MONTH)
            until_next = max(1, math.ceil((end - utcnow()).total_seconds()))
            window = int((end - start).total_seconds())
            context.refused_status = TOO_MANY_REQUESTS
            context.response_headers = {
                "RateLimit-Policy": ", ".join(
                    header
                    for header in (
                        context.response_headers.get("RateLimit-Policy"),
                        f'"month";q={int(limits.monthly_requests or 0)};w={window}',
                    )
                    if header
                ),
                "RateLimit": f'"month";r=0;t={until_next}',
                "Retry-After": str(until_next),
            }
            raise
        yield
