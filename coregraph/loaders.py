"""Per-request dataloaders, one per relation; each batches a tick's lookups into one query.

Every loader is built from the request's principal and only returns rows of tenants the
principal belongs to: a forged id from another tenant loads as ``None``, never as data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from aiodataloader import DataLoader
from sqlalchemy import Row, exists, select

from coregraph.models import Membership, Role, Tenant, User
from coregraph.schema.readable import readable

if TYPE_CHECKING:
    from coregraph.context import Context

T = TypeVar("T")


def load_now_or_later(
    loader: DataLoader, key: str, convert: Callable[[Any], T]
) -> T | Awaitable[T]:
    """``convert(row)`` for ``key``: at once when ``loader`` already holds the row (a list
    resolver loaded its whole page up front), otherwise an awaitable. A field resolver that
    returns this stays synchronous on the primed path, so graphql-core completes a page of
    such objects without a task and a future per item (see ``Tenant.members``)."""
    future = loader.load(key)
    if future.done():
        return convert(future.result())

    async def later() -> T:
        return convert(await future)

    return later()


def _by_id(rows: Iterable[Row[Any]], keys: Sequence[str], attr: str = "id") -> list[Any]:
    found = {getattr(row, attr): row for row in rows}
    return [found.get(key) for key in keys]


def _loader(fn: Callable[[Any], Awaitable[list[Any]]]) -> DataLoader:
    return DataLoader(fn, max_batch_size=500)  # type: ignore[arg-type]


class Loaders:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._by_model: dict[Any, DataLoader] = {}
        self.user = _loader(self._users)
        self.role = self.rows_of(Role)
        self.tenant = self.rows_of(Tenant)
        self.memberships_of_user = _loader(self._memberships_of_users)
        self.addressed_tenant_user = _loader(self._addressed_tenant_users)

    def rows_of(self, model: Any) -> DataLoader:
        """Rows of a tenant-owned ``model`` by id, only in the principal's tenants: one query
        per batch (a gateway's ``_entities`` list of 200 representations is one query)."""
        loader = self._by_model.get(model)
        if loader is None:

            async def load(keys: Sequence[str]) -> list[Any]:
                principal = self._ctx.principal
                if not principal.tenant_scopes:
                    return [None] * len(keys)
                rows = await self._ctx.read(readable(principal, model).where(model.id.in_(keys)))
                return _by_id(rows, keys)

            loader = self._by_model[model] = _loader(load)
        return loader

    async def _users(self, keys: Sequence[str]) -> list[Any]:
        # Users are reached through rows already scoped to the principal's tenants (a membership,
        # the viewer); lookups by a client-supplied id go through ``services.directory``.
        rows = await self._ctx.read(select(User.__table__).where(User.id.in_(keys)))
        return _by_id(rows, keys)

    async def _addressed_tenant_users(self, keys: Sequence[str]) -> list[Any]:
        """Users by id who are members of the tenant the request addresses."""
        tenant_id = self._ctx.principal.tenant_id
        if tenant_id is None:
            return [None] * len(keys)
        rows = await self._ctx.read(
            select(User.__table__).where(
                User.id.in_(keys),
                exists().where(Membership.user_id == User.id, Membership.tenant_id == tenant_id),
            )
        )
        return _by_id(rows, keys)

    async def _memberships_of_users(self, keys: Sequence[str]) -> list[list[Any]]:
        rows = await self._ctx.read(
            readable(self._ctx.principal, Membership)
            .where(Membership.user_id.in_(keys))
            .order_by(Membership.id)
        )
        grouped: dict[str, list[Any]] = {k: [] for k in keys}
        for row in rows:
            grouped[row.user_id].append(row)
        return [grouped[k] for k in keys]
