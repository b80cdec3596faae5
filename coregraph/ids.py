"""Opaque, unguessable, time-ordered identifiers: ``<prefix>_<26 chars>``.

48 bits of milliseconds then 80 random bits (ULID layout), in Crockford base32. Ordering by id is
ordering by creation, which keyset pagination relies on; the random part makes ids unguessable.
The prefix names the type, so ``node(id:)`` can route a lookup without a table scan. Each
model declares its own (``__id_prefix__``, ``coregraph.models.base``); this module only reads
them.
"""

from __future__ import annotations

import os
import re
import threading
import time
from functools import cache

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]
_PAIR_SHIFTS = range(120, -10, -10)

_ID_RE = re.compile(r"^([a-z]{3})_([0-9a-hjkmnp-tv-z]{26})$")


_lock = threading.Lock()
_last = 0
# Random bytes from the OS, drawn 4 KiB at a time and used once each: one system call per 409
# ids instead of one per id (a 100-event batch made 100 calls). A forked child starts afresh,
# never reusing its parent's bytes.
_RANDOM_CHUNK = 4096
_random = b""
_random_at = 0


def _forget_random() -> None:
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def _random_bits_80() -> int:
    """80 bits from the OS's CSPRNG (the caller holds ``_lock``)."""
    global _random, _random_at
    if _random_at + 10 > len(_random):
        _random, _random_at = os.urandom(_RANDOM_CHUNK), 0
    value = int.from_bytes(_random[_random_at : _random_at + 10])
    _random_at += 10
    return value


def _next_value() -> int:
    """Monotonic within a process (the ULID rule): ids minted in the same millisecond still
    sort in the order they were made, so an audit trail reads in the order it was written."""
    global _last
    with _lock:
        value = (int(time.time() * 1000) << 80) | _random_bits_80()
        if value <= _last:
            value = _last + 1 + (_random_bits_80() & 0xFFFF)
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
    # 26 base32 characters, most significant first, two (10 bits) at a time.
    pairs = _PAIRS
    return f"{prefix}_{''.join([pairs[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])}"


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
