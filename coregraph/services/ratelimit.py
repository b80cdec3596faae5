"""Rate limiting on the maintained ``limits`` library: one storage per process (in memory, or
Redis shared by every API process) and its sliding-window-counter strategy.

Two users:

- the login limiter (``enforce``): sign-up, login, token refresh, logout by refresh token and
  invitation acceptance, per client address and per account where there is one (a canonical
  email, a user id, or a token's digest). They count operations, not HTTP requests: each
  resolver call is one hit, so aliasing ``login`` twenty times in one request costs twenty.
  The address is the TCP peer's unless a trusted proxy names the client
  (``COREGRAPH_TRUSTED_PROXIES``);
- the plans' operation rate limits (``coregraph.services.plan_limits``).

Sliding window counter, as Cloudflare's limiter approximates one: the count is this window's
hits plus the previous window's, weighted by how much of it the sliding window still covers,
so a burst cannot straddle a window boundary (a fixed window let ``limit`` hits at the end of
one window and ``limit`` more at the start of the next through). Two counters per key, one
atomic Lua script per hit on Redis. A refused hit is not counted (``limits`` checks before it
increments): a client hammering a closed limit is let through again at the limit's rate, never
faster.

Redis: ``limits``' asyncio storage through redis-py (``implementation="redispy"``, on the
connection pool the process already holds), not its default ``coredis``, which is not a
dependency of ours; redis-py 5.2+ is what it needs, and the installed one is used everywhere
else.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.limits import safe_string

from coregraph.errors import RateLimited

log = logging.getLogger("coregraph.ratelimit")


def _limits_uri(redis_url: str) -> str:
    """``limits``' name for a redis-py URL: ``redis://`` → ``async+redis://``."""
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


class Window(RateLimitItemPerSecond):
    """``amount`` hits per ``multiples`` seconds, counted under a key without the amount
    (``limits`` puts it in the key): a limit raised or lowered (a plan changed, a key's own
    limits set) keeps counting what was already spent in the window instead of starting
    afresh."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        parts = [safe_string(k) for k in identifiers]
        return f"{self.namespace}/{'/'.join(parts)}/{self.multiples}s"


class Limiter:
    """A sliding-window-counter limiter over one ``limits`` storage."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._last_failure_logged = -math.inf

    @classmethod
    def create(cls, redis: Any = None, redis_url: str | None = None, prefix: str = "") -> Limiter:
        """In memory, or in Redis (sharing ``redis``' connection pool) when one is given."""
        if redis is None or redis_url is None:
            return cls(MemoryStorage())
        storage = RedisStorage(
            _limits_uri(redis_url),
            implementation="redispy",
            key_prefix=f"{prefix}:limits",
            connection_pool=redis.connection_pool,
        )
        return cls(storage)

    async def hit(self, item: RateLimitItem, *identifiers: str, cost: int = 1) -> bool:
        """Take ``cost`` from the limit; False (and nothing taken) when it does not fit.

        Fails open: when the storage cannot answer (Redis down), the hit is let through and the
        outage logged (at most once a minute) — an unreachable counter must not take the whole
        API down with it. What the outage lets through is bounded by its length."""
        try:
            return await self._strategy.hit(item, *identifiers, cost=cost)
        except Exception:
            now = time.monotonic()
            if now - self._last_failure_logged > 60:
                self._last_failure_logged = now
                log.exception("the rate-limit storage cannot answer; letting requests through")
            return True

    async def retry_after(self, item: RateLimitItem, *identifiers: str) -> int:
        """Whole seconds until the limit lets a hit through again (at least 1)."""
        stats = await self._strategy.get_window_stats(item, *identifiers)
        return max(1, math.ceil(stats.reset_time - time.time()))


def _subject(value: str) -> str:
    # Emails and addresses are personal data: keys hold a digest, never the value. Callers
    # pass canonical forms; normalising here would hide a caller that does not.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


async def enforce(
    limiter: Limiter,
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
        checks.append(("account", _subject(account), per_account))
    if ip:
        checks.append(("ip", _subject(ip), per_ip))
    for kind, subject, limit in checks:
        item = Window(limit, window_seconds)
        if not await limiter.hit(item, "auth", action, kind, subject):
            retry = await limiter.retry_after(item, "auth", action, kind, subject)
            raise RateLimited(
                f"too many {action} attempts; try again in {retry} seconds",
                retryAfter=retry,
                retryAfterSeconds=retry,
            )
