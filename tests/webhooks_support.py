"""What the webhook delivery tests share: endpoints written as the API role would (secrets
sealed with the settings' keys), deliveries and attempts read back, and a receiver on
127.0.0.1 that verifies every request it gets with the ``standardwebhooks`` package, as a
partner's server would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks import Webhook, WebhookVerificationError

from coregraph import db, ids
from coregraph.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from coregraph.models.base import Environment, utcnow
from coregraph.services.webhooks import SecretBox, new_secret
from coregraph.settings import Settings
from tests.receiver_support import ReceivedRequest, Reply


@dataclass
class Endpoint:
    id: str
    tenant_id: str
    secret: str


async def add_endpoint(
    engine: AsyncEngine,
    settings: Settings,
    tenant_id: str,
    url: str,
    *,
    # Not "*": the tenant's own creation events are published (and matched) in the test too.
    event_types: Sequence[str] = ("test.pinged",),
    environment: Environment = Environment.LIVE,
    secret: str | None = None,
    previous_secret: str | None = None,
    previous_secret_expires_at: datetime | None = None,
) -> Endpoint:
    """An endpoint as the API stores one, written through the tenant wall."""
    box = SecretBox(settings.webhook_secret_key_list)
    secret = secret or new_secret()
    endpoint_id = ids.new_id("whe")
    now = utcnow()
    async with engine.begin() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        await conn.execute(
            insert(WebhookEndpoint).values(
                id=endpoint_id,
                tenant_id=tenant_id,
                environment=environment,
                url=url,
                description="",
                event_types=list(event_types),
                enabled=True,
                secret=box.seal(secret),
                previous_secret=box.seal(previous_secret) if previous_secret else None,
                previous_secret_expires_at=previous_secret_expires_at,
                consecutive_failures=0,
                created_at=now,
                updated_at=now,
            )
        )
    return Endpoint(endpoint_id, tenant_id, secret)


async def set_enabled(engine: AsyncEngine, endpoint: Endpoint, enabled: bool) -> None:
    async with engine.begin() as conn:
        await db.scope_transaction(conn, tenant_ids=[endpoint.tenant_id])
        await conn.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint.id)
            .values(enabled=enabled, disabled_reason=None if enabled else "manual")
        )


async def read_endpoint(engine: AsyncEngine, endpoint: Endpoint) -> Any:
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[endpoint.tenant_id])
        return (
            await conn.execute(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id))
        ).one()


async def deliveries(engine: AsyncEngine, endpoint: Endpoint) -> list[Any]:
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[endpoint.tenant_id])
        return list(
            (
                await conn.execute(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.endpoint_id == endpoint.id)
                    .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
                )
            ).all()
        )


async def attempts(engine: AsyncEngine, endpoint: Endpoint, delivery_id: str) -> list[Any]:
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[endpoint.tenant_id])
        return list(
            (
                await conn.execute(
                    select(WebhookAttempt)
                    .where(WebhookAttempt.delivery_id == delivery_id)
                    .order_by(WebhookAttempt.attempt)
                )
            ).all()
        )


Answer = Callable[[ReceivedRequest], Awaitable[Reply]]


async def answer_ok(request: ReceivedRequest) -> Reply:
    return Reply(200, b"thanks")


class Holding:
    """An answer that waits until ``release()``: requests a worker sends stay in flight."""

    def __init__(self) -> None:
        self._released = asyncio.Event()

    async def answer(self, request: ReceivedRequest) -> Reply:
        await self._released.wait()
        return Reply(200, b"ok")

    def release(self) -> None:
        self._released.set()


@dataclass
class Verifying:
    """A receiver's handler: every request is checked with ``standardwebhooks`` against the
    secrets it holds (any one may match), then answered by ``answer``. Requests whose
    signature does not verify are answered 400 and kept in ``forged``."""

    secrets: list[str]
    answer: Answer = answer_ok
    verified: list[ReceivedRequest] = field(default_factory=list)
    payloads: list[dict[str, Any]] = field(default_factory=list)
    forged: list[ReceivedRequest] = field(default_factory=list)

    async def __call__(self, request: ReceivedRequest) -> Reply:
        for secret in self.secrets:
            try:
                payload = Webhook(secret).verify(request.body, request.headers)
            except WebhookVerificationError:
                continue
            self.verified.append(request)
            self.payloads.append(payload)
            return await self.answer(request)
        self.forged.append(request)
        return Reply(400, b"bad signature")

    def ids(self) -> list[str]:
        return [request.headers["webhook-id"] for request in self.verified]
