"""What a production server shows a stranger: no "Did you mean" anywhere, and the federation SDL
(`_service { sdl }`) only to the gateway that presents the shared schema-reader secret.

The production servers here share the suite's database (and JWT secret), so users signed up
through the ordinary test server act on them with the same tokens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from pydantic import ValidationError

from tests.conftest import make_settings
from tests.support import Actor, GraphQLClient, Server, running_server

SCHEMA_SECRET_HEADER = "X-Coregraph-Schema-Secret"
SCHEMA_SECRET = "gateway-schema-secret-0123456789-abcdefghij"
SERVICE = "{ _service { sdl } }"


def production_settings(database_url: str, **overrides: Any) -> Any:
    # Production refuses cheap password hashing: its floor, not the suite's test cost.
    return make_settings(
        database_url,
        env="production",
        password_hash_time_cost=2,
        password_hash_memory_kib=19456,
        **overrides,
    )


@pytest.fixture(scope="module")
def production(database_url: str) -> Iterator[Server]:
    with running_server(
        production_settings(database_url, schema_reader_secret=SCHEMA_SECRET)
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def production_client(production: Server, http: httpx.AsyncClient) -> GraphQLClient:
    return GraphQLClient(http, production.url)


@pytest.fixture(scope="module")
async def owner(client: GraphQLClient) -> Actor:
    owner = await client.sign_up()
    await client.create_tenant(owner)
    return owner


# --- no suggestions ---------------------------------------------------------------------------

SIGN_UP = "mutation($input: SignUpInput!) { signUp(input: $input) { user { id } } }"
CREATE_KEY = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }"
AUDIT_BY_ENV = "query($e: Environment) { tenant { auditLog(environment: $e) { totalCount } } }"

# Each a typo a client makes, in every place graphql-core knows a close match for.
TYPOS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "unknown field": ("{ viewr { id } }", None),
    "unknown argument": ("{ tenant { auditLog(firts: 2) { totalCount } } }", None),
    "unknown input field in variables": (
        SIGN_UP,
        {"input": {"emial": "ada@example.com", "email": "x@example.com", "password": "p" * 12}},
    ),
    "unknown input field inline": (
        'mutation { signUp(input: {emial: "a", email: "b@example.com", password: "c"}) '
        "{ user { id } } }",
        None,
    ),
    "enum value in variables": (
        CREATE_KEY,
        {"input": {"name": "k", "scopes": [], "environment": "LIVEE"}},
    ),
    "enum value in a variable of enum type": (AUDIT_BY_ENV, {"e": "live"}),
    "enum value inline": (
        'mutation { createApiKey(input: {name: "k", scopes: [], environment: LIVEE}) { secret } }',
        None,
    ),
    "enum value inline as a string": (
        '{ tenant { auditLog(environment: "LIVE") { totalCount } } }',
        None,
    ),
    "unknown type of a variable": ("query($e: Environmnt) { viewer { id } }", None),
    "unknown type of a fragment": ("{ viewer { ...F } } fragment F on Usr { id }", None),
    "object field without a selection": ("{ viewer }", None),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
async def test_production_suggests_nothing(
    typo: str, owner: Actor, client: GraphQLClient, production_client: GraphQLClient
) -> None:
    query, variables = TYPOS[typo]
    # The development server does suggest, so each typo really has a close match.
    r = await client.execute(query, variables, actor=owner)
    assert any("Did you mean" in e["message"] for e in r.errors), r.body

    r = await production_client.execute(query, variables, actor=owner)
    assert r.status == 400, r.body
    assert r.errors and "data" not in r.body, r.body
    for error in r.errors:
        assert error["extensions"]["code"] in {"GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"}
        assert "Did you mean" not in error["message"], error
        assert "the enum value" not in error["message"], error


# --- _service { sdl } -------------------------------------------------------------------------


async def test_the_sdl_is_served_only_to_the_gateway_secret(
    owner: Actor, production_client: GraphQLClient
) -> None:
    refused = [
        await production_client.execute(SERVICE),
        await production_client.execute(SERVICE, actor=owner),
        await production_client.execute(SERVICE, headers={SCHEMA_SECRET_HEADER: "guess"}),
        await production_client.execute(
            SERVICE, headers={SCHEMA_SECRET_HEADER: SCHEMA_SECRET[:-1]}
        ),
        await production_client.execute(
            SERVICE, headers={SCHEMA_SECRET_HEADER: SCHEMA_SECRET + "x"}
        ),
    ]
    for r in refused:
        assert r.codes == ["FORBIDDEN"], r.body
        assert "type Tenant" not in json.dumps(r.body)

    r = await production_client.execute(SERVICE, headers={SCHEMA_SECRET_HEADER: SCHEMA_SECRET})
    assert "type Tenant" in r.ok()["_service"]["sdl"]
    # With a user's credential too: the gateway forwards its callers' headers.
    r = await production_client.execute(
        SERVICE, actor=owner, headers={SCHEMA_SECRET_HEADER: SCHEMA_SECRET}
    )
    assert "type Tenant" in r.ok()["_service"]["sdl"]
    # Introspection stays off for everyone, the gateway included.
    r = await production_client.execute(
        "{ __schema { types { name } } }", headers={SCHEMA_SECRET_HEADER: SCHEMA_SECRET}
    )
    assert r.codes and set(r.codes) == {"GRAPHQL_VALIDATION_FAILED"}, r.body


async def socket_sdl(server: Server, owner: Actor, params: dict[str, str]) -> dict[str, Any]:
    """`_service { sdl }` over graphql-transport-ws, ``params`` in connection_init."""

    async def receive() -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return message

    url = server.url.replace("http://", "ws://")
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        payload = {"Authorization": f"Bearer {owner.token}", **params}
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert (await receive())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": SERVICE}}))
        message = await receive()
        assert message["type"] == "next", message
        result: dict[str, Any] = message["payload"]
        return result


async def test_the_sdl_over_a_websocket_needs_the_secret_too(
    owner: Actor, production: Server
) -> None:
    refused = await socket_sdl(production, owner, {})
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"], refused
    refused = await socket_sdl(production, owner, {SCHEMA_SECRET_HEADER: "guess"})
    assert [e["extensions"]["code"] for e in refused["errors"]] == ["FORBIDDEN"], refused
    served = await socket_sdl(production, owner, {SCHEMA_SECRET_HEADER: SCHEMA_SECRET})
    assert "errors" not in served, served
    assert "type Tenant" in served["data"]["_service"]["sdl"]


async def test_without_a_configured_secret_production_serves_the_sdl_to_nobody(
    database_url: str, http: httpx.AsyncClient, owner: Actor
) -> None:
    """A gateway then composes the supergraph offline, from `coregraph export-schema`."""
    with running_server(production_settings(database_url)) as srv:
        prod = GraphQLClient(http, srv.url)
        for headers in ({}, {SCHEMA_SECRET_HEADER: ""}, {SCHEMA_SECRET_HEADER: SCHEMA_SECRET}):
            for actor in (None, owner):
                r = await prod.execute(SERVICE, actor=actor, headers=headers)
                assert r.codes == ["FORBIDDEN"], r.body


async def test_with_introspection_on_anyone_reads_the_sdl(client: GraphQLClient) -> None:
    r = await client.execute(SERVICE)
    assert "type Tenant" in r.ok()["_service"]["sdl"]


def test_production_refuses_a_short_schema_reader_secret(database_url: str) -> None:
    with pytest.raises(ValidationError, match="COREGRAPH_SCHEMA_READER_SECRET"):
        production_settings(database_url, schema_reader_secret="short")
