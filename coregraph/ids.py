"""Opaque, unguessable, time-ordered identifiers: ``<prefix>_<26 chars>``.

48 bits of milliseconds then 80 random bits (ULID layout), in Crockford base32. Ordering by id is
ordering by creation, which keyset pagination relies on; the random part makes ids unguessable.
The prefix names the type, so ``node(id:)`` can route a lookup without a table scan. Each
model declares its own (``__id_prefix__``, ``coregraph.models.base``); this module only reads
them.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from functools import cache

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

_ID_RE = re.compile(r"^([a-z]{3})_([0-9a-hjkmnp-tv-z]{26})$")


_lock = threading.Lock()
_last = 0


def _next_value() -> int:
    """Monotonic within a process (the ULID rule): ids minted in the same millisecond still
    sort in the order they were made, so an audit trail reads in the order it was written."""
    global _last
    with _lock:
        value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
        if value <= _last:
            value = _last + 1 + secrets.randbits(16)
        _last = value
        return value


@cache
def prefixes() -> dict[str, str]:
    """Id prefix -> the type it names (model and GraphQL type share the name)."""
    import coregraph.models  # noqa: F401  (every table declared)
    from coregraph.models.base import entity_prefixes

    return entity_prefixes()


def new_id(prefix: str) -> str:
    assert prefix in prefixes(), prefix
    value = _next_value()
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def prefix_of(id_: str) -> str | None:
    """The prefix of a well-formed id, or None."""
    match = _ID_RE.match(id_)
    return match.group(1) if match is not None else None


def type_of(id_: str) -> str | None:
    """The GraphQL type an id belongs to, or None when the id is malformed."""
    match = _ID_RE.match(id_)
    if match is None:
        return None
    return prefixes().get(match.group(1))


def is_valid(id_: str, prefix: str) -> bool:
    match = _ID_RE.match(id_)
    return match is not None and match.group(1) == prefix
