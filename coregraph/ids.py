"""Opaque, unguessable, time-ordered identifiers: ``<prefix>_<26 chars>``.

48 bits of milliseconds then 80 random bits (ULID layout), in Crockford base32. Ordering by id is
ordering by creation, which keyset pagination relies on; the random part makes ids unguessable.
The prefix names the type, so ``node(id:)`` can route a lookup without a table scan.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

PREFIXES = {
    "usr": "User",
    "ten": "Tenant",
    "mem": "Membership",
    "rol": "Role",
    "inv": "Invitation",
    "key": "ApiKey",
    "aud": "AuditEntry",
    "ses": "Session",
    "ext": "ExternalIdentity",
}
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


def new_id(prefix: str) -> str:
    assert prefix in PREFIXES, prefix
    value = _next_value()
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def type_of(id_: str) -> str | None:
    """The GraphQL type an id belongs to, or None when the id is malformed."""
    match = _ID_RE.match(id_)
    if match is None:
        return None
    return PREFIXES.get(match.group(1))


def is_valid(id_: str, prefix: str) -> bool:
    match = _ID_RE.match(id_)
    return match is not None and match.group(1) == prefix
