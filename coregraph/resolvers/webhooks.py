"""Webhook endpoints, their deliveries and attempts: queries, mutations, and the live
``webhookDeliveries`` subscription. Resolvers only write rows the delivery worker picks up
(``coregraph.services.webhooks``); nothing here sends a request.

Every read and write is limited to the request's tenant and environment: a test key neither
sees nor changes a live endpoint or delivery. What decides where events go (creating an
endpoint, changing its URL or types, enabling it, replaying events to it) needs events:read
beside webhooks:manage, since it amounts to reading those events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.federation import field

from coregraph import models
from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.models.webhooks import DeliveryStatus
from coregraph.schema.access import Environment
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.pagination import Connection, node_selects, paginate
from coregraph.schema.readable import readable
from coregraph.schema.webhooks import (
    WebhookAttempt,
    WebhookAttemptUpdate,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    attempts_of,
)
from coregraph.services import validation, webhooks
from coregraph.services.uow import UnitOfWork
from coregraph.streams.broker import webhook_attempts_topic
from coregraph.streams.subscription import LiveFeed, live_only

Info = strawberry.Info[Context, None]
SECRET_SHOWN_ONCE = "The signing secret (whsec_…), shown this once: coregraph keeps it encrypted."


@strawberry.input
class CreateWebhookEndpointInput:
    url: str = strawberry.field(description="http(s); https for live endpoints in production.")
    event_types: list[str] = strawberry.field(
        description="Event type names (built-in or registered), prefixes ('member.*'), or '*'."
    )
    description: str = ""
    environment: Environment | None = strawberry.field(  # type: ignore[valid-type]
        default=None,
        description="Whose events it receives: the request's environment, the only one"
        " accepted (another is BAD_USER_INPUT).",
    )


@strawberry.input
class UpdateWebhookEndpointInput:
    id: strawberry.ID
    url: str | None = None
    event_types: list[str] | None = None
    description: str | None = None


@strawberry.type
class CreateWebhookEndpointPayload(MutationPayload):
    webhook_endpoint: WebhookEndpoint | None
    secret: str | None = strawberry.field(description=SECRET_SHOWN_ONCE)


@strawberry.type
class WebhookEndpointPayload(MutationPayload):
    webhook_endpoint: WebhookEndpoint | None


@strawberry.type
class DeleteWebhookEndpointPayload(MutationPayload):
    deleted_webhook_endpoint_id: strawberry.ID | None


@strawberry.type
class RotateWebhookSecretPayload(MutationPayload):
    webhook_endpoint: WebhookEndpoint | None
    secret: str | None = strawberry.field(description=SECRET_SHOWN_ONCE)


@strawberry.type
class WebhookDeliveryPayload(MutationPayload):
    webhook_delivery: WebhookDelivery | None


@strawberry.type
class ReplayWebhookEventsPayload(MutationPayload):
    scheduled: int | None = strawberry.field(
        description="Events now due for delivery: deliveries sent again, and new ones."
    )
    continue_from: datetime | None = strawberry.field(
        description=f"The range held more than {webhooks.REPLAY_LIMIT} events: call again with"
        " this as from for the rest. Null when the whole range was scheduled."
    )


# What decides where the tenant's events go: as much as reading them.
STEERS_EVENTS = [["webhooks:manage", "events:read"]]


def _request_environment(info: Info, given: Environment | None) -> None:  # type: ignore[valid-type]
    """BAD_USER_INPUT unless ``given`` is unset or the request's own environment."""
    if given is not None and EnvironmentValue(given) != info.context.principal.environment:
        raise BadUserInput(
            "environment: only the request's environment (an API key's own, X-Environment for"
            " a user)",
            field="environment",
        )


def _endpoints(info: Info, tenant_id: str) -> Any:
    """The tenant's endpoints in the request's environment."""
    ctx = info.context
    endpoint = models.WebhookEndpoint
    return readable(ctx.principal, endpoint, tenant_id=tenant_id).where(
        endpoint.environment == ctx.principal.environment.value
    )


async def _endpoint(info: Info, endpoint_id: strawberry.ID, field: str) -> WebhookEndpoint:
    """The addressed tenant's endpoint in the request's environment, or NOT_FOUND (also for
    another tenant's or another environment's)."""
    ctx = info.context
    validation.object_id(str(endpoint_id), "whe", field)
    endpoint = models.WebhookEndpoint
    rows = await ctx.read(
        _endpoints(info, ctx.require_tenant()).where(endpoint.id == str(endpoint_id))
    )
    if not rows:
        raise validation.not_found("webhook endpoint", field)
    return WebhookEndpoint.from_row(rows[0])


async def _changed(
    info: Info,
    change: Callable[[UnitOfWork, str, str], Awaitable[models.WebhookEndpoint]],
    id: strawberry.ID,
) -> WebhookEndpointPayload:
    ctx = info.context
    async with ctx.unit_of_work() as uow:
        row = await change(uow, ctx.require_tenant(), str(id))
    return WebhookEndpointPayload(webhook_endpoint=WebhookEndpoint.from_row(row))


@strawberry.type
class WebhooksQuery:
    @field(
        requires_scopes=[["webhooks:read"]],
        description="This tenant's webhook endpoints in the request's environment, oldest"
        " first (environment, if given, must be that one).",
    )
    async def webhook_endpoints(
        self,
        info: Info,
        environment: Environment | None = None,  # type: ignore[valid-type]
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[WebhookEndpoint] | None:
        ctx = info.context
        _request_environment(info, environment)
        stmt = _endpoints(info, ctx.require_tenant())
        endpoint = models.WebhookEndpoint
        return await paginate(ctx, stmt, endpoint.id, first, after, WebhookEndpoint.from_row)

    @field(requires_scopes=[["webhooks:read"]], description="One of this tenant's endpoints.")
    async def webhook_endpoint(self, info: Info, id: strawberry.ID) -> WebhookEndpoint | None:
        return await _endpoint(info, id, "id")

    @field(
        requires_scopes=[["webhooks:read"]],
        description="An endpoint's deliveries, newest first, each with its attempts.",
    )
    async def webhook_deliveries(
        self,
        info: Info,
        endpoint_id: strawberry.ID,
        status: WebhookDeliveryStatus | None = None,  # type: ignore[valid-type]
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[WebhookDelivery] | None:
        ctx = info.context
        found = await _endpoint(info, endpoint_id, "endpointId")
        delivery = models.WebhookDelivery
        stmt = readable(ctx.principal, delivery, tenant_id=found.tenant_id).where(
            delivery.environment == ctx.principal.environment.value,
            delivery.endpoint_id == str(found.id),
        )
        if status is not None:
            stmt = stmt.where(delivery.status == DeliveryStatus(status).value)
        page = await paginate(
            ctx, stmt, delivery.id, first, after, WebhookDelivery.from_row, newest_first=True
        )
        if node_selects(info, "attempts"):
            # The page's attempts in one query rather than one per delivery.
            deliveries = [edge.node for edge in page.edges]
            rows = await ctx.read(
                attempts_of(ctx.principal, found.tenant_id, [str(d.id) for d in deliveries])
            )
            by_delivery: dict[str, list[WebhookAttempt]] = {str(d.id): [] for d in deliveries}
            for row in rows:
                by_delivery[row.delivery_id].append(WebhookAttempt.from_row(row))
            for item in deliveries:
                item.loaded_attempts = by_delivery[str(item.id)]
        return page


@strawberry.type
class WebhooksMutation:
    @field(
        requires_scopes=STEERS_EVENTS,
        description="A new endpoint of the request's environment, enabled, and its signing"
        " secret (shown this once). The URL must not lead to loopback, private, link-local or"
        " metadata addresses (unless COREGRAPH_WEBHOOK_ALLOW_PRIVATE): BAD_USER_INPUT. At most"
        " COREGRAPH_WEBHOOK_MAX_ENDPOINTS (50) per tenant and environment: QUOTA_EXCEEDED.",
    )
    async def create_webhook_endpoint(
        self, info: Info, input: CreateWebhookEndpointInput
    ) -> CreateWebhookEndpointPayload | None:
        ctx = info.context
        _request_environment(info, input.environment)
        async with ctx.unit_of_work() as uow:
            row, secret = await webhooks.create_endpoint(
                uow,
                ctx.settings,
                ctx.require_tenant(),
                url=input.url,
                event_types=input.event_types,
                description=input.description,
            )
        return CreateWebhookEndpointPayload(
            webhook_endpoint=WebhookEndpoint.from_row(row), secret=secret
        )

    @field(
        requires_scopes=STEERS_EVENTS,
        description="Change an endpoint's URL, event types or description (what is given).",
    )
    async def update_webhook_endpoint(
        self, info: Info, input: UpdateWebhookEndpointInput
    ) -> WebhookEndpointPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await webhooks.update_endpoint(
                uow,
                ctx.settings,
                ctx.require_tenant(),
                str(input.id),
                url=input.url,
                event_types=input.event_types,
                description=input.description,
            )
        return WebhookEndpointPayload(webhook_endpoint=WebhookEndpoint.from_row(row))

    @field(
        requires_scopes=[["webhooks:manage"]],
        description="Stop delivering to an endpoint: deliveries already scheduled wait until"
        " it is enabled; events committed while it is disabled are not scheduled for it"
        " (replayWebhookEvents sends them afterwards).",
    )
    async def disable_webhook_endpoint(
        self, info: Info, id: strawberry.ID
    ) -> WebhookEndpointPayload | None:
        return await _changed(info, webhooks.disable_endpoint, id)

    @field(
        requires_scopes=STEERS_EVENTS,
        description="Deliver to a disabled endpoint again: the deliveries scheduled before it"
        " was disabled flow again (events committed meanwhile were not scheduled: replay"
        " them); its failure count starts afresh.",
    )
    async def enable_webhook_endpoint(
        self, info: Info, id: strawberry.ID
    ) -> WebhookEndpointPayload | None:
        return await _changed(info, webhooks.enable_endpoint, id)

    @field(
        requires_scopes=[["webhooks:manage"]],
        description="Delete an endpoint with its deliveries and their attempts.",
    )
    async def delete_webhook_endpoint(
        self, info: Info, id: strawberry.ID
    ) -> DeleteWebhookEndpointPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await webhooks.delete_endpoint(uow, ctx.require_tenant(), str(id))
        return DeleteWebhookEndpointPayload(deleted_webhook_endpoint_id=strawberry.ID(row.id))

    @field(
        requires_scopes=[["webhooks:manage"]],
        description="A new signing secret (shown this once). The replaced one keeps signing"
        " beside it for overlapSeconds (default COREGRAPH_WEBHOOK_SECRET_OVERLAP_SECONDS,"
        " 24 h), so the receiver can switch without refusing a request.",
    )
    async def rotate_webhook_secret(
        self, info: Info, id: strawberry.ID, overlap_seconds: int | None = None
    ) -> RotateWebhookSecretPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row, secret = await webhooks.rotate_secret(
                uow, ctx.settings, ctx.require_tenant(), str(id), overlap_seconds=overlap_seconds
            )
        return RotateWebhookSecretPayload(
            webhook_endpoint=WebhookEndpoint.from_row(row), secret=secret
        )

    @field(
        requires_scopes=[["webhooks:manage"]],
        description="Send a delivery again now, with the same webhook-id (one more attempt,"
        " whatever the retry schedule says). CONFLICT while it is being sent.",
    )
    async def retry_webhook_delivery(
        self, info: Info, id: strawberry.ID
    ) -> WebhookDeliveryPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await webhooks.retry_delivery(uow, ctx.require_tenant(), str(id))
        return WebhookDeliveryPayload(webhook_delivery=WebhookDelivery.from_row(row))

    @field(
        requires_scopes=STEERS_EVENTS,
        description="Send the endpoint again every event of its environment that occurred in"
        f" [from, to) and matches its types (recovery after an outage), at most"
        f" {webhooks.REPLAY_LIMIT} a call, oldest first: existing deliveries keep their"
        " webhook-id.",
    )
    async def replay_webhook_events(
        self,
        info: Info,
        endpoint_id: strawberry.ID,
        from_: Annotated[datetime, strawberry.argument(name="from")],
        to: datetime,
    ) -> ReplayWebhookEventsPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            replay = await webhooks.replay_events(
                uow,
                ctx.require_tenant(),
                str(endpoint_id),
                occurred_from=from_,
                occurred_to=to,
            )
        return ReplayWebhookEventsPayload(
            scheduled=replay.scheduled, continue_from=replay.continue_from
        )

    @field(
        requires_scopes=[["webhooks:manage"]],
        description="Send the endpoint a webhook.test message (it belongs to no event).",
    )
    async def send_test_webhook(
        self, info: Info, endpoint_id: strawberry.ID
    ) -> WebhookDeliveryPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await webhooks.send_test(uow, ctx.require_tenant(), str(endpoint_id))
        return WebhookDeliveryPayload(webhook_delivery=WebhookDelivery.from_row(row))


@strawberry.type
class WebhooksSubscription:
    @field(
        is_subscription=True,
        requires_scopes=[["webhooks:read"]],
        description="Attempts to deliver to one endpoint, live, as workers make them (no"
        " replay: read webhookDeliveries for what came before). Ends with UNAUTHENTICATED or"
        " FORBIDDEN when the subscriber loses its rights.",
    )
    async def webhook_deliveries(
        self, info: Info, endpoint_id: strawberry.ID
    ) -> AsyncGenerator[WebhookAttemptUpdate, None]:
        ctx = info.context
        found = await _endpoint(info, endpoint_id, "endpointId")
        tenant_id, wanted = found.tenant_id, str(found.id)
        environment = ctx.principal.environment.value
        feed = LiveFeed(
            topic=webhook_attempts_topic(tenant_id),
            matches=lambda m: (
                m.get("endpointId") == wanted
                and m.get("tenant") == tenant_id
                and m.get("environment") == environment
            ),
            item_of=WebhookAttemptUpdate.from_message,
            tenant_id=tenant_id,
            scope="webhooks:read",
            where="Subscription.webhookDeliveries",
        )
        async for update in live_only(ctx, feed):
            yield update
