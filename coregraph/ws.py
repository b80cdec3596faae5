"""GraphQL over WebSocket (graphql-transport-ws) on /graphql.

The credential comes from ``connection_init``'s payload (``Authorization``, ``X-Tenant-Id``,
``X-Environment``, the same names as the HTTP headers; browsers cannot set headers on a
WebSocket) or, failing that, from the handshake headers. A bad credential closes the connection
with 4403 before any operation runs. One principal per connection, like one per HTTP request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from coregraph.auth.principal import ANONYMOUS
from coregraph.context import Context
from coregraph.errors import CoregraphError
from coregraph.request import RequestMeta, served_base_url

if TYPE_CHECKING:
    from coregraph.app import Runtime


def _param(params: dict[str, Any], headers: Any, name: str) -> str | None:
    for key, value in params.items():
        if key.lower() == name.lower() and isinstance(value, str):
            return value
    value = headers.get(name)
    return value if isinstance(value, str) else None


class WebSocketRouter(GraphQLRouter[Context, None]):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

        async def context_getter(websocket: WebSocket) -> Context:
            meta = RequestMeta(
                request_id=websocket.scope.get("state", {}).get("request_id"),
                ip=websocket.client.host if websocket.client else None,
                user_agent=(websocket.headers.get("user-agent") or "")[:400] or None,
                base_url=served_base_url(websocket.base_url),
            )
            context = Context(runtime, ANONYMOUS, meta, hold_connection=False)
            context.handshake_headers = websocket.headers
            return context

        super().__init__(
            runtime.schema,
            context_getter=context_getter,
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
            graphql_ide=None,
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        headers = context.handshake_headers
        try:
            context.principal = await self.runtime.authenticator.authenticate(
                _param(params, headers, "Authorization"),
                _param(params, headers, "X-Tenant-Id"),
                _param(params, headers, "X-Environment"),
                context.meta,
            )
        except CoregraphError as exc:
            raise ConnectionRejectionError({"code": exc.code, "message": exc.message}) from exc
        return {"principal": context.principal.kind.value}
