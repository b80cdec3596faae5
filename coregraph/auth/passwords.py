"""argon2id password hashing (argon2-cffi's defaults follow RFC 9106's recommendations)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verifying against this when the account does not exist keeps login time independent of
# whether the email is known.
_DUMMY_HASH = _hasher.hash("coregraph-timing-equaliser")


def configure(time_cost: int, memory_kib: int, parallelism: int) -> None:
    """Set the cost of new hashes (existing hashes carry their own parameters)."""
    global _hasher, _DUMMY_HASH
    current = _hasher
    if (current.time_cost, current.memory_cost, current.parallelism) == (
        time_cost,
        memory_kib,
        parallelism,
    ):
        return
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
    _DUMMY_HASH = _hasher.hash("coregraph-timing-equaliser")


async def hash_password(password: str) -> str:
    # ~50 ms of CPU: off the event loop so one login does not stall every other request.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
