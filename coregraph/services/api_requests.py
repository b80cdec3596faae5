"""The built-in ``api.requests`` meter, fed by every authenticated operation in a tenant, and
the plan's monthly cap on it (issue 10).

No database write per request: each operation adds 1 to a counter per (tenant, environment,
credential) — in this process's memory, or in one Redis hash shared by every API process
(``HINCRBY``) — and the counters are flushed in batches every
``COREGRAPH_API_REQUESTS_FLUSH_SECONDS`` and at shutdown, through usage's idempotent ingest
(``usage.record_usage_once`` with ``builtin=True``; a client's ``recordUsage`` still refuses
built-in meters). A batch is one usage record per credential, whose idempotency key is the
batch's name (the process's identity and its flush sequence number, or the Redis batch key) and
the credential: a flush retried after an error, or a Redis batch taken over from a dead process,
counts once.

Crash loss: in memory, a process that dies loses what it counted since its last flush (at most
one flush interval); with Redis, the counts live in Redis and a batch cut but not recorded stays
there (``…:api-requests:batches``) for the next flush of any process.

The monthly cap: when the tenant's plan has a hard ``api.requests`` limit per MONTH, an
operation past it is refused with QUOTA_EXCEEDED (meter, limit, current). ``current`` is the
month's recorded usage in the request's environment plus the counts not yet recorded.
Refused operations are not counted. The two halves must describe the same moment, or a flush
landing between them counts its batch twice (a refusal too early) or not at all (an operation
past the cap admitted):

- in memory, a tenant's recorded usage is read, and its batches recorded, under one lock per
  tenant and environment, so a read never straddles a recording;
- with Redis, the not-yet-recorded count per tenant lives in its own hash (``…:unrecorded``),
  which a flush decrements, in the same MULTI that deletes the batch, together with a
  per-tenant generation (``…:generation``) the count reads back with its increment. The
  recorded usage is cached under the generation seen before it was read and reloaded once the
  generation moves, so a cache never pairs an old database total with a count already taken
  off. Between a batch's commit and that MULTI (one Redis round trip) the batch is seen twice:
  the error is on the side of refusing.

The recorded usage is also re-read every ``COREGRAPH_PLAN_LIMITS_CACHE_SECONDS`` (the month
turning, records written by a process on another Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import os
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db
from coregraph.auth.principal import system_principal
from coregraph.errors import QuotaExceeded
from coregraph.models import UsageRecord
from coregraph.models.base import Environment, utcnow
from coregraph.models.usage import QUANTITY_SCALE
from coregraph.request import RequestMeta
from coregraph.services import billing, usage
from coregraph.services.uow import UnitOfWork

log = logging.getLogger("coregraph.api_requests")

METER = "api.requests"
ACTOR = "coregraph:api-requests"
# A batch whose records failed this many flushes in a row is dropped (logged).
MAX_ATTEMPTS = 10
# The periodic flush's task (a test counting a request's statements leaves it out).
FLUSH_TASK = "api-requests-flush"
# (tenant, environment, credential)
Slot = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Batch:
    """Counts cut at ``at``, recorded under ``name`` (idempotency keys derive from it)."""

    name: str
    at: datetime
    counts: Mapping[Slot, int]
    # Flushes that failed to record it so far.
    attempts: int = 0
    # Counted in this process's memory (not cut from Redis): its recording is taken off the
    # process's own not-yet-recorded count.
    local: bool = False


@dataclass
class _Recorded:
    expires: float
    month_start: datetime
    value: Decimal
    # The Redis generation of the tenant's recordings when it was read (None in memory).
    generation: int | None = None


@dataclass(frozen=True, slots=True)
class _Recording:
    """What ``record`` did: the batch's counts left to try again (None when all were recorded)
    and, per (tenant, environment), the counts recorded now or found recorded before."""

    left: Batch | None
    done: Mapping[tuple[str, str], int]


@dataclass
class ApiRequestMeter:
    engine: AsyncEngine
    flush_seconds: float
    cache_seconds: float
    redis: Any = None
    prefix: str = "coregraph"
    clock: Callable[[], float] = time.monotonic
    # The process's identity in idempotency keys: host, pid and a random part (pids repeat).
    identity: str = field(
        default_factory=lambda: f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    sequence: int = 0
    _pending: dict[Slot, int] = field(default_factory=dict)
    # Counted and not yet recorded (pending and batches in flight), per (tenant, environment).
    _unrecorded: dict[tuple[str, str], int] = field(default_factory=dict)
    _retry: list[Batch] = field(default_factory=list)
    _recorded: dict[tuple[str, str], _Recorded] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # In memory: one lock per (tenant, environment) between reading its recorded usage and
    # recording its batches (held only while someone waits on it).
    _tenant_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = field(
        default_factory=weakref.WeakValueDictionary
    )
    _last_failure_logged: float = -math.inf

    # --- counting and the cap ---------------------------------------------------------------

    @functools.cached_property
    def _keys(self) -> str:
        """Where this deployment's counts live in Redis: under the prefix and the database's
        digest, so deployments sharing a Redis (and a prefix by mistake, or test sessions on
        databases of their own) never record each other's counts."""
        url = self.engine.url.render_as_string(hide_password=False) if self.engine else ""
        digest = hashlib.sha256(url.encode()).hexdigest()[:12]
        return f"{self.prefix}:api-requests:{digest}"

    @property
    def _hash(self) -> str:
        return f"{self._keys}:pending"

    @property
    def _batches(self) -> str:
        return f"{self._keys}:batches"

    @property
    def _unrecorded_hash(self) -> str:
        return f"{self._keys}:unrecorded"

    @property
    def _generations(self) -> str:
        return f"{self._keys}:generation"

    def _tenant_lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._tenant_locks.get(key)
        if lock is None:
            lock = self._tenant_locks[key] = asyncio.Lock()
        return lock

    async def count(
        self, tenant_id: str, environment: Environment, credential: str, cap: Decimal | None
    ) -> None:
        """Count one operation; QUOTA_EXCEEDED (and not counted) when it is past ``cap``."""
        slot = (tenant_id, environment.value, credential)
        if self.redis is not None:
            try:
                await self._count_in_redis(slot, environment, cap)
                return
            except QuotaExceeded:
                raise
            except Exception:
                # Redis cannot count now: count here, recorded by this process's next flush
                # (``flush`` records local counts first), so an outage neither refuses
                # operations nor loses their counts beyond what a crash would.
                now = self.clock()
                if now - self._last_failure_logged > 60:
                    self._last_failure_logged = now
                    log.exception("api.requests: Redis cannot count; counting in this process")
        key = (tenant_id, environment.value)
        if cap is None:
            self._add_here(slot)
            return
        # The check and the count as one step, between this tenant's recordings.
        async with self._tenant_lock(key):
            current = await self.recorded(tenant_id, environment) + self._unrecorded.get(key, 0)
            _check(cap, current)
            self._add_here(slot)

    def _add_here(self, slot: Slot) -> None:
        key = (slot[0], slot[1])
        self._pending[slot] = self._pending.get(slot, 0) + 1
        self._unrecorded[key] = self._unrecorded.get(key, 0) + 1

    async def _count_in_redis(
        self, slot: Slot, environment: Environment, cap: Decimal | None
    ) -> None:
        key = (slot[0], slot[1])
        field = "|".join(key)
        if cap is None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(self._hash, "|".join(slot), 1)
                pipe.hincrby(self._unrecorded_hash, field, 1)
                await pipe.execute()
            return
        # The generation the cached recorded usage was read under; Redis says if it moved.
        cached = self._recorded.get(key)
        expected = cached.generation if cached is not None else None
        for attempt in range(_GENERATION_ATTEMPTS):
            if expected is None:
                expected = int(await self.redis.hget(self._generations, field) or 0)
            recorded = await self.recorded(slot[0], environment, expected)
            # Counted in this process while Redis could not answer, not recorded yet.
            local = self._unrecorded.get(key, 0)
            status, unrecorded, generation = await self._check_and_count(
                keys=[self._hash, self._unrecorded_hash, self._generations],
                args=[
                    "|".join(slot),
                    field,
                    str(recorded + local),
                    # The last attempt decides with what it read, even if a flush moved on.
                    expected if attempt < _GENERATION_ATTEMPTS - 1 else -1,
                    str(cap),
                ],
            )
            if status == 1:
                return
            if status == -1:
                _check(cap, recorded + local + int(unrecorded))
            expected = int(generation)

    @functools.cached_property
    def _check_and_count(self) -> Any:
        """Redis, atomically: refuse past the cap (-1), or report that the tenant's recordings
        moved on since the caller read them (0, so it reads them again), or count (1)."""
        return self.redis.register_script(_CHECK_AND_COUNT)

    async def unrecorded(self, tenant_id: str, environment: Environment) -> Decimal:
        """The tenant's operations counted and not recorded yet (``quota("api.requests")``
        adds them to the records), in this process and, with Redis, in every one."""
        key = (tenant_id, environment.value)
        count = self._unrecorded.get(key, 0)
        if self.redis is not None:
            try:
                count += int(await self.redis.hget(self._unrecorded_hash, "|".join(key)) or 0)
            except Exception:
                log.warning("api.requests: Redis cannot tell the unrecorded count")
        return Decimal(count)

    async def recorded(
        self, tenant_id: str, environment: Environment, generation: int | None = None
    ) -> Decimal:
        """The month's recorded ``api.requests`` of the tenant in ``environment`` (cached, with
        Redis under the ``generation`` of its recordings the caller read before)."""
        key = (tenant_id, environment.value)
        now = self.clock()
        month_start, month_end = billing.period_bounds(billing.Period.MONTH)
        cached = self._recorded.get(key)
        if (
            cached is not None
            and cached.expires > now
            and cached.month_start == month_start
            and cached.generation == generation
        ):
            return cached.value
        quantity = UsageRecord.quantity
        async with self.engine.connect() as conn:
            await db.scope_transaction(conn, tenant_ids=(tenant_id,))
            sqlite = conn.dialect.name == "sqlite"
            total = await conn.scalar(
                select(func.sum(type_coerce(quantity, BigInteger()) if sqlite else quantity)).where(
                    UsageRecord.tenant_id == tenant_id,
                    UsageRecord.environment == environment.value,
                    UsageRecord.meter == METER,
                    UsageRecord.occurred_at >= month_start,
                    UsageRecord.occurred_at < month_end,
                )
            )
        value = Decimal(int(total or 0)).scaleb(-QUANTITY_SCALE) if sqlite else Decimal(total or 0)
        if len(self._recorded) > 10_000:
            self._recorded.clear()
        self._recorded[key] = _Recorded(now + self.cache_seconds, month_start, value, generation)
        return value

    # --- flushing ---------------------------------------------------------------------------

    def cut(self) -> Batch | None:
        """In memory: the counts so far as a batch of their own (None when there are none)."""
        counts = {slot: n for slot, n in self._pending.items() if n > 0}
        self._pending = {}
        if not counts:
            return None
        self.sequence += 1
        return Batch(f"{self.identity}:{self.sequence}", utcnow(), counts, local=True)

    async def record(self, batch: Batch) -> Batch | None:
        """Record a batch: one usage record per credential, one unit of work per tenant and
        environment. Idempotent: recording it again (a retry) counts nothing twice. A tenant
        whose records fail (logged) does not hold up the others: the counts not recorded are
        returned, as a batch of the same name (None when all were)."""
        return (await self._record(batch)).left

    async def _record(self, batch: Batch) -> _Recording:
        groups: dict[tuple[str, str], list[usage.UsageDraft]] = {}
        for (tenant_id, env, credential), n in sorted(batch.counts.items()):
            groups.setdefault((tenant_id, env), []).append(
                usage.UsageDraft(
                    meter=METER,
                    quantity=Decimal(n),
                    occurred_at=batch.at,
                    dimensions={"credential": credential},
                    idempotency_key=f"{batch.name}:{credential}",
                )
            )
        meta = RequestMeta(user_agent="coregraph api.requests flush")
        failed: dict[Slot, int] = {}
        done: dict[tuple[str, str], int] = {}
        for (tenant_id, env), drafts in groups.items():

            def open_uow(tenant_id: str = tenant_id, env: str = env) -> Any:
                principal = replace(system_principal(ACTOR), environment=Environment(env))
                return _TenantUnitOfWork(self.engine, principal, meta, tenant_id)

            key = (tenant_id, env)
            # In memory, no capped count reads this tenant's recorded usage meanwhile.
            async with self._tenant_lock(key):
                try:
                    answers = await usage.record_usage_once(
                        open_uow, tenant_id, drafts, window=usage.LateWindow(), builtin=True
                    )
                except Exception:
                    log.exception(
                        "api.requests of a tenant not recorded; kept for the next flush",
                        extra={"tenant_id": tenant_id, "batch": batch.name},
                    )
                    failed.update({slot: n for slot, n in batch.counts.items() if slot[:2] == key})
                    continue
                done[key] = sum(int(d.quantity) for d in drafts)
                if batch.local:
                    # A replayed record (a retry of a group recorded before) was taken off then.
                    recorded = sum(int(a.quantity) for a in answers if not a.replayed)
                    left = self._unrecorded.get(key, 0) - recorded
                    if left > 0:
                        self._unrecorded[key] = left
                    else:
                        self._unrecorded.pop(key, None)
                self._recorded.pop(key, None)
        if not failed:
            return _Recording(None, done)
        return _Recording(
            Batch(batch.name, batch.at, failed, batch.attempts + 1, batch.local), done
        )

    def _keep(self, left: Batch | None) -> Batch | None:
        """What of a batch to try again: none past ``MAX_ATTEMPTS`` (its counts are dropped,
        logged: a tenant whose records keep failing must not hold its counts forever)."""
        if left is not None and left.attempts >= MAX_ATTEMPTS:
            log.error(
                "api.requests dropped after %d failed flushes",
                left.attempts,
                extra={"batch": left.name, "counts": sum(left.counts.values())},
            )
            return None
        return left

    async def flush(self) -> int:
        """Record what was counted (and any batch a failed flush left); the batches recorded."""
        async with self._lock:
            # This process's own counts (all of them without Redis; with Redis, those counted
            # while it could not answer) first, so a Redis still down cannot hold them up.
            batch = self.cut()
            if batch is not None:
                self._retry.append(batch)
            pending, self._retry = self._retry, []
            for waiting in pending:
                left = self._keep(await self.record(waiting))
                if left is not None:
                    self._retry.append(left)
            done = len(pending) - len(self._retry)
            if self.redis is not None:
                done += await self._flush_redis()
            return done

    async def _flush_redis(self) -> int:
        from redis import exceptions as redis_errors  # only with Redis (a lazy dependency)

        self.sequence += 1
        name = f"{self._keys}:batch:{self.identity}:{self.sequence}"
        if await self.redis.exists(self._hash):
            # Cut atomically: counts made from now on go to a new pending hash. (Another
            # process may cut first: the rename then fails and the name stays empty.)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rename(self._hash, name)
                pipe.sadd(self._batches, name)
                with contextlib.suppress(redis_errors.ResponseError):
                    await pipe.execute()
        done = 0
        # Every batch cut and not yet recorded, this process's or a dead one's.
        for raw in sorted(await self.redis.smembers(self._batches)):
            batch_key = raw.decode() if isinstance(raw, bytes) else str(raw)
            fields = await self.redis.hgetall(batch_key)
            counts: dict[Slot, int] = {}
            attempts = 0
            for slot_raw, n_raw in fields.items():
                parts = (slot_raw.decode() if isinstance(slot_raw, bytes) else slot_raw).split("|")
                n = int(n_raw)
                if parts == ["attempts"]:
                    attempts = n
                # ("total|…" fields are the per-tenant totals batches carried before
                # ``…:unrecorded`` held them.)
                elif parts[0] != "total" and len(parts) == 3 and n > 0:
                    counts[(parts[0], parts[1], parts[2])] = n
            name_part = batch_key.removeprefix(f"{self._keys}:batch:")
            left = None
            # Counts that leave the not-yet-recorded total: recorded now (or before, by a
            # process that died before this step), or dropped after MAX_ATTEMPTS.
            gone: dict[tuple[str, str], int] = {}
            if counts:
                recording = await self._record(Batch(name_part, utcnow(), counts, attempts))
                gone.update(recording.done)
                left = self._keep(recording.left)
                if recording.left is not None and left is None:
                    for (tenant_id, env, _), n in recording.left.counts.items():
                        gone[(tenant_id, env)] = gone.get((tenant_id, env), 0) + n
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(batch_key)
                if left is None:
                    pipe.srem(self._batches, batch_key)
                    done += 1
                else:  # only the tenants whose records failed, tried again next time
                    pipe.hset(
                        batch_key,
                        mapping={
                            "attempts": left.attempts,
                            **{"|".join(slot): n for slot, n in left.counts.items()},
                        },
                    )
                for tenant_key, n in gone.items():
                    pipe.hincrby(self._unrecorded_hash, "|".join(tenant_key), -n)
                    pipe.hincrby(self._generations, "|".join(tenant_key), 1)
                await pipe.execute()
        return done

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Flush every ``flush_seconds`` while the server runs, and once more at shutdown."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.flush_seconds)
                try:
                    await self.flush()
                except Exception:
                    # Kept for the next flush (same names, so counted once); never lost here.
                    log.exception("api.requests flush failed; retrying at the next interval")

        task = asyncio.create_task(loop(), name=FLUSH_TASK)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                await self.flush()
            except Exception:
                log.exception("api.requests flush at shutdown failed; its counts are lost")


_GENERATION_ATTEMPTS = 4

# KEYS: pending counts, not-yet-recorded totals, generations. ARGV: the slot's field, the
# tenant's field, its recorded usage, the generation it was read under (-1: any), the cap.
_CHECK_AND_COUNT = """
local generation = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
local unrecorded = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
local expected = tonumber(ARGV[4])
if expected >= 0 and generation ~= expected then
  return {0, unrecorded, generation}
end
if tonumber(ARGV[3]) + unrecorded + 1 > tonumber(ARGV[5]) then
  return {-1, unrecorded, generation}
end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {1, unrecorded + 1, generation}
"""


def _check(cap: Decimal, current: Decimal) -> None:
    """QUOTA_EXCEEDED when one more operation would pass the cap."""
    if current + 1 > cap:
        raise QuotaExceeded(
            f"the plan allows {_plain(cap)} API requests a month; {_plain(current)} were made",
            meter=METER,
            limit=_plain(cap),
            current=_plain(current),
        )


def _plain(value: Decimal) -> str:
    """A decimal as usage shows it: no trailing zeros, no exponent."""
    return format(value.normalize(), "f")


class _TenantUnitOfWork(UnitOfWork):
    """The flusher's unit of work: coregraph itself, admitted to the one tenant it records for."""

    def __init__(self, engine: AsyncEngine, principal: Any, meta: RequestMeta, tenant_id: str):
        super().__init__(engine, principal, meta)
        self._for_tenant = tenant_id

    async def __aenter__(self) -> UnitOfWork:
        await super().__aenter__()
        await self.allow_tenant(self._for_tenant)
        return self
