"""The ASGI application: one ``Runtime`` (settings, engine, schema, auth) and its routes.

``/graphql``: POST and GET (``coregraph.http``), WebSocket graphql-transport-ws (strawberry's
router); ``/healthz`` (the process is up) and ``/readyz`` (``coregraph.readiness``: database,
migrations, Redis, relay lag); ``/invitations/accept`` (the page invitation links open).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from coregraph import db, telemetry
from coregraph.api import CoregraphSchema, build_schema
from coregraph.audit_export import audit_export
from coregraph.auth import passwords
from coregraph.auth.authenticate import Authenticator
from coregraph.auth.tokens import TokenService
from coregraph.billing_export_http import billing_export
from coregraph.files_http import (
    CORSWithUploads,
    download as file_download,
    upload as file_upload,
)
from coregraph.graphiql import graphiql_asset
from coregraph.http import handle_graphql, method_not_allowed
from coregraph.invitation_page import invitation_page
from coregraph.metrics import endpoint as metrics_endpoint, running as running_metrics
from coregraph.persisted import PersistedOperations
from coregraph.readiness import Readiness
from coregraph.request_log import log_request
from coregraph.services import identity
from coregraph.services.api_requests import ApiRequestMeter
from coregraph.services.approvals import PolicyCache
from coregraph.services.plan_limits import PlanLimits
from coregraph.services.quota_refusals import QuotaRefusals
from coregraph.services.ratelimit import Limiter
from coregraph.settings import Settings, load_settings
from coregraph.storage import Storage, create_storage
from coregraph.streams.broker import Broker, create_broker
from coregraph.streams.worker import relay_in_process, webhooks_in_process
from coregraph.usage_bulk import usage_bulk
from coregraph.ws import WebSocketRouter

# The cyclic collector's youngest-generation threshold in a server process (CPython's is 700).
GEN0_THRESHOLD = 10_000
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# A signed file URL's token is its credential: the request log names the route, not the token.
_FILE_TOKEN = re.compile(r"^(/files/(?:download|upload)/)[^/]+")


def loggable_path(path: str) -> str:
    return _FILE_TOKEN.sub(r"\1<redacted>", path)


@dataclass
class Runtime:
    """Everything a request needs that lives as long as the process."""

    settings: Settings
    engine: AsyncEngine
    schema: CoregraphSchema
    tokens: TokenService
    authenticator: Authenticator
    limiter: Limiter
    # The plans' operation rate limits, and the api.requests meter with its monthly cap.
    plan_limits: PlanLimits
    api_requests: ApiRequestMeter
    # Tenants' approval policies, kept a moment per process (services.approvals).
    approval_policies: PolicyCache
    # Live streams (coregraph.streams.broker): in-process, or Redis shared by all processes.
    broker: Broker
    # Files' bytes (coregraph.storage): local disk, or an S3-compatible bucket.
    storage: Storage
    # Refused operations' quota.refused events, at most one per tenant, meter and minute.
    quota_refusals: QuotaRefusals
    # APQ's registered documents, or the trusted-documents manifest (coregraph.persisted).
    persisted: PersistedOperations
    redis: Any = None

    @classmethod
    def create(cls, settings: Settings) -> Runtime:
        passwords.configure(
            settings.password_hash_time_cost,
            settings.password_hash_memory_kib,
            settings.password_hash_parallelism,
        )
        engine = db.create_engine(settings)
        tokens = TokenService(settings)
        redis = None
        if settings.redis_url:
            from redis.asyncio import Redis

            redis = Redis.from_url(settings.redis_url)
        limiter = Limiter.create(redis, settings.redis_url, settings.redis_prefix)
        broker = create_broker(settings, redis)
        schema = build_schema(settings)
        return cls(
            settings=settings,
            engine=engine,
            schema=schema,
            tokens=tokens,
            authenticator=Authenticator(
                settings,
                engine,
                tokens,
                partial(identity.provision_external_user, engine, settings),
            ),
            limiter=limiter,
            plan_limits=PlanLimits(
                engine,
                limiter,
                default_plan=settings.default_plan,
                cache_seconds=settings.plan_limits_cache_seconds,
            ),
            api_requests=ApiRequestMeter(
                engine,
                flush_seconds=settings.api_requests_flush_seconds,
                cache_seconds=settings.plan_limits_cache_seconds,
                redis=redis,
                prefix=settings.redis_prefix,
            ),
            approval_policies=PolicyCache(engine, settings.approval_policy_cache_seconds),
            broker=broker,
            storage=create_storage(settings),
            quota_refusals=QuotaRefusals(engine, broker),
            persisted=PersistedOperations(settings, schema, redis),
            redis=redis,
        )

    async def close(self) -> None:
        await self.quota_refusals.close()
        await self.broker.close()
        await self.storage.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()


class RequestLog:
    """Pure ASGI middleware: request id in and out, and one JSON log line per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        # 128 random bits in hex, as uuid4().hex without building a UUID object.
        request_id = incoming if _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        # Every log line of this request (its request line too) carries its id and trace
        # (coregraph.logging); the principal, tenant and operation join once known
        # (coregraph.http). The trace is read now: the server span ends with the response.
        trace_id = telemetry.current_trace_id()
        bound = structlog.contextvars.bind_contextvars(
            request_id=request_id, **({"trace_id": trace_id} if trace_id else {})
        )
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # A WebSocket logs one line per operation instead (coregraph.ws); its handshake's
            # request id names the connection in those lines.
            if scope["type"] == "http" and scope["path"] not in ("/healthz", "/readyz"):
                log_request(
                    transport="http",
                    request_id=request_id,
                    principal=state.get("principal_kind", "anonymous"),
                    tenant_id=state.get("tenant_id"),
                    operation=state.get("operation_name"),
                    operation_type=state.get("operation_type"),
                    outcome=state.get("outcome", "OK" if status < 400 else "ERROR"),
                    started=started,
                    method=scope["method"],
                    path=loggable_path(scope["path"]),
                    status=status,
                )
            structlog.contextvars.reset_contextvars(**bound)


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or (runtime.settings if runtime else load_settings())
    # Before the runtime: its engine and schema are instrumented as they are made.
    telemetry.configure_from_environment()
    owned = runtime is None
    runtime = runtime or Runtime.create(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if owned:
            # A server process of its own: move the heap built at startup (schema, models,
            # SQLAlchemy) out of the cyclic collector's reach, so its full collections stop
            # walking it again and again under load (bench/RESULTS.md).
            gc.collect()
            gc.freeze()
            # And collect the youngest generation every 10,000 allocations instead of 700:
            # with hundreds of subscriptions in flight, each young collection promoted the
            # objects of every delivery under way, and those promotions set off full
            # collections of 110-170 ms walking every live subscription (bench.fanout's p99:
            # 232-310 ms before, 125-158 ms after; bench/RESULTS.md).
            gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
        if runtime.settings.plans_file is not None:
            # The plan catalog of the config file, upserted by key before the first request.
            from coregraph.services import billing

            await billing.load_plans(
                runtime.engine, billing.read_plans_file(runtime.settings.plans_file)
            )
        async with contextlib.AsyncExitStack() as background:
            await background.enter_async_context(
                running_metrics(runtime.settings, api=runtime.engine)
            )
            # api.requests counts flushed every interval and once more at shutdown.
            await background.enter_async_context(runtime.api_requests.running())
            if runtime.settings.relay_in_process:
                # The embedded defaults: no worker process hears this one's commits.
                await background.enter_async_context(
                    relay_in_process(runtime.settings, runtime.broker)
                )
            if runtime.settings.webhook_worker_in_process:
                await background.enter_async_context(
                    webhooks_in_process(runtime.settings, runtime.broker)
                )
            yield
        await readiness.aclose()
        if owned:
            await runtime.close()

    app = FastAPI(
        title="coregraph",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # coregraph instruments itself (coregraph.telemetry: OpenTelemetry's FastAPI
        # instrumentation, its own metrics and logs); FastAPI's native telemetry would only
        # look up the global providers again on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.runtime = runtime
    readiness = Readiness(runtime)

    async def graphql_http(request: Request) -> Response:
        return await handle_graphql(request, runtime)

    async def graphql_other_methods(request: Request) -> Response:
        return method_not_allowed(request)

    # Starlette routes, not FastAPI's: the handler takes the request and nothing else, so
    # FastAPI's dependency solving per request (~5 % of a `{ __typename }`) buys nothing.
    app.add_route("/graphql", graphql_http, methods=["GET", "POST"], include_in_schema=False)
    app.add_route(
        "/graphql",
        graphql_other_methods,
        methods=["PUT", "PATCH", "DELETE", "OPTIONS"],
        include_in_schema=False,
    )

    app.add_api_route("/invitations/accept", invitation_page, include_in_schema=False)
    if runtime.settings.metrics_public_enabled:
        # Otherwise only on COREGRAPH_METRICS_PORT (production: this port faces clients).
        app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    if runtime.settings.graphiql_enabled:
        # The IDE's own scripts and styles (coregraph.graphiql), only where the IDE is served.
        app.add_api_route("/graphiql/{digest}/{name}", graphiql_asset, include_in_schema=False)
    app.add_api_route("/audit/export", audit_export, include_in_schema=False)
    app.add_api_route("/usage/bulk", usage_bulk, methods=["POST"], include_in_schema=False)
    app.add_api_route("/billing/export", billing_export, include_in_schema=False)
    app.add_api_route(
        "/files/download/{token}", file_download, methods=["GET"], include_in_schema=False
    )
    app.add_api_route(
        "/files/upload/{token}", file_upload, methods=["PUT"], include_in_schema=False
    )

    # A Response, not a dict: FastAPI would make the return annotation a pydantic response
    # model, and import pydantic.v1 to check it (~1 MiB of every server).
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        ready, body = await readiness.report()
        return JSONResponse(body, status_code=200 if ready else 503)

    ws_router = WebSocketRouter(runtime)
    # HTTP on /graphql is ours (above, registered first); the router adds the WebSocket route.
    app.include_router(ws_router, prefix="/graphql")
    if settings.cors_origins:
        app.add_middleware(
            # CORSMiddleware, and PUT on upload URLs for the same origins.
            CORSWithUploads,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Tenant-Id",
                "X-Environment",
                "X-Request-Id",
                # uploadFile's multipart POST must carry one of these (http.py's CSRF guard).
                "Apollo-Require-Preflight",
                "X-Apollo-Operation-Name",
            ],
            expose_headers=["X-Request-Id"],
            max_age=600,
        )
    app.add_middleware(RequestLog)
    if settings.trusted_proxies:
        # Outermost, so everything inside (the request log, rate limits, audit entries) sees
        # the client a trusted proxy names; anyone else's X-Forwarded-For is ignored.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    # Outermost of all when tracing: the request's span is current in everything inside.
    telemetry.instrument_app(app, loggable_path)
    return app
