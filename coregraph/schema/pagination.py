"""Relay-style cursor connections with keyset pagination.

Ids are time-ordered (``coregraph.ids``), so "after this cursor" is ``id > cursor`` on an index
(``id < cursor`` for a newest-first list): constant cost at any depth, and stable while rows
are added. A stream's list (the audit trail) pages by its chain position instead, with cursors
of its own (``Cursors``): ids are made before commit, so one that commits late would land
behind a reader's cursor (DESIGN.md, Streams).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import strawberry
from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute
from strawberry.types.nodes import SelectedField, Selection

from coregraph import ids
from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.rows import column_of

T = TypeVar("T")
_CURSOR_PREFIX = "c1:"


@strawberry.type(description="Where a page sits in a list (Relay cursor connections).")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@dataclass(frozen=True, slots=True)
class Cursors:
    """How a list's cursors carry its keyset key: ``decode`` raises BAD_USER_INPUT for a
    cursor it did not make."""

    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


@strawberry.type
class Edge(Generic[T]):
    node: T
    key: strawberry.Private[Any]
    cursors: strawberry.Private[Cursors]

    @strawberry.field
    def cursor(self) -> str:
        # Encoded when asked for: list UIs often select only the nodes.
        return self.cursors.encode(self.key)


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo
    # The list's whole statement (unpaginated), counted only when totalCount is asked for.
    _statement: strawberry.Private[Select[Any]]

    @strawberry.field(description="How many items the whole list holds (one extra query).")
    async def total_count(self, info: strawberry.Info[Context, None]) -> int:
        rows = await info.context.read(select(func.count()).select_from(self._statement.subquery()))
        return int(rows[0][0])

    @strawberry.field(description="The items of this page, without cursors.")
    def nodes(self) -> list[T]:
        return [edge.node for edge in self.edges]


def node_selects(info: strawberry.Info, name: str) -> bool:
    """Whether the connection field being resolved selects ``name`` on its nodes, through
    ``edges { node }`` or ``nodes``, fragments included (to load a relation for a whole page
    only when it is asked for)."""
    return any(
        _selects(field.selections, ("edges", "node", name))
        or _selects(field.selections, ("nodes", name))
        for field in info.selected_fields
    )


def _selects(selections: list[Selection], path: tuple[str, ...]) -> bool:
    if not path:
        return True
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == path[0] and _selects(selection.selections, path[1:]):
                return True
        elif _selects(selection.selections, path):  # a fragment: same level
            return True
    return False


def encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, field: str = "after") -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    key = raw.removeprefix(_CURSOR_PREFIX)
    # Keys are coregraph ids; anything else (e.g. a NUL byte, which PostgreSQL refuses in a
    # query) was not made here.
    if not raw.startswith(_CURSOR_PREFIX) or ids.type_of(key) is None:
        raise BadUserInput(f"{field}: not a cursor from this list", field=field)
    return key


def page_size(ctx: Context, first: int | None) -> int:
    limit = ctx.settings.max_page_size
    if first is None:
        return min(50, limit)
    if first < 0 or first > limit:
        raise BadUserInput(f"first: between 0 and {limit}", field="first")
    return first


ID_CURSORS = Cursors(encode_cursor, decode_cursor)


async def paginate(
    ctx: Context,
    statement: Select[Any],
    key: InstrumentedAttribute[Any],
    first: int | None,
    after: str | None,
    to_node: Callable[[Any], T],
    *,
    newest_first: bool = False,
    cursors: Cursors = ID_CURSORS,
) -> Connection[T]:
    """One page of ``statement`` ordered by ``key`` (a time-ordered id, unless ``cursors``
    say otherwise), oldest first unless ``newest_first`` (an index ending in ``key`` serves
    both directions)."""
    size = page_size(ctx, first)
    page = statement
    if after is not None:
        cursor = cursors.decode(after)
        page = page.where(key < cursor if newest_first else key > cursor)
    order = key.desc() if newest_first else key
    rows = await ctx.read(page.order_by(order).limit(size + 1))
    has_next = len(rows) > size
    rows = rows[:size]
    keys = column_of(rows, key.key)
    edges = [
        Edge(node=to_node(row), key=value, cursors=cursors)
        for row, value in zip(rows, keys, strict=True)
    ]
    return Connection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=has_next,
            has_previous_page=after is not None,
            start_cursor=cursors.encode(keys[0]) if keys else None,
            end_cursor=cursors.encode(keys[-1]) if keys else None,
        ),
        _statement=statement,
    )
