"""Fields a list can answer for its items in one batch (``prefetched``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# What a prefetched attribute holds until a list loads it (``prefetched``).
NOT_LOADED: Any = object()


def prefetched(attribute: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a resolver that answers the object's ``attribute`` whenever it holds anything but
    ``NOT_LOADED`` (a list that loaded its page's users, roles or attempts in one batch hands
    them to its items), and loads the value itself otherwise. Compiled plans read such a field
    as an attribute, calling the resolver only for an object whose value was not handed to it
    (``compiled._Planner``): the resolver must answer exactly that attribute then."""

    def mark(resolver: Callable[..., Any]) -> Callable[..., Any]:
        resolver.prefetched = attribute  # type: ignore[attr-defined]
        return resolver

    return mark
