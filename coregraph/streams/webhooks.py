"""The webhook worker: claims due deliveries, signs and sends them, records every attempt.

The relay schedules one delivery per event and matching endpoint (``coregraph.services.webhooks
.schedule``) and wakes the workers (``Broker.wake_webhooks``: in-process, and over Redis). A
worker then:

1. **Claims** due deliveries in a short transaction: ``pending`` ones whose ``next_attempt_at``
   has come, and ``sending`` ones whose ``claimed_until`` has passed (their worker died
   mid-delivery), never one whose request this worker still has in flight. On PostgreSQL the
   rows are locked ``FOR UPDATE SKIP LOCKED``, so any number of workers share the work and no
   delivery is claimed by two of them at once, and the times compared are the database's
   (``now()``), so hosts whose clocks differ agree on when a claim ends; on SQLite run a single
   worker (``coregraph serve`` does, in-process; its clock is the only one). A claim marks the
   delivery ``sending`` with ``claimed_by`` (the worker's name and a random part per claim: an
   attempt is recorded only while that very claim still holds) and ``claimed_until``
   (``COREGRAPH_WEBHOOK_CLAIM_SECONDS``, which settings refuse below
   ``COREGRAPH_WEBHOOK_TIMEOUT_SECONDS`` plus a margin: a shorter claim would let another
   worker send a delivery whose request is still in flight). It never claims more than it can
   send at once: at most
   ``COREGRAPH_WEBHOOK_WORKER_CONCURRENCY`` requests in flight, and at most
   ``COREGRAPH_WEBHOOK_ENDPOINT_CONCURRENCY`` to one endpoint (per process).
2. **Sends** each one (``coregraph.outbound.OutboundClient``: checked destinations, no
   redirects, one deadline) as the Standard Webhooks specification describes: the body is the
   delivery's stored envelope as JSON (keys sorted, so the same bytes on every attempt), with
   ``webhook-id`` (the delivery's id, the same on every retry: receivers de-duplicate on it),
   ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``: one ``v1,``
   signature per secret the endpoint signs with, made by the ``standardwebhooks`` package,
   space-separated (the current secret and, while a rotation's overlap lasts, the previous
   one, so the receiver verifies with whichever it holds).
3. **Records** the attempt (status code, latency, the first KiB of the answer, or why there was
   none: also when no request could be made, its secret not decrypting or its payload not
   encoding) and moves the delivery on, in one transaction: a 2xx answer makes it ``succeeded``;
   anything else makes it ``pending`` again, due after the next delay of
   ``COREGRAPH_WEBHOOK_RETRY_SCHEDULE`` (the n-th retry waits ``schedule[n - 1]`` seconds,
   times a random factor between 0.9 and 1.1 so retries of many deliveries do not arrive in
   lockstep), or ``failed`` once the schedule is spent. The attempt is then published on
   ``webhook_attempts_topic`` for the ``webhookDeliveries`` subscription.

Endpoints: any success resets an endpoint's ``consecutive_failures`` and ``failing_since``.
An endpoint that has failed ``COREGRAPH_WEBHOOK_DISABLE_AFTER_FAILURES`` times in a row over at
least ``COREGRAPH_WEBHOOK_DISABLE_AFTER_SECONDS`` is disabled (``disabled_reason = "failing"``)
through a unit of work scoped to its tenant, with a ``webhook_endpoint.disabled`` event and an
audit entry; beside the recorder, not in its way, and only if those thresholds still hold as it
commits (a person who re-enabled the endpoint meanwhile reset its failures). Deliveries of a
disabled endpoint are not claimed: they stay as they are and flow again once it is enabled (as
Svix does); those of a deleted endpoint are deleted with it.

Delivery is at least once: a worker killed mid-request leaves its claim to expire, and the
request is made again (same ``webhook-id``). On ``stop()`` a worker claims nothing more, gives
its requests in flight ``COREGRAPH_WEBHOOK_SHUTDOWN_SECONDS`` to finish, then releases the
claims of the unfinished ones (``pending``, due now), so another worker takes them at once
rather than after the claim expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Interval, Row, Table, and_, case, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from standardwebhooks import Webhook

from coregraph import ids, telemetry
from coregraph.auth.principal import system_principal
from coregraph.metrics import webhook_delivery
from coregraph.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from coregraph.models.base import Environment, UTCDateTime, utcnow
from coregraph.models.webhooks import DeliveryStatus
from coregraph.request import RequestMeta
from coregraph.services import quotas, usage, usage_store
from coregraph.services.uow import UnitOfWork
from coregraph.services.webhooks import SecretBox, attempt_message, signing_secrets
from coregraph.settings import Settings
from coregraph.streams.broker import Broker, webhook_attempts_topic

# coregraph.outbound (and httpcore with it, ~1 MiB) is imported with the first delivery: a
# server whose tenants have no webhooks never loads it.
if TYPE_CHECKING:
    from coregraph.outbound import OutboundClient, OutboundResult

log = logging.getLogger("coregraph.webhooks")

# Each retry delay is scaled by a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.1
DISABLED_EVENT = "webhook_endpoint.disabled"
ACTOR = "worker:webhooks"
DELIVERED_METER = "webhooks.delivered"
# How many claim queries one claim may run when endpoints reach their concurrency limit.
_CLAIM_ROUNDS = 4
_MAX_ERROR = 500
_MAX_BODY = 1024
# Attempts recorded in one transaction at most.
_RECORD_BATCH = 200

_ENDPOINTS: Table = WebhookEndpoint.__table__  # type: ignore[assignment]
_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]
_ATTEMPTS: Table = WebhookAttempt.__table__  # type: ignore[assignment]


def retry_delay(schedule: Sequence[float], attempts_made: int) -> float | None:
    """Seconds to wait after the ``attempts_made``-th failed attempt, jittered by ±``JITTER``;
    None when the schedule is spent (the delivery has failed)."""
    if attempts_made > len(schedule):
        return None
    return schedule[attempts_made - 1] * random.uniform(1 - JITTER, 1 + JITTER)


def request_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes sent: the same for every attempt of a delivery, whichever backend stored it
    (PostgreSQL's JSONB does not keep key order). A payload orjson cannot encode (an integer
    beyond 64 bits, stored before emitEvent refused them) is encoded losslessly by ``json``
    instead, with the same sorted keys and compact separators: the receiver gets the number
    as it was emitted."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()


def signed_headers(
    delivery_id: str, body: bytes, secrets: Sequence[str], timestamp: int
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, one ``v1,`` signature per secret."""
    when = datetime.fromtimestamp(timestamp, UTC)
    data = body.decode()
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            Webhook(secret).sign(delivery_id, when, data) for secret in secrets
        ),
    }


def _kept_body(body: bytes) -> str | None:
    if not body:
        return None
    # PostgreSQL text holds no NUL character.
    return body[:_MAX_BODY].decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def worker_name() -> str:
    """Who claims (the start of ``claimed_by``): host, process and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


# ``claimed_by`` is the worker's name, ":" and a random part per claim (String(64)).
_NAME_LENGTH = 56


class WebhookWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        settings: Settings,
        *,
        client: OutboundClient | None = None,
        name: str | None = None,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.settings = settings
        self.name = (name or worker_name())[:_NAME_LENGTH]
        self.box = SecretBox(settings.webhook_secret_key_list)
        self.schedule = list(settings.webhook_retry_schedule)
        self.concurrency = settings.webhook_worker_concurrency
        self.endpoint_concurrency = settings.webhook_endpoint_concurrency
        # PostgreSQL: workers share the deliveries. SQLite: one worker, nothing to lock.
        self.locks = engine.dialect.name == "postgresql"
        self._client = client
        self._owns_client = client is None
        self._stop = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        # Deliveries whose request this worker has not finished recording: never claimed
        # again by it, whatever their claim's expiry says.
        self._sending: set[str] = set()
        # Auto-disables run beside the recorder, one per endpoint at a time.
        self._disabling: dict[str, asyncio.Task[None]] = {}
        # The earliest retry this worker scheduled itself: it wakes for it before the next poll.
        self._next_due: datetime | None = None
        # Attempts made and not yet recorded, for the recorder (None stops it).
        self._outcomes: asyncio.Queue[_Outcome | None] = asyncio.Queue()
        self.sent = 0
        self.succeeded = 0

    @property
    def client(self) -> OutboundClient:
        if self._client is None:
            from coregraph.outbound import OutboundClient

            self._client = OutboundClient(
                allow_private=self.settings.webhook_private_allowed,
                timeout=self.settings.webhook_timeout_seconds,
                max_connections=self.concurrency,
            )
        return self._client

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Claim and send until ``stop()``, then finish or release what is in flight."""
        self._stop.clear()
        log.info("webhook worker started", extra={"worker": self.name})
        recorder = asyncio.create_task(self._record_outcomes(), name="coregraph-webhook-recorder")
        try:
            while not self._stop.is_set():
                # Cleared before the claim, not in _idle: a request that ends in between still
                # wakes the next wait.
                self._slot_freed.clear()
                free = self.concurrency - len(self._tasks)
                more = False
                if free > 0:
                    try:
                        claimed, token, more = await self.claim(free)
                    except Exception:
                        # The database is away: nothing was claimed. Wait the poll interval.
                        log.exception("webhook claim failed; retrying")
                        claimed, token = [], ""
                    for row in claimed:
                        self._start(row, token)
                await self._idle(more or free <= 0)
        finally:
            await self._shut_down(recorder)
        log.info(
            "webhook worker stopped",
            extra={"worker": self.name, "sent": self.sent, "succeeded": self.succeeded},
        )

    async def _idle(self, more: bool) -> None:
        """Wait for a wake-up, a retry this worker scheduled, the poll interval, or ``stop()``;
        with ``more`` work waiting for a free slot, also for a request to finish."""
        timeout = self.settings.webhook_poll_seconds
        if self._next_due is not None:
            timeout = min(timeout, max(0.0, (self._next_due - utcnow()).total_seconds()))
        waits = {
            asyncio.ensure_future(self.broker.wait_for_webhook_work(timeout)),
            asyncio.ensure_future(self._stop.wait()),
        }
        if more:
            waits.add(asyncio.ensure_future(self._slot_freed.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def claim(self, free: int) -> tuple[list[Row[Any]], str, bool]:
        """Claim up to ``free`` due deliveries of enabled endpoints, at most as many per
        endpoint as its concurrency leaves room for. Returns them (joined with their
        endpoint's url and secrets), the claim's token (``claimed_by``: recording an attempt
        requires it) and whether more may be due than were taken. Deliveries this worker is
        still sending are never claimed again by it, even once their claim has expired."""
        now = utcnow()
        if self._next_due is not None and self._next_due <= now:
            self._next_due = None
        # Claims are made and judged by several hosts: on PostgreSQL by the database's clock,
        # so a worker whose clock runs ahead cannot take another's live claim. SQLite has one
        # worker on one host: its own clock is the only one.
        db_now: Any = func.now() if self.locks else literal(now, UTCDateTime())
        due = or_(
            and_(
                _DELIVERIES.c.status == DeliveryStatus.PENDING.value,
                _DELIVERIES.c.next_attempt_at <= db_now,
            ),
            and_(
                _DELIVERIES.c.status == DeliveryStatus.SENDING.value,
                _DELIVERIES.c.claimed_until < db_now,
            ),
        )
        token = f"{self.name}:{secrets.token_hex(3)}"
        sending = sorted(self._sending)
        full = {ep for ep, n in self._in_flight.items() if n >= self.endpoint_concurrency}
        # An endpoint being disabled gets no new request meanwhile.
        full.update(self._disabling)
        taken: dict[str, int] = {}
        kept: list[Any] = []
        # Endpoints at their limit are left out of the query: they may have due deliveries that
        # wait for a request in flight to end.
        more = bool(full)
        async with self.engine.begin() as conn:
            for _ in range(_CLAIM_ROUNDS):
                want = free - len(kept)
                if want <= 0:
                    more = True
                    break
                query = (
                    select(
                        _DELIVERIES.c.id,
                        _DELIVERIES.c.tenant_id,
                        _DELIVERIES.c.environment,
                        _DELIVERIES.c.endpoint_id,
                        _DELIVERIES.c.event_id,
                        _DELIVERIES.c.event_type,
                        _DELIVERIES.c.payload,
                        _DELIVERIES.c.attempts,
                        _DELIVERIES.c.trace_parent,
                        _ENDPOINTS.c.url,
                        _ENDPOINTS.c.secret,
                        _ENDPOINTS.c.previous_secret,
                        _ENDPOINTS.c.previous_secret_expires_at,
                    )
                    .select_from(
                        _DELIVERIES.join(_ENDPOINTS, _ENDPOINTS.c.id == _DELIVERIES.c.endpoint_id)
                    )
                    # A disabled endpoint's due deliveries stay first in the (status,
                    # next_attempt_at) index, and each claim scans past them. Not yet done:
                    # parking them when the endpoint is disabled (next_attempt_at NULL) and
                    # making them due when it is enabled (services/webhooks.py, the API's).
                    .where(due, _ENDPOINTS.c.enabled.is_(True))
                    .order_by(_DELIVERIES.c.next_attempt_at)
                    .limit(want)
                )
                if full:
                    query = query.where(_DELIVERIES.c.endpoint_id.not_in(sorted(full)))
                skipped = sending + [row.id for row in kept]
                if skipped:
                    query = query.where(_DELIVERIES.c.id.not_in(skipped))
                if self.locks:
                    query = query.with_for_update(skip_locked=True, of=_DELIVERIES)
                rows = (await conn.execute(query)).all()
                capped = False
                for row in rows:
                    endpoint = row.endpoint_id
                    if self._in_flight.get(endpoint, 0) + taken.get(endpoint, 0) >= (
                        self.endpoint_concurrency
                    ):
                        # Locked by this transaction but left as it is: released at commit.
                        full.add(endpoint)
                        capped = True
                        continue
                    taken[endpoint] = taken.get(endpoint, 0) + 1
                    kept.append(row)
                if capped:
                    # Those endpoints' other due deliveries wait for a slot; look past them.
                    more = True
                    continue
                more = more or len(rows) == want
                break
            if kept:
                lasting = timedelta(seconds=self.settings.webhook_claim_seconds)
                until: Any = (
                    func.now() + literal(lasting, Interval())
                    if self.locks
                    else literal(now + lasting, UTCDateTime())
                )
                await conn.execute(
                    update(_DELIVERIES)
                    .where(_DELIVERIES.c.id.in_([row.id for row in kept]))
                    .values(
                        status=DeliveryStatus.SENDING.value, claimed_by=token, claimed_until=until
                    )
                )
        return kept, token, more

    def _start(self, row: Row[Any], token: str) -> None:
        endpoint = row.endpoint_id
        self._in_flight[endpoint] = self._in_flight.get(endpoint, 0) + 1
        self._sending.add(row.id)
        task = asyncio.create_task(self._deliver(row, token), name=f"coregraph-webhook-{row.id}")
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(done, endpoint, row.id))

    def _finished(self, task: asyncio.Task[None], endpoint: str, delivery_id: str) -> None:
        self._tasks.discard(task)
        self._sending.discard(delivery_id)
        left = self._in_flight.get(endpoint, 0) - 1
        if left > 0:
            self._in_flight[endpoint] = left
        else:
            self._in_flight.pop(endpoint, None)
        self._slot_freed.set()

    async def _deliver(self, row: Row[Any], token: str) -> None:
        try:
            started_at = utcnow()
            with telemetry.continuing(
                "webhook deliver",
                row.trace_parent,
                attributes={
                    "coregraph.webhook.delivery_id": row.id,
                    "coregraph.webhook.endpoint_id": row.endpoint_id,
                    "coregraph.webhook.attempt": row.attempts + 1,
                },
            ) as span:
                prepared = self._prepare(row)
                if isinstance(prepared, tuple):
                    body, headers = prepared
                    result = await self.client.post(row.url, content=body, headers=headers)
                    self.sent += 1
                else:
                    result = prepared
                if span is not None and not result.ok:
                    span.set_attribute("error.type", result.error or f"HTTP {result.status_code}")
            outcome = _Outcome(row, _attempt(row, started_at, result), token, asyncio.Future())
            # Written by the recorder with whatever else finished meanwhile, in one
            # transaction; the slot stays taken until then.
            self._outcomes.put_nowait(outcome)
            await outcome.recorded
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database is away: the claim expires and the delivery is tried again, by this
            # worker (once this task has ended) or another.
            log.exception(
                "webhook delivery failed before its attempt was recorded",
                extra={"delivery_id": row.id, "endpoint_id": row.endpoint_id},
            )

    def _prepare(self, row: Row[Any]) -> tuple[bytes, dict[str, str]] | OutboundResult:
        """The body and signed headers of this attempt; or, when the secret cannot be opened
        or the payload not encoded, the failed attempt to record instead (the reason, not the
        details, for the tenant to see), so it is retried on the schedule like any other
        failure rather than at every claim's expiry, forever."""
        step = "the endpoint's signing secret could not be decrypted"
        try:
            signing = signing_secrets(self.box, row)
            step = "the payload could not be encoded"
            body = request_body(row.payload)
            step = "the request could not be signed"
            return body, signed_headers(row.id, body, signing, int(time.time()))
        except Exception:
            log.exception(
                "webhook delivery could not be prepared",
                extra={"delivery_id": row.id, "endpoint_id": row.endpoint_id},
            )
            from coregraph.outbound import OutboundResult

            return OutboundResult(
                status_code=None, body=b"", duration_ms=0.0, error=f"not sent: {step}"
            )

    async def _record_outcomes(self) -> None:
        """The recorder: takes every outcome waiting, records them in one transaction, and
        tells their tasks; until it takes ``None``."""
        ending = False
        while not ending:
            first = await self._outcomes.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _RECORD_BATCH and not self._outcomes.empty():
                item = self._outcomes.get_nowait()
                if item is None:
                    ending = True
                    break
                batch.append(item)
            try:
                await self.record(batch)
                for outcome in batch:
                    if not outcome.recorded.done():
                        outcome.recorded.set_result(None)
            except Exception as exc:
                for outcome in batch:
                    if not outcome.recorded.done():
                        outcome.recorded.set_exception(exc)

    async def record(self, batch: Sequence[_Outcome]) -> None:
        """Record the attempts of ``batch`` and move their deliveries on, in one transaction:
        success, a retry due after the schedule's next delay, or failed for good. Nothing is
        recorded for a delivery whose claim this worker lost (it expired and another worker
        took it, which sends it again: the receiver sees that webhook-id twice)."""
        now = utcnow()
        plans: list[tuple[_Outcome, DeliveryStatus, datetime | None]] = []
        for outcome in batch:
            made = outcome.attempt.attempt
            delay = None if outcome.attempt.succeeded else retry_delay(self.schedule, made)
            if outcome.attempt.succeeded:
                plans.append((outcome, DeliveryStatus.SUCCEEDED, None))
            elif delay is None:
                plans.append((outcome, DeliveryStatus.FAILED, None))
            else:
                plans.append((outcome, DeliveryStatus.PENDING, now + timedelta(seconds=delay)))
        failing: dict[str, Any] = {}
        async with self.engine.begin() as conn:
            recorded: set[str] = set()
            by_claim: dict[str, list[_Outcome]] = {}
            for outcome, status, _ in plans:
                if status is _SUCCEEDED:
                    by_claim.setdefault(outcome.token, []).append(outcome)
            for token, succeeded in by_claim.items():
                # The common case in one statement per claim, whatever the batch's size.
                started = {
                    o.row.id: literal(o.attempt.started_at, UTCDateTime()) for o in succeeded
                }
                moved = await conn.execute(
                    update(_DELIVERIES)
                    .where(_DELIVERIES.c.id.in_(list(started)), _claim_held(token))
                    .values(
                        status=_SUCCEEDED.value,
                        attempts=_DELIVERIES.c.attempts + 1,
                        next_attempt_at=None,
                        claimed_by=None,
                        claimed_until=None,
                        last_attempt_at=case(started, value=_DELIVERIES.c.id),
                        succeeded_at=now,
                    )
                    .returning(_DELIVERIES.c.id)
                )
                recorded.update(moved.scalars())
            for outcome, status, next_attempt_at in plans:
                if status is _SUCCEEDED:
                    continue
                moved = await conn.execute(
                    update(_DELIVERIES)
                    .where(_DELIVERIES.c.id == outcome.row.id, _claim_held(outcome.token))
                    .values(
                        status=status.value,
                        attempts=_DELIVERIES.c.attempts + 1,
                        next_attempt_at=next_attempt_at,
                        claimed_by=None,
                        claimed_until=None,
                        last_attempt_at=outcome.attempt.started_at,
                    )
                    .returning(_DELIVERIES.c.id)
                )
                recorded.update(moved.scalars())
            lost = [o.row.id for o, _, _ in plans if o.row.id not in recorded]
            if lost:
                log.warning(
                    "webhook deliveries' claims were lost before their attempts were recorded",
                    extra={"delivery_ids": lost, "worker": self.name},
                )
            plans = [plan for plan in plans if plan[0].row.id in recorded]
            if plans:
                await conn.execute(
                    insert(_ATTEMPTS), [_columns(outcome.attempt) for outcome, _, _ in plans]
                )
                delivered = _delivered([o for o, status, _ in plans if status is _SUCCEEDED])
                if delivered:
                    await usage_store.insert_usage(conn, delivered)
            failing = await self._count_failures(conn, [outcome for outcome, _, _ in plans])
        for _, status, next_attempt_at in plans:
            webhook_delivery("retrying" if status is DeliveryStatus.PENDING else status.value)
            if status is _SUCCEEDED:
                self.succeeded += 1
            elif next_attempt_at is not None and (
                self._next_due is None or next_attempt_at < self._next_due
            ):
                self._next_due = next_attempt_at
        await self._publish(plans)
        await self._announce_thresholds(
            {(o.row.tenant_id, o.row.environment) for o, status, _ in plans if status is _SUCCEEDED}
        )
        for endpoint_id, row in failing.items():
            if self._should_disable(row, now) and endpoint_id not in self._disabling:
                # Beside the recorder, not in its way: a slow disable (the tenant's head-row
                # lock, a busy database) must not hold up every other attempt's record.
                task = asyncio.create_task(
                    self._disable_quietly(row.tenant_id, endpoint_id, row),
                    name=f"coregraph-webhook-disable-{endpoint_id}",
                )
                self._disabling[endpoint_id] = task

    async def _announce_thresholds(self, delivered_in: set[tuple[str, str]]) -> None:
        """The usage.threshold_reached events of webhooks.delivered, once the deliveries'
        records committed: a unit of work per tenant whose plan limits the meter (read at most
        every few seconds, quotas.limited_meters). A failure is logged; the next delivery to
        the tenant announces what was missed."""
        default_plan = self.settings.default_plan
        for tenant_id, environment in sorted(delivered_in):
            try:
                async with AsyncSession(self.engine) as session:
                    limited = await quotas.limited_meters(session, tenant_id, default_plan)
                if DELIVERED_METER not in limited:
                    continue
                meta = RequestMeta(user_agent="coregraph worker (webhook delivery)")
                async with UnitOfWork(self.engine, system_principal(ACTOR), meta) as uow:
                    await uow.allow_tenant(tenant_id)
                    await quotas.after_change(
                        uow,
                        tenant_id,
                        Environment(environment),
                        DELIVERED_METER,
                        default_plan=default_plan,
                    )
            except Exception:
                log.exception(
                    "could not announce webhooks.delivered thresholds",
                    extra={"tenant_id": tenant_id},
                )

    async def _disable_quietly(self, tenant_id: str, endpoint_id: str, failing: Any) -> None:
        try:
            await self.disable_failing(tenant_id, endpoint_id, failing)
        except Exception:
            # Its failures are still counted: the next failed attempt tries again.
            log.exception(
                "could not disable a failing webhook endpoint", extra={"endpoint_id": endpoint_id}
            )
        finally:
            self._disabling.pop(endpoint_id, None)

    async def _count_failures(
        self, conn: AsyncConnection, outcomes: Sequence[_Outcome]
    ) -> dict[str, Any]:
        """Each endpoint's run of failures after these attempts (in the order they ended): a
        success ends it, a failure adds to it. The endpoints still failing, with their count,
        since when, and whether they are enabled."""
        runs: dict[str, list[_Outcome]] = {}
        answered: set[str] = set()
        for outcome in outcomes:
            endpoint = outcome.row.endpoint_id
            if outcome.attempt.succeeded:
                runs[endpoint] = []
                answered.add(endpoint)
            else:
                runs.setdefault(endpoint, []).append(outcome)
        failing: dict[str, Any] = {}
        for endpoint, failures in sorted(runs.items()):
            if not failures:
                await conn.execute(
                    update(_ENDPOINTS)
                    .where(
                        _ENDPOINTS.c.id == endpoint,
                        or_(
                            _ENDPOINTS.c.consecutive_failures != 0,
                            _ENDPOINTS.c.failing_since.is_not(None),
                        ),
                    )
                    .values(consecutive_failures=0, failing_since=None)
                )
                continue
            first_failure = failures[0].attempt.started_at
            if endpoint in answered:
                values: dict[str, Any] = {
                    "consecutive_failures": len(failures),
                    "failing_since": first_failure,
                }
            else:
                values = {
                    "consecutive_failures": _ENDPOINTS.c.consecutive_failures + len(failures),
                    "failing_since": func.coalesce(_ENDPOINTS.c.failing_since, first_failure),
                }
            failing[endpoint] = (
                await conn.execute(
                    update(_ENDPOINTS)
                    .where(_ENDPOINTS.c.id == endpoint)
                    .values(**values)
                    .returning(
                        _ENDPOINTS.c.tenant_id,
                        _ENDPOINTS.c.consecutive_failures,
                        _ENDPOINTS.c.failing_since,
                        _ENDPOINTS.c.enabled,
                    )
                )
            ).one()
        return failing

    def _should_disable(self, failing: Any, now: datetime) -> bool:
        if not failing.enabled or failing.failing_since is None:
            return False
        seconds = (now - failing.failing_since).total_seconds()
        return bool(
            failing.consecutive_failures >= self.settings.webhook_disable_after_failures
            and seconds >= self.settings.webhook_disable_after_seconds
        )

    async def _publish(self, plans: Sequence[tuple[_Outcome, DeliveryStatus, Any]]) -> None:
        messages: list[tuple[str, bytes | Mapping[str, Any]]] = []
        for outcome, status, _ in plans:
            row = outcome.row
            delivery = SimpleNamespace(
                environment=row.environment,
                event_id=row.event_id,
                event_type=row.event_type,
                status=status.value,
            )
            messages.append(
                (webhook_attempts_topic(row.tenant_id), attempt_message(outcome.attempt, delivery))
            )
        try:
            await self.broker.publish_many(messages)
        except Exception:
            # Recorded: a subscriber that missed them reads them from the delivery log.
            log.exception("could not publish webhook attempts", extra={"count": len(messages)})

    async def disable_failing(self, tenant_id: str, endpoint_id: str, failing: Any) -> bool:
        """Disable an endpoint that keeps failing, with its event and audit entry, unless it is
        disabled already (by a person, or by another worker a moment ago) or no longer failing
        enough: a person who re-enabled it meanwhile reset its failures, and that stands."""
        meta = RequestMeta(user_agent="coregraph worker (webhook delivery)")
        since = utcnow() - timedelta(seconds=self.settings.webhook_disable_after_seconds)
        async with UnitOfWork(self.engine, system_principal(ACTOR), meta) as uow:
            await uow.allow_tenant(tenant_id)
            disabled = (
                await uow.session.execute(
                    update(_ENDPOINTS)
                    .where(
                        _ENDPOINTS.c.id == endpoint_id,
                        _ENDPOINTS.c.enabled.is_(True),
                        _ENDPOINTS.c.consecutive_failures
                        >= self.settings.webhook_disable_after_failures,
                        _ENDPOINTS.c.failing_since <= since,
                    )
                    .values(enabled=False, disabled_reason="failing")
                    .returning(_ENDPOINTS.c.url, _ENDPOINTS.c.environment)
                )
            ).first()
            if disabled is None:
                return False
            failing_since = failing.failing_since.isoformat()
            uow.record(
                DISABLED_EVENT,
                tenant_id=tenant_id,
                target_type="WebhookEndpoint",
                target_id=endpoint_id,
                before={"enabled": True, "disabledReason": None},
                after={"enabled": False, "disabledReason": "failing"},
                environment=disabled.environment,
            )
            uow.emit(
                DISABLED_EVENT,
                tenant_id=tenant_id,
                environment=disabled.environment,
                data={
                    "endpointId": endpoint_id,
                    "url": disabled.url,
                    "reason": "failing",
                    "consecutiveFailures": int(failing.consecutive_failures),
                    "failingSince": failing_since,
                },
            )
            uow.on_commit(self.broker.wake_relay)
        log.warning(
            "webhook endpoint disabled: it keeps failing",
            extra={
                "tenant_id": tenant_id,
                "endpoint_id": endpoint_id,
                "consecutive_failures": int(failing.consecutive_failures),
            },
        )
        return True

    async def release_claims(self) -> int:
        """Hand this worker's unfinished deliveries back (``pending``, due now)."""
        async with self.engine.begin() as conn:
            released = await conn.execute(
                update(_DELIVERIES)
                .where(
                    _DELIVERIES.c.claimed_by.startswith(f"{self.name}:", autoescape=True),
                    _DELIVERIES.c.status == DeliveryStatus.SENDING.value,
                )
                .values(
                    status=DeliveryStatus.PENDING.value,
                    claimed_by=None,
                    claimed_until=None,
                    next_attempt_at=utcnow(),
                )
                .returning(_DELIVERIES.c.id)
            )
            count = len(released.all())
        return count

    async def _shut_down(self, recorder: asyncio.Task[None]) -> None:
        tasks = set(self._tasks)
        if tasks:
            _done, unfinished = await asyncio.wait(
                tasks, timeout=self.settings.webhook_shutdown_seconds
            )
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        # Answers that came are still recorded (the recorder takes what is queued first).
        self._outcomes.put_nowait(None)
        try:
            await asyncio.wait_for(recorder, timeout=max(self.settings.webhook_shutdown_seconds, 5))
        except Exception:
            recorder.cancel()
            log.exception("could not record the last webhook attempts", extra={"worker": self.name})
        disabling = list(self._disabling.values())
        if disabling:
            # Not finished in time: the endpoint's next failed attempt disables it.
            _done, unfinished = await asyncio.wait(disabling, timeout=5)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*disabling, return_exceptions=True)
        try:
            released = await self.release_claims()
            if released:
                log.info(
                    "webhook claims released", extra={"worker": self.name, "released": released}
                )
                await self.broker.wake_webhooks()
        except Exception:
            # Their claims expire instead (COREGRAPH_WEBHOOK_CLAIM_SECONDS).
            log.exception("could not release webhook claims", extra={"worker": self.name})
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None


@dataclass
class _Outcome:
    row: Any  # the claimed delivery, with its endpoint's url and secrets
    attempt: WebhookAttempt
    token: str  # the claim's claimed_by: the attempt is recorded only while it still holds
    recorded: asyncio.Future[None]


_SUCCEEDED = DeliveryStatus.SUCCEEDED


def _delivered(outcomes: Sequence[_Outcome]) -> list[dict[str, Any]]:
    """The webhooks.delivered usage of these successful deliveries: one record per tenant,
    environment and endpoint of the batch, recorded with them."""
    counts: Counter[tuple[str, str, str]] = Counter(
        (o.row.tenant_id, o.row.environment, o.row.endpoint_id) for o in outcomes
    )
    return [
        usage.usage_row(
            tenant_id,
            Environment(environment),
            DELIVERED_METER,
            Decimal(count),
            dimensions={"endpoint": endpoint_id},
        )
        for (tenant_id, environment, endpoint_id), count in sorted(counts.items())
    ]


def _claim_held(token: str) -> Any:
    return and_(
        _DELIVERIES.c.claimed_by == token,
        _DELIVERIES.c.status == DeliveryStatus.SENDING.value,
    )


def _attempt(row: Any, started_at: datetime, result: OutboundResult) -> WebhookAttempt:
    return WebhookAttempt(
        id=ids.new_id("wha"),
        tenant_id=row.tenant_id,
        delivery_id=row.id,
        endpoint_id=row.endpoint_id,
        attempt=row.attempts + 1,
        started_at=started_at,
        duration_ms=round(result.duration_ms, 3),
        status_code=result.status_code,
        response_body=_kept_body(result.body),
        error=result.error[:_MAX_ERROR] if result.error else None,
        succeeded=result.ok,
    )


def _columns(attempt: WebhookAttempt) -> dict[str, Any]:
    return {column.name: getattr(attempt, column.key) for column in _ATTEMPTS.columns}


@contextlib.asynccontextmanager
async def running(worker: WebhookWorker) -> AsyncIterator[WebhookWorker]:
    """Run ``worker`` in the background for the block; on exit it stops claiming, finishes or
    releases what is in flight, and stops."""
    # Claims and records leave no trace (the task starts in this context); each delivery
    # continues its event's trace (_deliver).
    with telemetry.untraced():
        task = asyncio.create_task(worker.run(), name="coregraph-webhook-worker")
    try:
        yield worker
    finally:
        worker.stop()
        try:
            await asyncio.wait_for(task, timeout=worker.settings.webhook_shutdown_seconds + 10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
