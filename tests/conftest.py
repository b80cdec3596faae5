"""Session fixtures: one real database (SQLite by default, PostgreSQL when
COREGRAPH_DATABASE_URL says so), one real server on 127.0.0.1, one HTTP client.

Every query and subscription event the suite's servers execute is also executed by stock
graphql-core and compared (``coregraph.schema.execution_check``): a difference fails the test
that issued it. ``COREGRAPH_EXECUTION_CHECK=false`` turns that off (to time the suite without).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator

import httpx
import pytest

from coregraph.schema import execution_check
from coregraph.settings import Settings
from tests.equivalence import RealSchema, SeededTenant, seed_tenant
from tests.support import (
    GraphQLClient,
    Server,
    create_test_database,
    drop_test_database,
    env_database_url,
    running_server,
)

# Before any Settings is made: the test servers (threads of this process) and the processes the
# tests start read it.
os.environ.setdefault("COREGRAPH_EXECUTION_CHECK", "true")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fails the test whose queries answered differently from stock graphql-core, with the
    difference. The servers compare before they answer, so every mismatch of the test's own
    requests is in before the test ends."""
    mismatches: list[execution_check.Mismatch] = []
    execution_check.listeners.append(mismatches.append)
    try:
        result = yield
    finally:
        execution_check.listeners.remove(mismatches.append)
    if mismatches:
        raise AssertionError(
            "execution check (coregraph.schema.execution_check):\n\n"
            + "\n\n".join(str(mismatch) for mismatch in mismatches)
        )
    return result


# Not the development key, so servers started with env="production" accept it.
TEST_WEBHOOK_KEY = "9tDkWjSSUFiV3SPqMnxkHxIC90ZBrVi4PNOmRpbUoTU="


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "redis_url": os.environ.get("COREGRAPH_REDIS_URL") or None,
        "jwt_secret": "test-secret-0123456789-0123456789-0123456789",
        # Cheap argon2id: tests sign up hundreds of users; production keeps the real cost.
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 1024,
        "password_hash_parallelism": 1,
        # Every test client is 127.0.0.1: per-address limits are tested on their own server.
        "auth_rate_limit_per_ip": 100_000,
        "webhook_secret_keys": TEST_WEBHOOK_KEY,
        # Approval requests past their expiry are expired within half a second.
        "approval_expiry_interval_seconds": 0.5,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def database_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path_factory.mktemp("db")))
    yield url
    if name and base:
        await drop_test_database(base, name)


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[Server]:
    with running_server(make_settings(database_url)) as srv:
        yield srv


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def client(server: Server, http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http, server.url)


@pytest.fixture(scope="module")
async def seeded_tenant(client: GraphQLClient) -> SeededTenant:
    """A tenant with something of every kind (``tests.equivalence.seed_tenant``)."""
    return await seed_tenant(client)


@pytest.fixture(scope="module")
async def real_schema(server: Server) -> AsyncIterator[RealSchema]:
    """coregraph's schema on the suite's database, to run documents on chosen executors."""
    async with RealSchema.open(server.settings) as schema:
        yield schema
