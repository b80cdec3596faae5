"""API keys on two API processes: a key is read afresh for every request
(``Authenticator._api_key_row``; on PostgreSQL one call to migration 0022's
``api_key_principal``), so a revocation, an expiry or a change to the creator's rights made
through one process holds for the very next request on the other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from coregraph.app import Runtime, create_app
from tests.auth_support import assert_unauthenticated
from tests.support import Actor, GraphQLClient, Server

CREATE_KEY = """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
    secret apiKey { id } } }"""
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { id status } } }"
CHANGE_ROLE = """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
    membership { id role { key } } } }"""
REMOVE = "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }"
READ = "{ tenant { id members { totalCount } } }"


@pytest.fixture
async def other_runtime(server: Server) -> AsyncIterator[Runtime]:
    """A second API process on the same database: a runtime (engine, authenticator) of its
    own."""
    runtime = Runtime.create(server.settings)
    yield runtime
    await runtime.close()


@pytest.fixture
async def other_process(other_runtime: Runtime) -> AsyncIterator[GraphQLClient]:
    """The second process's API, called in this process through ASGI."""
    app = create_app(runtime=other_runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://other", timeout=30
    ) as http:
        yield GraphQLClient(http, "http://other/graphql")


@contextmanager
def statements_sent(runtime: Runtime) -> Iterator[list[str]]:
    """The SQL statements ``runtime``'s engine sends inside the block."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", count)


async def _key(
    client: GraphQLClient, actor: Actor, tenant_id: str, scopes: list[str]
) -> tuple[Actor, str]:
    r = await client.execute(
        CREATE_KEY,
        {"input": {"name": "two processes", "scopes": scopes}},
        actor=actor,
        tenant_id=tenant_id,
    )
    payload = r.ok()["createApiKey"]
    return Actor(token=payload["secret"]), payload["apiKey"]["id"]


async def test_a_key_revoked_on_one_process_fails_at_once_on_the_other(
    client: GraphQLClient, other_process: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    key, key_id = await _key(client, owner, tenant_id, ["tenant:read", "members:read"])
    # Both processes have seen the key (twice: the second time from what they remember).
    for process in (client, other_process, client, other_process):
        assert (await process.execute(READ, actor=key)).ok()["tenant"]["id"] == tenant_id

    r = await client.execute(REVOKE_KEY, {"id": key_id}, actor=owner, tenant_id=tenant_id)
    assert r.ok()["revokeApiKey"]["apiKey"]["status"] == "REVOKED"

    for process in (other_process, client):
        r = await process.execute(READ, actor=key)
        assert r.status == 401
        assert_unauthenticated(r)


async def test_a_creators_demotion_and_removal_bind_their_key_at_once_on_every_process(
    client: GraphQLClient, other_process: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    admin = await client.add_member(owner, tenant_id, role="admin")
    key, _ = await _key(client, admin, tenant_id, ["tenant:read", "members:read", "apikeys:manage"])
    for process in (client, other_process, other_process):
        r = await process.execute("{ tenant { apiKeys { totalCount } } }", actor=key)
        assert r.ok()["tenant"]["apiKeys"]["totalCount"] >= 1

    membership_id = await client.membership_id(owner, tenant_id, str(admin.user_id))
    r = await client.execute(
        CHANGE_ROLE,
        {"input": {"membershipId": membership_id, "role": "viewer"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.ok()["changeMemberRole"]["membership"]["role"]["key"] == "viewer"
    # The viewer role reads members but not keys: so does the key now, on both processes.
    for process in (other_process, client):
        r = await process.execute("{ tenant { id apiKeys { totalCount } } }", actor=key)
        assert r.data["tenant"]["id"] == tenant_id
        assert [e["extensions"]["code"] for e in r.errors] == ["FORBIDDEN"]
        assert r.errors[0]["path"] == ["tenant", "apiKeys"]

    r = await client.execute(REMOVE, {"id": membership_id}, actor=owner, tenant_id=tenant_id)
    r.ok()
    for process in (other_process, client):
        r = await process.execute("{ tenant { id } }", actor=key)
        assert r.codes == ["FORBIDDEN"]
        assert r.data == {"tenant": None}


async def test_a_key_past_its_expiry_fails_at_once_on_both_processes(
    client: GraphQLClient, other_process: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    r = await client.execute(
        CREATE_KEY,
        {
            "input": {
                "name": "brief",
                "scopes": ["tenant:read"],
                "expiresAt": expires_at.isoformat(),
            }
        },
        actor=owner,
        tenant_id=tenant_id,
    )
    key = Actor(token=r.ok()["createApiKey"]["secret"])
    for process in (client, other_process):
        assert (await process.execute("{ tenant { id } }", actor=key)).ok()["tenant"]["id"]

    async def refused(process: GraphQLClient) -> Any:
        while True:
            r = await process.execute("{ tenant { id } }", actor=key)
            if r.status != 200:
                return r
            # Served only while the key was still valid.
            assert datetime.now(UTC) < expires_at + timedelta(seconds=1)
            await asyncio.sleep(0.05)

    for process in (other_process, client):
        r = await asyncio.wait_for(refused(process), 15)
        assert r.status == 401
        assert_unauthenticated(r)


async def test_an_api_key_is_read_in_one_autocommitted_call_on_postgresql(
    client: GraphQLClient, other_process: GraphQLClient, other_runtime: Runtime
) -> None:
    """One round trip per request for the key and its creator's rights (before: BEGIN, scope,
    the read, ROLLBACK), and still under row-level security as the API role: the key's own
    tenant, nothing else."""
    if other_runtime.engine.dialect.name != "postgresql":
        pytest.skip("row-level security and the function are PostgreSQL's")
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    key, _ = await _key(client, owner, tenant_id, ["tenant:read"])
    # The first use also writes lastUsedAt (at most once a minute): not counted.
    assert (await other_process.execute("{ tenant { id } }", actor=key)).ok()
    with statements_sent(other_runtime) as statements:
        r = await other_process.execute("{ __typename }", actor=key)
    assert r.ok() == {"__typename": "Query"}
    assert len(statements) == 1 and "api_key_principal" in statements[0], statements


async def test_concurrent_requests_with_one_key_share_its_reads_and_each_is_answered(
    client: GraphQLClient, other_process: GraphQLClient, other_runtime: Runtime
) -> None:
    """Requests presenting one key at the same moment share a read of it (one sent after
    each of them arrived: coregraph.group_commit); each gets its own answer, and a
    revocation committed before the next ones binds all of them."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    key, key_id = await _key(client, owner, tenant_id, ["tenant:read"])
    assert (await other_process.execute("{ tenant { id } }", actor=key)).ok()
    with statements_sent(other_runtime) as statements:
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(other_process.execute("{ tenant { id } }", actor=key) for _ in range(12))
            ),
            30,
        )
    assert [a.ok()["tenant"]["id"] for a in answers] == [tenant_id] * 12
    if other_runtime.engine.dialect.name == "postgresql":
        reads = [s for s in statements if "api_key_principal" in s]
        assert 1 <= len(reads) < 12, statements

    r = await client.execute(REVOKE_KEY, {"id": key_id}, actor=owner, tenant_id=tenant_id)
    r.ok()
    answers = await asyncio.wait_for(
        asyncio.gather(*(other_process.execute("{ tenant { id } }", actor=key) for _ in range(12))),
        30,
    )
    assert [a.status for a in answers] == [401] * 12
