"""Usage metering: a tenant's own meters and the usage records they aggregate.

Built-in meters (``coregraph.services.usage.BUILTIN_METERS``) are not stored, as built-in event
types are not. A record names its meter by key, so the built-ins need no row to be recorded
against. Quantities are exact decimals (``Quantity``), never floats.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Numeric,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    environment_column,
    id_column,
    utcnow,
)

# Digits a quantity may carry after the point (services.usage refuses more).
QUANTITY_SCALE = 6
_SQLITE_FACTOR = 10**QUANTITY_SCALE


class Quantity(TypeDecorator[Decimal]):
    """An exact decimal with ``QUANTITY_SCALE`` fractional digits: NUMERIC on PostgreSQL; on
    SQLite, which has no exact decimal type (SQLAlchemy's Numeric goes through float there),
    an integer count of millionths, which SQLite sums exactly."""

    impl = Numeric(30, QUANTITY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(30, QUANTITY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return int(value.scaleb(QUANTITY_SCALE))

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-QUANTITY_SCALE)
        return Decimal(value)


class Meter(TenantOwned, Timestamped, Base):
    """A tenant's own meter: what its usage records measure and how they aggregate."""

    __tablename__ = "meters"
    __id_prefix__ = "mtr"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    key: Mapped[str] = mapped_column(String(120), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    unit: Mapped[str] = mapped_column(String(40), nullable=False)
    # SUM, COUNT, MAX, UNIQUE_COUNT or LATEST.
    aggregation: Mapped[str] = mapped_column(String(16), nullable=False)
    dimensions: Mapped[list[str]] = mapped_column(JSONDocument, nullable=False)
    # UNIQUE_COUNT counts the distinct values of this dimension.
    unique_dimension: Mapped[str | None] = mapped_column(String(64))


class UsageRecord(TenantOwned, Base):
    """One measured quantity of a meter at a moment, in a tenant's environment."""

    __tablename__ = "usage_records"
    __id_prefix__ = "usg"
    __environment_scoped__ = True
    __table_args__ = (
        # A repeated idempotency key is counted once (services.usage).
        UniqueConstraint("tenant_id", "environment", "meter", "idempotency_key"),
        Index("ix_usage_records_tenant_meter_occurred", "tenant_id", "meter", "occurred_at"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    meter: Mapped[str] = mapped_column(String(120), nullable=False)
    quantity: Mapped[Decimal] = mapped_column(Quantity(), nullable=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    dimensions: Mapped[dict[str, str]] = mapped_column(JSONDocument, nullable=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


class UsageRollup(TenantOwned, Base):
    """A meter's records of one UTC hour and one set of dimension values, added up as they are
    written (``services.usage_store.insert_usage``, in the records' own transaction): what the
    ``usage`` query reads for SUM, COUNT and MAX meters instead of every record (a month of 1M
    records is ~720 rows per dimension set; bench/RESULTS.md)."""

    __tablename__ = "usage_rollups"
    __environment_scoped__ = True

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    environment: Mapped[Environment] = mapped_column(String(8), primary_key=True)
    meter: Mapped[str] = mapped_column(String(120), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    # The dimensions as canonical JSON (sorted keys, no spaces): the group's identity.
    dimensions_key: Mapped[str] = mapped_column(String(2000), primary_key=True)
    dimensions: Mapped[dict[str, str]] = mapped_column(JSONDocument, nullable=False)
    quantity_sum: Mapped[Decimal] = mapped_column(Quantity(), nullable=False)
    record_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quantity_max: Mapped[Decimal] = mapped_column(Quantity(), nullable=False)
