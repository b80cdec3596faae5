"""Where every read of tenant data in the schema starts: a statement already limited to the
rows the principal may read (polar's ``get_readable_statement``, STYLE.md).

A type narrows it further (``.where(...)``, a page, a filter); it never writes the tenant
filter by hand, so no read can forget it. Row-level security on PostgreSQL is the second wall
behind this one (``coregraph.models.base.RowSecurity``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, false, select

from coregraph.auth.principal import Principal


def readable(principal: Principal, model: Any, *, tenant_id: str | None = None) -> Select[Any]:
    """Rows of the tenant-owned ``model`` (its table's columns) in the principal's tenants, or
    in ``tenant_id`` alone when given — no row at all when the principal is not a member."""
    column = getattr(model, model.__row_security__.tenant_column)
    statement = select(model.__table__)
    if tenant_id is not None:
        if not principal.is_member_of(tenant_id):
            return statement.where(false())
        return statement.where(column == tenant_id)
    tenants = list(principal.tenant_scopes)
    if not tenants:
        return statement.where(false())
    return statement.where(column.in_(tenants))
