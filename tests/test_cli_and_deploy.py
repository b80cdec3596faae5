"""The commands a platform team runs: migrate, create-user, create-tenant, serve; and the
production compose file they start from (no Docker engine here: checked for validity)."""

from __future__ import annotations

import asyncio
import getpass
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from coregraph.auth.principal import system_principal
from coregraph.errors import Unauthenticated
from coregraph.models import AuditEntry
from coregraph.schema.authorization import Declaration
from tests.support import PASSWORD, GraphQLClient, free_port, unique

ROOT = Path(__file__).resolve().parent.parent


def coregraph(
    *args: str, env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coregraph.cli", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREGRAPH_")}
    env["COREGRAPH_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/cli.sqlite3"
    env["COREGRAPH_PASSWORD_HASH_TIME_COST"] = "1"
    env["COREGRAPH_PASSWORD_HASH_MEMORY_KIB"] = "1024"
    return env


def cli_env_for(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREGRAPH_")}
    env["COREGRAPH_DATABASE_URL"] = database_url
    env["COREGRAPH_PASSWORD_HASH_TIME_COST"] = "1"
    env["COREGRAPH_PASSWORD_HASH_MEMORY_KIB"] = "1024"
    return env


def wait_until_ready(http: httpx.Client, url: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if http.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        try:  # waits on the process: returns early only if it died
            server.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"server exited: {server.stderr.read() if server.stderr else ''}")
    raise AssertionError("server not ready within 60 s")


def test_migrate_create_user_and_tenant_then_serve_and_log_in(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    assert coregraph("migrate", env=env).returncode == 0
    made = coregraph("create-user", "ops@example.com", "--password", PASSWORD, env=env)
    assert made.returncode == 0, made.stderr
    user_id = made.stdout.strip()
    assert user_id.startswith("usr_")
    made = coregraph("create-tenant", "acme", "--owner", "ops@example.com", env=env)
    assert made.returncode == 0, made.stderr
    tenant_id = made.stdout.strip()
    assert tenant_id.startswith("ten_")

    again = coregraph("create-tenant", "acme", "--owner", "ops@example.com", env=env)
    assert again.returncode == 1 and "CONFLICT" in again.stderr
    assert "Traceback" not in again.stderr
    weak = coregraph("create-user", "weak@example.com", "--password", "short", env=env)
    assert weak.returncode == 1 and "BAD_USER_INPUT" in weak.stderr

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "coregraph.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=5) as http:
            wait_until_ready(http, url, server)
            login = http.post(
                f"{url}/graphql",
                json={
                    "query": """mutation($i: LoginInput!) { login(input: $i) { accessToken
                        user { id } } }""",
                    "variables": {"i": {"email": "ops@example.com", "password": PASSWORD}},
                },
            ).json()["data"]["login"]
            assert login["user"]["id"] == user_id
            tenant = http.post(
                f"{url}/graphql",
                json={"query": "{ tenant { id slug members { totalCount } } }"},
                headers={
                    "Authorization": f"Bearer {login['accessToken']}",
                    "X-Tenant-Id": tenant_id,
                },
            ).json()["data"]["tenant"]
            assert tenant == {"id": tenant_id, "slug": "acme", "members": {"totalCount": 1}}
            page = http.get(f"{url}/graphql", headers={"Accept": "text/html"})
            assert page.status_code == 200 and "graphiql" in page.text.lower()
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_compose_file_describes_the_production_shape() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api-1", "api-2"} <= set(services)
    for name in ("api-1", "api-2", "migrate"):
        env = services[name]["environment"]
        assert env["COREGRAPH_ENV"] == "production"
        assert env["COREGRAPH_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["COREGRAPH_REDIS_URL"].startswith("redis://")
        assert "COREGRAPH_JWT_SECRET" in env
        assert "COREGRAPH_WEBHOOK_SECRET_KEYS" in env
    assert services["migrate"]["command"] == ["coregraph", "migrate"]
    assert services["api-1"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    published = {p for name in ("api-1", "api-2") for p in services[name]["ports"]}
    assert len(published) == 2

    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD"))
    assert '"serve"' in cmd and '"--no-migrate"' in cmd
    help_text = coregraph("serve", "--help", env=dict(os.environ)).stdout
    assert "--no-migrate" in help_text and "--host" in help_text


async def test_cli_actions_are_audited_as_the_system_naming_command_and_os_user(
    database_url: str, client: GraphQLClient
) -> None:
    env = cli_env_for(database_url)
    email, slug = f"{unique('ops')}@example.com", unique("cli-")
    made = await asyncio.to_thread(coregraph, "create-user", email, "--password", PASSWORD, env=env)
    assert made.returncode == 0, made.stderr
    user_id = made.stdout.strip()
    made = await asyncio.to_thread(coregraph, "create-tenant", slug, "--owner", email, env=env)
    assert made.returncode == 0, made.stderr
    tenant_id = made.stdout.strip()
    os_user = getpass.getuser()

    login = await client.execute(
        "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
        {"i": {"email": email, "password": PASSWORD}},
    )
    token = login.ok()["login"]["accessToken"]
    r = await client.execute(
        "{ tenant { auditLog(first: 10) { nodes { action actorKind actorId userAgent } } } }",
        headers={"Authorization": f"Bearer {token}", "X-Tenant-Id": tenant_id},
    )
    entries = r.ok()["tenant"]["auditLog"]["nodes"]
    assert {e["action"] for e in entries} >= {"tenant.created", "member.added"}
    for entry in entries:
        assert entry["actorKind"] == "system" and entry["actorId"] == "cli:create-tenant"
        assert entry["userAgent"] == f"coregraph-cli (os user {os_user})"

    # The account's own entry belongs to no tenant, so no API lists it: read the table.
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            signed_up = (
                await conn.execute(
                    select(AuditEntry.actor_kind, AuditEntry.actor_id, AuditEntry.user_agent).where(
                        AuditEntry.action == "user.signed_up", AuditEntry.target_id == user_id
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    assert tuple(signed_up) == ("system", "cli:create-user", f"coregraph-cli (os user {os_user})")


def test_a_system_principal_passes_no_schema_check_and_holds_no_tenant() -> None:
    system = system_principal("cli:create-tenant")
    assert not system.is_authenticated and system.actor_id == "cli:create-tenant"
    denial = Declaration("Query.viewer", authenticated=True).denial(system, None)
    assert isinstance(denial, Unauthenticated)
    with pytest.raises(ValueError):
        replace(system, tenant_scopes={"ten_x": frozenset({"tenant:read"})})
