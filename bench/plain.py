"""The baseline: a plain FastAPI app that answers the benchmark query by hand.

It runs the very statements coregraph issues for it (read from coregraph's SQL echo):

1. authentication: coregraph's own ``Authenticator`` (JWT check, then the one session +
   memberships + role permissions query), on its own pooled connection;
2. on one request connection, in this order: the row-level-security scope (PostgreSQL), the
   tenant by id (the tenant loader), the
   membership page (``ORDER BY id LIMIT first + 1``), the users by ids (the user loader), the
   roles by ids within the principal's tenants (the role loader);

then builds the same JSON document as coregraph's ``data`` and serialises it with orjson.
The scope check is the plain one-liner a hand-written endpoint would do.

Serve with ``python -m uvicorn bench.plain:create_app --factory`` and the ``COREGRAPH_*``
environment of the coregraph server it is compared with.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import select

from coregraph import db
from coregraph.auth.authenticate import Authenticator
from coregraph.auth.tokens import TokenService
from coregraph.errors import CoregraphError
from coregraph.models import Membership, Role, Tenant, User
from coregraph.request import RequestMeta
from coregraph.services import identity
from coregraph.settings import load_settings

JSON = "application/json"
NEEDED = frozenset({"tenant:read", "members:read"})


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"errors": [{"message": message}]}), status, media_type=JSON)


def create_app() -> FastAPI:
    settings = load_settings()
    engine = db.create_engine(settings)
    authenticator = Authenticator(
        settings,
        engine,
        TokenService(settings),
        partial(identity.provision_external_user, engine, settings),
    )
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/typename")
    async def typename() -> Response:
        return Response(b'{"data":{"__typename":"Query"}}', media_type=JSON)

    @app.post("/typename")
    async def typename_post(request: Request) -> Response:
        # What a hand-written JSON endpoint does with a body: read it, parse it, answer.
        body = orjson.loads(await request.body())
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        return Response(b'{"data":{"__typename":"Query"}}', media_type=JSON)

    @app.get("/tenant/members")
    async def members(request: Request, first: int = 50) -> Response:
        if not 0 <= first <= settings.max_page_size:
            return _error(400, f"first: between 0 and {settings.max_page_size}")
        meta = RequestMeta(
            request_id=None,
            ip=request.client.host if request.client else None,
            user_agent=(request.headers.get("user-agent") or "")[:400] or None,
        )
        try:
            principal = await authenticator.authenticate(
                request.headers.get("authorization"),
                request.headers.get("x-tenant-id"),
                request.headers.get("x-environment"),
                meta,
            )
        except CoregraphError as exc:
            return _error(401 if exc.code == "UNAUTHENTICATED" else 403, exc.message)
        tenant_id = principal.tenant_id
        if tenant_id is None or not NEEDED <= principal.scopes_in(tenant_id):
            return _error(403, "needs tenant:read and members:read in X-Tenant-Id")
        tenants = list(principal.tenant_scopes)

        async with engine.connect() as conn:
            # What coregraph's request connection does first: tell row-level security what
            # this transaction may see (a no-op on SQLite; on PostgreSQL nothing is visible
            # without it).
            await db.scope_transaction(
                conn, tenant_ids=principal.tenant_scopes.keys(), user_id=principal.user_id
            )
            tenant_rows = (
                await conn.execute(select(Tenant.__table__).where(Tenant.id.in_([tenant_id])))
            ).all()
            if not tenant_rows:
                return Response(b'{"data":{"tenant":null}}', media_type=JSON)
            tenant = tenant_rows[0]
            page = (
                await conn.execute(
                    select(Membership.__table__)
                    .where(Membership.tenant_id == tenant_id)
                    .order_by(Membership.id)
                    .limit(first + 1)
                )
            ).all()[:first]
            user_ids = list(dict.fromkeys(row.user_id for row in page))
            role_ids = list(dict.fromkeys(row.role_id for row in page))
            users = {
                row.id: row
                for row in (
                    await conn.execute(select(User.__table__).where(User.id.in_(user_ids)))
                ).all()
            }
            roles = {
                row.id: row
                for row in (
                    await conn.execute(
                        select(Role.__table__).where(
                            Role.id.in_(role_ids), Role.tenant_id.in_(tenants)
                        )
                    )
                ).all()
            }

        edges: list[dict[str, Any]] = []
        for m in page:
            user = users.get(m.user_id)
            role = roles.get(m.role_id)
            edges.append(
                {
                    "node": {
                        "id": m.id,
                        "createdAt": m.created_at.isoformat(),
                        "user": None
                        if user is None
                        else {
                            "id": user.id,
                            "displayName": user.display_name,
                            "email": user.email,
                        },
                        "role": None
                        if role is None
                        else {
                            "id": role.id,
                            "key": role.key,
                            "name": role.name,
                            "permissions": list(role.permissions),
                        },
                    }
                }
            )
        body = {
            "data": {"tenant": {"id": tenant.id, "name": tenant.name, "members": {"edges": edges}}}
        }
        return Response(orjson.dumps(body), media_type=JSON)

    return app
