"""graphql-transport-ws on /graphql: the transport the streams build on. Queries run over it
with the same authentication and the same schema-declared rules as HTTP, and every operation
re-checks the socket's credential, so a revocation takes effect on the next operation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.conftest import make_settings
from tests.support import Actor, GraphQLClient, LogCapture, Server, running_server, unique

PROTOCOL = Subprotocol("graphql-transport-ws")
WAIT = 10.0


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://")


async def receive(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    return message


async def run(
    ws: ClientConnection, op_id: str, query: str, variables: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    payload: dict[str, Any] = {"query": query}
    if variables is not None:
        payload["variables"] = variables
    return await run_payload(ws, op_id, payload)


async def run_payload(
    ws: ClientConnection, op_id: str, payload: dict[str, Any]
) -> list[dict[str, Any]]:
    """Subscribes with ``payload``; every message until the operation completes or fails."""
    await ws.send(json.dumps({"id": op_id, "type": "subscribe", "payload": payload}))
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message["type"] in ("complete", "error"):
            return messages


async def closed_with(ws: ClientConnection) -> int | None:
    """Waits (bounded) for the server to close the socket; its close code."""
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code


def credential(actor: Actor, tenant_id: str | None = None) -> dict[str, str]:
    return actor.headers(tenant_id)


@asynccontextmanager
async def socket(
    server: Server, payload: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    """An acknowledged graphql-transport-ws connection with ``payload`` as connection_init."""
    async with websockets.connect(
        ws_url(server),
        subprotocols=[PROTOCOL],
        open_timeout=WAIT,
    ) as ws:
        init: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            init["payload"] = payload
        await ws.send(json.dumps(init))
        ack = await receive(ws)
        assert ack["type"] == "connection_ack", ack
        yield ws


@pytest.fixture(scope="module")
def anonymous_server(database_url: str) -> Iterator[Server]:
    with running_server(make_settings(database_url, ws_allow_anonymous=True)) as srv:
        yield srv


async def test_query_over_websocket_with_connection_params(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": credential(owner)}))
        ack = await receive(ws)
        assert ack == {"type": "connection_ack", "payload": {"principal": "user"}}
        messages = await run(ws, "1", "{ tenant { id members { totalCount } } }")
        assert messages[0]["type"] == "next"
        assert messages[0]["payload"]["data"] == {
            "tenant": {"id": tenant_id, "members": {"totalCount": 1}}
        }
        messages = await run(ws, "2", "{ viewer { email } }")
        assert messages[0]["payload"]["data"] == {"viewer": {"email": owner.email}}


async def test_a_socket_without_a_credential_is_refused(server: Server) -> None:
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        with pytest.raises(ConnectionClosed):
            await receive(ws)
        assert await closed_with(ws) == 4401


async def test_anonymous_sockets_when_allowed_get_the_same_refusals(
    anonymous_server: Server,
) -> None:
    async with socket(anonymous_server) as ws:
        messages = await run(ws, "1", "{ tenant { id } viewer { id } }")
        payload = messages[0]["payload"]
        assert payload["data"] == {"tenant": None, "viewer": None}
        assert {e["extensions"]["code"] for e in payload["errors"]} == {"UNAUTHENTICATED"}


async def test_bad_credential_closes_the_connection(server: Server) -> None:
    async with websockets.connect(ws_url(server), subprotocols=[PROTOCOL], open_timeout=10) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}})
        )
        with pytest.raises(ConnectionClosed):
            await receive(ws)
        assert await closed_with(ws) == 4403


async def test_each_operation_on_a_socket_reads_current_data(
    server: Server, client: GraphQLClient
) -> None:
    """A socket lives long; what one operation loaded must not answer the next one."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with socket(server, credential(owner)) as ws:
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


async def _refused_then_closed(ws: ClientConnection, code: str) -> None:
    """The next operation is answered with an error naming why, then the socket closes 4403."""
    await ws.send(
        json.dumps({"id": "after", "type": "subscribe", "payload": {"query": "{ tenant { id } }"}})
    )
    message = await receive(ws)
    assert message["type"] == "error" and message["id"] == "after", message
    extensions = message["payload"][0]["extensions"]
    assert extensions["code"] == code and extensions["requestId"]
    assert await closed_with(ws) == 4403


async def test_a_revoked_api_key_stops_at_the_next_operation(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(
        """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
            secret apiKey { id } } }""",
        {"input": {"name": "sync", "scopes": ["tenant:read"], "environment": "LIVE"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    created = r.ok()["createApiKey"]
    async with socket(server, {"Authorization": f"Bearer {created['secret']}"}) as ws:
        first = await run(ws, "1", "{ tenant { id } }")
        assert first[0]["payload"]["data"] == {"tenant": {"id": tenant_id}}
        r = await client.execute(
            "mutation($id: ID!) { revokeApiKey(id: $id) { apiKey { status } } }",
            {"id": created["apiKey"]["id"]},
            actor=owner,
            tenant_id=tenant_id,
        )
        r.ok()
        await _refused_then_closed(ws, "UNAUTHENTICATED")


async def test_logging_out_ends_the_sockets_of_that_session(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with socket(server, credential(owner, tenant_id)) as ws:
        assert (await run(ws, "1", "{ tenant { id } }"))[0]["payload"]["data"]
        r = await client.execute("mutation { logout { ended } }", actor=owner)
        assert r.ok()["logout"]["ended"] is True
        await _refused_then_closed(ws, "UNAUTHENTICATED")


async def test_a_removed_member_loses_the_tenant_and_the_socket(
    server: Server, client: GraphQLClient
) -> None:
    """The socket was opened for X-Tenant-Id; once that membership is gone the credential no
    longer admits it, exactly as connection_init would refuse it now: FORBIDDEN, then 4403."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    member = await client.add_member(owner, tenant_id, "member")
    async with socket(server, credential(member, tenant_id)) as ws:
        assert (await run(ws, "1", "{ tenant { id } }"))[0]["payload"]["data"]
        r = await client.execute(
            "mutation($id: ID!) { removeMember(membershipId: $id) { removedMembershipId } }",
            {"id": member.membership_id},
            actor=owner,
            tenant_id=tenant_id,
        )
        r.ok()
        await _refused_then_closed(ws, "FORBIDDEN")


async def test_a_changed_role_applies_to_the_next_operation(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    admin = await client.add_member(owner, tenant_id, "admin")
    audit = "{ tenant { auditLog(first: 1) { nodes { action } } } }"
    async with socket(server, credential(admin, tenant_id)) as ws:
        before = await run(ws, "1", audit)
        assert "errors" not in before[0]["payload"], before
        r = await client.execute(
            """mutation($input: ChangeMemberRoleInput!) { changeMemberRole(input: $input) {
                membership { role { key } } } }""",
            {"input": {"membershipId": admin.membership_id, "role": "viewer"}},
            actor=owner,
            tenant_id=tenant_id,
        )
        assert r.ok()["changeMemberRole"]["membership"]["role"]["key"] == "viewer"
        after = (await run(ws, "2", audit))[0]["payload"]
        assert [e["extensions"]["code"] for e in after["errors"]] == ["FORBIDDEN"]
        assert after["errors"][0]["path"] == ["tenant", "auditLog"]


async def test_an_idle_socket_closes_when_its_access_token_expires(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    claims = jwt.decode(owner.token, options={"verify_signature": False})
    now = int(time.time())
    short_lived = jwt.encode(
        {**claims, "iat": now, "exp": now + 3},
        server.settings.jwt_secret,
        algorithm=server.settings.jwt_algorithm,
        headers={"typ": "at+jwt"},
    )
    async with socket(server, {"Authorization": f"Bearer {short_lived}"}) as ws:
        viewer = await run(ws, "1", "{ viewer { id } }")
        assert viewer[0]["payload"]["data"] == {"viewer": {"id": owner.user_id}}
        assert await closed_with(ws) == 4403


async def test_signing_in_over_a_socket_does_not_change_whom_it_serves(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    other = await client.sign_up()
    async with socket(server, credential(owner)) as ws:
        login = await run(
            ws,
            "1",
            """mutation($input: LoginInput!) { login(input: $input) { user { id } } }""",
            {"input": {"email": other.email, "password": "correct-horse-battery-staple"}},
        )
        assert login[0]["payload"]["data"]["login"]["user"]["id"] == other.user_id
        viewer = await run(ws, "2", "{ viewer { id } }")
        assert viewer[0]["payload"]["data"] == {"viewer": {"id": owner.user_id}}


async def test_creating_a_tenant_over_a_socket_does_not_widen_the_socket(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    async with socket(server, credential(owner)) as ws:
        created = await run(
            ws,
            "1",
            """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
                tenant { id name } } }""",
            {"input": {"name": "Over WS", "slug": unique("over-ws-")}},
        )
        tenant = created[0]["payload"]["data"]["createTenant"]["tenant"]
        assert tenant["name"] == "Over WS"
        # The tenant exists, but this socket still acts without a tenant: it addresses none.
        later = (await run(ws, "2", "{ tenant { id } }"))[0]["payload"]
        assert [e["extensions"]["code"] for e in later["errors"]] == ["FORBIDDEN"]


async def test_socket_errors_carry_a_code_and_a_request_id(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    async with socket(server, credential(owner)) as ws:
        invalid = await run(ws, "1", "{ viewer { nope } }")
        assert invalid[-1]["type"] == "error"
        [error] = invalid[-1]["payload"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert error["extensions"]["requestId"]
        unparsable = await run(ws, "2", "{ viewer { ")
        [error] = unparsable[-1]["payload"]
        assert error["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        forbidden = (await run(ws, "3", "{ tenant { id } }"))[0]["payload"]
        ids = {e["extensions"]["requestId"] for e in forbidden["errors"]}
        assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert len(ids) == 1 and error["extensions"]["requestId"] not in ids


async def test_a_malformed_subscribe_message_closes_the_socket_as_the_protocol_says(
    server: Server, client: GraphQLClient
) -> None:
    """graphql-transport-ws answers an invalid message with 4400, not a stack trace."""
    owner = await client.sign_up()
    async with socket(server, credential(owner)) as ws:
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": 5}}))
        assert await closed_with(ws) == 4400


async def test_each_socket_operation_writes_a_request_log_line(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    with LogCapture("coregraph.request") as capture:
        async with socket(server, credential(owner, tenant_id)) as ws:
            await run(ws, "1", "query Members { tenant { members { totalCount } } }")
            await run(ws, "2", "query Audit { viewer { nope } }")
            lines = await capture.wait_for(2, lambda line: line.get("tenant_id") == tenant_id)
        r = await client.execute(
            "query Plain { __typename }", headers={"X-Request-Id": "req-ws-log-http"}
        )
        r.ok()
        [http_line] = await capture.wait_for(
            1, lambda line: line["request_id"] == "req-ws-log-http"
        )
    ok = next(line for line in lines if line["outcome"] == "OK")
    invalid = next(line for line in lines if line["outcome"] != "OK")
    assert ok["transport"] == "websocket" and invalid["transport"] == "websocket"
    assert ok["operation"] == "Members" and ok["principal"] == "user"
    assert ok["connection_id"] and isinstance(ok["duration_ms"], float) and ok["request_id"]
    assert invalid["outcome"] == "GRAPHQL_VALIDATION_FAILED"
    assert ok["request_id"] != invalid["request_id"]
    assert ok["connection_id"] == invalid["connection_id"]
    assert http_line["transport"] == "http" and http_line["operation"] == "Plain"
    for line in capture.lines:
        assert owner.token not in json.dumps(line)
