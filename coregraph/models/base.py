"""Declarative base and the column types every table shares."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, MetaData, String, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores no offset, so one is added on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class _JSONDocument(TypeDecorator[Any]):
    """JSON, stored as JSONB on PostgreSQL: what ``JSON().with_variant(JSONB(), "postgresql")``
    gives (the same DDL, bind casts, processors and JSON operators on both backends), without
    importing the PostgreSQL dialect into a process on SQLite, which would carry ~2.5 MiB of
    it unused (``coregraph.db.dialect_insert``)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


JSONDocument = _JSONDocument()


class Environment(enum.StrEnum):
    """Every tenant has two: live data and test data never mix."""

    LIVE = "live"
    TEST = "test"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)

    # The entity's id prefix (``coregraph.ids``): ``rol`` makes ids ``rol_…``, and routes
    # ``node(id:)``. Every table with an ``id`` column of its own declares one.
    __id_prefix__: ClassVar[str | None] = None


@dataclass(frozen=True, slots=True)
class RowSecurity:
    """How PostgreSQL row-level security walls a tenant-owned table (the second wall, DESIGN.md).

    A row is visible and writable when its ``tenant_column`` names one of the transaction's
    tenants (``app.tenant_ids``, set by ``coregraph.db.scope_transaction``). ``also_visible`` /
    ``also_writable`` are SQL conditions OR-ed to that, for the few rows a step must reach
    before it has a tenant (an API key by its hash, your own memberships). The migration that
    creates or changes the table applies this declaration with ``coregraph.migrations.rls``.
    """

    tenant_column: str = "tenant_id"
    also_visible: str | None = None
    also_writable: str | None = None


class TenantOwned:
    """Mixin for the tables whose rows belong to one tenant.

    Declaring it is what makes a table tenant-owned everywhere: row-level security on
    PostgreSQL (``__row_security__``), reads through ``coregraph.schema.readable``, lookups by
    id only among the principal's tenants (``coregraph.schema.entities``), and the tests that
    check each of those take their table list from here (``tenant_owned_tables``).
    """

    __row_security__: ClassVar[RowSecurity] = RowSecurity()
    # True for data of one environment (events, files, webhooks): a principal reads only rows
    # of its own environment, live or test, by every path — lists filter on it, and lookups by
    # id (``node``, ``_entities``) refuse the other environment's rows as not found. The model
    # then has an ``environment`` column.
    __environment_scoped__: ClassVar[bool] = False


def tenant_owned_models() -> list[type[Any]]:
    """Every mapped model that declares ``TenantOwned``, in table-name order."""
    found = [m.class_ for m in Base.registry.mappers if issubclass(m.class_, TenantOwned)]
    return sorted(found, key=lambda model: model.__tablename__)


def entity_prefixes() -> dict[str, str]:
    """Id prefix -> model (and GraphQL type) name, for every model that declares one."""
    prefixes: dict[str, str] = {}
    for mapper in Base.registry.mappers:
        prefix = mapper.class_.__id_prefix__
        if prefix is None:
            continue
        if prefix in prefixes:
            raise ValueError(f"id prefix {prefix!r} declared twice")
        prefixes[prefix] = mapper.class_.__name__
    return prefixes


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)


def id_column() -> Mapped[str]:
    return mapped_column(String(30), primary_key=True)


def environment_column() -> Mapped[Environment]:
    return mapped_column(String(8), nullable=False, default=Environment.LIVE)
