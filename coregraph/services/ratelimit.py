"""Rate limits for the operations attackers repeat: sign-up, login, token refresh, logout by
refresh token, invitation acceptance.

They count operations, not HTTP requests: each resolver call is one hit, so aliasing ``login``
twenty times in one request costs twenty. Per client address (each operation its own count),
and per account where there is one: a canonical email (``coregraph.services.emails``), a user
id, or a token's digest. The address is the TCP peer's unless a trusted proxy names the client
(``COREGRAPH_TRUSTED_PROXIES``).

Sliding windows, approximated as Cloudflare's limiter does: the count is this window's hits plus
the previous window's, weighted by how much of it the sliding window still covers. A fixed
window let a burst straddle the boundary (``limit`` hits at the end of one window and ``limit``
more at the start of the next); this one does not, with two counters per key.
Two implementations behind one interface: in-process (embedded default, one process) and Redis
(shared by every API process).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from coregraph.errors import RateLimited


class RateLimiter(Protocol):
    async def hit(self, key: str, window_seconds: int) -> float:
        """Count one hit; returns the hits in the sliding window ending now, this one included
        (an estimate: the previous fixed window's count is weighted by its remaining share)."""
        ...


def _sliding(previous: int, current: int, now: float, window_seconds: int) -> float:
    elapsed = (now % window_seconds) / window_seconds
    return current + previous * (1.0 - elapsed)


class MemoryRateLimiter:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        # (key, window length, window) -> hits. No lock: ``hit`` never awaits.
        self._counts: dict[tuple[str, int, int], int] = {}
        self._pruned: dict[int, int] = {}  # window length -> the window last pruned at
        self._clock = clock

    async def hit(self, key: str, window_seconds: int) -> float:
        now = self._clock()
        window = int(now // window_seconds)
        if self._pruned.get(window_seconds) != window:
            # Bounded memory, paid once per window (keys are attacker-chosen: never per hit):
            # of each length, only this window and the previous one still count.
            self._counts = {
                k: v
                for k, v in self._counts.items()
                if k[1] != window_seconds or k[2] >= window - 1
            }
            self._pruned[window_seconds] = window
        current = self._counts.get((key, window_seconds, window), 0) + 1
        self._counts[(key, window_seconds, window)] = current
        previous = self._counts.get((key, window_seconds, window - 1), 0)
        return _sliding(previous, current, now, window_seconds)


class RedisRateLimiter:
    def __init__(self, redis: Any, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock

    async def hit(self, key: str, window_seconds: int) -> float:
        now = self._clock()
        window = int(now // window_seconds)
        current_key = f"{self._prefix}:ratelimit:{key}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(current_key)
            # Kept through the next window, where it is the "previous" count.
            pipe.expire(current_key, 2 * window_seconds + 1)
            pipe.get(f"{self._prefix}:ratelimit:{key}:{window - 1}")
            current, _, previous = await pipe.execute()
        return _sliding(int(previous or 0), int(current), now, window_seconds)


def _subject(value: str) -> str:
    # Emails and addresses are personal data: keys hold a digest, never the value. Callers
    # pass canonical forms; normalising here would hide a caller that does not.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


async def enforce(
    limiter: RateLimiter,
    action: str,
    *,
    account: str | None,
    ip: str | None,
    per_account: int,
    per_ip: int,
    window_seconds: int,
) -> None:
    """Raise RATE_LIMITED when this account or this address made too many attempts. Without
    an account, only the address counts."""
    checks = []
    if account:
        checks.append((f"{action}:account:{_subject(account)}", per_account))
    if ip:
        checks.append((f"{action}:ip:{_subject(ip)}", per_ip))
    for key, limit in checks:
        if await limiter.hit(key, window_seconds) > limit:
            raise RateLimited(
                f"too many {action} attempts; try again in up to {window_seconds} seconds",
                retryAfterSeconds=window_seconds,
            )
