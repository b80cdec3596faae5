"""plans, currentPlan, entitlement, definePlan, archivePlan and assignPlan.

Who may do what: the plan catalog belongs to the operator, the tenant named by
``COREGRAPH_BILLING_OPERATOR_TENANT``; its billing managers define and archive plans and assign
any plan to any tenant. A tenant's own billing managers may move their tenant to a self-serve
plan (the customer picks a plan and is billed for it) and read the self-serve catalog; nobody
else changes a tenant's plan.
"""

from __future__ import annotations

import strawberry
from sqlalchemy import select
from strawberry.federation import field

from coregraph.auth.principal import PrincipalKind
from coregraph.context import Context
from coregraph.errors import Forbidden, NotFound
from coregraph.models import Plan as PlanRow, Tenant
from coregraph.models.base import Environment
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.billing import DefinePlanInput, Entitlement, Plan, Quota
from coregraph.services import billing, quotas
from coregraph.services.api_requests import METER

Info = strawberry.Info[Context, None]


def _is_operator(ctx: Context) -> bool:
    """The operator's own tenant, in its live environment, by a person or an API key: a test
    credential or an agent of the operator never changes the (live, global) catalog."""
    operator = ctx.settings.billing_operator_tenant
    principal = ctx.principal
    return (
        operator is not None
        and principal.tenant_id == operator
        and principal.environment is Environment.LIVE
        and principal.kind is not PrincipalKind.AGENT
    )


def _operator(ctx: Context) -> str:
    if not _is_operator(ctx):
        raise Forbidden(
            "only the billing operator's tenant (COREGRAPH_BILLING_OPERATOR_TENANT) manages the"
            " plan catalog"
        )
    return ctx.require_tenant()


async def current_plan(ctx: Context, tenant_id: str) -> billing.CurrentPlan:
    async with ctx.read_session() as session:
        return await billing.current_plan(session, tenant_id, ctx.settings.default_plan)


@strawberry.type
class DefinePlanPayload(MutationPayload):
    plan: Plan | None


@strawberry.type
class AssignPlanPayload(MutationPayload):
    tenant_id: strawberry.ID | None
    plan: Plan | None
    previous_plan: str | None = strawberry.field(description="The key of the plan it replaced.")


@strawberry.type
class BillingQuery:
    @field(
        requires_scopes=[["billing:read"]],
        description="The plan catalog: for the operator every plan (archived ones with"
        " includeArchived), for a tenant the self-serve plans and its own.",
    )
    async def plans(self, info: Info, include_archived: bool = False) -> list[Plan] | None:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        async with ctx.read_session() as session:
            rows = list(await session.scalars(select(PlanRow).order_by(PlanRow.key)))
            own = await billing.current_plan(session, tenant_id, ctx.settings.default_plan)
        operator = _is_operator(ctx)
        return [
            Plan.from_row(row)
            for row in rows
            if (include_archived and operator) or row.archived_at is None or row.id == own.plan_id
            if operator or row.self_serve or row.id == own.plan_id
        ]

    @field(
        requires_scopes=[["billing:read"]],
        description="This tenant's plan (its own, or the default plan); null: none, unlimited.",
    )
    async def current_plan(self, info: Info) -> Plan | None:
        own = await current_plan(info.context, info.context.require_tenant())
        return Plan.from_row(own.row) if own.row is not None else None

    @field(
        requires_scopes=[["billing:read"], ["tenant:read"]],
        description="Whether this tenant's plan includes a feature (false without a plan).",
    )
    async def entitlement(self, info: Info, feature: str) -> Entitlement | None:
        ctx = info.context
        own = await current_plan(ctx, ctx.require_tenant())
        return Entitlement(
            feature=feature,
            enabled=own.feature(feature),
            plan=own.spec.key if own.spec else None,
        )

    @field(
        requires_scopes=[["billing:read"], ["usage:read"]],
        description="How much of a meter this tenant has used and how much its plan leaves"
        " (of a day's and a month's limit, the tighter). usage:read suffices: a producer may"
        " check before it sends.",
    )
    async def quota(self, info: Info, meter: str) -> Quota | None:
        ctx = info.context
        async with ctx.read_session() as session:
            found = await quotas.quota(
                session,
                ctx.require_tenant(),
                ctx.principal.environment,
                meter,
                default_plan=ctx.settings.default_plan,
                pending=ctx.runtime.api_requests.unrecorded if meter == METER else None,
            )
        limit = found.limit
        return Quota(
            meter=found.meter,
            limit=limit.value if limit else None,
            period=limit.period if limit else None,
            hard=limit.hard if limit else None,
            used=found.used,
            remaining=found.remaining,
            plan=found.plan.spec.key if found.plan.spec else None,
        )


@strawberry.type
class BillingMutation:
    @field(
        requires_scopes=[["billing:manage"]],
        description="Define a plan, or replace the plan with this key (its version grows);"
        " the operator's billing managers only. Audited and evented in the operator's tenant.",
    )
    async def define_plan(self, info: Info, input: DefinePlanInput) -> DefinePlanPayload | None:
        ctx = info.context
        operator = _operator(ctx)
        spec = billing.plan_spec(input.document(), field="input")
        async with ctx.unit_of_work() as uow:
            row = await billing.define_plan(uow, operator, spec)
        return DefinePlanPayload(plan=Plan.from_row(row))

    @field(
        requires_scopes=[["billing:manage"]],
        description="Archive a plan: no longer assignable; tenants on it keep it until moved.",
    )
    async def archive_plan(self, info: Info, key: str) -> DefinePlanPayload | None:
        ctx = info.context
        operator = _operator(ctx)
        async with ctx.unit_of_work() as uow:
            row = await billing.archive_plan(uow, operator, key)
        return DefinePlanPayload(plan=Plan.from_row(row))

    @field(
        requires_scopes=[["billing:manage"]],
        description="Move a tenant to a plan, audited and evented (plan.assigned) in that"
        " tenant. A tenant's own billing managers may choose a self-serve plan for it; the"
        " operator's may assign any plan to any tenant.",
    )
    async def assign_plan(
        self, info: Info, tenant_id: strawberry.ID, plan: str
    ) -> AssignPlanPayload | None:
        ctx = info.context
        own_tenant = ctx.require_tenant()
        operator = _is_operator(ctx)
        async with ctx.unit_of_work() as uow:
            if str(tenant_id) != own_tenant:
                if not operator:
                    raise NotFound("tenantId: no such tenant", field="tenantId")
                await uow.allow_tenant(str(tenant_id))
                if await uow.session.get(Tenant, str(tenant_id)) is None:
                    raise NotFound("tenantId: no such tenant", field="tenantId")
            if not operator:
                wanted = await billing.plan_by_key(uow.session, plan)
                if wanted is None or not wanted.self_serve or wanted.archived_at is not None:
                    raise NotFound(f"plan: no self-serve plan '{plan[:64]}'", field="plan")
            row, previous = await billing.assign_plan(uow, str(tenant_id), plan)
        return AssignPlanPayload(
            tenant_id=tenant_id, plan=Plan.from_row(row), previous_plan=previous
        )
