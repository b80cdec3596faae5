"""What migrations that add a permission to the catalog share: existing tenants' built-in roles
gain it as new tenants' get it from the catalog."""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def grant_to_builtin_roles(permission: str, role_keys: Sequence[str]) -> None:
    """Add ``permission`` to every tenant's built-in roles named ``role_keys``."""
    roles = sa.table(
        "roles",
        sa.column("id", sa.String),
        sa.column("key", sa.String),
        sa.column("builtin", sa.Boolean),
        sa.column("permissions", _JSON),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(roles.c.id, roles.c.permissions).where(
            roles.c.builtin.is_(True), roles.c.key.in_(role_keys)
        )
    ).all()
    for row in rows:
        permissions = (
            row.permissions if isinstance(row.permissions, list) else json.loads(row.permissions)
        )
        if permission not in permissions:
            bind.execute(
                sa.update(roles)
                .where(roles.c.id == row.id)
                .values(permissions=[*permissions, permission])
            )
