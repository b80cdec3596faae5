"""coregraph behind a real federation gateway: Hive Gateway (The Guild's
``@graphql-hive/gateway-runtime``) on the supergraph composed from coregraph's SDL and a
"portal" edge subgraph that extends User and Tenant (``tests/node/gateway.mjs``). The gateway
forwards the client's credentials, as a deployment's gateway is configured to; coregraph
enforces its own declarations on what the gateway asks of it, including the ``_entities``
calls the query planner makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.node_support import run_node_script, running_node_server
from tests.support import Actor, GraphQLClient, Server

EDGE_SUBGRAPH = Path(__file__).resolve().parent / "node" / "edge-subgraph.graphql"


@pytest.fixture(scope="module")
def gateway_url(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway")
    sdl = httpx.post(server.url, json={"query": "{ _service { sdl } }"}, timeout=30).json()
    core = tmp / "core.graphql"
    core.write_text(sdl["data"]["_service"]["sdl"])
    composed = run_node_script(
        "compose.mjs", "--lib", "guild", f"core={core}", f"portal={EDGE_SUBGRAPH}"
    )
    result = composed.json()
    assert composed.returncode == 0 and result["ok"], result["errors"]
    supergraph = tmp / "supergraph.graphql"
    supergraph.write_text(result["supergraphSdl"])
    with running_node_server("gateway.mjs", str(supergraph), f"core={server.url}") as urls:
        yield str(urls["gateway"])


@pytest.fixture
def gateway(http: httpx.AsyncClient, gateway_url: str) -> GraphQLClient:
    return GraphQLClient(http, gateway_url)


async def through(
    gateway: GraphQLClient,
    query: str,
    variables: dict[str, Any] | None = None,
    actor: Actor | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The gateway's whole answer (always a 200: errors travel in the body)."""
    headers = {"X-Request-Id": request_id} if request_id else None
    r = await gateway.execute(
        query, variables, actor=actor, headers=headers, accept="application/json"
    )
    assert r.status == 200, r.body
    return r.body


async def owner_with_member(client: GraphQLClient) -> tuple[Actor, Actor]:
    owner = await client.sign_up(name="Gateway Owner")
    owner.tenant_id = await client.create_tenant(owner)
    member = await client.add_member(owner, owner.tenant_id, name="Gateway Member")
    return owner, member


async def test_one_query_spans_coregraph_and_the_edge_subgraph(
    client: GraphQLClient, gateway: GraphQLClient
) -> None:
    owner, member = await owner_with_member(client)
    body = await through(
        gateway,
        """{ portalVersion
             viewer { id displayName portalPreferences { theme } }
             tenant { id portalTheme members { edges { node {
               role { key } user { id email portalPreferences { locale } } } } } } }""",
        actor=owner,
    )
    assert "errors" not in body, body
    data = body["data"]
    assert data["portalVersion"] == "portal-1"
    assert data["viewer"]["id"] == owner.user_id
    assert data["viewer"]["portalPreferences"]["theme"] == f"theme-of-{owner.user_id}"
    assert data["tenant"]["id"] == owner.tenant_id
    assert data["tenant"]["portalTheme"] == f"theme-of-{owner.tenant_id}"
    members = {
        edge["node"]["user"]["email"]: edge["node"] for edge in data["tenant"]["members"]["edges"]
    }
    assert members.keys() == {owner.email, member.email}
    assert members[member.email]["role"]["key"] == "member"
    assert members[member.email]["user"]["portalPreferences"]["locale"] == "en"


async def test_entities_the_gateway_fetches_are_authorized_by_coregraph(
    client: GraphQLClient, gateway: GraphQLClient
) -> None:
    """``portalUser`` comes from the portal as a bare reference; the gateway asks coregraph's
    ``_entities`` for the user's own fields, with the caller's credentials."""
    owner, member = await owner_with_member(client)
    stranger = await client.sign_up(name="Stranger")
    stranger.tenant_id = await client.create_tenant(stranger)
    query = "query($id: ID!) { portalUser(id: $id) { id displayName email } }"

    body = await through(gateway, query, {"id": member.user_id}, actor=owner)
    assert "errors" not in body, body
    assert body["data"]["portalUser"] == {
        "id": member.user_id,
        "displayName": "Gateway Member",
        "email": member.email,
    }

    # Another tenant's owner gets the answer for an id that does not exist; no credential at
    # all gets UNAUTHENTICATED (as from node(id:)). The gateway passes either on, and nothing of
    # the user leaks.
    for actor, request_id, code in (
        (stranger, "gw-stranger-1", "NOT_FOUND"),
        (None, "gw-anonymous-1", "UNAUTHENTICATED"),
    ):
        body = await through(gateway, query, {"id": member.user_id}, actor, request_id)
        assert body["data"] == {"portalUser": None}, body
        assert [
            (e["extensions"]["code"], e["extensions"]["serviceName"], e["extensions"]["requestId"])
            for e in body["errors"]
        ] == [(code, "core", request_id)], body
        assert "Gateway Member" not in str(body) and member.email not in str(body)
