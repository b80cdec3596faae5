"""What a platform team relies on: health, readiness, request ids, one JSON log line per
request without secrets, limits, and settings that refuse to start when unsafe."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError

from coregraph.settings import Settings
from tests.conftest import TEST_WEBHOOK_KEY as PRODUCTION_WEBHOOK_KEY, make_settings
from tests.support import GraphQLClient, LogCapture, Server, running_server


async def test_healthz_and_readyz(http: httpx.AsyncClient, server: Server) -> None:
    r = await http.get(f"{server.base_url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await http.get(f"{server.base_url}/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"] == "ok" and checks["migrations"] == "ok"
    if os.environ.get("COREGRAPH_REDIS_URL"):
        assert checks["redis"] == "ok"


async def test_readyz_is_503_when_migrations_are_missing(
    http: httpx.AsyncClient, tmp_path: object
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/empty.sqlite3", redis_url=None)
    with running_server(settings, migrate_first=False) as srv:
        r = await http.get(f"{srv.base_url}/readyz")
        assert r.status_code == 503
        assert "coregraph migrate" in r.json()["checks"]["migrations"]


async def test_readyz_is_503_when_redis_is_unreachable(
    http: httpx.AsyncClient, database_url: str
) -> None:
    settings = make_settings(database_url, redis_url="redis://127.0.0.1:1/0")
    with running_server(settings) as srv:
        r = await http.get(f"{srv.base_url}/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["redis"].startswith("unreachable")


async def test_one_structured_log_line_per_request_without_secrets(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    with LogCapture("coregraph.request") as capture:
        r = await client.execute(
            "query Members { tenant { members { totalCount } } }",
            actor=owner,
            tenant_id=tenant_id,
            headers={"X-Request-Id": "req-log-check-1"},
        )
        r.ok()
        r = await client.execute(
            "query Denied { tenant { name } }",
            headers={"Authorization": "Bearer not-a-token", "X-Request-Id": "req-log-check-2"},
        )
        assert r.status == 401
        lines = await capture.wait_for(2, lambda line: line["request_id"].startswith("req-log"))
    mine = {line["request_id"]: line for line in lines}
    assert set(mine) == {"req-log-check-1", "req-log-check-2"}
    ok = mine["req-log-check-1"]
    assert ok["principal"] == "user" and ok["tenant_id"] == tenant_id
    assert ok["operation"] == "Members" and ok["outcome"] == "OK" and ok["status"] == 200
    assert isinstance(ok["duration_ms"], float)
    denied = mine["req-log-check-2"]
    assert denied["outcome"] == "UNAUTHENTICATED" and denied["status"] == 401
    for line in capture.raw:
        assert owner.token not in line and "not-a-token" not in line
        assert owner.refresh_token and owner.refresh_token not in line


async def test_request_id_is_returned_and_generated(client: GraphQLClient) -> None:
    r = await client.execute("{ __typename }", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.execute("{ __typename }", headers={"X-Request-Id": "bad id with spaces"})
    generated = r.headers["x-request-id"]
    assert generated != "bad id with spaces" and len(generated) == 32
    r = await client.execute("{ nope }")
    assert r.errors[0]["extensions"]["requestId"] == r.headers["x-request-id"]


async def test_depth_alias_and_token_limits(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    deep = "{ viewer { memberships { tenant { members { edges { node { user { memberships {"
    deep += " tenant { members { edges { node { user { id } } } } } } } } } } } } } }"
    r = await client.execute(deep, actor=owner)
    assert r.status == 400 and "exceeds maximum operation depth" in r.errors[0]["message"]
    aliases = "{ " + " ".join(f"a{i}: __typename" for i in range(40)) + " }"
    r = await client.execute(aliases, actor=owner)
    assert r.status == 400 and "aliases" in r.errors[0]["message"].lower()
    tokens = "{ " + " ".join("__typename" for _ in range(5000)) + " }"
    r = await client.execute(tokens, actor=owner)
    assert r.status == 400 and "token" in r.errors[0]["message"].lower()
    assert set(r.codes) <= {"GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED"}


async def test_production_hides_introspection_and_suggestions(
    http: httpx.AsyncClient, database_url: str, client: GraphQLClient
) -> None:
    r = await client.execute("{ __schema { queryType { name } } }")
    assert r.ok()["__schema"]["queryType"]["name"] == "Query"
    r = await client.execute("{ viewr { id } }")
    assert "Did you mean" in r.errors[0]["message"]

    settings = make_settings(
        database_url,
        env="production",
        jwt_secret="a-production-secret-that-is-long-enough-0123456789",
        webhook_secret_keys=PRODUCTION_WEBHOOK_KEY,
        password_hash_time_cost=2,
        password_hash_memory_kib=19456,
    )
    with running_server(settings) as srv:
        prod = GraphQLClient(http, srv.url)
        r = await prod.execute("{ __schema { queryType { name } } }")
        assert r.status == 400 and "introspection" in r.errors[0]["message"].lower()
        r = await prod.execute("{ viewr { id } }")
        assert "Did you mean" not in r.errors[0]["message"]
        page = await http.get(srv.url, headers={"Accept": "text/html"})
        assert "<html" not in page.text.lower()


def test_production_refuses_insecure_settings() -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(env="production")
    assert "COREGRAPH_JWT_SECRET" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        Settings(env="production", jwt_secret="x" * 40, introspection=True)
    assert "COREGRAPH_INTROSPECTION" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        Settings(env="production", jwt_secret="x" * 40)
    assert "COREGRAPH_WEBHOOK_SECRET_KEYS" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        Settings(
            env="production",
            jwt_secret="x" * 40,
            webhook_secret_keys=PRODUCTION_WEBHOOK_KEY,
            webhook_allow_private=True,
        )
    assert "COREGRAPH_WEBHOOK_ALLOW_PRIVATE" in str(exc.value)
    settings = Settings(
        env="production", jwt_secret="x" * 40, webhook_secret_keys=PRODUCTION_WEBHOOK_KEY
    )
    assert not settings.webhook_private_allowed
    with pytest.raises(ValidationError) as exc:
        Settings(webhook_secret_keys="not-a-key")
    assert "webhook_secret_keys" in str(exc.value)
    assert Settings(env="production", allow_insecure=True).is_production


def test_bad_setting_is_a_clear_message_at_start() -> None:
    env = {**os.environ, "COREGRAPH_PORT": "not-a-port", "COREGRAPH_DATABASE_URL": "mysql://x"}
    proc = subprocess.run(
        [sys.executable, "-m", "coregraph.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "COREGRAPH_PORT" in proc.stderr and "COREGRAPH_DATABASE_URL" in proc.stderr
    assert "Traceback" not in proc.stderr
