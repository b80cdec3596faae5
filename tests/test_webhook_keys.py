"""The keys that encrypt webhook secrets at rest: an operator makes one with
`coregraph generate-webhook-key`, and rotates to it by putting it first in
COREGRAPH_WEBHOOK_SECRET_KEYS and running `coregraph rotate-webhook-key`, after which the old
key can go: every endpoint's secrets (a rotation's previous one too) open with the new key
alone, and nothing a partner verifies with changed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from coregraph import db
from coregraph.models import AuditEntry, WebhookEndpoint
from coregraph.services.webhooks import SecretBox
from tests.conftest import TEST_WEBHOOK_KEY
from tests.streams_support import migrated_database, relay_settings
from tests.support import GraphQLClient, Server, running_server
from tests.test_cli_and_deploy import cli_env_for, coregraph
from tests.test_webhooks_api import CREATE, PUBLIC_URL, ROTATE


@pytest.fixture(scope="module")
async def keys_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("keys"))) as url:
        yield url


@pytest.fixture(scope="module")
def api(keys_db: str) -> Iterator[Server]:
    settings = relay_settings(keys_db, run_relay="false", run_webhook_worker="false")
    with running_server(settings, migrate_first=False) as srv:
        yield srv


def test_generate_webhook_key_prints_a_new_fernet_key(tmp_path: Path) -> None:
    env = cli_env_for(f"sqlite+aiosqlite:///{tmp_path}/unused.sqlite3")
    made = [coregraph("generate-webhook-key", env=env) for _ in range(2)]
    assert [m.returncode for m in made] == [0, 0], [m.stderr for m in made]
    keys = [m.stdout.strip() for m in made]
    assert keys[0] != keys[1]
    for key in keys:
        Fernet(key)  # a valid key: 32 bytes, url-safe base64


async def read(database_url: str, tenant_ids: list[str], statement: Any) -> list[Any]:
    """Rows as the API's role sees them in these tenants."""
    engine = db.create_engine(relay_settings(database_url))
    try:
        async with engine.connect() as conn:
            await db.scope_transaction(conn, tenant_ids=tenant_ids)
            return list(await conn.execute(statement))
    finally:
        await engine.dispose()


async def test_rotate_webhook_key_reencrypts_every_tenants_secrets_under_the_first_key(
    api: Server, keys_db: str, http: httpx.AsyncClient
) -> None:
    gql = GraphQLClient(http, api.url)
    shown: dict[str, list[str]] = {}
    tenants = []
    for _ in range(2):
        owner = await gql.sign_up()
        tenant_id = await gql.create_tenant(owner)
        tenants.append(tenant_id)
        r = await gql.execute(
            CREATE,
            {"input": {"url": PUBLIC_URL, "eventTypes": ["*"]}},
            actor=owner,
            tenant_id=tenant_id,
        )
        made = r.ok()["createWebhookEndpoint"]
        endpoint_id, first = made["webhookEndpoint"]["id"], made["secret"]
        # A rotation under way: the previous secret still signs and must survive too.
        r = await gql.execute(ROTATE, {"id": endpoint_id}, actor=owner, tenant_id=tenant_id)
        shown[endpoint_id] = [r.ok()["rotateWebhookSecret"]["secret"], first]

    old, new = SecretBox([TEST_WEBHOOK_KEY]), Fernet.generate_key().decode()
    env = cli_env_for(keys_db)
    env["COREGRAPH_WEBHOOK_SECRET_KEYS"] = f"{new},{TEST_WEBHOOK_KEY}"
    done = coregraph("rotate-webhook-key", env=env)
    assert done.returncode == 0, done.stderr
    assert "2 webhook endpoint(s)" in done.stdout

    only_new = SecretBox([new])
    rows = await read(
        keys_db, tenants, select(WebhookEndpoint.__table__).order_by(WebhookEndpoint.id)
    )
    assert {row.id for row in rows} == set(shown)
    for row in rows:
        assert [only_new.open(row.secret), only_new.open(row.previous_secret)] == shown[row.id]
        with pytest.raises(RuntimeError):
            old.open(row.secret)
    resealed = AuditEntry.action == "webhook_endpoint.secrets_resealed"
    entries = await read(keys_db, tenants, select(AuditEntry.__table__).where(resealed))
    assert sorted(e.tenant_id for e in entries) == sorted(tenants)
    assert {(e.actor_kind, e.actor_id) for e in entries} == {("system", "cli:rotate-webhook-key")}
    assert all(e.changes == {"before": {}, "after": {"endpoints": 1}} for e in entries)

    # Without the key that sealed them, the command says so instead of guessing.
    env["COREGRAPH_WEBHOOK_SECRET_KEYS"] = Fernet.generate_key().decode()
    refused = coregraph("rotate-webhook-key", env=env)
    assert refused.returncode != 0
    assert "COREGRAPH_WEBHOOK_SECRET_KEYS" in refused.stderr
