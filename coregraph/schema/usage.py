"""GraphQL types of usage metering: a tenant's meter, the meter catalog, a usage time series and
a period's summary; and the reads they start from (``readable``, never a hand-written tenant
filter)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry
from sqlalchemy import Select
from strawberry.federation import type as ftype
from strawberry.scalars import JSON

from coregraph import models
from coregraph.auth.principal import Principal
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.readable import readable
from coregraph.services import usage

MeterAggregation = strawberry.enum(
    usage.Aggregation,
    name="MeterAggregation",
    description="SUM of quantities, COUNT of records, MAX quantity, UNIQUE_COUNT of one"
    " dimension's distinct values, or LATEST: the quantity of the last record by occurredAt.",
)
UsageGranularity = strawberry.enum(
    usage.Granularity, name="UsageGranularity", description="A time bucket, in UTC."
)

METER_SCOPES = [["usage:read"], ["usage:write"], ["meters:manage"]]


@entity(models.Meter)
@ftype(
    keys=["id"],
    requires_scopes=METER_SCOPES,
    description="A tenant's own meter (createMeter): what its usage records measure.",
)
class Meter(Node):
    id: strawberry.ID
    key: str
    name: str
    unit: str
    aggregation: MeterAggregation  # type: ignore[valid-type]
    dimensions: list[str]
    unique_dimension: str | None = strawberry.field(
        description="The dimension a UNIQUE_COUNT meter counts distinct values of."
    )
    created_at: datetime
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any) -> Meter:
        return cls(
            id=strawberry.ID(row.id),
            key=row.key,
            name=row.name,
            unit=row.unit,
            aggregation=usage.Aggregation(row.aggregation),
            dimensions=list(row.dimensions),
            unique_dimension=row.unique_dimension,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
        )


@strawberry.type(description="A meter in a tenant's catalog: built-in or the tenant's own.")
class MeterDefinition:
    key: str
    name: str
    unit: str
    aggregation: MeterAggregation  # type: ignore[valid-type]
    dimensions: list[str]
    unique_dimension: str | None
    builtin: bool = strawberry.field(
        description="Fed by coregraph itself (api.requests, seats, ...), never by recordUsage."
    )
    meter: Meter | None = strawberry.field(
        description="The tenant's own meter; null for a built-in one."
    )

    @classmethod
    def of(cls, spec: usage.MeterSpec) -> MeterDefinition:
        return cls(
            key=spec.key,
            name=spec.name,
            unit=spec.unit,
            aggregation=spec.aggregation,
            dimensions=list(spec.dimensions),
            unique_dimension=spec.unique_dimension,
            builtin=spec.builtin,
            meter=Meter.from_row(spec.row) if spec.row is not None else None,
        )


@strawberry.type(description="A meter's aggregate over one bucket and group.")
class UsagePoint:
    start: datetime = strawberry.field(description="The bucket's start, UTC.")
    group: JSON = strawberry.field(
        description="The groupBy dimensions' values (null: records without that dimension)."
    )
    value: Decimal


@strawberry.type(
    description="A meter's usage over a range, bucket by bucket (empty ones left out)."
)
class UsageSeries:
    meter: MeterDefinition
    granularity: UsageGranularity  # type: ignore[valid-type]
    from_: datetime = strawberry.field(name="from", description="Inclusive.")
    to: datetime = strawberry.field(description="Exclusive.")
    points: list[UsagePoint]


@strawberry.type(description="A meter's aggregate over a whole period.")
class MeterUsage:
    meter: MeterDefinition
    value: Decimal | None = strawberry.field(
        description="Null for a MAX or LATEST meter without records in the period (SUM,"
        " COUNT and UNIQUE_COUNT are 0 then)."
    )


@strawberry.type(description="Every meter's aggregate over a calendar month (UTC).")
class UsageSummary:
    period: str = strawberry.field(description="'YYYY-MM'.")
    from_: datetime = strawberry.field(name="from", description="Inclusive.")
    to: datetime = strawberry.field(description="Exclusive.")
    meters: list[MeterUsage]


def tenant_meters(principal: Principal, tenant_id: str) -> Select[Any]:
    """The tenant's own meters, by key."""
    return readable(principal, models.Meter, tenant_id=tenant_id).order_by(models.Meter.key)


def usage_records(principal: Principal, tenant_id: str) -> Select[Any]:
    """The tenant's usage records in the principal's environment."""
    record = models.UsageRecord
    return readable(principal, record, tenant_id=tenant_id).where(
        record.environment == principal.environment.value
    )


def usage_rollups(principal: Principal, tenant_id: str) -> Select[Any]:
    """The tenant's hourly usage rollups in the principal's environment."""
    rollup = models.UsageRollup
    return readable(principal, rollup, tenant_id=tenant_id).where(
        rollup.environment == principal.environment.value
    )
