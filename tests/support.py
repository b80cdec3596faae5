"""Test support: a real coregraph server on loopback, a GraphQL client, and factories that
build users, tenants, members and keys through the public API (never through ad-hoc SQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from coregraph import migrate
from coregraph.app import Runtime, create_app
from coregraph.logging import json_formatter
from coregraph.settings import Settings

PASSWORD = "correct-horse-battery-staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeClock:
    """A clock a test moves by hand (``clock.now += 30``) instead of waiting."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def create_test_database(base_url: str | None, tmp_dir: str) -> tuple[str, str | None]:
    """A fresh database for this test session: a SQLite file, or a new PostgreSQL database
    next to the one ``base_url`` names. Returns (url, name to drop afterwards)."""
    if not base_url or base_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_dir}/coregraph-test.sqlite3", None
    url = base_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    name = f"coregraph_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + name, name


async def drop_test_database(base_url: str, name: str) -> None:
    url = base_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@dataclass
class Server:
    """A coregraph server running in a background thread, bound to 127.0.0.1 only."""

    settings: Settings
    runtime: Runtime
    port: int
    thread: threading.Thread
    uvicorn_server: uvicorn.Server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/graphql"


@contextlib.contextmanager
def running_server(settings: Settings, migrate_first: bool = True) -> Iterator[Server]:
    port = free_port()
    runtime_holder: dict[str, Runtime] = {}
    ready = threading.Event()
    failure: list[BaseException] = []

    config = uvicorn.Config(
        "coregraph.app:create_app",  # replaced below by an app instance
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # As `coregraph serve`: the app alone decides whom to believe (COREGRAPH_TRUSTED_PROXIES).
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    def run() -> None:
        async def main() -> None:
            runtime = Runtime.create(settings)
            runtime_holder["runtime"] = runtime
            if migrate_first:
                await migrate.upgrade(settings)
            config.app = create_app(runtime=runtime)
            config.loaded = False
            try:
                await server.serve()
            finally:
                await runtime.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test that started the server
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name=f"coregraph-{port}", daemon=True)
    thread.start()
    deadline = 30.0
    waited = 0.0
    while not server.started and thread.is_alive() and waited < deadline:
        threading.Event().wait(0.02)
        waited += 0.02
    if failure:
        raise failure[0]
    if not server.started:
        raise RuntimeError("coregraph test server did not start within 30 s")
    try:
        yield Server(settings, runtime_holder["runtime"], port, thread, server)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    headers: httpx.Headers

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.body.get("errors") or []

    @property
    def codes(self) -> list[str | None]:
        return [(e.get("extensions") or {}).get("code") for e in self.errors]

    def ok(self) -> Any:
        assert not self.errors, self.errors
        assert self.status == 200, (self.status, self.body)
        return self.data


@dataclass
class Actor:
    """Someone acting through the API: a user with a token, or an API key."""

    token: str
    user_id: str | None = None
    email: str | None = None
    refresh_token: str | None = None
    tenant_id: str | None = None
    # The membership ``add_member`` gave them in ``tenant_id``.
    membership_id: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    def headers(self, tenant_id: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", **self.extra_headers}
        tenant = tenant_id or self.tenant_id
        if tenant:
            headers["X-Tenant-Id"] = tenant
        return headers


class GraphQLClient:
    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url

    async def execute(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        actor: Actor | None = None,
        tenant_id: str | None = None,
        headers: dict[str, str] | None = None,
        accept: str = "application/graphql-response+json",
    ) -> Response:
        all_headers = {"Accept": accept}
        if actor is not None:
            all_headers.update(actor.headers(tenant_id))
        elif tenant_id is not None:
            all_headers["X-Tenant-Id"] = tenant_id
        all_headers.update(headers or {})
        payload: dict[str, Any] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        response = await self.http.post(self.url, json=payload, headers=all_headers)
        return Response(response.status_code, response.json(), response.headers)

    # --- factories: everything through the public API ---

    async def sign_up(self, email: str | None = None, name: str = "Test User") -> Actor:
        email = email or f"{unique('user')}@example.com"
        r = await self.execute(
            """mutation($input: SignUpInput!) { signUp(input: $input) {
                accessToken refreshToken user { id email } } }""",
            {"input": {"email": email, "password": PASSWORD, "displayName": name}},
        )
        payload = r.ok()["signUp"]
        return Actor(
            token=payload["accessToken"],
            user_id=payload["user"]["id"],
            email=email,
            refresh_token=payload["refreshToken"],
        )

    async def create_tenant(self, owner: Actor, slug: str | None = None) -> str:
        slug = slug or unique("tenant-")
        r = await self.execute(
            """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
                tenant { id slug } } }""",
            {"input": {"name": f"Tenant {slug}", "slug": slug}},
            actor=owner,
        )
        tenant_id = r.ok()["createTenant"]["tenant"]["id"]
        owner.tenant_id = owner.tenant_id or tenant_id
        return tenant_id

    async def add_member(
        self,
        owner: Actor,
        tenant_id: str,
        role: str = "member",
        *,
        email: str | None = None,
        name: str = "Test User",
    ) -> Actor:
        """Invite a new user with ``role`` and have them accept; returns them, in the tenant."""
        member = await self.sign_up(email=email, name=name)
        r = await self.execute(
            """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
                token invitation { id } } }""",
            {"input": {"email": member.email, "role": role}},
            actor=owner,
            tenant_id=tenant_id,
        )
        token = r.ok()["inviteMember"]["token"]
        r = await self.execute(
            "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
            {"t": token},
            actor=member,
        )
        member.membership_id = r.ok()["acceptInvitation"]["membership"]["id"]
        member.tenant_id = tenant_id
        return member

    async def api_key(
        self,
        owner: Actor,
        tenant_id: str,
        scopes: list[str],
        environment: str = "LIVE",
    ) -> Actor:
        r = await self.execute(
            """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
                secret apiKey { id } } }""",
            {"input": {"name": unique("key"), "scopes": scopes, "environment": environment}},
            actor=owner,
            tenant_id=tenant_id,
        )
        payload = r.ok()["createApiKey"]
        return Actor(token=payload["secret"], tenant_id=None, user_id=None)

    async def membership_id(self, owner: Actor, tenant_id: str, user_id: str) -> str:
        r = await self.execute(
            "{ tenant { members(first: 200) { nodes { id user { id } } } } }",
            actor=owner,
            tenant_id=tenant_id,
        )
        for node in r.ok()["tenant"]["members"]["nodes"]:
            if node["user"]["id"] == user_id:
                return str(node["id"])
        raise AssertionError(f"{user_id} is not a member of {tenant_id}")


def env_database_url() -> str | None:
    return os.environ.get("COREGRAPH_DATABASE_URL")


class LogCapture(logging.Handler):
    """The JSON lines one logger writes while a test runs (the test servers run in threads of
    the test process): ``with LogCapture("coregraph.request") as logs: ...``."""

    def __init__(self, logger: str) -> None:
        super().__init__()
        self.setFormatter(json_formatter())
        self.raw: list[str] = []
        self._logger = logging.getLogger(logger)
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.raw.append(self.format(record))

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.raw]

    async def wait_for(
        self, count: int, wanted: Callable[[dict[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """At least ``count`` lines ``wanted`` picks; a server writes its request line after
        the answer has left, so a test waits (at most 10 s) rather than reading at once."""
        for _ in range(500):
            lines = [line for line in self.lines if wanted(line)]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} matching log lines, got {self.lines}")

    def __enter__(self) -> LogCapture:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)
