"""The plan's limits on every operation, after validation and before execution: the
operation rate limits (``services.plan_limits``), then the monthly ``api.requests`` cap and
the meter itself (``services.api_requests``), by ``coregraph.admission`` (which the REST
routes share).

Only operations of an authenticated principal addressing a tenant are limited and metered:
anonymous operations are bounded by the login limiter and the abuse limits, and a tenant-less
operation has no plan. The same hook runs for HTTP and for every WebSocket operation (a
subscription counts once, when it starts). A refusal is raised out of ``on_execute``, so the
operation never runs: HTTP answers 429 with the RateLimit headers (``coregraph.http``), a
socket an ``error`` message for that operation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionContext

from coregraph.admission import TOO_MANY_REQUESTS, admit
from coregraph.errors import QuotaExceeded
from coregraph.schema.operation_limits import measure_operation
from coregraph.services.plan_limits import OperationRateLimited

# Measures of recent documents by (query, operation name); a document's measure never changes.
_MEASURES: dict[tuple[str, str | None], tuple[int, int]] = {}
_MEASURES_KEPT = 1024


def _measure(query: str | None, operation_name: str | None, document: Any) -> tuple[int, int]:
    key = (query or "", operation_name)
    measured = _MEASURES.get(key)
    if measured is None:
        assert document is not None
        measured = measure_operation(document, operation_name)
        if len(_MEASURES) >= _MEASURES_KEPT:
            _MEASURES.clear()
        _MEASURES[key] = measured
    return measured


async def admit_operation(
    context: Any, query: str | None, operation_name: str | None, document: Any
) -> None:
    """The plan's limits for one operation of ``context``'s principal (none without one);
    a refusal marks the response 429 and is raised."""
    principal = getattr(context, "principal", None)
    if principal is None:
        return
    try:
        await admit(
            context.runtime,
            principal,
            context.response_headers,
            measure=partial(_measure, query, operation_name, document),
        )
    except (OperationRateLimited, QuotaExceeded):
        context.refused_status = TOO_MANY_REQUESTS
        raise


class PlanLimitsExtension(SchemaExtension):
    async def on_execute(self) -> AsyncIterator[None]:
        execution: ExecutionContext = self.execution_context
        await admit_operation(
            execution.context,
            execution.query,
            execution.operation_name,
            execution.graphql_document,
        )
        yield
