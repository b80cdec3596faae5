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
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from coregraph import ids
from coregraph.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from coregraph.models.base import utcnow
from coregraph.models.webhooks import DeliveryStatus
from coregraph.streams.messages import event_message, iso_time

SECRET_PREFIX = "whsec_"

_ENDPOINTS: Table = WebhookEndpoint.__table__  # type: ignore[assignment]
_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form (``whsec_`` + base64 of 24 bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


class SecretBox:
    """Encrypts endpoint secrets at rest with the configured Fernet keys."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, token: str) -> str:
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


async def schedule(db: AsyncConnection | AsyncSession, events: Sequence[Any]) -> int:
    """Schedule one delivery per event and matching enabled endpoint of the event's tenant and
    environment, due now; how many were new. An event already scheduled for an endpoint is
    left as it is (the unique endpoint + event pair), so a relay that publishes a batch again
    after a crash schedules nothing twice."""
    if not events:
        return 0
    tenants = {event.tenant_id for event in events}
    endpoints = (
        await db.execute(
            select(
                _ENDPOINTS.c.id,
                _ENDPOINTS.c.tenant_id,
                _ENDPOINTS.c.environment,
                _ENDPOINTS.c.event_types,
            ).where(_ENDPOINTS.c.tenant_id.in_(tenants), _ENDPOINTS.c.enabled.is_(True))
        )
    ).all()
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
                    }
                )
    if not rows:
        return 0
    name = db.dialect.name if isinstance(db, AsyncConnection) else db.get_bind().dialect.name
    dialect = postgresql if name == "postgresql" else sqlite
    result = await db.execute(
        dialect.insert(_DELIVERIES)
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
