"""Admission of one request of an authenticated principal acting in a tenant: the plan's (or
the key's) operation rate limits (``services.plan_limits``), then the hard monthly cap on
``api.requests`` and the meter itself (``services.api_requests``).

GraphQL operations (``schema.rate_limiting``) and the authenticated REST routes
(``/audit/export``, ``/usage/bulk``, ``/billing/export``; one operation of cost 1 each) are
admitted here, so the two paths cannot drift. A refusal raises ``OperationRateLimited`` or
``QuotaExceeded`` with the 429's headers (RateLimit-Policy, RateLimit, Retry-After) left in the
caller's ``headers``; an admitted request leaves RateLimit-Policy there when a limit applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from coregraph.auth.principal import Principal
from coregraph.errors import QuotaExceeded
from coregraph.models.base import utcnow
from coregraph.services import billing
from coregraph.services.plan_limits import OperationRateLimited, credential, policy_header

if TYPE_CHECKING:
    from coregraph.app import Runtime

TOO_MANY_REQUESTS = 429


def one_operation() -> tuple[int, int]:
    """A REST request: one root field, cost 1."""
    return 1, 1


async def admit(
    runtime: Runtime,
    principal: Principal,
    headers: dict[str, str],
    *,
    measure: Callable[[], tuple[int, int]] = one_operation,
) -> None:
    """Take the request from the credential's rate limits and count one ``api.requests``.
    ``measure`` gives (root fields, cost), asked only when a rate limit applies. Anonymous and
    tenant-less principals are not admitted here (nothing is taken or counted)."""
    who = credential(principal)
    tenant_id = principal.tenant_id
    if who is None or tenant_id is None:
        return
    limits = await runtime.plan_limits.of_tenant(tenant_id)
    # The plan's limits, or the key's own (which apply also where the plan sets none).
    if limits.rate.document() or principal.rate_limits:
        root_fields, cost = measure()
        try:
            applied = await runtime.plan_limits.check(
                principal, limits, root_fields=root_fields, cost=cost
            )
        except OperationRateLimited as refused:
            headers.clear()
            headers.update(
                {
                    "RateLimit-Policy": policy_header(refused.applied),
                    "RateLimit": f'"{refused.policy.name}";r=0;t={refused.retry_after}',
                    "Retry-After": str(refused.retry_after),
                }
            )
            raise
        if applied:
            headers.clear()
            headers["RateLimit-Policy"] = policy_header(applied)
    try:
        await runtime.api_requests.count(
            tenant_id, principal.environment, who, limits.monthly_requests
        )
    except QuotaExceeded:
        start, end = billing.period_bounds(billing.Period.MONTH)
        until_next = max(1, math.ceil((end - utcnow()).total_seconds()))
        window = int((end - start).total_seconds())
        policy = ", ".join(
            header
            for header in (
                headers.get("RateLimit-Policy"),
                f'"month";q={int(limits.monthly_requests or 0)};w={window}',
            )
            if header
        )
        headers.clear()
        headers.update(
            {
                "RateLimit-Policy": policy,
                "RateLimit": f'"month";r=0;t={until_next}',
                "Retry-After": str(until_next),
            }
        )
        raise
