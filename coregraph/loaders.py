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
from coregraph.rows import column_of
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
    rows = list(rows)
    found = dict(zip(column_of(rows, attr), rows, strict=True))
    return [found.get(key) for key in keys]


_MAX_BATCH = 500


class RowLoader(DataLoader):
    """A DataLoader that can also fetch a whole page of keys at once (``fetch_many``) without
    the future per key that ``load_many`` makes and settles (~1 ms for a page of 200, as much
    as the page's query). Rows fetched that way answer later ``load``s of the same keys in
    this request without a query, as the loader's own cache would."""

    def __init__(self, fetch: Callable[[Sequence[Any]], Awaitable[list[Any]]]) -> None:
        self._fetch = fetch
        self._fetched: dict[Any, Any] = {}
        super().__init__(max_batch_size=_MAX_BATCH)

    async def fetch_many(self, keys: Sequence[Any]) -> list[Any]:
        """The rows of ``keys`` (None where there is none), one query per 500 keys not yet
        known to this loader."""
        fetched = self._fetched
        cache = self._cache
        missing: list[Any] = []
        for key in dict.fromkeys(keys):
            if key in fetched:
                continue
            future = cache.get(self.get_cache_key(key))
            if future is not None and future.done() and future.exception() is None:
                fetched[key] = future.result()
            else:
                missing.append(key)
        for start in range(0, len(missing), _MAX_BATCH):
            chunk = missing[start : start + _MAX_BATCH]
            fetched.update(zip(chunk, await self._fetch(chunk), strict=True))
        return [fetched[key] for key in keys]

    def clear(self, key: Any) -> RowLoader:
        self._fetched.pop(key, None)
        super().clear(key)
        return self

    def clear_all(self) -> RowLoader:
        self._fetched.clear()
        super().clear_all()
        return self

    async def batch_load_fn(self, keys: Sequence[Any]) -> list[Any]:  # type: ignore[override]
        # A method of the class, not a bound method kept on the instance: no cycle.
        fetched = self._fetched
        if not fetched:
            return await self._fetch(keys)
        missing = [key for key in keys if key not in fetched]
        rows = dict(zip(missing, await self._fetch(missing), strict=True)) if missing else {}
        return [fetched[key] if key in fetched else rows[key] for key in keys]


def _loader(fn: Callable[[Sequence[Any]], Awaitable[list[Any]]]) -> RowLoader:
    return RowLoader(fn)


class Loaders:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._by_model: dict[Any, RowLoader] = {}
        self.user = _loader(self._users)
        self.role = self.rows_of(Role)
        self.tenant = self.rows_of(Tenant)
        self.memberships_of_user = _loader(self._memberships_of_users)
        self.addressed_tenant_user = _loader(self._addressed_tenant_users)

    def release(self) -> None:
        """Drop every loader and what it holds, at the end of the request: loaders and their
        batch functions point at each other and at the context, so without this a request's
        rows would wait for the cyclic collector."""
        self.__dict__.clear()

    def rows_of(self, model: Any) -> RowLoader:
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
