"""GraphQL over WebSocket (graphql-transport-ws) on /graphql.

The credential comes from ``connection_init``'s payload (``Authorization``, ``X-Tenant-Id``,
``X-Environment``, the same names as the HTTP headers; browsers cannot set headers on a
WebSocket) or, failing that, from the handshake headers. No credential closes the connection
with 4401 (unless ``COREGRAPH_WS_ALLOW_ANONYMOUS``), a bad one with 4403.

The socket keeps the credential, never a principal: each operation authenticates it again and
runs with a ``Context`` of its own (request id, dataloaders, read connection), exactly like an
HTTP request. So a revoked key, an ended session, a removed member or a changed role takes
effect on the next operation, and ``login``/``createTenant``/``acceptInvitation`` change whom
that one operation acts for, never the socket. When the credential stops authenticating
(expired, revoked, session ended, or no longer a member of the ``X-Tenant-Id`` the socket was
opened for: what connection_init would now refuse), the operation gets the error and the socket
closes with 4403, as it does when an access token expires while idle; clients reconnect with a
fresh token (graphql-ws retries on 4403). A changed role is not a refusal: the next operation
runs with the new role's rights.

A subscription runs for long: it authenticates the credential again while its items flow
(``SocketOperationContext.reauthenticate``, at most once a second,
``coregraph.streams.subscription``; subscriptions sharing a credential share that check) and
ends with the error when its rights are gone; a refused credential then closes the socket as
above.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import WebSocket
from graphql import GraphQLError
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.fastapi import BaseContext, GraphQLRouter
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.utils.aio import aclosing

from coregraph.auth import secrets
from coregraph.auth.principal import ANONYMOUS, Principal
from coregraph.auth.schema_reader import SCHEMA_SECRET_HEADER, carries_schema_secret
from coregraph.context import Context
from coregraph.errors import CoregraphError
from coregraph.metrics import open_socket, subscription_ended, subscription_started
from coregraph.persisted import PersistedQueryRefused
from coregraph.request import RequestMeta, served_base_url
from coregraph.request_log import log_request
from coregraph.schema.errors import present

if TYPE_CHECKING:
    from coregraph.app import Runtime

log = logging.getLogger("coregraph.ws")

# Close codes of graphql-transport-ws: 4401 is final for graphql-ws clients (no credential will
# not get better by retrying); on 4403 they reconnect, asking for connection params again.
UNAUTHORIZED = 4401
FORBIDDEN = 4403
BAD_REQUEST = 4400
# A close frame's reason is at most 123 bytes.
_REASON_BYTES = 120
# Errors of the request rather than of a field: strawberry reports them without a code.
_REQUEST_ERRORS = (CannotGetOperationTypeError, InvalidOperationTypeError, MissingQueryError)


@dataclass(frozen=True, slots=True)
class SocketCredential:
    """What connection_init presented, kept for every later operation of the socket."""

    authorization: str | None
    tenant_id: str | None
    environment: str | None


class RecentAuthentications:
    """What authenticating a credential answered, kept for ``ttl`` seconds, for the rechecks of
    running subscriptions only (new operations always authenticate afresh). Subscriptions that
    share a credential, on one socket or many, recheck it with one database round trip a
    second between them instead of one each: a fan-out to many subscribers would otherwise
    pay a round trip per subscriber per second. Concurrent rechecks share one answer."""

    def __init__(self, ttl: float = 1.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._answers: dict[SocketCredential, tuple[float, asyncio.Future[Principal]]] = {}

    async def authenticate(
        self, credential: SocketCredential, authenticate: Callable[[], Awaitable[Principal]]
    ) -> Principal:
        now = time.monotonic()
        kept = self._answers.get(credential)
        if kept is None or now - kept[0] >= self.ttl:
            if len(self._answers) >= self.size:
                self._forget_before(now - self.ttl)
            answer: asyncio.Future[Principal] = asyncio.ensure_future(authenticate())
            # Retrieved here so an answer nobody awaits any more is not reported as lost.
            answer.add_done_callback(lambda done: done.cancelled() or done.exception())
            kept = (now, answer)
            self._answers[credential] = kept
        return await asyncio.shield(kept[1])

    def _forget_before(self, moment: float) -> None:
        for credential, (at, _) in list(self._answers.items()):
            if at < moment:
                del self._answers[credential]
        while len(self._answers) >= self.size:
            del self._answers[next(iter(self._answers))]


class _NoCredential(Exception):
    """connection_init carried no credential and anonymous sockets are not allowed."""


class SocketConnection(BaseContext):
    """What a socket keeps between operations: where it came from and its credential. Strawberry
    hands it to ``on_ws_connect`` and to the protocol handler; resolvers never see it."""

    def __init__(
        self, runtime: Runtime, websocket: WebSocket, rechecks: RecentAuthentications
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.rechecks = rechecks
        self.connection_params: Any = None  # set by strawberry from connection_init
        self.handshake_headers = websocket.headers
        # RequestLog's id for the handshake: it names the connection in each operation's log.
        self.connection_id: str | None = websocket.scope.get("state", {}).get("request_id")
        self.ip = websocket.client.host if websocket.client else None
        self.user_agent = (websocket.headers.get("user-agent") or "")[:400] or None
        self.base_url = served_base_url(websocket.base_url)
        self.credential = SocketCredential(None, None, None)
        # When the access token stops authenticating (its exp), as a Unix time.
        self.expires_at: float | None = None
        # connection_init carried the schema reader secret (coregraph.auth.schema_reader).
        self.schema_reader = False

    def meta(self, request_id: str) -> RequestMeta:
        return RequestMeta(
            request_id=request_id,
            ip=self.ip,
            user_agent=self.user_agent,
            base_url=self.base_url,
        )

    def read_credential(self) -> SocketCredential:
        params = self.connection_params if isinstance(self.connection_params, dict) else {}
        return SocketCredential(
            _param(params, self.handshake_headers, "Authorization"),
            _param(params, self.handshake_headers, "X-Tenant-Id"),
            _param(params, self.handshake_headers, "X-Environment"),
        )

    async def authenticate(self, meta: RequestMeta) -> Principal:
        credential = self.credential
        return await self.runtime.authenticator.authenticate(
            credential.authorization, credential.tenant_id, credential.environment, meta
        )

    async def token_expiry(self) -> float | None:
        """The access token's ``exp``; None for an API key (its expiry and revocation are
        checked by each operation) or an anonymous socket."""
        scheme, _, token = (self.credential.authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or secrets.is_api_key(token):
            return None
        verified = await self.runtime.tokens.verify(token)
        return float(verified.claims["exp"])


def _param(params: dict[str, Any], headers: Any, name: str) -> str | None:
    for key, value in params.items():
        if key.lower() == name.lower() and isinstance(value, str):
            return value
    value = headers.get(name)
    return value if isinstance(value, str) else None


def _reason(message: str) -> str:
    return message.encode()[:_REASON_BYTES].decode(errors="ignore")


def _request_error_codes(errors: list[GraphQLError]) -> list[GraphQLError]:
    """Strawberry turns an unknown operation name or a missing query into a bare GraphQLError;
    name them as HTTP does (``BAD_REQUEST``) rather than let them pass as internal errors."""
    return [
        GraphQLError(error.message, extensions={"code": "BAD_REQUEST"})
        if isinstance(error.original_error, _REQUEST_ERRORS)
        else error
        for error in errors
    ]


class SocketOperationContext(Context):
    """An operation's context on a socket: a subscription that runs for long can authenticate
    the socket's credential again (``coregraph.streams.subscription``), and a refusal closes the
    socket as it would for the next operation."""

    def __init__(self, connection: SocketConnection, principal: Principal, meta: RequestMeta):
        super().__init__(connection.runtime, principal, meta)
        self.connection = connection
        self.credential_refused = False
        self.subscribing = False

    def operation_resolved(self, operation_type: str, operation_name: str | None) -> None:
        super().operation_resolved(operation_type, operation_name)
        if operation_type == "subscription" and not self.subscribing:
            # Active until run_operation ends, however it ends.
            self.subscribing = True
            subscription_started()

    async def reauthenticate(self) -> Principal:
        connection = self.connection
        try:
            return await connection.rechecks.authenticate(
                connection.credential, partial(connection.authenticate, self.meta)
            )
        except CoregraphError:
            self.credential_refused = True
            raise


class SocketHandler(BaseGraphQLTransportWSHandler[SocketConnection, None]):
    """graphql-transport-ws with a context, a fresh authentication and a log line per
    operation, and a socket that closes when its credential stops authenticating."""

    _expiry: asyncio.Task[None] | None = None

    async def handle(self) -> None:
        with open_socket():
            await super().handle()

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except _NoCredential:
            await self.websocket.close(
                code=UNAUTHORIZED, reason="connection_init needs an Authorization credential"
            )
            return
        expires_at = self.context.expires_at
        if self.connection_acknowledged and expires_at is not None and self._expiry is None:
            self._expiry = asyncio.create_task(self._close_at(expires_at))
            self._expiry.add_done_callback(self._task_done)

    async def _close_at(self, expires_at: float) -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        await self.websocket.close(code=FORBIDDEN, reason="access token expired")

    async def shutdown(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with suppress(asyncio.CancelledError):
                await self._expiry
        await super().shutdown()

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        payload: Any = message.get("payload")
        if (
            isinstance(message.get("id"), str)
            and isinstance(payload, dict)
            and self.connection_acknowledged
            and await self._persisted_document_refused(message, payload)
        ):
            return
        payload = message.get("payload")
        if (
            not isinstance(message.get("id"), str)
            or not isinstance(payload, dict)
            or not isinstance(payload.get("query"), str)
            or not isinstance(payload.get("variables") or {}, dict)
            or not isinstance(payload.get("operationName") or "", str)
        ):
            # The protocol's answer to a malformed message (graphql-transport-ws, "Subscribe").
            await self.websocket.close(code=BAD_REQUEST, reason="Invalid subscribe message")
            return
        await super().handle_subscribe(message)

    async def _persisted_document_refused(
        self, message: SubscribeMessage, payload: dict[str, Any]
    ) -> bool:
        """In trusted-documents mode only the manifest's documents run here too, named by id
        or sent whole; a document named by id (or APQ hash) replaces the missing query. APQ
        registration is HTTP's (Apollo's link is an HTTP link): a socket only looks up."""
        persisted = self.context.runtime.persisted
        extensions = payload.get("extensions")
        names_one = payload.get("documentId") is not None or (
            isinstance(extensions, dict) and extensions.get("persistedQuery") is not None
        )
        if persisted.trusted is None and not names_one:
            return False
        query = payload.get("query")
        try:
            resolved = await persisted.resolve(
                query if isinstance(query, str) else None,
                extensions if isinstance(extensions, dict) else None,
                payload.get("documentId"),
                exempt=self.context.schema_reader,
            )
        except PersistedQueryRefused as exc:
            error = GraphQLError(exc.message, extensions={"code": exc.code})
            presented = present([error], uuid.uuid4().hex, False)
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [e.formatted for e in presented]}
            )
            return True
        payload["query"] = resolved.query
        return False

    async def run_operation(self, operation: Operation[SocketConnection, None]) -> None:
        started = time.perf_counter()
        connection = self.context
        request_id = uuid.uuid4().hex
        meta = connection.meta(request_id)
        # Once per operation (a task of its own), for every log line it writes; the principal
        # joins once authenticated.
        structlog.contextvars.bind_contextvars(
            request_id=request_id,
            connection_id=connection.connection_id,
            operation=operation.operation_name,
        )
        principal = ANONYMOUS
        context: SocketOperationContext | None = None
        outcome = "OK"
        try:
            try:
                # One database round trip per operation (two for an API key): the price of a
                # revocation, logout, removal or role change taking effect on the next
                # operation instead of whenever the client reconnects.
                principal = await connection.authenticate(meta)
            except CoregraphError as exc:
                outcome = exc.code
                await self._refuse(operation, exc, request_id)
                return
            structlog.contextvars.bind_contextvars(
                principal=principal.kind.value, tenant_id=principal.tenant_id
            )
            context = SocketOperationContext(connection, principal, meta)
            context.schema_reader = connection.schema_reader
            context.request_variables = operation.variables
            outcome = await self._execute(operation, context)
            if context.credential_refused:
                # A subscription found the credential refused and ended with why: the socket
                # closes as it would on the next operation.
                await self.websocket.close(code=FORBIDDEN, reason="credential refused")
        except asyncio.CancelledError:
            outcome = "CANCELLED"  # the client completed it, or the socket closed
            raise
        except Exception:
            outcome = "INTERNAL_SERVER_ERROR"
            log.exception("websocket operation failed", extra={"request_id": request_id})
            error = GraphQLError("Internal server error", extensions={"code": outcome})
            with suppress(Exception):
                await operation.send_initial_errors(present([error], request_id, False))
            self.operations.pop(operation.id, None)
        finally:
            if context is not None:
                if context.subscribing:
                    subscription_ended()
                await context.close()
            log_request(
                transport="websocket",
                request_id=request_id,
                principal=principal.kind.value,
                tenant_id=principal.tenant_id,
                operation=(context.operation_name if context else None) or operation.operation_name,
                operation_type=context.operation_type if context else None,
                outcome=outcome,
                started=started,
                connection_id=connection.connection_id,
            )

    async def _refuse(
        self, operation: Operation[SocketConnection, None], exc: CoregraphError, request_id: str
    ) -> None:
        """The socket's credential no longer authenticates (expired, revoked, session ended,
        no longer a member of its tenant): this operation is answered with why, and the socket
        closes, as connection_init would refuse the same credential now."""
        error = GraphQLError(exc.message, extensions=exc.extensions)
        with suppress(Exception):  # the socket may already be gone
            await operation.send_initial_errors(present([error], request_id, False))
        await self.websocket.close(code=FORBIDDEN, reason=_reason(exc.message))

    async def _execute(self, operation: Operation[SocketConnection, None], context: Context) -> str:
        """Runs the operation and sends its results; the outcome for the log line."""
        outcome = "OK"
        sent = False
        source = await self.schema.stream(
            operation.query,
            variable_values=operation.variables,
            context_value=context,
            operation_name=operation.operation_name,
        )
        async with aclosing(source):
            try:
                async for result in source:
                    if not isinstance(result, ExecutionResult):
                        error = GraphQLError(
                            "Incremental delivery is not supported over graphql-transport-ws",
                            extensions={"code": "BAD_REQUEST"},
                        )
                        return await self._send_errors(operation, context, [error])
                    if isinstance(result, PreExecutionError):
                        # Parse and validation errors: an `error` message; the socket stays open.
                        return await self._send_errors(operation, context, result.errors or [])
                    # Errors are presented here, before sending: the schema's own error
                    # extension runs only when a streamed operation ends, after its results left.
                    if result.errors:
                        result.errors = self._present(context, result.errors)
                        if outcome == "OK":
                            outcome = _code(result.errors[0])
                    await operation.send_next(result)
                    sent = True
                    # The context lives as long as the operation; a subscription's next event
                    # reads afresh (new read transaction, empty dataloaders), and no pooled
                    # connection is pinned while it waits for that event.
                    await context.reset_reads()
            except GraphQLError as error:
                # The document cache's parse raises a syntax error out of stream() instead of
                # yielding it as a PreExecutionError.
                if sent:
                    raise
                return await self._send_errors(operation, context, [error])
        await operation.send_operation_message({"id": operation.id, "type": "complete"})
        return outcome

    @staticmethod
    def _present(context: Context, errors: list[GraphQLError]) -> list[GraphQLError]:
        return present(
            _request_error_codes(errors), context.request_id, context.settings.suggestions_enabled
        )

    async def _send_errors(
        self,
        operation: Operation[SocketConnection, None],
        context: Context,
        errors: list[GraphQLError],
    ) -> str:
        """Ends the operation with an `error` message; its first code, for the log line."""
        presented = self._present(context, errors)
        await operation.send_initial_errors(presented)
        return _code(presented[0]) if presented else "ERROR"


def _code(error: GraphQLError) -> str:
    return str((error.extensions or {}).get("code", "ERROR"))


class WebSocketRouter(GraphQLRouter[SocketConnection, None]):
    graphql_transport_ws_handler_class = SocketHandler

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

        rechecks = RecentAuthentications()

        async def context_getter(websocket: WebSocket) -> SocketConnection:
            return SocketConnection(runtime, websocket, rechecks)

        super().__init__(
            runtime.schema,
            context_getter=context_getter,
            subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
            graphql_ide=None,
        )

    async def on_ws_connect(self, context: SocketConnection) -> dict[str, object]:
        credential = context.read_credential()
        if not credential.authorization and not self.runtime.settings.ws_allow_anonymous:
            raise _NoCredential
        context.credential = credential
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        context.schema_reader = carries_schema_secret(
            self.runtime.settings, _param(params, context.handshake_headers, SCHEMA_SECRET_HEADER)
        )
        meta = context.meta(context.connection_id or uuid.uuid4().hex)
        try:
            principal = await context.authenticate(meta)
            context.expires_at = await context.token_expiry()
        except CoregraphError as exc:
            raise ConnectionRejectionError({"code": exc.code, "message": exc.message}) from exc
        return {"principal": principal.kind.value}
