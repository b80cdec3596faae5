"""Usage metering: the meter catalog, recording usage, and aggregating it in SQL.

A meter says what its records measure and how they aggregate over a period: SUM of the
quantities, COUNT of the records, MAX quantity, UNIQUE_COUNT of one dimension's distinct
values, or LATEST (the quantity of the last record by occurredAt). coregraph's own meters
(``BUILTIN_METERS``) are fed by the core itself, never by ``recordUsage``; a tenant creates its
own with ``create_meter``.

Recording goes through the unit of work: records and one ``usage.recorded`` event per call (its
counts, not an event per record: usage is the high-volume path). A repeated idempotency key
(per tenant, environment and meter) is accepted and counted once, also under concurrent
retries: the unique key refuses the second insert and the call runs again answering the first
record (``record_usage_once``), as ``services.events.emit_events_once`` does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    distinct,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.exc import IntegrityError

from coregraph import ids
from coregraph.errors import BadUserInput, Conflict, NotFound
from coregraph.models import Meter, UsageRecord, UsageRollup
from coregraph.models.base import Environment, utcnow
from coregraph.models.usage import QUANTITY_SCALE, Quantity
from coregraph.services import quotas, validation
from coregraph.services.uow import UnitOfWork
from coregraph.services.usage_store import hour_of

MAX_KEY_LENGTH = 120
MAX_DIMENSIONS = 10
MAX_DIMENSION_VALUE_LENGTH = 200
MAX_GROUP_BY = 3
# Points one usage() answer may hold; a larger series is refused (narrow the range or groupBy).
MAX_POINTS = 10_000
# A record's quantity stays within this magnitude (SQLite stores millionths in 64 bits).
MAX_QUANTITY = Decimal(10) ** 12
_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
_DIMENSION_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class Aggregation(enum.StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LATEST = "LATEST"


# Gauges (MAX, LATEST) may go below zero; what is added up or counted may not.
_SIGNED = frozenset({Aggregation.MAX, Aggregation.LATEST})


class Granularity(enum.StrEnum):
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """A meter as the catalog shows it: built-in, or a tenant's own (``row``)."""

    key: str
    name: str
    unit: str
    aggregation: Aggregation
    dimensions: tuple[str, ...] = ()
    unique_dimension: str | None = None
    row: Meter | None = None

    @property
    def builtin(self) -> bool:
        return self.row is None

    @classmethod
    def of(cls, row: Meter) -> MeterSpec:
        return cls(
            key=row.key,
            name=row.name,
            unit=row.unit,
            aggregation=Aggregation(row.aggregation),
            dimensions=tuple(row.dimensions),
            unique_dimension=row.unique_dimension,
            row=row,
        )


BUILTIN_METERS: dict[str, MeterSpec] = {
    m.key: m
    for m in (
        MeterSpec("api.requests", "API requests", "request", Aggregation.SUM, ("credential",)),
        MeterSpec("seats", "Seats", "member", Aggregation.MAX),
        MeterSpec("storage.bytes", "Stored bytes", "byte", Aggregation.MAX),
        MeterSpec("events.emitted", "Events emitted", "event", Aggregation.SUM),
        MeterSpec(
            "webhooks.delivered", "Webhooks delivered", "delivery", Aggregation.SUM, ("endpoint",)
        ),
    )
}
# First segments no tenant's meter may start with: the built-ins' and coregraph's own.
RESERVED_NAMESPACES = frozenset(k.split(".", 1)[0] for k in BUILTIN_METERS) | {
    "coregraph",
    "usage",
}


def _meter_key(value: str, field: str = "key") -> str:
    if len(value) > MAX_KEY_LENGTH or not _KEY_RE.match(value):
        raise BadUserInput(
            f"{field}: lowercase dotted segments of letters, digits and '_', each starting with"
            f" a letter, e.g. 'ai.tokens' (at most {MAX_KEY_LENGTH} characters)",
            field=field,
        )
    return value


def _dimension_names(values: Sequence[str], field: str = "dimensions") -> tuple[str, ...]:
    if len(values) > MAX_DIMENSIONS:
        raise BadUserInput(f"{field}: at most {MAX_DIMENSIONS}", field=field)
    for value in values:
        if not _DIMENSION_RE.match(value):
            raise BadUserInput(
                f"{field}: '{value[:70]}' is not a dimension name (1-64 lowercase letters,"
                " digits or '_', starting with a letter)",
                field=field,
            )
    if len(set(values)) != len(values):
        raise BadUserInput(f"{field}: each dimension once", field=field)
    return tuple(values)


async def create_meter(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    key: str,
    name: str,
    unit: str,
    aggregation: Aggregation,
    dimensions: Sequence[str] = (),
    unique_dimension: str | None = None,
) -> Meter:
    """Create one of the tenant's own meters. A meter is fixed once created: records already
    aggregated under it keep their meaning."""
    key = _meter_key(key)
    if key in BUILTIN_METERS or key.split(".", 1)[0] in RESERVED_NAMESPACES:
        raise BadUserInput(
            f"key: '{key}' is in coregraph's own namespace; name your meter in one of yours,"
            " e.g. 'ai.tokens'",
            field="key",
        )
    name = validation.text(name, "name", max_length=200)
    unit = validation.text(unit, "unit", max_length=40)
    names = _dimension_names(dimensions)
    if aggregation is Aggregation.UNIQUE_COUNT:
        if unique_dimension is None or unique_dimension not in names:
            raise BadUserInput(
                "uniqueDimension: UNIQUE_COUNT counts one of the meter's dimensions; name it",
                field="uniqueDimension",
            )
    elif unique_dimension is not None:
        raise BadUserInput(
            "uniqueDimension: only a UNIQUE_COUNT meter counts a dimension",
            field="uniqueDimension",
        )
    taken = Conflict(f"key: '{key}' is already a meter of this tenant", field="key")
    if await uow.session.scalar(
        select(Meter.id).where(Meter.tenant_id == tenant_id, Meter.key == key)
    ):
        raise taken
    row = Meter(
        id=ids.new_id("mtr"),
        tenant_id=tenant_id,
        key=key,
        name=name,
        unit=unit,
        aggregation=aggregation.value,
        dimensions=list(names),
        unique_dimension=unique_dimension,
    )
    uow.session.add(row)
    await uow.flush_unique(taken)
    described = {
        "key": key,
        "name": name,
        "unit": unit,
        "aggregation": aggregation.value,
        "dimensions": list(names),
        "uniqueDimension": unique_dimension,
    }
    uow.record(
        "meter.created", tenant_id=tenant_id, target_type="Meter", target_id=row.id, after=described
    )
    uow.emit(
        "meter.created",
        tenant_id=tenant_id,
        data={
            "meterId": row.id,
            "key": key,
            "aggregation": aggregation.value,
            "dimensions": list(names),
        },
    )
    return row


def catalog(rows: Sequence[Any]) -> list[MeterSpec]:
    """The built-in meters, then the tenant's own (``rows``: its meters, by key)."""
    return [*BUILTIN_METERS.values(), *(MeterSpec.of(row) for row in rows)]


@dataclass(frozen=True, slots=True)
class UsageDraft:
    """One usage record a producer asks to record."""

    meter: str
    quantity: Decimal = Decimal(1)
    occurred_at: datetime | None = None
    dimensions: Any = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedUsage:
    id: str
    meter: str
    quantity: Decimal
    occurred_at: datetime
    # The idempotency key had been used: this is the record first made with it.
    replayed: bool


@dataclass(frozen=True, slots=True)
class LateWindow:
    """How far from now a record's occurredAt may lie: back ``late`` (it lands in its
    period), ahead ``skew`` (producers' clocks differ a little)."""

    late: timedelta = timedelta(days=7)
    skew: timedelta = timedelta(minutes=5)


def _quantity(value: Any, aggregation: Aggregation) -> Decimal:
    try:
        quantity = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise BadUserInput("quantity: not a decimal number", field="quantity") from None
    if not quantity.is_finite():
        raise BadUserInput("quantity: must be a finite number", field="quantity")
    if quantity < 0 and aggregation not in _SIGNED:
        raise BadUserInput(
            f"quantity: must not be negative for a {aggregation.value} meter", field="quantity"
        )
    if abs(quantity) > MAX_QUANTITY:
        raise BadUserInput(f"quantity: at most {MAX_QUANTITY:,f} in magnitude", field="quantity")
    exponent = quantity.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -QUANTITY_SCALE:
        raise BadUserInput(
            f"quantity: at most {QUANTITY_SCALE} digits after the point", field="quantity"
        )
    return quantity


def _occurred_at(value: datetime | None, now: datetime, window: LateWindow) -> datetime:
    if value is None:
        return now
    if value.tzinfo is None:
        raise BadUserInput("occurredAt: must carry a timezone offset", field="occurredAt")
    if value < now - window.late:
        raise BadUserInput(
            f"occurredAt: older than the late-record window ({window.late}); usage that late"
            " is no longer accepted",
            field="occurredAt",
        )
    if value > now + window.skew:
        raise BadUserInput(f"occurredAt: more than {window.skew} in the future", field="occurredAt")
    return value.astimezone(UTC)


def _dimensions(value: Any, meter: MeterSpec) -> dict[str, str]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadUserInput("dimensions: must be an object of strings", field="dimensions")
    for name, item in value.items():
        if name not in meter.dimensions:
            declared = ", ".join(meter.dimensions) or "none"
            raise BadUserInput(
                f"dimensions: '{str(name)[:70]}' is not a dimension of '{meter.key}'"
                f" (declared: {declared})",
                field="dimensions",
            )
        if (
            not isinstance(item, str)
            or not 1 <= len(item) <= MAX_DIMENSION_VALUE_LENGTH
            or not item.isprintable()
        ):
            raise BadUserInput(
                f"dimensions: {name}: 1-{MAX_DIMENSION_VALUE_LENGTH} printable characters",
                field="dimensions",
            )
    if meter.unique_dimension is not None and meter.unique_dimension not in value:
        raise BadUserInput(
            f"dimensions: '{meter.key}' counts distinct '{meter.unique_dimension}'; every"
            " record names one",
            field="dimensions",
        )
    return dict(value)


def _item_error(index: int | None, error: BadUserInput) -> BadUserInput:
    """``error`` about one record of a batch, naming its index; a single record's stays."""
    if index is None:
        return error
    return BadUserInput(
        f"records[{index}].{error.message}",
        field=error.field,
        index=index,
        path=f"records[{index}].{error.field}",
        **error.extra,
    )


async def _recordable_meters(
    uow: UnitOfWork, tenant_id: str, keys: set[str]
) -> dict[str, MeterSpec]:
    rows = await uow.session.scalars(
        select(Meter).where(Meter.tenant_id == tenant_id, Meter.key.in_(sorted(keys)))
    )
    return {row.key: MeterSpec.of(row) for row in rows}


@dataclass(frozen=True, slots=True)
class _Planned:
    meter: MeterSpec
    quantity: Decimal
    occurred_at: datetime
    dimensions: dict[str, str]
    key: str | None


async def record_usage(
    uow: UnitOfWork,
    tenant_id: str,
    drafts: Sequence[UsageDraft],
    *,
    window: LateWindow,
    batch: bool = True,
    look_up_keys: bool = True,
    default_plan: str | None = None,
    builtin: bool = False,
) -> list[RecordedUsage]:
    """Record usage in the principal's environment, in this unit of work: every record is
    checked before anything is written, so one bad record refuses the call (BAD_USER_INPUT
    naming its index) and nothing is recorded. A used idempotency key answers its first
    record (``replayed``); ``look_up_keys=False`` leaves that to the unique key, whose refusal
    ``record_usage_once`` settles."""
    now = utcnow()
    environment = uow.principal.environment
    meters = await _recordable_meters(uow, tenant_id, {d.meter for d in drafts})
    if builtin:
        # coregraph feeding its own meters (services.api_requests), never a client's call.
        meters.update(
            {d.meter: BUILTIN_METERS[d.meter] for d in drafts if d.meter in BUILTIN_METERS}
        )
    planned: list[_Planned] = []
    for index, draft in enumerate(drafts):
        try:
            meter = meters.get(draft.meter)
            if meter is None:
                if draft.meter in BUILTIN_METERS:
                    raise BadUserInput(
                        f"meter: '{draft.meter}' is fed by coregraph itself", field="meter"
                    )
                raise BadUserInput(
                    f"meter: '{draft.meter[:MAX_KEY_LENGTH]}' is not a meter of this tenant;"
                    " createMeter first",
                    field="meter",
                )
            planned.append(
                _Planned(
                    meter=meter,
                    quantity=_quantity(draft.quantity, meter.aggregation),
                    occurred_at=_occurred_at(draft.occurred_at, now, window),
                    dimensions=_dimensions(draft.dimensions, meter),
                    key=validation.idempotency_key(draft.idempotency_key),
                )
            )
        except BadUserInput as error:
            raise _item_error(index if batch else None, error) from None

    firsts: dict[tuple[str, str], RecordedUsage] = {}
    keyed = {(p.meter.key, p.key) for p in planned if p.key is not None}
    if keyed and look_up_keys:
        used = await uow.session.execute(
            select(
                UsageRecord.id,
                UsageRecord.meter,
                UsageRecord.quantity,
                UsageRecord.occurred_at,
                UsageRecord.idempotency_key,
            ).where(
                UsageRecord.tenant_id == tenant_id,
                UsageRecord.environment == environment.value,
                UsageRecord.meter.in_(sorted({meter for meter, _key in keyed})),
                UsageRecord.idempotency_key.in_(sorted({key for _meter, key in keyed})),
            )
        )
        for row in used:
            firsts[(row.meter, row.idempotency_key)] = RecordedUsage(
                row.id, row.meter, row.quantity, row.occurred_at, replayed=True
            )

    answers: list[RecordedUsage] = []
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for plan in planned:
        slot = (plan.meter.key, plan.key) if plan.key is not None else None
        if slot is not None and slot in firsts:
            first = firsts[slot]
            answers.append(
                RecordedUsage(first.id, first.meter, first.quantity, first.occurred_at, True)
            )
            continue
        recorded = RecordedUsage(
            ids.new_id("usg"), plan.meter.key, plan.quantity, plan.occurred_at, replayed=False
        )
        if slot is not None:
            firsts[slot] = recorded
        answers.append(recorded)
        counts[plan.meter.key] = counts.get(plan.meter.key, 0) + 1
        rows.append(
            usage_row(
                tenant_id,
                environment,
                plan.meter.key,
                plan.quantity,
                occurred_at=plan.occurred_at,
                dimensions=plan.dimensions,
                idempotency_key=plan.key,
                recorded_at=now,
                id=recorded.id,
            )
        )
    if rows:
        await uow.insert_usage(rows)
        if not builtin:
            # coregraph's own feeds state no event: they would say nothing but "time passed"
            # (api.requests flushes every few seconds into every active tenant's stream).
            uow.emit(
                "usage.recorded",
                tenant_id=tenant_id,
                data={"records": len(rows), "meters": counts},
            )
        # Never refused by a hard limit (the usage happened); its thresholds are announced.
        await quotas.usage_recorded(
            uow,
            tenant_id,
            [(row["meter"], row["occurred_at"]) for row in rows],
            default_plan=default_plan,
        )
    return answers


def usage_row(
    tenant_id: str,
    environment: Environment,
    meter: str,
    quantity: Decimal,
    *,
    occurred_at: datetime | None = None,
    dimensions: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    recorded_at: datetime | None = None,
    id: str | None = None,
) -> dict[str, Any]:
    """The columns of one usage record, for ``insert_usage``."""
    now = recorded_at or utcnow()
    return {
        "id": id or ids.new_id("usg"),
        "tenant_id": tenant_id,
        "environment": environment.value,
        "meter": meter,
        "quantity": quantity,
        "occurred_at": occurred_at or now,
        "dimensions": dimensions or {},
        "idempotency_key": idempotency_key,
        "recorded_at": now,
    }


async def record_usage_once(
    open_unit_of_work: Callable[[], UnitOfWork],
    tenant_id: str,
    drafts: Sequence[UsageDraft],
    *,
    window: LateWindow,
    batch: bool = True,
    default_plan: str | None = None,
    builtin: bool = False,
) -> list[RecordedUsage]:
    """``record_usage`` in a unit of work of its own. The first attempt does not look its
    keys up (most are new); a used key makes the unique key refuse the insert, and the call
    runs again answering the first records. So does a call that raced another with the same
    key: one commits, the other waits on the unique index, is refused and answers it."""
    for attempt in range(3):
        try:
            async with open_unit_of_work() as uow:
                return await record_usage(
                    uow,
                    tenant_id,
                    drafts,
                    window=window,
                    batch=batch,
                    look_up_keys=attempt > 0,
                    default_plan=default_plan,
                    builtin=builtin,
                )
        except IntegrityError:
            if not any(draft.idempotency_key is not None for draft in drafts):
                raise
    raise Conflict(
        "idempotencyKey: a concurrent call with this key did not settle; retry",
        field="idempotencyKey",
    )


# --- aggregation, in SQL ---

_SQLITE_BUCKETS = {
    Granularity.HOUR: "%Y-%m-%d %H:00:00",
    Granularity.DAY: "%Y-%m-%d 00:00:00",
    Granularity.MONTH: "%Y-%m-01 00:00:00",
}
_FACTOR = 10**QUANTITY_SCALE


@dataclass(frozen=True, slots=True)
class UsagePoint:
    # The bucket's start (None: the whole range).
    start: datetime | None
    group: dict[str, str | None]
    value: Decimal


# UTC hours and days are of fixed width, so PostgreSQL cuts them with date_bin, plain
# arithmetic: date_trunc with a time zone converts every row (a month of 1M records by DAY
# spent most of its time there; bench/RESULTS.md). Months are not: date_trunc.
_PG_BINS: dict[Granularity, ColumnElement[Any]] = {
    Granularity.HOUR: literal_column("interval '1 hour'"),
    Granularity.DAY: literal_column("interval '1 day'"),
}
_PG_ORIGIN: ColumnElement[Any] = literal_column("timestamptz '2000-01-01 00:00:00+00'")


def _bucket(
    dialect: str, granularity: Granularity, moment: Any = UsageRecord.occurred_at
) -> ColumnElement[Any]:
    if dialect == "postgresql":
        width = _PG_BINS.get(granularity)
        if width is not None:
            return func.date_bin(width, moment, _PG_ORIGIN)
        return func.date_trunc(granularity.value.lower(), moment, "UTC")
    return func.strftime(_SQLITE_BUCKETS[granularity], moment)


def _start(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def _values(meter: MeterSpec, dialect: str) -> list[ColumnElement[Any]]:
    """The aggregate columns of ``meter``'s kind."""
    quantity = UsageRecord.quantity
    match meter.aggregation:
        case Aggregation.SUM if dialect == "sqlite":
            # Millionths summed as whole units and remainders: exact in 64-bit integers far
            # past what one sum of millionths could hold.
            micro = type_coerce(quantity, BigInteger())
            return [func.sum(micro // _FACTOR), func.sum(micro % _FACTOR)]
        case Aggregation.SUM:
            return [func.sum(quantity)]
        case Aggregation.COUNT:
            return [func.count()]
        case Aggregation.MAX:
            return [func.max(quantity)]
        case Aggregation.UNIQUE_COUNT:
            assert meter.unique_dimension is not None
            return [
                func.count(distinct(UsageRecord.dimensions[meter.unique_dimension].as_string()))
            ]
        case Aggregation.LATEST:
            return []  # not an aggregate: the last record's quantity (usage_statement)


def _value(meter: MeterSpec, dialect: str, values: Sequence[Any]) -> Decimal:
    if meter.aggregation is Aggregation.SUM and dialect == "sqlite":
        whole, fraction = values
        value = Decimal(int(whole)) + Decimal(int(fraction)).scaleb(-QUANTITY_SCALE)
    else:
        value = Decimal(values[0])
    # The same digits on both backends: no trailing zeros, no exponent.
    return Decimal(format(value.normalize(), "f"))


def empty_value(meter: MeterSpec) -> Decimal | None:
    """A meter's aggregate over no records: nothing added or counted is 0; no gauge is null."""
    return None if meter.aggregation in _SIGNED else Decimal(0)


def usage_statement(
    records: Select[Any],
    meter: MeterSpec,
    *,
    start: datetime,
    end: datetime,
    granularity: Granularity | None,
    group_by: Sequence[str],
    dialect: str,
) -> Select[Any]:
    """One row per non-empty (bucket, group): the bucket's start (when ``granularity``), the
    group's dimension values, then the aggregate column(s) of the meter's kind. ``records``:
    the usage records the principal may read in the tenant and environment (schema.usage)."""
    bucket = [_bucket(dialect, granularity).label("bucket")] if granularity is not None else []
    groups = [
        UsageRecord.dimensions[name].as_string().label(f"g{i}") for i, name in enumerate(group_by)
    ]
    scoped = records.where(
        UsageRecord.meter == meter.key,
        UsageRecord.occurred_at >= start,
        UsageRecord.occurred_at < end,
    )
    values = _values(meter, dialect)
    if meter.aggregation is not Aggregation.LATEST:
        keys = [*bucket, *groups]
        statement = scoped.with_only_columns(*keys, *values)
        if keys:
            statement = statement.group_by(*keys).order_by(*keys)
        return statement
    # The last record of each (bucket, group) by occurredAt; of two at the same moment, the
    # one recorded last.
    rank = (
        func.row_number()
        .over(
            partition_by=[*bucket, *groups] or None,
            order_by=[
                UsageRecord.occurred_at.desc(),
                UsageRecord.recorded_at.desc(),
                UsageRecord.id.desc(),
            ],
        )
        .label("rank")
    )
    ranked = scoped.with_only_columns(*bucket, *groups, UsageRecord.quantity, rank).subquery()
    outer_keys = [ranked.c[c.name] for c in [*bucket, *groups]]
    return select(*outer_keys, ranked.c.quantity).where(ranked.c.rank == 1).order_by(*outer_keys)


ROLLED_UP = frozenset({Aggregation.SUM, Aggregation.COUNT, Aggregation.MAX})


def series_statement(
    records: Select[Any],
    rollups: Select[Any],
    meter: MeterSpec,
    *,
    start: datetime,
    end: datetime,
    granularity: Granularity,
    group_by: Sequence[str],
    dialect: str,
) -> Select[Any]:
    """The ``usage`` query's statement: the rows of ``usage_statement``, read for a SUM,
    COUNT or MAX meter from its hourly rollups for the whole hours of [start, end) and from its
    records for the partial hours at either end (~720 rollups a month per dimension set
    instead of every record); other kinds, and ranges without a whole hour, from the records.
    ``rollups``: the ``UsageRollup`` rows the principal may read (schema.usage)."""
    first_hour = hour_of(start) + (timedelta(hours=1) if hour_of(start) != start else timedelta())
    last_hour = hour_of(end)
    if meter.aggregation not in ROLLED_UP or first_hour >= last_hour:
        return usage_statement(
            records,
            meter,
            start=start,
            end=end,
            granularity=granularity,
            group_by=group_by,
            dialect=dialect,
        )
    rollup, record = UsageRollup, UsageRecord
    value_of = {
        Aggregation.SUM: (rollup.quantity_sum, record.quantity),
        Aggregation.COUNT: (rollup.record_count, literal_column("1")),
        Aggregation.MAX: (rollup.quantity_max, record.quantity),
    }[meter.aggregation]
    whole = rollups.where(
        rollup.meter == meter.key, rollup.hour >= first_hour, rollup.hour < last_hour
    ).with_only_columns(
        _bucket(dialect, granularity, rollup.hour).label("bucket"),
        *[rollup.dimensions[n].as_string().label(f"g{i}") for i, n in enumerate(group_by)],
        type_coerce(value_of[0], BigInteger()).label("v")
        if dialect == "sqlite"
        else value_of[0].label("v"),
    )
    edges = records.where(
        record.meter == meter.key,
        or_(
            and_(record.occurred_at >= start, record.occurred_at < first_hour),
            and_(record.occurred_at >= last_hour, record.occurred_at < end),
        ),
    ).with_only_columns(
        _bucket(dialect, granularity).label("bucket"),
        *[record.dimensions[n].as_string().label(f"g{i}") for i, n in enumerate(group_by)],
        type_coerce(value_of[1], BigInteger()).label("v")
        if dialect == "sqlite"
        else value_of[1].label("v"),
    )
    both = union_all(whole, edges).subquery()
    keys = [both.c.bucket, *[both.c[f"g{i}"] for i in range(len(group_by))]]
    value = both.c.v
    aggregate: list[ColumnElement[Any]]
    if meter.aggregation is Aggregation.MAX:
        # On SQLite the values are millionths (BigInteger): read back as a quantity.
        aggregate = [
            type_coerce(func.max(value), Quantity()) if dialect == "sqlite" else func.max(value)
        ]
    elif meter.aggregation is Aggregation.SUM and dialect == "sqlite":
        aggregate = [func.sum(value // _FACTOR), func.sum(value % _FACTOR)]
    else:
        aggregate = [func.sum(value)]
    return select(*keys, *aggregate).group_by(*keys).order_by(*keys)


def usage_points(
    rows: Sequence[Any],
    meter: MeterSpec,
    *,
    granularity: Granularity | None,
    group_by: Sequence[str],
    dialect: str,
) -> list[UsagePoint]:
    offset = 1 if granularity is not None else 0
    width = offset + len(group_by)
    return [
        UsagePoint(
            start=_start(row[0]) if granularity is not None else None,
            group={name: row[offset + i] for i, name in enumerate(group_by)},
            value=_value(meter, dialect, row[width:]),
        )
        for row in rows
        if row[width] is not None
    ]


# Kinds whose period aggregates one grouped query answers for every meter at once.
_GROUPED = {
    kind: MeterSpec(kind.value, "", "", kind)
    for kind in (Aggregation.SUM, Aggregation.COUNT, Aggregation.MAX)
}


def period_statement(
    records: Select[Any], keys: Sequence[str], *, start: datetime, end: datetime, dialect: str
) -> Select[Any]:
    """One row per meter of ``keys`` with records in [start, end): its key, then the SUM
    column(s), the COUNT and the MAX of its records (``_values`` of each kind)."""
    columns = [c for spec in _GROUPED.values() for c in _values(spec, dialect)]
    return (
        records.where(
            UsageRecord.meter.in_(sorted(keys)),
            UsageRecord.occurred_at >= start,
            UsageRecord.occurred_at < end,
        )
        .with_only_columns(UsageRecord.meter, *columns)
        .group_by(UsageRecord.meter)
    )


async def period_values(
    read: Callable[[Select[Any]], Awaitable[Sequence[Any]]],
    records: Select[Any],
    specs: Sequence[MeterSpec],
    *,
    start: datetime,
    end: datetime,
    dialect: str,
) -> dict[str, Decimal | None]:
    """Each meter's aggregate over [start, end) (``empty_value`` without records), by key:
    what ``usageSummary`` shows and invoices bill. SUM, COUNT and MAX meters in one query;
    a UNIQUE_COUNT or LATEST meter, whose SQL is its own, in one query each."""
    values = {spec.key: empty_value(spec) for spec in specs}
    grouped = {spec.key: spec for spec in specs if spec.aggregation in _GROUPED}
    if grouped:
        widths = [len(_values(kind, dialect)) for kind in _GROUPED.values()]
        rows = await read(
            period_statement(records, list(grouped), start=start, end=end, dialect=dialect)
        )
        for row in rows:
            spec = grouped[row[0]]
            offset = 1
            for kind, width in zip(_GROUPED, widths, strict=True):
                if kind is spec.aggregation:
                    values[spec.key] = _value(spec, dialect, row[offset : offset + width])
                offset += width
    for spec in specs:
        if spec.key in grouped:
            continue
        statement = usage_statement(
            records, spec, start=start, end=end, granularity=None, group_by=(), dialect=dialect
        )
        points = usage_points(
            await read(statement), spec, granularity=None, group_by=(), dialect=dialect
        )
        if points:
            values[spec.key] = points[0].value
    return values


def find_meter(specs: Sequence[MeterSpec], key: str, field: str = "meter") -> MeterSpec:
    for spec in specs:
        if spec.key == key:
            return spec
    raise NotFound("meter not found", field=field)


def group_by_names(meter: MeterSpec, names: Sequence[str]) -> list[str]:
    if len(names) > MAX_GROUP_BY:
        raise BadUserInput(f"groupBy: at most {MAX_GROUP_BY} dimensions", field="groupBy")
    for name in names:
        if name not in meter.dimensions:
            raise BadUserInput(
                f"groupBy: '{name[:70]}' is not a dimension of '{meter.key}'", field="groupBy"
            )
    if len(set(names)) != len(names):
        raise BadUserInput("groupBy: each dimension once", field="groupBy")
    return list(names)


def month_range(period: str | None, now: datetime | None = None) -> tuple[str, datetime, datetime]:
    """A calendar month in UTC, 'YYYY-MM' (None: this month): its name, start and end."""
    if period is None:
        current = (now or utcnow()).astimezone(UTC)
        year, month = current.year, current.month
    else:
        match = re.fullmatch(r"(\d{4})-(\d{2})", period)
        if match is None or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1970:
            raise BadUserInput("period: a month, 'YYYY-MM'", field="period")
        year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return f"{year:04d}-{month:02d}", start, end
