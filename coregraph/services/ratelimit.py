"""Rate limits for the operations attackers repeat: login, token refresh, invitation acceptance.

They count operations, not HTTP requests: each resolver call is one hit, so aliasing ``login``
twenty times in one request costs twenty. Fixed windows, per account and per client address.
Two implementations behind one interface: in-process (embedded default, one process) and Redis
(shared by every API process).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, Protocol

from coregraph.errors import RateLimited


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window_seconds: int) -> int:
        """Count one hit; returns the hits in the current window, this one included."""
        ...


class MemoryRateLimiter:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}
        self._lock = asyncio.Lock()

    async def hit(self, key: str, limit: int, window_seconds: int) -> int:
        window = int(time.time() // window_seconds)
        async with self._lock:
            if len(self._windows) > 100_000:  # bounded memory: drop windows that have ended
                self._windows = {k: v for k, v in self._windows.items() if v[0] >= window}
            start, count = self._windows.get(key, (window, 0))
            count = count + 1 if start == window else 1
            self._windows[key] = (window, count)
            return count


class RedisRateLimiter:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def hit(self, key: str, limit: int, window_seconds: int) -> int:
        window = int(time.time() // window_seconds)
        redis_key = f"{self._prefix}:ratelimit:{key}:{window}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(redis_key)
            pipe.expire(redis_key, window_seconds + 1)
            count, _ = await pipe.execute()
        return int(count)


def _subject(value: str) -> str:
    # Emails and addresses are personal data: keys hold a digest, never the value.
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


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
    """Raise RATE_LIMITED when this account or this address made too many attempts."""
    checks = []
    if account:
        checks.append((f"{action}:account:{_subject(account)}", per_account))
    if ip:
        checks.append((f"{action}:ip:{_subject(ip)}", per_ip))
    for key, limit in checks:
        if await limiter.hit(key, limit, window_seconds) > limit:
            raise RateLimited(
                f"too many {action} attempts; try again in up to {window_seconds} seconds",
                retryAfterSeconds=window_seconds,
            )
