"""argon2id password hashing (argon2-cffi's defaults follow RFC 9106's recommendations)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verifying against this when the account does not exist keeps login time independent of
# whether the email is known. Made at the first such login, not at import or startup: a hash
# takes its whole memory cost (64 MiB by default) while it runs, so one made at startup set
# every process's peak resident set to ~60 MiB above what it ever used again.
_dummy: tuple[PasswordHasher, str] | None = None


def configure(time_cost: int, memory_kib: int, parallelism: int) -> None:
    """Set the cost of new hashes (existing hashes carry their own parameters)."""
    global _hasher
    current = _hasher
    if (current.time_cost, current.memory_cost, current.parallelism) == (
        time_cost,
        memory_kib,
        parallelism,
    ):
        return
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash with the current hasher's parameters, so verifying against it costs what
    verifying a real account's password costs."""
    global _dummy
    dummy = _dummy
    if dummy is None or dummy[0] is not hasher:
        # Two threads may both get here once; each makes an equivalent hash.
        dummy = _dummy = (hasher, hasher.hash("coregraph-timing-equaliser"))
    return dummy[1]


async def hash_password(password: str) -> str:
    # ~50 ms of CPU: off the event loop so one login does not stall every other request.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    hasher = _hasher

    def verify() -> bool:
        # Made (once) whether or not the account exists, so the first login of either kind
        # costs the same too.
        dummy = _dummy_hash(hasher)
        try:
            return hasher.verify(password_hash or dummy, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
