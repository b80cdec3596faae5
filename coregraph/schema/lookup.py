"""Entities and lookups by a client-supplied id, shared by ``node(id:)`` and ``_entities``.

An entity is a GraphQL type that stands for a row with a global id. It is declared once, on
its type, with ``@entity(Model)``; from that one declaration follow:

- its lookup by id for ``node(id:)`` (routed by the id's prefix, which the model declares with
  ``__id_prefix__``) and for ``_entities`` (the type's ``resolve_reference``);
- its place in the schema (``coregraph.api`` builds with ``ENTITIES``).

A lookup returns the object only when it belongs to a tenant the principal is a member of
(``Loaders.rows_of``, which starts from ``schema.readable``) and, for environment-scoped models,
to the principal's environment; anything else is ``None``, so "does not exist" and "not yours"
look the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from coregraph import ids

if TYPE_CHECKING:
    from coregraph.context import Context

T = TypeVar("T")
Finder = Callable[["Context", str], Awaitable[Any | None]]

# GraphQL type name -> the strawberry type, for every declared entity.
ENTITIES: dict[str, type[Any]] = {}
_FINDERS: dict[str, Finder] = {}  # id prefix -> lookup
_FINDERS_BY_NAME: dict[str, Finder] = {}  # GraphQL type name -> lookup


def entity(model: Any, *, find: Finder | None = None) -> Callable[[type[T]], type[T]]:
    """Declare a strawberry type (decorated below this) as the GraphQL face of ``model``.

    ``find`` replaces the default lookup: a row of a tenant-owned model, among the principal's
    tenants, converted with the type's ``from_row``.
    """
    prefix = model.__id_prefix__
    if prefix is None:
        raise ValueError(f"{model.__name__} declares no __id_prefix__")

    def declare(cls: type[T]) -> type[T]:
        name = cls.__strawberry_definition__.name  # type: ignore[attr-defined]
        if name != model.__name__:
            raise ValueError(f"{name}: an entity type is named after its model {model.__name__}")
        finder = find or _tenant_row(model, cls.from_row)  # type: ignore[attr-defined]

        async def resolve_reference(info: Any, id: str) -> Any | None:
            return await finder(info.context, str(id))

        cls.resolve_reference = staticmethod(resolve_reference)  # type: ignore[attr-defined]
        ENTITIES[name] = cls
        _FINDERS[prefix] = finder
        _FINDERS_BY_NAME[name] = finder
        return cls

    return declare


def _tenant_row(model: Any, convert: Callable[[Any], Any]) -> Finder:
    prefix = model.__id_prefix__
    # Another environment's row is not found, as another tenant's is (``TenantOwned``).
    scoped = getattr(model, "__environment_scoped__", False)

    async def find_row(ctx: Context, id_: str) -> Any | None:
        if not ids.is_valid(id_, prefix):
            return None
        row = await ctx.loaders.rows_of(model).load(id_)
        if row is None or (scoped and row.environment != ctx.principal.environment):
            return None
        return convert(row)

    return find_row


async def node(ctx: Context, id_: str) -> Any | None:
    find_by_prefix = _FINDERS.get(ids.prefix_of(id_) or "")
    return await find_by_prefix(ctx, id_) if find_by_prefix else None


async def find(ctx: Context, type_name: str, id_: str) -> Any | None:
    """The ``type_name`` object with this id, if the principal may reach it."""
    return await _FINDERS_BY_NAME[type_name](ctx, id_)
