"""Webhooks: endpoints, their secrets, and the deliveries owed to them (DESIGN.md, Streams).

What is here is shared by the relay (which schedules a delivery for each published event that
matches an enabled endpoint), the webhook worker (``coregraph.streams.webhooks``, which signs
and sends) and the API (endpoints, retries, replays):

- ``SecretBox``: endpoint secrets are generated here (``whsec_`` + 24 random bytes in base64,
  the Standard Webhooks form), shown once, and stored as Fernet tokens under the keys of
  ``COREGRAPH_WEBHOOK_SECRET_KEYS``: the first key encrypts, all of them decrypt, so the keys
  rotate without downtime (``reseal``).
- ``matches``: which event types an endpoint takes.
- ``envelope``: the body a receiver gets, the event as subscribers receive it.
- ``schedule``: the deliveries of a batch of committed events.

Below them, what the API does (``coregraph.resolvers.webhooks``): endpoints created, changed,
disabled, enabled, deleted and their secrets rotated, each audited and evented
(``webhook_endpoint.*``); deliveries retried, events replayed, test messages sent. These
only write rows the worker picks up (pending, due now); nothing here sends a request. Each acts
in the principal's tenant and environment only (``uow.principal.environment``): a test key
never reaches a live endpoint or delivery. What they record about an endpoint's URL is its
origin (scheme://host[:port]) and, in the audit trail, a SHA-256 of the whole URL: its path
and query are often the receiver's credential (a Slack hook path) and stay out of events and
audit entries alike.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import ColumnElement, Table, exists, false, func, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from coregraph import db as database, ids
from coregraph.errors import BadUserInput, Conflict, QuotaExceeded
from coregraph.models import Event, EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from coregraph.models.base import Environment, utcnow
from coregraph.models.webhooks import DeliveryStatus
from coregraph.services import validation
from coregraph.services.events import BUILTIN_EVENT_TYPES
from coregraph.services.uow import UnitOfWork, diff
from coregraph.settings import Settings
from coregraph.streams.messages import event_message, iso_time

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

SECRET_PREFIX = "whsec_"

_ENDPOINTS: Table = WebhookEndpoint.__table__  # type: ignore[assignment]
_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form (``whsec_`` + base64 of 24 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


class SecretBox:
    """Encrypts endpoint secrets at rest with the configured Fernet keys. cryptography is
    imported at the first secret sealed or opened, not with the webhook worker every server on
    the embedded defaults runs (coregraph.auth.pyjwt says what it costs)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = list(keys)
        self._multi: MultiFernet | None = None

    @property
    def _fernet(self) -> MultiFernet:
        if self._multi is None:
            from cryptography.fernet import Fernet, MultiFernet

            self._multi = MultiFernet([Fernet(key) for key in self._keys])
        return self._multi

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise RuntimeError(
                "an endpoint secret cannot be decrypted with COREGRAPH_WEBHOOK_SECRET_KEYS: "
                "was the key that sealed it dropped before `coregraph rotate-webhook-key` ran?"
            ) from None

    def reseal(self, token: str) -> str:
        """The same secret under the first key (key rotation)."""
        return self._fernet.rotate(token.encode()).decode()


def signing_secrets(box: SecretBox, endpoint: Any, now: datetime | None = None) -> list[str]:
    """The secrets a request to ``endpoint`` is signed with: the current one, and the previous
    one while its overlap lasts (the receiver may still verify with either)."""
    found = [box.open(endpoint.secret)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > (now or utcnow()):
        found.append(box.open(endpoint.previous_secret))
    return found


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """``*`` takes every type, ``member.*`` every type under ``member.``, a name itself."""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def envelope(event: Any) -> dict[str, Any]:
    """The body of a delivery: the event as a subscriber receives it (its ``id``, ``type``,
    ``sequence``, ``tenant``, ``environment``, ``occurredAt``, ``actor`` and ``data``), plus
    ``timestamp``, the Standard Webhooks envelope's name for when it happened."""
    body = event_message(event)
    body["timestamp"] = body["occurredAt"]
    return body


def test_envelope(endpoint_id: str, tenant_id: str, environment: str) -> dict[str, Any]:
    """The body of ``sendTestWebhook``: an event that is not in the outbox."""
    now = iso_time(utcnow())
    return {
        "id": None,
        "type": "webhook.test",
        "sequence": None,
        "tenant": tenant_id,
        "environment": environment,
        "occurredAt": now,
        "timestamp": now,
        "actor": None,
        "data": {"endpointId": endpoint_id},
    }


def has_endpoints(tenant_id: ColumnElement[str]) -> ColumnElement[bool]:
    """Whether the tenant has an enabled endpoint, as a column: the relay reads it with a
    batch of events in the same statement (so the same snapshot: every endpoint that existed
    when an event of the batch committed is seen) and skips ``schedule`` when it is false."""
    return (
        exists()
        .where(_ENDPOINTS.c.tenant_id == tenant_id, _ENDPOINTS.c.enabled.is_(True))
        .label("tenant_has_endpoints")
    )


async def schedule(
    db: AsyncConnection | AsyncSession, events: Sequence[Any], *, endpoint_id: str | None = None
) -> int:
    """Schedule one delivery per event and matching enabled endpoint of the event's tenant and
    environment (only ``endpoint_id``, when given: a replay), due now; how many were new. An
    event already scheduled for an endpoint is left as it is (the unique endpoint + event
    pair), so a relay that publishes a batch again after a crash schedules nothing twice."""
    if not events:
        return 0
    tenants = {event.tenant_id for event in events}
    wanted = select(
        _ENDPOINTS.c.id,
        _ENDPOINTS.c.tenant_id,
        _ENDPOINTS.c.environment,
        _ENDPOINTS.c.event_types,
    ).where(_ENDPOINTS.c.tenant_id.in_(tenants), _ENDPOINTS.c.enabled.is_(True))
    if endpoint_id is not None:
        wanted = wanted.where(_ENDPOINTS.c.id == endpoint_id)
    endpoints = (await db.execute(wanted)).all()
    if not endpoints:
        return 0
    now = utcnow()
    rows = []
    for event in events:
        for endpoint in endpoints:
            if (
                endpoint.tenant_id == event.tenant_id
                and str(endpoint.environment) == str(event.environment)
                and matches(endpoint.event_types, event.type)
            ):
                rows.append(
                    {
                        "id": ids.new_id("msg"),
                        "tenant_id": event.tenant_id,
                        "environment": str(event.environment),
                        "endpoint_id": endpoint.id,
                        "event_id": event.id,
                        "event_type": event.type,
                        "payload": envelope(event),
                        "status": DeliveryStatus.PENDING.value,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "trace_parent": getattr(event, "trace_parent", None),
                    }
                )
    if not rows:
        return 0
    name = db.dialect.name if isinstance(db, AsyncConnection) else db.get_bind().dialect.name
    result = await db.execute(
        database.dialect_insert(name, _DELIVERIES)
        .on_conflict_do_nothing(index_elements=[_DELIVERIES.c.endpoint_id, _DELIVERIES.c.event_id])
        .returning(_DELIVERIES.c.id),
        rows,
    )
    return len(result.all())


def attempt_message(attempt: WebhookAttempt, delivery: Any) -> dict[str, Any]:
    """What a ``webhookDeliveries`` subscriber receives for one attempt (published by the
    worker on ``webhook_attempts_topic``)."""
    return {
        "id": attempt.id,
        "deliveryId": attempt.delivery_id,
        "endpointId": attempt.endpoint_id,
        "tenant": attempt.tenant_id,
        "environment": str(delivery.environment),
        "eventId": delivery.event_id,
        "eventType": delivery.event_type,
        "attempt": attempt.attempt,
        "startedAt": iso_time(attempt.started_at),
        "durationMs": attempt.duration_ms,
        "statusCode": attempt.status_code,
        "responseBody": attempt.response_body,
        "error": attempt.error,
        "succeeded": attempt.succeeded,
        "deliveryStatus": str(delivery.status),
    }


# --- Endpoints as the API manages them: create, change, rotate, retry, replay, test ----------

# Events one replayWebhookEvents call schedules at most; the answer says where to go on.
REPLAY_LIMIT = 1000
MAX_EVENT_TYPE_PATTERNS = 50
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


@functools.cache
def _box(keys: tuple[str, ...]) -> SecretBox:
    return SecretBox(keys)


def secret_box(settings: Settings) -> SecretBox:
    """The process's ``SecretBox`` for the configured keys."""
    return _box(tuple(settings.webhook_secret_key_list))


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of an endpoint URL: what events and audit entries may show of
    it (the path and query are often the receiver's credential)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def endpoint_snapshot(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What audit entries say about an endpoint: never its secrets, of its URL only the origin
    and a SHA-256 of the whole (so a changed path shows as a change)."""
    return {
        "urlOrigin": url_origin(endpoint.url),
        "urlSha256": hashlib.sha256(endpoint.url.encode()).hexdigest(),
        "description": endpoint.description,
        "eventTypes": list(endpoint.event_types),
        "environment": str(endpoint.environment),
        "enabled": endpoint.enabled,
        "disabledReason": endpoint.disabled_reason,
    }


def _event_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What an event says about an endpoint: the audit snapshot without the URL's hash (events
    reach every reader with events:read and every endpoint subscribed to them)."""
    return {k: v for k, v in snapshot.items() if k != "urlSha256"}


async def check_event_types(
    uow: UnitOfWork, tenant_id: str, values: Sequence[str], field: str = "eventTypes"
) -> list[str]:
    """Patterns an endpoint may subscribe to: ``*``, a prefix (``member.*``), or the name of a
    built-in type or of one registered in the tenant. Anything else is BAD_USER_INPUT: a typo
    would otherwise subscribe to nothing, silently."""
    if not values:
        raise BadUserInput(
            f"{field}: name at least one event type, a prefix such as 'member.*', or '*'",
            field=field,
        )
    if len(values) > MAX_EVENT_TYPE_PATTERNS:
        raise BadUserInput(f"{field}: at most {MAX_EVENT_TYPE_PATTERNS}", field=field)
    exact = {v for v in values if v != "*" and not v.endswith(".*")}
    registered: set[str] = set()
    if exact - BUILTIN_EVENT_TYPES.keys():
        registered = set(
            await uow.session.scalars(
                select(EventType.type).where(
                    EventType.tenant_id == tenant_id, EventType.type.in_(sorted(exact))
                )
            )
        )
    for value in values:
        if value == "*":
            continue
        if value.endswith(".*"):
            if len(value) > 120 or not _PREFIX_RE.match(value[:-2]):
                raise BadUserInput(
                    f"{field}: a prefix is dotted lowercase segments then '.*', e.g. 'member.*'",
                    field=field,
                )
            continue
        if value not in BUILTIN_EVENT_TYPES and value not in registered:
            shown = value[:120].encode("unicode_escape").decode()
            raise BadUserInput(
                f"{field}: '{shown}' is neither a built-in event type nor one registered in"
                " this tenant (see eventTypes)",
                field=field,
            )
    return sorted(set(values))


async def checked_url(settings: Settings, url: str, environment: Environment) -> str:
    """The endpoint URL, normalised, or BAD_USER_INPUT: http(s), https for live endpoints in
    production, and (unless private targets are allowed) no loopback, private, link-local or
    metadata address, the host's resolved addresses included (``coregraph.outbound``)."""
    # Imported here, with httpcore, when an endpoint is saved (coregraph.streams.webhooks).
    from coregraph import outbound

    return await outbound.check_destination(
        url,
        allow_private=settings.webhook_private_allowed,
        require_https=settings.is_production and environment == Environment.LIVE,
    )


async def get_endpoint(
    uow: UnitOfWork, tenant_id: str, endpoint_id: str, field: str = "id", *, lock: bool = False
) -> WebhookEndpoint:
    """The tenant's endpoint in the principal's environment, or NOT_FOUND (as for another
    tenant's)."""
    validation.object_id(endpoint_id, "whe", field)
    statement = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id,
        WebhookEndpoint.environment == uow.principal.environment.value,
        WebhookEndpoint.id == endpoint_id,
    )
    endpoint = await uow.session.scalar(statement.with_for_update() if lock else statement)
    if endpoint is None:
        raise validation.not_found("webhook endpoint", field)
    return endpoint


def _record(
    uow: UnitOfWork,
    action: str,
    endpoint: WebhookEndpoint,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """The audit entry of an action on ``endpoint`` (or on its deliveries)."""
    uow.record(
        action,
        tenant_id=endpoint.tenant_id,
        environment=endpoint.environment,
        target_type="WebhookEndpoint",
        target_id=endpoint.id,
        before=before,
        after=after,
    )


def _record_and_emit(
    uow: UnitOfWork,
    action: str,
    endpoint: WebhookEndpoint,
    data: dict[str, Any],
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """The audit entry and the ``webhook_endpoint.*`` event of a change to ``endpoint``."""
    _record(uow, action, endpoint, before=before, after=after)
    uow.emit(
        action,
        tenant_id=endpoint.tenant_id,
        environment=endpoint.environment,
        data={"endpointId": endpoint.id, **data},
    )


async def create_endpoint(
    uow: UnitOfWork,
    settings: Settings,
    tenant_id: str,
    *,
    url: str,
    event_types: Sequence[str],
    description: str,
) -> tuple[WebhookEndpoint, str]:
    """A new enabled endpoint of the principal's environment and its signing secret, which is
    shown this once: only its encrypted form is stored. At most
    ``COREGRAPH_WEBHOOK_MAX_ENDPOINTS`` per tenant and environment (QUOTA_EXCEEDED)."""
    environment = uow.principal.environment
    description = validation.text(description, "description", max_length=500, min_length=0)
    patterns = await check_event_types(uow, tenant_id, event_types)
    url = await checked_url(settings, url, environment)
    await _ensure_room(uow, settings, tenant_id, environment)
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=ids.new_id("whe"),
        tenant_id=tenant_id,
        environment=environment,
        url=url,
        description=description,
        event_types=patterns,
        enabled=True,
        secret=secret_box(settings).seal(secret),
        consecutive_failures=0,
    )
    uow.session.add(endpoint)
    await uow.session.flush()
    snapshot = endpoint_snapshot(endpoint)
    _record_and_emit(
        uow,
        "webhook_endpoint.created",
        endpoint,
        {
            k: snapshot[k]
            for k in ("urlOrigin", "description", "eventTypes", "environment", "enabled")
        },
        after=snapshot,
    )
    return endpoint, secret


MAX_ENDPOINTS_METER = "webhook_endpoints"


async def _ensure_room(
    uow: UnitOfWork, settings: Settings, tenant_id: str, environment: Environment
) -> None:
    """QUOTA_EXCEEDED when the tenant has its most endpoints in ``environment``; otherwise
    holds the count until the transaction ends, so two creations cannot both take the last
    place."""
    if uow.engine.dialect.name == "postgresql":
        await uow.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
            {"k": f"coregraph:webhook-endpoints:{tenant_id}:{environment.value}"},
        )
    else:
        # SQLite's driver begins the transaction at the first write: a write that changes
        # nothing takes the database's write lock before the count.
        await uow.session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id, false())
            .values(enabled=WebhookEndpoint.enabled)
        )
    count = await uow.session.scalar(
        select(func.count()).where(
            WebhookEndpoint.tenant_id == tenant_id,
            WebhookEndpoint.environment == environment.value,
        )
    )
    limit = settings.webhook_max_endpoints
    if (count or 0) >= limit:
        raise QuotaExceeded(
            f"the tenant has {limit} webhook endpoints in this environment, the most allowed"
            " (COREGRAPH_WEBHOOK_MAX_ENDPOINTS): delete one first",
            meter=MAX_ENDPOINTS_METER,
            limit=limit,
            current=count,
        )


async def update_endpoint(
    uow: UnitOfWork,
    settings: Settings,
    tenant_id: str,
    endpoint_id: str,
    *,
    url: str | None,
    event_types: Sequence[str] | None,
    description: str | None,
) -> WebhookEndpoint:
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, lock=True)
    before = endpoint_snapshot(endpoint)
    if description is not None:
        endpoint.description = validation.text(
            description, "description", max_length=500, min_length=0
        )
    if event_types is not None:
        endpoint.event_types = await check_event_types(uow, tenant_id, event_types)
    if url is not None:
        endpoint.url = await checked_url(settings, url, Environment(endpoint.environment))
    after = endpoint_snapshot(endpoint)
    if after != before:
        # The event says that the URL changed, and shows its origin if that changed; the
        # audit entry's diff also carries the whole URL's hash.
        changes = diff(_event_view(before), _event_view(after))
        changes["urlChanged"] = after["urlSha256"] != before["urlSha256"]
        _record_and_emit(
            uow, "webhook_endpoint.updated", endpoint, changes, before=before, after=after
        )
    return endpoint


async def disable_endpoint(uow: UnitOfWork, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Stop delivering to the endpoint. Deliveries already scheduled wait (enabling it
    resumes them); events committed while it is disabled are not scheduled for it at all (the
    relay schedules for enabled endpoints only): replayWebhookEvents sends them afterwards."""
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, lock=True)
    if endpoint.enabled:
        before = endpoint_snapshot(endpoint)
        endpoint.enabled, endpoint.disabled_reason = False, "manual"
        _record_and_emit(
            uow,
            "webhook_endpoint.disabled",
            endpoint,
            {"reason": "manual"},
            before=before,
            after=endpoint_snapshot(endpoint),
        )
    return endpoint


async def enable_endpoint(uow: UnitOfWork, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Deliver to the endpoint again: the deliveries scheduled before it was disabled flow
    again, events committed meanwhile were never scheduled for it (replay them). Its run of
    failures starts afresh, so an endpoint the worker disabled is not disabled again by its
    next failure."""
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, lock=True)
    if not endpoint.enabled:
        before = endpoint_snapshot(endpoint)
        endpoint.enabled, endpoint.disabled_reason = True, None
        endpoint.consecutive_failures, endpoint.failing_since = 0, None
        uow.webhooks_due = True  # deliveries scheduled before it was disabled flow again
        _record_and_emit(
            uow,
            "webhook_endpoint.enabled",
            endpoint,
            {},
            before=before,
            after=endpoint_snapshot(endpoint),
        )
    return endpoint


async def delete_endpoint(uow: UnitOfWork, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Delete the endpoint with its deliveries and attempts (the database cascades)."""
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, lock=True)
    _record_and_emit(
        uow,
        "webhook_endpoint.deleted",
        endpoint,
        {"urlOrigin": url_origin(endpoint.url)},
        before=endpoint_snapshot(endpoint),
    )
    await uow.session.delete(endpoint)
    await uow.session.flush()
    return endpoint


async def rotate_secret(
    uow: UnitOfWork,
    settings: Settings,
    tenant_id: str,
    endpoint_id: str,
    *,
    overlap_seconds: float | None,
) -> tuple[WebhookEndpoint, str]:
    """A new signing secret, shown this once. The one it replaces keeps signing beside it for
    ``overlap_seconds`` (``COREGRAPH_WEBHOOK_SECRET_OVERLAP_SECONDS`` by default), so the
    receiver can switch without refusing a request; 0 drops it at once."""
    limit = 30 * 86400
    overlap = (
        settings.webhook_secret_overlap_seconds if overlap_seconds is None else overlap_seconds
    )
    if not 0 <= overlap <= limit:
        raise BadUserInput(
            f"overlapSeconds: between 0 and {limit} (30 days)", field="overlapSeconds"
        )
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, lock=True)
    secret = new_secret()
    if overlap > 0:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = utcnow() + timedelta(seconds=overlap)
    else:
        endpoint.previous_secret, endpoint.previous_secret_expires_at = None, None
    endpoint.secret = secret_box(settings).seal(secret)
    ends = endpoint.previous_secret_expires_at
    _record_and_emit(
        uow,
        "webhook_endpoint.secret_rotated",
        endpoint,
        {"overlapEndsAt": iso_time(ends) if ends else None},
        after={"overlapEndsAt": ends},
    )
    return endpoint, secret


def _ensure_deliverable(endpoint: WebhookEndpoint, field: str) -> None:
    if not endpoint.enabled:
        raise Conflict(
            f"{field}: the endpoint is disabled; enable it first (enableWebhookEndpoint)",
            field=field,
        )


async def retry_delivery(uow: UnitOfWork, tenant_id: str, delivery_id: str) -> WebhookDelivery:
    """Send a delivery again now: back to pending, due at once, same id (the receiver's
    ``webhook-id``, so it can tell it from a new message). One more attempt is made whatever
    the retry schedule says; a delivery being sent right now is CONFLICT."""
    validation.object_id(delivery_id, "msg", "id")
    delivery = await uow.session.scalar(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.environment == uow.principal.environment.value,
            WebhookDelivery.id == delivery_id,
        )
        .with_for_update()
    )
    if delivery is None:
        raise validation.not_found("webhook delivery", "id")
    endpoint = await get_endpoint(uow, tenant_id, delivery.endpoint_id)
    _ensure_deliverable(endpoint, "id")
    now = utcnow()
    if delivery.status == DeliveryStatus.SENDING and (
        delivery.claimed_until is None or delivery.claimed_until > now
    ):
        raise Conflict("id: the delivery is being sent right now", field="id")
    previous = str(delivery.status)
    delivery.status = DeliveryStatus.PENDING.value
    delivery.next_attempt_at = now
    delivery.claimed_until, delivery.claimed_by = None, None
    uow.webhooks_due = True
    _record(
        uow,
        "webhook_delivery.retried",
        endpoint,
        after={"deliveryId": delivery.id, "eventId": delivery.event_id, "previousStatus": previous},
    )
    return delivery


@dataclass(frozen=True, slots=True)
class Replay:
    scheduled: int
    # Where the range goes on when it held more than REPLAY_LIMIT events (None: all done).
    continue_from: datetime | None


def _matching(patterns: Sequence[str]) -> Any:
    """``matches`` as SQL: the events table's types that ``patterns`` take."""
    if "*" in patterns:
        return true()
    exact = [p for p in patterns if not p.endswith(".*")]
    conditions: list[Any] = [Event.type.in_(exact)] if exact else []
    for pattern in patterns:
        if pattern.endswith(".*"):
            prefix = pattern[:-1]
            conditions.append(func.substr(Event.type, 1, len(prefix)) == prefix)
    return or_(*conditions) if conditions else false()


async def replay_events(
    uow: UnitOfWork,
    tenant_id: str,
    endpoint_id: str,
    *,
    occurred_from: datetime,
    occurred_to: datetime,
) -> Replay:
    """Send the endpoint every event of its tenant and environment that occurred in
    ``[occurred_from, occurred_to)`` and matches its types, due now: a delivery it already has
    goes back to pending (same id; one being sent right now is left to finish), a missing one
    is scheduled. At most ``REPLAY_LIMIT`` events a call, oldest first; ``continue_from`` says
    where to call again."""
    for value, field in ((occurred_from, "from"), (occurred_to, "to")):
        if value.tzinfo is None:
            raise BadUserInput(f"{field}: must carry a timezone offset", field=field)
    if occurred_to <= occurred_from:
        raise BadUserInput("to: must be after from", field="to")
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, "endpointId")
    _ensure_deliverable(endpoint, "endpointId")
    rows = (
        await uow.session.execute(
            select(Event)
            .where(
                Event.tenant_id == tenant_id,
                Event.environment == str(endpoint.environment),
                Event.occurred_at >= occurred_from,
                Event.occurred_at < occurred_to,
                _matching(endpoint.event_types),
            )
            .order_by(Event.occurred_at, Event.sequence)
            .limit(REPLAY_LIMIT + 1)
        )
    ).scalars()
    events = [event for event in rows if matches(endpoint.event_types, event.type)]
    continue_from = None
    if len(events) > REPLAY_LIMIT:
        continue_from = events[REPLAY_LIMIT].occurred_at
        events = events[:REPLAY_LIMIT]
    reset = 0
    if events:
        result = await uow.session.execute(
            update(_DELIVERIES)
            .where(
                _DELIVERIES.c.endpoint_id == endpoint.id,
                _DELIVERIES.c.event_id.in_([event.id for event in events]),
                _DELIVERIES.c.status != DeliveryStatus.SENDING.value,
            )
            .values(
                status=DeliveryStatus.PENDING.value,
                next_attempt_at=utcnow(),
                claimed_until=None,
                claimed_by=None,
            )
            .execution_options(synchronize_session=False)
        )
        reset = result.rowcount  # type: ignore[attr-defined]
    added = await schedule(uow.session, events, endpoint_id=endpoint.id)
    if reset + added:
        uow.webhooks_due = True
        _record(
            uow,
            "webhook_endpoint.events_replayed",
            endpoint,
            after={
                "from": occurred_from,
                "to": occurred_to,
                "scheduled": reset + added,
                "continueFrom": continue_from,
            },
        )
    return Replay(scheduled=reset + added, continue_from=continue_from)


async def send_test(uow: UnitOfWork, tenant_id: str, endpoint_id: str) -> WebhookDelivery:
    """A ``webhook.test`` delivery to the endpoint, due now, that belongs to no event."""
    endpoint = await get_endpoint(uow, tenant_id, endpoint_id, "endpointId")
    _ensure_deliverable(endpoint, "endpointId")
    now = utcnow()
    delivery = WebhookDelivery(
        id=ids.new_id("msg"),
        tenant_id=tenant_id,
        environment=endpoint.environment,
        endpoint_id=endpoint.id,
        event_id=None,
        event_type="webhook.test",
        payload=test_envelope(endpoint.id, tenant_id, str(endpoint.environment)),
        status=DeliveryStatus.PENDING.value,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    uow.session.add(delivery)
    await uow.session.flush()
    uow.webhooks_due = True
    _record(uow, "webhook_endpoint.test_sent", endpoint, after={"deliveryId": delivery.id})
    return delivery


# --- Key rotation (`coregraph rotate-webhook-key`) ------------------------------------------


class UnknownSecretKey(Exception):
    """An endpoint secret sealed under none of the configured keys."""


async def tenants_with_endpoints(worker: AsyncConnection) -> list[str]:
    """Every tenant that has an endpoint. ``worker`` acts as the worker role on PostgreSQL,
    which reads every tenant's endpoints (it signs with their secrets)."""
    rows = await worker.scalars(select(_ENDPOINTS.c.tenant_id).distinct())
    return sorted(rows)


async def reseal_secrets(uow: UnitOfWork, tenant_id: str, box: SecretBox) -> int:
    """Re-encrypt the tenant's endpoint secrets (current and previous) under ``box``'s first
    key, so the keys after it can be dropped; how many endpoints. Audited; the secrets
    themselves do not change, so nothing is emitted."""
    await uow.allow_tenant(tenant_id)
    endpoints = (
        await uow.session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .order_by(WebhookEndpoint.id)
            .with_for_update()
        )
    ).all()
    from cryptography.fernet import InvalidToken

    for endpoint in endpoints:
        try:
            endpoint.secret = box.reseal(endpoint.secret)
            if endpoint.previous_secret:
                endpoint.previous_secret = box.reseal(endpoint.previous_secret)
        except InvalidToken:
            raise UnknownSecretKey(
                f"the secrets of webhook endpoint {endpoint.id} open with none of the keys in"
                " COREGRAPH_WEBHOOK_SECRET_KEYS: keep the key that sealed them (after the new"
                " one) until this command has run"
            ) from None
    if endpoints:
        uow.record(
            "webhook_endpoint.secrets_resealed",
            tenant_id=tenant_id,
            after={"endpoints": len(endpoints)},
        )
    return len(endpoints)
