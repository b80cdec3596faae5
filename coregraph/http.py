"""GraphQL over HTTP (https://graphql.github.io/graphql-over-http/draft/) for POST and GET.

Our own small handler rather than strawberry's router: it owns media types and status codes
(``application/graphql-response+json`` with 4xx on request errors, ``application/json`` with 200),
authenticates once per request, and keeps the per-request path short. WebSockets
(graphql-transport-ws) are served by strawberry's router on the same path (``coregraph.app``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from fastapi import Request
from fastapi.responses import Response
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.auth.schema_reader import SCHEMA_SECRET_HEADER, carries_schema_secret
from coregraph.context import Context
from coregraph.errors import CoregraphError, ServiceUnavailable, Unauthenticated
from coregraph.graphiql import graphiql_page
from coregraph.persisted import PersistedQueryRefused
from coregraph.request import RequestMeta, served_base_url
from coregraph.schema.errors import present, with_trace_id
from coregraph.uploads import UploadRefused, Uploads, forces_preflight, is_multipart

if TYPE_CHECKING:
    from coregraph.app import Runtime
    from coregraph.settings import Settings

log = logging.getLogger("coregraph.http")

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
_STATUS_FOR_CODE = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "BAD_USER_INPUT": 400,
    "SERVICE_UNAVAILABLE": 503,
}


class RequestError(Exception):
    """A malformed GraphQL-over-HTTP request: it never reaches execution."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def negotiate(accept: str | None) -> str | None:
    """The response media type, or None when the client accepts neither JSON type."""
    if not accept:
        return JSON
    ranges = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if GRAPHQL_RESPONSE in ranges:
        return GRAPHQL_RESPONSE
    if JSON in ranges or "application/*" in ranges or "*/*" in ranges:
        return JSON
    return None


def wants_ide(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "query" not in request.query_params


def _json_param(raw: str | None, name: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(400, f"{name} must be JSON") from None


@dataclass(frozen=True, slots=True)
class GraphQLParams:
    """A request's parameters; ``query`` may be absent when a persisted document is named
    (``extensions.persistedQuery`` or ``documentId``: coregraph.persisted)."""

    query: str | None
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None
    document_id: Any = None


def _check_params(body: Any) -> GraphQLParams:
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    query = body.get("query")
    if query is not None and not isinstance(query, str):
        raise RequestError(400, "query must be a string")
    variables = body.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise RequestError(400, "variables must be an object")
    operation_name = body.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise RequestError(400, "operationName must be a string")
    extensions = body.get("extensions")
    if extensions is not None and not isinstance(extensions, dict):
        raise RequestError(400, "extensions must be an object")
    return GraphQLParams(query, variables, operation_name, extensions, body.get("documentId"))


# The parameters of recent GET query strings without variables (a persisted query's GET is
# the same URL every time; its percent-decoding and JSON are most of its parsing). Bounded:
# the query string is the client's. With variables (a dict handed on to the request's
# context) a GET is parsed afresh; ``extensions`` is only read (persisted.resolve).
_GET_PARAMS: dict[bytes, GraphQLParams] = {}
_GET_PARAMS_KEPT = 256


def _get_params(request: Request) -> GraphQLParams:
    raw = request.scope.get("query_string", b"")
    known = _GET_PARAMS.get(raw)
    if known is not None:
        return known
    params = request.query_params
    checked = _check_params(
        {
            "query": params.get("query"),
            "variables": _json_param(params.get("variables"), "variables"),
            "operationName": params.get("operationName"),
            "extensions": _json_param(params.get("extensions"), "extensions"),
            "documentId": params.get("documentId"),
        }
    )
    if checked.variables is None:
        if len(_GET_PARAMS) >= _GET_PARAMS_KEPT:
            _GET_PARAMS.clear()
        _GET_PARAMS[raw] = checked
    return checked


async def read_params(request: Request) -> GraphQLParams:
    if request.method == "GET":
        return _get_params(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON:
        raise RequestError(415, "POST needs Content-Type: application/json")
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(400, "the body is not valid JSON") from None
    return _check_params(body)


def _response(payload: dict[str, Any], status: int, media_type: str, **headers: str) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, media_type=media_type, headers=headers or None
    )


# Why a mutation that a policy holds back is asked for (services.approvals).
APPROVAL_REASON_HEADER = "x-approval-reason"


# The base URL of recent (scheme, server, root path, Host header) combinations: Starlette
# builds it by parsing a URL on every request. Bounded: the Host header is the client's.
_BASE_URLS: dict[tuple[Any, ...], str] = {}
_BASE_URLS_KEPT = 64


def _base_url(request: Request) -> str:
    scope = request.scope
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    key = (
        scope.get("scheme"),
        scope.get("server"),
        scope.get("root_path"),
        scope.get("app_root_path"),
        host,
    )
    base_url = _BASE_URLS.get(key)
    if base_url is None:
        base_url = served_base_url(request.base_url)
        if len(_BASE_URLS) >= _BASE_URLS_KEPT:
            _BASE_URLS.clear()
        _BASE_URLS[key] = base_url
    return base_url


def request_meta(request: Request) -> RequestMeta:
    """Where an HTTP request came from (the client address is the trusted proxies' reading)."""
    return RequestMeta(
        request_id=request.state.request_id,
        ip=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:400] or None,
        base_url=_base_url(request),
    )


async def authenticate(request: Request, runtime: Runtime, meta: RequestMeta) -> Principal:
    """The request's principal from its ``Authorization``, ``X-Tenant-Id`` and
    ``X-Environment`` headers; every HTTP endpoint authenticates through here. A failure that
    is not the credential's (the database unreachable or out of connections) is answered as a
    typed, retryable 503 SERVICE_UNAVAILABLE, never a bare 500 page."""
    try:
        return await runtime.authenticator.authenticate(
            request.headers.get("authorization"),
            request.headers.get("x-tenant-id"),
            request.headers.get("x-environment"),
            meta,
        )
    except CoregraphError:
        raise
    except Exception as exc:
        log.exception("authentication could not complete", extra={"request_id": meta.request_id})
        raise ServiceUnavailable(
            "the request's credential could not be checked just now; retry shortly"
        ) from exc


def error_payload(message: str, extensions: dict[str, Any]) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": with_trace_id(extensions)}]}


def method_not_allowed(request: Request) -> Response:
    return _response(
        error_payload(
            f"{request.method} is not supported on /graphql; use POST (or GET for queries)",
            {"code": "BAD_REQUEST", "requestId": request.state.request_id},
        ),
        405,
        JSON,
        Allow="GET, POST",
    )


# Room for the operations and map parts and every part's headers, beside the files' bytes.
MULTIPART_OVERHEAD = 1024 * 1024


def multipart_max_bytes(settings: Settings) -> int:
    return (
        settings.files_multipart_max_files * settings.files_multipart_max_file_bytes
        + MULTIPART_OVERHEAD
    )


def _declared_length(request: Request) -> int:
    """The body's declared Content-Length, or 0 when absent (a chunked body is still cut at
    the per-part limits as it is parsed)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


def _refused(state: Any, exc: CoregraphError, request_id: str, media_type: str) -> Response:
    state.outcome = exc.code
    extra = {"WWW-Authenticate": "Bearer"} if exc.code == "UNAUTHENTICATED" else {}
    return _response(
        error_payload(exc.message, {**exc.extensions, "requestId": request_id}),
        _STATUS_FOR_CODE.get(exc.code, 400),
        media_type,
        **extra,
    )


# What a GET's answer depends on besides its URL: a cache must key on them too.
_GET_VARY = "Accept, Authorization, X-Tenant-Id, X-Environment, " + SCHEMA_SECRET_HEADER


def _cache_headers(request: Request, response: Response, max_age: int) -> None:
    """Cache-Control for a GET. Answers depend on the caller's credential, so only the client's
    own cache may keep one (``private``), and only a persisted query's answer without errors,
    for ``COREGRAPH_PERSISTED_QUERIES_MAX_AGE`` (an anonymous one, the same for every caller
    without a credential, may also be kept by shared caches: ``public``). Anything else is
    revalidated every time, and errors are never stored."""
    if response.media_type == "text/html":
        return  # the IDE page
    state = request.state
    response.headers["Vary"] = _GET_VARY
    if response.status_code != 200 or getattr(state, "outcome", None) is not None:
        response.headers["Cache-Control"] = "no-store"
    elif getattr(state, "persisted", False) and max_age > 0:
        scope = "private" if request.headers.get("authorization") else "public"
        response.headers["Cache-Control"] = f"{scope}, max-age={max_age}"
    else:
        response.headers["Cache-Control"] = "private, no-cache"


async def handle_graphql(request: Request, runtime: Runtime) -> Response:
    if request.method == "POST" and is_multipart(request):
        # File uploads (coregraph.uploads): their temporary files go when the request ends.
        uploads = Uploads()
        try:
            return await _handle_graphql(request, runtime, uploads)
        finally:
            await uploads.close()
    response = await _handle_graphql(request, runtime, None)
    if request.method == "GET":
        _cache_headers(request, response, runtime.settings.persisted_queries_max_age)
    return response


async def _handle_graphql(request: Request, runtime: Runtime, uploads: Uploads | None) -> Response:
    state = request.state
    if request.method == "GET" and runtime.settings.graphiql_enabled and wants_ide(request):
        return await graphiql_page()
    media_type = negotiate(request.headers.get("accept"))
    request_id = state.request_id
    if media_type is None:
        return _response(
            error_payload(
                "Accept application/graphql-response+json or application/json",
                {"code": "BAD_REQUEST", "requestId": request_id},
            ),
            406,
            JSON,
        )
    meta = request_meta(request)
    principal: Principal | None = None
    if uploads is not None and forces_preflight(request):
        # (Without the CSRF header uploads.read refuses it, unread, as a bad request.)
        # From the headers alone, before a byte of the body is read or spooled to disk: an
        # anonymous or oversized multipart POST costs no disk and no parsing.
        try:
            principal = await authenticate(request, runtime, meta)
            if principal.kind is PrincipalKind.ANONYMOUS:
                # Every upload needs files:write: an anonymous one would only be refused later.
                raise Unauthenticated("uploading a file needs a credential")
        except CoregraphError as exc:
            return _refused(state, exc, request_id, media_type)
        if _declared_length(request) > multipart_max_bytes(runtime.settings):
            state.outcome = "PAYLOAD_TOO_LARGE"
            return _response(
                error_payload(
                    "the multipart request is larger than its files' limits allow",
                    {"code": "PAYLOAD_TOO_LARGE", "requestId": request_id},
                ),
                413,
                media_type,
            )
    try:
        if uploads is not None:
            query, variables, operation_name, extensions = await uploads.read(
                request, runtime.settings
            )
            params = GraphQLParams(query, variables, operation_name, extensions)
        else:
            params = await read_params(request)
    except RequestError as exc:
        state.outcome = "BAD_REQUEST"
        return _response(
            error_payload(exc.message, {"code": "BAD_REQUEST", "requestId": request_id}),
            exc.status,
            media_type,
        )
    except UploadRefused as exc:
        state.outcome = exc.code
        return _response(
            error_payload(exc.message, {"code": exc.code, "requestId": request_id}),
            exc.status,
            media_type,
        )
    operation_name = params.operation_name
    variables = params.variables
    state.operation_name = operation_name
    schema_reader = carries_schema_secret(
        runtime.settings, request.headers.get(SCHEMA_SECRET_HEADER)
    )
    try:
        # The persisted document named (APQ, trusted documents), before any database work.
        resolved = await runtime.persisted.resolve(
            params.query, params.extensions, params.document_id, exempt=schema_reader
        )
    except PersistedQueryRefused as exc:
        state.outcome = exc.code
        # A malformed request is a 400 whatever the media type, as before persisted
        # operations; their own refusals follow the request-error rule (200 with
        # application/json), which Apollo's clients read either way.
        malformed = exc.code == "BAD_REQUEST"
        return _response(
            error_payload(exc.message, {"code": exc.code, "requestId": request_id}),
            exc.status if media_type == GRAPHQL_RESPONSE or malformed else 200,
            media_type,
        )
    query = resolved.query
    state.persisted = resolved.persisted
    if principal is None:
        try:
            principal = await authenticate(request, runtime, meta)
        except CoregraphError as exc:
            return _refused(state, exc, request_id, media_type)
    state.principal_kind = principal.kind.value
    state.tenant_id = principal.tenant_id
    # Once per request, for every log line from here on (coregraph.logging).
    structlog.contextvars.bind_contextvars(
        principal=principal.kind.value, tenant_id=principal.tenant_id, operation=operation_name
    )
    context = Context(runtime, principal, meta)
    context.request_variables = variables
    context.approval_reason = request.headers.get(APPROVAL_REASON_HEADER)
    context.schema_reader = schema_reader
    allowed = (
        {OperationType.QUERY}
        if request.method == "GET"
        else {OperationType.QUERY, OperationType.MUTATION}
    )
    try:
        result = await runtime.schema.execute(
            query,
            variable_values=variables,
            context_value=context,
            operation_name=operation_name,
            allowed_operation_types=allowed,
        )
    except InvalidOperationTypeError as exc:
        if exc.operation_type is OperationType.SUBSCRIPTION:
            # Not a method problem: no HTTP method serves a subscription. A request error, with
            # its status for the media type (400, or 200 for application/json).
            state.outcome = "BAD_REQUEST"
            return _response(
                error_payload(
                    "subscriptions are served over WebSocket (graphql-transport-ws) at "
                    "/graphql, not over HTTP",
                    {"code": "BAD_REQUEST", "requestId": request_id},
                ),
                400 if media_type == GRAPHQL_RESPONSE else 200,
                media_type,
            )
        state.outcome = "METHOD_NOT_ALLOWED"
        return _response(
            error_payload(
                "only queries may be sent with GET; use POST",
                {"code": "BAD_REQUEST", "requestId": request_id},
            ),
            405,
            media_type,
            Allow="POST",
        )
    except (MissingQueryError, CannotGetOperationTypeError) as exc:
        state.outcome = "BAD_REQUEST"
        message = exc.as_http_error_reason() if hasattr(exc, "as_http_error_reason") else str(exc)
        return _response(
            error_payload(message, {"code": "BAD_REQUEST", "requestId": request_id}),
            400,
            media_type,
        )
    finally:
        await context.close()

    if resolved.register is not None and not isinstance(result, PreExecutionError):
        # Parsed, validated and of a type this method may run: known from now on, in every
        # process sharing the Redis.
        await runtime.persisted.register(resolved.register, query)
    state.operation_name = context.operation_name or operation_name
    state.operation_type = context.operation_type
    payload: dict[str, Any] = {}
    request_error = isinstance(result, PreExecutionError) or (
        result.data is None
        and all(e.path is None for e in result.errors or ())
        and bool(result.errors)
    )
    if not request_error:
        # A request error never started execution: the response has no "data" entry at all.
        payload["data"] = result.data
    if result.errors:
        errors = present(result.errors, request_id, runtime.settings.suggestions_enabled)
        payload["errors"] = [error.formatted for error in errors]
        state.outcome = (errors[0].extensions or {}).get("code", "ERROR")
    status = 400 if request_error and media_type == GRAPHQL_RESPONSE else 200
    if context.refused_status is not None and media_type == GRAPHQL_RESPONSE:
        status = context.refused_status  # 429: the plan's rate limits or monthly cap
    # RateLimit-Policy, and RateLimit + Retry-After on a refusal (schema.rate_limiting).
    return _response(payload, status, media_type, **context.response_headers)
