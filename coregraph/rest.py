"""What the authenticated REST routes share (``GET /audit/export``, ``POST /usage/bulk``,
``GET /billing/export``): who calls, in which tenant, admitted as one operation of the
plan's rate limits and ``api.requests`` cap (``coregraph.admission``), holding the route's
scope — and the errors, as the same JSON body GraphQL answers with (``errors[].extensions.
code``), under the HTTP status a REST client expects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from fastapi import Request
from fastapi.responses import Response

from coregraph.admission import TOO_MANY_REQUESTS, admit
from coregraph.auth.principal import Principal
from coregraph.errors import CoregraphError, Forbidden, QuotaExceeded, Unauthenticated
from coregraph.http import authenticate, request_meta
from coregraph.request import RequestMeta
from coregraph.schema.errors import with_trace_id
from coregraph.services.plan_limits import OperationRateLimited

if TYPE_CHECKING:
    from coregraph.app import Runtime

_STATUS_FOR_CODE = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403}


class Refused(Exception):
    """The route answers ``response`` instead (a 429 with its RateLimit headers)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    tenant_id: str
    meta: RequestMeta


def error_response(
    request: Request,
    exc: CoregraphError,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    request.state.outcome = exc.code
    if exc.code == "UNAUTHENTICATED":
        headers = {"WWW-Authenticate": "Bearer"}
    extensions = with_trace_id({**exc.extensions, "requestId": request.state.request_id})
    body = {"errors": [{"message": exc.message, "extensions": extensions}]}
    return Response(
        orjson.dumps(body),
        status_code=status or _STATUS_FOR_CODE.get(exc.code, 400),
        media_type="application/json",
        headers=headers,
    )


async def caller(request: Request, runtime: Runtime, *, what: str, scope: str) -> Caller:
    """The principal calling the route, in its addressed tenant, admitted and holding
    ``scope`` there. Raises the ``CoregraphError`` to answer (``error_response``), or
    ``Refused`` with the 429 of a rate limit or the monthly cap."""
    meta = request_meta(request)
    principal = await authenticate(request, runtime, meta)
    request.state.principal_kind = principal.kind.value
    request.state.tenant_id = principal.tenant_id
    if not principal.is_authenticated:
        raise Unauthenticated(f"{what} needs a signed-in user or an API key")
    tenant_id = principal.tenant_id
    if tenant_id is None:
        raise Forbidden(f"{what} needs a tenant: send the X-Tenant-Id header")
    headers: dict[str, str] = {}
    try:
        await admit(runtime, principal, headers)
    except (OperationRateLimited, QuotaExceeded) as refused:
        if isinstance(refused, QuotaExceeded):
            # Kept for supportTimeline (services.quota_refusals: at most one a minute).
            runtime.quota_refusals.note(principal, refused, meta)
        raise Refused(error_response(request, refused, TOO_MANY_REQUESTS, headers)) from None
    if scope not in principal.scopes_in(tenant_id):
        raise Forbidden(f"{what} requires the scope {scope}", lacking=[scope])
    return Caller(principal, tenant_id, meta)
