"""graphql-transport-ws on /graphql: the transport the streams build on. Queries run over it
with the same authentication and the same schema-declared rules as HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support import GraphQLClient, Server

PROTOCOL = "graphql-transport-ws"


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://")


async def receive(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def run(ws: Any, op_id: str, query: str) -> list[dict[str, Any]]:
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": {"query": query}}))
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("complete", "error"):
            return messages


async def test_query_over_websocket_with_connection_params(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "connection_init",
                    "payload": {"Authorization": f"Bearer {owner.token}", "X-Tenant-Id": tenant_id},
                }
            )
        )
        ack = await receive(ws)
        assert ack == {"type": "connection_ack", "payload": {"principal": "user"}}
        messages = await run(ws, "1", "{ tenant { id members { totalCount } } }")
        assert messages[0]["type"] == "next"
        assert messages[0]["payload"]["data"] == {
            "tenant": {"id": tenant_id, "members": {"totalCount": 1}}
        }
        messages = await run(ws, "2", "{ viewer { email } }")
        assert messages[0]["payload"]["data"] == {"viewer": {"email": owner.email}}


async def test_anonymous_websocket_gets_the_same_refusals(server: Server) -> None:
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        assert (await receive(ws))["type"] == "connection_ack"
        messages = await run(ws, "1", "{ tenant { id } viewer { id } }")
        payload = messages[0]["payload"]
        assert payload["data"] == {"tenant": None, "viewer": None}
        assert {e["extensions"]["code"] for e in payload["errors"]} == {"UNAUTHENTICATED"}


async def test_bad_credential_closes_the_connection(server: Server) -> None:
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}})
        )
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


async def test_each_operation_on_a_socket_reads_current_data(
    server: Server, client: GraphQLClient
) -> None:
    """A socket lives long; what one operation loaded must not answer the next one."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "connection_init",
                    "payload": {"Authorization": f"Bearer {owner.token}", "X-Tenant-Id": tenant_id},
                }
            )
        )
        assert (await receive(ws))["type"] == "connection_ack"
        before = (await run(ws, "1", "{ tenant { name } }"))[0]["payload"]["data"]
        r = await client.execute(
            """mutation($input: UpdateTenantInput!) { updateTenant(input: $input) {
                tenant { name } } }""",
            {"input": {"name": "Renamed While Connected"}},
            actor=owner,
            tenant_id=tenant_id,
        )
        assert r.ok()["updateTenant"]["tenant"]["name"] == "Renamed While Connected"
        after = (await run(ws, "2", "{ tenant { name } }"))[0]["payload"]["data"]
        assert before != after
        assert after == {"tenant": {"name": "Renamed While Connected"}}
