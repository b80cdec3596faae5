"""Reading result rows by column name at the cost of reading them by position.

SQLAlchemy's ``Row`` answers ``row.name`` only after the ordinary lookup on its type has failed
and raised a formatted ``AttributeError`` (SQLAlchemy 2.1's Cython row: ~400 ns a column, 2.0 µs
for five, measured); by position it is ~30 ns. In the hand-written baseline of ``bench`` those
failed lookups were 15% of all the instructions a members page costs (callgrind). Code that
reads several columns of many rows (a page's ``from_row`` conversions) reads them through a
``Columns``: the positions are looked up once per result shape (``row._key_to_index``, the
name-to-position map every row of one statement's results shares).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

# Result shapes remembered per Columns: statements are few, but SQLAlchemy can make a new
# shape for a statement its cache evicted, so the map is emptied past this size.
_SHAPES = 64


class Columns:
    """``Columns("id", "name")(row) == (row.id, row.name)``, read by position."""

    __slots__ = ("_by_shape", "names")

    def __init__(self, *names: str) -> None:
        if len(names) < 2:
            raise ValueError("Columns reads two columns or more (one is row[index] or getattr)")
        self.names = names
        self._by_shape: dict[int, tuple[Any, Callable[[Any], tuple[Any, ...]]]] = {}

    def __call__(self, row: Any) -> tuple[Any, ...]:
        positions = getattr(row, "_key_to_index", None)
        if positions is None:  # not a SQLAlchemy row (or a version without the map)
            return tuple(getattr(row, name) for name in self.names)
        known = self._by_shape.get(id(positions))
        if known is None or known[0] is not positions:
            if len(self._by_shape) >= _SHAPES:
                self._by_shape.clear()
            found = [positions.get(name) for name in self.names]
            if None in found:  # a column it lacks, or an ambiguous one: the row says which
                return tuple(getattr(row, name) for name in self.names)
            known = self._by_shape[id(positions)] = (positions, itemgetter(*found))
        return known[1](row)  # type: ignore[no-any-return]


def column_of(rows: Sequence[Any], name: str) -> list[Any]:
    """``[row.<name> for row in rows]`` for the rows of one result, with the position looked
    up once."""
    if not rows:
        return []
    positions = getattr(rows[0], "_key_to_index", None)
    position = positions.get(name) if positions is not None else None
    if position is None:
        return [getattr(row, name) for row in rows]
    return [row[position] for row in rows]
