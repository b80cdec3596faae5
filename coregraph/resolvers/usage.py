"""meters, usage, usageSummary, createMeter, recordUsage and recordUsageBatch."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import strawberry
from graphql import GraphQLResolveInfo
from strawberry.federation import field
from strawberry.scalars import JSON

from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.usage import (
    METER_SCOPES,
    Meter,
    MeterAggregation,
    MeterDefinition,
    MeterUsage,
    UsageGranularity,
    UsagePoint,
    UsageSeries,
    UsageSummary,
    tenant_meters,
    usage_records,
    usage_rollups,
)
from coregraph.services import usage

Info = strawberry.Info[Context, None]


@strawberry.input
class CreateMeterInput:
    key: str = strawberry.field(
        description="Dotted, outside coregraph's namespaces (api., seats, storage., ...):"
        " 'ai.tokens'."
    )
    name: str
    unit: str = strawberry.field(description="What one unit is: 'token', 'byte', 'call'.")
    aggregation: MeterAggregation  # type: ignore[valid-type]
    dimensions: list[str] = strawberry.field(
        default_factory=list, description="The dimensions records may carry: 'model', 'region'."
    )
    unique_dimension: str | None = strawberry.field(
        default=None, description="For UNIQUE_COUNT: the dimension whose distinct values count."
    )


@strawberry.input
class RecordUsageInput:
    meter: str = strawberry.field(description="One of this tenant's own meters, by key.")
    quantity: Decimal = strawberry.field(
        default=Decimal(1),
        description="An exact decimal (at most 6 digits after the point); not negative except"
        " for MAX and LATEST meters. COUNT and UNIQUE_COUNT meters ignore it.",
    )
    occurred_at: datetime | None = strawberry.field(
        default=None,
        description="When the usage happened (default: now); at most"
        " COREGRAPH_USAGE_LATE_WINDOW_SECONDS ago, at most"
        " COREGRAPH_USAGE_FUTURE_SKEW_SECONDS ahead.",
    )
    dimensions: JSON | None = strawberry.field(
        default=None, description="Values of the meter's declared dimensions, as strings."
    )
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="Recording again with this key (same tenant, environment and meter) answers"
        " the first record instead of counting a second one.",
    )


@strawberry.type
class CreateMeterPayload(MutationPayload):
    meter: Meter | None


@strawberry.type
class RecordUsagePayload(MutationPayload):
    id: strawberry.ID | None = strawberry.field(description="The usage record's id.")
    meter: str | None
    quantity: Decimal | None
    occurred_at: datetime | None
    replayed: bool | None = strawberry.field(
        description="The idempotency key had been used: this is the record first made with it."
    )

    @classmethod
    def of(cls, recorded: usage.RecordedUsage) -> RecordUsagePayload:
        return cls(
            id=strawberry.ID(recorded.id),
            meter=recorded.meter,
            quantity=recorded.quantity,
            occurred_at=recorded.occurred_at,
            replayed=recorded.replayed,
        )


@strawberry.type
class RecordUsageBatchPayload(MutationPayload):
    items: list[RecordUsagePayload] | None = strawberry.field(
        description="One answer per record, in the records' order."
    )
    recorded: int | None = strawberry.field(description="Records counted by this call.")
    replayed: int | None = strawberry.field(
        description="Records answered by an earlier key's record."
    )


def _drafts(inputs: list[RecordUsageInput]) -> list[usage.UsageDraft]:
    return [
        usage.UsageDraft(i.meter, i.quantity, i.occurred_at, i.dimensions, i.idempotency_key)
        for i in inputs
    ]


def _window(ctx: Context) -> usage.LateWindow:
    return usage.LateWindow(
        late=timedelta(seconds=ctx.settings.usage_late_window_seconds),
        skew=timedelta(seconds=ctx.settings.usage_future_skew_seconds),
    )


def _moment(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise BadUserInput(f"{field}: must carry a timezone offset", field=field)
    return value


async def _catalog(ctx: Context) -> list[usage.MeterSpec]:
    rows = await ctx.read(tenant_meters(ctx.principal, ctx.require_tenant()))
    return usage.catalog(rows)


@strawberry.type
class UsageQuery:
    @field(
        requires_scopes=METER_SCOPES,
        description="The meter catalog: coregraph's built-in meters, then this tenant's own.",
    )
    async def meters(self, info: Info) -> list[MeterDefinition] | None:
        return [MeterDefinition.of(spec) for spec in await _catalog(info.context)]

    @field(
        requires_scopes=[["usage:read"]],
        description="A meter's usage in the request's environment from (inclusive) to"
        " (exclusive), aggregated per bucket and per groupBy dimension values, in SQL.",
    )
    async def usage(
        self,
        info: Info,
        meter: str,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
        granularity: UsageGranularity,  # type: ignore[valid-type]
        group_by: list[str] | None = None,
    ) -> UsageSeries | None:
        ctx = info.context
        spec = usage.find_meter(await _catalog(ctx), meter)
        start, end = _moment(from_, "from"), _moment(to, "to")
        if start >= end:
            raise BadUserInput("to: must be after from", field="to")
        names = usage.group_by_names(spec, group_by or [])
        dialect = ctx.runtime.engine.dialect.name
        tenant_id = ctx.require_tenant()
        statement = usage.series_statement(
            usage_records(ctx.principal, tenant_id),
            usage_rollups(ctx.principal, tenant_id),
            spec,
            start=start,
            end=end,
            granularity=granularity,
            group_by=names,
            dialect=dialect,
        )
        rows = await ctx.read(statement.limit(usage.MAX_POINTS + 1))
        if len(rows) > usage.MAX_POINTS:
            raise BadUserInput(
                f"from: more than {usage.MAX_POINTS} points; narrow the range, coarsen the"
                " granularity or group by fewer dimensions",
                field="from",
            )
        points = usage.usage_points(
            rows, spec, granularity=granularity, group_by=names, dialect=dialect
        )
        return UsageSeries(
            meter=MeterDefinition.of(spec),
            granularity=granularity,
            from_=start,
            to=end,
            points=[
                UsagePoint(start=p.start, group=JSON(p.group), value=p.value)
                for p in points
                if p.start is not None
            ],
        )

    @field(
        requires_scopes=[["usage:read"]],
        description="Every meter's aggregate over a calendar month in UTC ('YYYY-MM'; default"
        " this month), in the request's environment.",
    )
    async def usage_summary(self, info: Info, period: str | None = None) -> UsageSummary | None:
        ctx = info.context
        name, start, end = usage.month_range(period)
        dialect = ctx.runtime.engine.dialect.name
        records = usage_records(ctx.principal, ctx.require_tenant())
        specs = await _catalog(ctx)
        values = await usage.period_values(
            ctx.read, records, specs, start=start, end=end, dialect=dialect
        )
        meters = [MeterUsage(meter=MeterDefinition.of(s), value=values[s.key]) for s in specs]
        return UsageSummary(period=name, from_=start, to=end, meters=meters)


@strawberry.type
class UsageMutation:
    @field(
        requires_scopes=[["meters:manage"]],
        description="Create one of this tenant's own meters. A meter is fixed once created.",
    )
    async def create_meter(self, info: Info, input: CreateMeterInput) -> CreateMeterPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await usage.create_meter(
                uow,
                ctx.require_tenant(),
                key=input.key,
                name=input.name,
                unit=input.unit,
                aggregation=usage.Aggregation(input.aggregation),
                dimensions=input.dimensions,
                unique_dimension=input.unique_dimension,
            )
        return CreateMeterPayload(meter=Meter.from_row(row))

    @field(
        requires_scopes=[["usage:write"]],
        description="Record usage of one of this tenant's meters, in the request's environment.",
    )
    async def record_usage(self, info: Info, input: RecordUsageInput) -> RecordUsagePayload | None:
        ctx = info.context
        [recorded] = await usage.record_usage_once(
            ctx.unit_of_work,
            ctx.require_tenant(),
            _drafts([input]),
            window=_window(ctx),
            batch=False,
            default_plan=ctx.settings.default_plan,
        )
        return RecordUsagePayload.of(recorded)

    @field(
        requires_scopes=[["usage:write"]],
        description="Record several usage records in one transaction (at most"
        " COREGRAPH_MAX_USAGE_BATCH): all or nothing — one bad record refuses the call"
        " (BAD_USER_INPUT with extensions.index). A key repeated within the batch answers the"
        " first record that carried it.",
    )
    async def record_usage_batch(
        self, info: Info, records: list[RecordUsageInput]
    ) -> RecordUsageBatchPayload | None:
        # Served by record_usage_batch_raw (RAW_RESOLVERS); this body answers the same when
        # strawberry's own resolver runs (a schema built without the raw resolvers).
        return await _record_batch(info.context, _drafts(records))


async def _record_batch(ctx: Context, drafts: list[usage.UsageDraft]) -> RecordUsageBatchPayload:
    limit = ctx.settings.max_usage_batch
    if len(drafts) > limit:
        raise BadUserInput(f"records: at most {limit} per call", field="records")
    recorded = await usage.record_usage_once(
        ctx.unit_of_work,
        ctx.require_tenant(),
        drafts,
        window=_window(ctx),
        default_plan=ctx.settings.default_plan,
    )
    replayed = sum(r.replayed for r in recorded)
    return RecordUsageBatchPayload(
        items=[RecordUsagePayload.of(r) for r in recorded],
        recorded=len(recorded) - replayed,
        replayed=replayed,
    )


async def record_usage_batch_raw(
    _: Any, info: GraphQLResolveInfo, records: list[dict[str, Any]]
) -> RecordUsageBatchPayload:
    """``recordUsageBatch`` from graphql-core's coerced arguments: each record is already a
    dict of parsed scalars (Decimal, datetime, JSON), defaults applied. Strawberry's argument
    conversion would build 1,000 ``RecordUsageInput`` objects from them again, field by
    field — half of the call's server time (bench/RESULTS.md, Usage)."""
    drafts = [
        usage.UsageDraft(
            r["meter"],
            r["quantity"],
            r.get("occurredAt"),
            r.get("dimensions"),
            r.get("idempotencyKey"),
        )
        for r in records
    ]
    return await _record_batch(info.context, drafts)


# Mutation fields served by a graphql-core resolver of their own (coregraph.api installs them
# before the approval gate and the authorization guard wrap them).
RAW_RESOLVERS = {"recordUsageBatch": record_usage_batch_raw}
