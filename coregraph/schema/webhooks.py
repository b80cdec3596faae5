"""GraphQL types of webhooks: endpoints (never their secrets), the deliveries owed to them,
every attempt made, and what the ``webhookDeliveries`` subscription streams."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import strawberry
from strawberry.federation import field, type as ftype
from strawberry.scalars import JSON

from coregraph import ids, models
from coregraph.auth.principal import Principal
from coregraph.context import Context
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.models.webhooks import DeliveryStatus
from coregraph.schema.access import Environment
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.prefetch import NOT_LOADED, prefetched
from coregraph.schema.readable import readable
from coregraph.streams.broker import Message

WebhookDeliveryStatus = strawberry.enum(
    DeliveryStatus,
    name="WebhookDeliveryStatus",
    description="pending (waiting for its next attempt), sending (a worker holds it),"
    " succeeded, or failed (every attempt of the retry schedule failed).",
)


@entity(models.WebhookEndpoint)
@ftype(
    keys=["id"],
    requires_scopes=[["webhooks:read"]],
    description="A partner's URL that receives the tenant's events of one environment, signed"
    " per Standard Webhooks. Its signing secret is shown once, when created or rotated.",
)
class WebhookEndpoint(Node):
    id: strawberry.ID
    url: str
    description: str
    event_types: list[str] = strawberry.field(
        description="Event types delivered: names, prefixes ('member.*'), or '*' for all."
    )
    environment: Environment  # type: ignore[valid-type]
    enabled: bool
    disabled_reason: str | None = strawberry.field(
        description="manual (disableWebhookEndpoint) or failing (disabled by the worker)."
    )
    consecutive_failures: int = strawberry.field(
        description="Failed attempts in a row since the last success."
    )
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None = strawberry.field(
        description="Until when the secret replaced by the last rotation still signs beside"
        " the current one; null when none does."
    )
    created_at: datetime
    updated_at: datetime
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any) -> WebhookEndpoint:
        return cls(
            id=strawberry.ID(row.id),
            url=row.url,
            description=row.description,
            event_types=list(row.event_types),
            environment=EnvironmentValue(row.environment),
            enabled=row.enabled,
            disabled_reason=row.disabled_reason,
            consecutive_failures=row.consecutive_failures,
            failing_since=row.failing_since,
            previous_secret_expires_at=(
                row.previous_secret_expires_at if row.previous_secret else None
            ),
            created_at=row.created_at,
            updated_at=row.updated_at,
            tenant_id=row.tenant_id,
        )


async def find_attempt(ctx: Context, id_: str) -> WebhookAttempt | None:
    """An attempt by id (``node``, ``_entities``) when its delivery is in the principal's
    tenants and environment: attempts carry no environment of their own."""
    if not ids.is_valid(id_, models.WebhookAttempt.__id_prefix__):
        return None
    row = await ctx.loaders.rows_of(models.WebhookAttempt).load(id_)
    if row is None:
        return None
    delivery = await ctx.loaders.rows_of(models.WebhookDelivery).load(row.delivery_id)
    if delivery is None or delivery.environment != ctx.principal.environment:
        return None
    return WebhookAttempt.from_row(row)


@entity(models.WebhookAttempt, find=find_attempt)
@ftype(
    keys=["id"],
    requires_scopes=[["webhooks:read"]],
    description="One request to an endpoint: when, what it answered, how long it took.",
)
class WebhookAttempt(Node):
    id: strawberry.ID
    delivery_id: strawberry.ID
    endpoint_id: strawberry.ID
    attempt: int = strawberry.field(description="1 for the first attempt of its delivery.")
    started_at: datetime
    duration_ms: float = strawberry.field(description="Latency: request sent to answer read.")
    status_code: int | None = strawberry.field(description="Null when no answer came.")
    response_body: str | None = strawberry.field(
        description="The first KiB of the answer's body, decoded leniently."
    )
    error: str | None = strawberry.field(
        description="Why the attempt failed without an answer (timeout, refused address, ...)."
    )
    succeeded: bool
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any) -> WebhookAttempt:
        return cls(
            id=strawberry.ID(row.id),
            delivery_id=strawberry.ID(row.delivery_id),
            endpoint_id=strawberry.ID(row.endpoint_id),
            attempt=row.attempt,
            started_at=row.started_at,
            duration_ms=row.duration_ms,
            status_code=row.status_code,
            response_body=row.response_body,
            error=row.error,
            succeeded=row.succeeded,
            tenant_id=row.tenant_id,
        )

    @classmethod
    def from_message(cls, message: Message) -> WebhookAttempt:
        """An attempt as the worker published it (``services.webhooks.attempt_message``)."""
        return cls(
            id=strawberry.ID(message["id"]),
            delivery_id=strawberry.ID(message["deliveryId"]),
            endpoint_id=strawberry.ID(message["endpointId"]),
            attempt=int(message["attempt"]),
            started_at=datetime.fromisoformat(message["startedAt"]),
            duration_ms=float(message["durationMs"]),
            status_code=message["statusCode"],
            response_body=message["responseBody"],
            error=message["error"],
            succeeded=bool(message["succeeded"]),
            tenant_id=message["tenant"],
        )


def attempts_of(principal: Principal, tenant_id: str, delivery_ids: Sequence[str]) -> Any:
    """The attempts of these deliveries, in order."""
    attempt = models.WebhookAttempt
    return (
        readable(principal, attempt, tenant_id=tenant_id)
        .where(attempt.delivery_id.in_(list(delivery_ids)))
        .order_by(attempt.delivery_id, attempt.attempt)
    )


@entity(models.WebhookDelivery)
@ftype(
    keys=["id"],
    requires_scopes=[["webhooks:read"]],
    description="One event owed to one endpoint. Its id is the webhook-id header of every"
    " attempt, retries and replays included, so the receiver de-duplicates on it.",
)
class WebhookDelivery(Node):
    id: strawberry.ID
    endpoint_id: strawberry.ID
    event_id: strawberry.ID | None = strawberry.field(
        description="The event delivered; null for a test message (sendTestWebhook)."
    )
    event_type: str
    environment: Environment  # type: ignore[valid-type]
    status: WebhookDeliveryStatus  # type: ignore[valid-type]
    attempt_count: int = strawberry.field(description="Attempts made so far.")
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    succeeded_at: datetime | None
    created_at: datetime
    tenant_id: strawberry.Private[str]
    body: strawberry.Private[Any]
    # Set by a list that loaded its page's attempts up front (webhookDeliveries).
    loaded_attempts: strawberry.Private[Any] = NOT_LOADED

    @field(
        requires_scopes=[["webhooks:read", "events:read"]],
        description="The body sent on every attempt: the event envelope (needs events:read"
        " too, as reading the event itself does).",
    )
    def payload(self) -> JSON:
        return JSON(self.body)

    @strawberry.field(description="Every attempt so far, oldest first.")
    @prefetched("loaded_attempts")
    async def attempts(self, info: strawberry.Info) -> list[WebhookAttempt]:
        if self.loaded_attempts is not NOT_LOADED:
            return list(self.loaded_attempts)
        rows = await info.context.read(
            attempts_of(info.context.principal, self.tenant_id, [str(self.id)])
        )
        return [WebhookAttempt.from_row(row) for row in rows]

    @classmethod
    def from_row(cls, row: Any) -> WebhookDelivery:
        return cls(
            id=strawberry.ID(row.id),
            endpoint_id=strawberry.ID(row.endpoint_id),
            event_id=strawberry.ID(row.event_id) if row.event_id is not None else None,
            event_type=row.event_type,
            environment=EnvironmentValue(row.environment),
            status=DeliveryStatus(row.status),
            attempt_count=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_attempt_at=row.last_attempt_at,
            succeeded_at=row.succeeded_at,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
            body=row.payload,
        )


@ftype(
    requires_scopes=[["webhooks:read"]],
    description="An attempt a worker just made, and where its delivery stands after it.",
)
class WebhookAttemptUpdate:
    attempt: WebhookAttempt
    delivery_id: strawberry.ID
    event_id: strawberry.ID | None
    event_type: str
    environment: Environment  # type: ignore[valid-type]
    delivery_status: WebhookDeliveryStatus  # type: ignore[valid-type]
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_message(cls, message: Message) -> WebhookAttemptUpdate:
        event_id = message["eventId"]
        return cls(
            attempt=WebhookAttempt.from_message(message),
            delivery_id=strawberry.ID(message["deliveryId"]),
            event_id=strawberry.ID(event_id) if event_id is not None else None,
            event_type=message["eventType"],
            environment=EnvironmentValue(message["environment"]),
            delivery_status=DeliveryStatus(message["deliveryStatus"]),
            tenant_id=message["tenant"],
        )
