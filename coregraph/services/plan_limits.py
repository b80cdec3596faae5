"""Operation rate limits from the tenant's plan, per credential (issue 10).

A plan's ``rateLimits`` (``billing.RateLimitSpec``: per second, per minute, a cost budget per
minute) bound every credential acting in one of its tenants: an API key by its id, a user by
their id, each within the tenant. An API key's own ``rateLimits`` (``ApiKey.rate_limits``,
read with the key at authentication) replace the plan's value of each kind it names. A
request is counted per GraphQL root field (an aliased or batched request counts each), its
cost is the number of fields it selects, counted after fragments are expanded (the count
``COREGRAPH_MAX_FIELDS`` bounds); the caller measures both (``schema.rate_limiting``).

The plan is read at most once per ``COREGRAPH_PLAN_LIMITS_CACHE_SECONDS`` per tenant and
process: a changed or newly assigned plan applies to a process within that long (its own
``assignPlan``/``definePlan`` drops nothing from other processes' caches). A key's override
applies from its next request (it is read with the key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from limits import RateLimitItem
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from coregraph import db
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.errors import RateLimited
from coregraph.group_commit import GroupCommit
from coregraph.services import billing
from coregraph.services.ratelimit import Limiter, Window

API_REQUESTS = "api.requests"
# Tenants whose limits one process keeps (a bounded cache: tenants are many).
_CACHED_TENANTS = 10_000


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """What enforcement reads of a tenant's plan: its rate limits and its hard monthly cap on
    ``api.requests`` (None: no cap)."""

    rate: billing.RateLimitSpec
    monthly_requests: Decimal | None


UNLIMITED = TenantLimits(billing.RateLimitSpec(), None)


@dataclass(frozen=True, slots=True)
class Policy:
    """One limit as the RateLimit-Policy header names it (draft-ietf-httpapi-ratelimit-headers
    -11): ``q`` units per ``w`` seconds."""

    name: str
    quota: int
    window: int
    item: RateLimitItem
    # What one operation takes from it: its root fields, or its cost.
    by_cost: bool = False


class OperationRateLimited(RateLimited):
    """RATE_LIMITED for an operation, with what the HTTP layer's headers need."""

    def __init__(
        self, message: str, policy: Policy, applied: tuple[Policy, ...], retry_after: int
    ) -> None:
        super().__init__(message, retryAfter=retry_after, policy=policy.name)
        self.policy = policy
        self.applied = applied
        self.retry_after = retry_after


def policies(spec: billing.RateLimitSpec) -> tuple[Policy, ...]:
    found = []
    if spec.per_second is not None:
        found.append(Policy("second", spec.per_second, 1, Window(spec.per_second, 1)))
    if spec.per_minute is not None:
        found.append(Policy("minute", spec.per_minute, 60, Window(spec.per_minute, 60)))
    if spec.cost_per_minute is not None:
        found.append(
            Policy(
                "cost",
                spec.cost_per_minute,
                60,
                Window(spec.cost_per_minute, 60),
                by_cost=True,
            )
        )
    return tuple(found)


def effective(
    plan: billing.RateLimitSpec, override: Mapping[str, int] | None
) -> billing.RateLimitSpec:
    """The plan's limits with the key's own values in place of those it names."""
    if not override:
        return plan
    return billing.RateLimitSpec.model_validate({**plan.document(), **override})


def policy_header(found: tuple[Policy, ...]) -> str:
    """``RateLimit-Policy``: each limit as a Structured Field item; the cost budget's unit
    is fields (a coregraph parameter: the draft's registry has no such unit)."""
    return ", ".join(
        f'"{p.name}";q={p.quota};w={p.window}' + (';coregraph-unit="fields"' if p.by_cost else "")
        for p in found
    )


def credential(principal: Principal) -> str | None:
    """Whom a limit counts: the API key, the user (within the addressed tenant), or the agent
    (by any of its credentials, and apart from the users it acts for: agents are limited
    separately from people)."""
    if principal.kind is PrincipalKind.API_KEY:
        return principal.api_key_id
    if principal.kind is PrincipalKind.USER:
        return principal.user_id
    if principal.kind is PrincipalKind.AGENT:
        return principal.agent_id
    return None


class PlanLimits:
    """Each tenant's plan limits, cached briefly in this process, and the per-operation
    check against them."""

    def __init__(
        self,
        engine: AsyncEngine,
        limiter: Limiter,
        *,
        default_plan: str | None,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.default_plan = default_plan
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, TenantLimits]] = {}
        # Operations of one tenant that find its entry expired at the same moment share one
        # read, sent after each of them asked (coregraph.group_commit).
        self._reads: GroupCommit[str, TenantLimits] = GroupCommit(
            self._read_for, lambda _tenant: 1, 10_000, lambda _error: False
        )

    async def of_tenant(self, tenant_id: str) -> TenantLimits:
        now = self._clock()
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        limits = await self._reads.submit(tenant_id, tenant_id)
        if len(self._cache) >= _CACHED_TENANTS:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _CACHED_TENANTS:
                self._cache.clear()
        self._cache[tenant_id] = (now + self.cache_seconds, limits)
        return limits

    def forget(self, tenant_id: str) -> None:
        """This process changed the tenant's plan: read it again at the next request."""
        self._cache.pop(tenant_id, None)

    async def _read_for(self, tenant_ids: list[str]) -> list[TenantLimits]:
        return [await self._read(tenant_ids[0])] * len(tenant_ids)

    async def _read(self, tenant_id: str) -> TenantLimits:
        async with self.engine.connect() as conn:
            await db.scope_transaction(conn, tenant_ids=(tenant_id,))
            async with AsyncSession(bind=conn) as session:
                current = await billing.current_plan(session, tenant_id, self.default_plan)
        if current.spec is None:
            return UNLIMITED
        cap = current.limit(API_REQUESTS, billing.Period.MONTH)
        return TenantLimits(
            current.spec.rate_limits, cap.value if cap is not None and cap.hard else None
        )

    async def check(
        self, principal: Principal, limits: TenantLimits, *, root_fields: int, cost: int
    ) -> tuple[Policy, ...]:
        """Take this operation from each of the credential's limits; RATE_LIMITED (with
        ``retryAfter`` and the policy refused) when one has no room. The policies that applied
        are returned (for the RateLimit-Policy header)."""
        who = credential(principal)
        tenant_id = principal.tenant_id
        if who is None or tenant_id is None:
            return ()
        found = policies(effective(limits.rate, principal.rate_limits))
        taking = [
            (policy, amount)
            for policy in found
            if (amount := cost if policy.by_cost else root_fields) > 0
        ]
        # All limits at once (one round trip to Redis instead of one per limit); a refusal by
        # one has still taken from the others, as a sequential check takes from those before.
        taken = await asyncio.gather(
            *(
                self.limiter.hit(policy.item, "op", tenant_id, policy.name, who, cost=amount)
                for policy, amount in taking
            )
        )
        for (policy, amount), ok in zip(taking, taken, strict=True):
            if ok:
                continue
            if amount > policy.quota:
                raise OperationRateLimited(
                    f"this operation takes {amount} of the '{policy.name}' limit of"
                    f" {policy.quota} per {policy.window} s: it can never run; split it",
                    policy,
                    found,
                    policy.window,
                )
            retry = await self.limiter.retry_after(policy.item, "op", tenant_id, policy.name, who)
            raise OperationRateLimited(
                f"rate limit '{policy.name}' ({policy.quota} per {policy.window} s) reached;"
                f" retry in {retry} s",
                policy,
                found,
                retry,
            )
        return found
