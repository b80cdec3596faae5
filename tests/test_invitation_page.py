"""An invitation link leads somewhere that works: it points at the server that made it (unless
COREGRAPH_PUBLIC_URL says otherwise) and opens coregraph's accept page, whose script signs the
invitee in (or up) and accepts the invitation over /graphql."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import websockets

from coregraph import invitation_page
from tests.conftest import make_settings
from tests.support import PASSWORD, Actor, GraphQLClient, Server, running_server, unique

INVITE = """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
    invitationUrl token } }"""


async def invite(client: GraphQLClient, role: str = "viewer") -> tuple[Actor, str, str, str]:
    """An owner with a tenant invites a new address; returns (owner, tenant, email, link)."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    email = f"{unique('invitee')}@example.com"
    r = await client.execute(
        INVITE, {"input": {"email": email, "role": role}}, actor=owner, tenant_id=tenant_id
    )
    return owner, tenant_id, email, r.ok()["inviteMember"]["invitationUrl"]


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def page_call(
    http: httpx.AsyncClient, link: str, query: str, variables: dict[str, Any], token: str = ""
) -> dict[str, Any]:
    """One request as the page's script sends it: to GRAPHQL_PATH resolved against the link."""
    assert json.dumps(query) in invitation_page.PAGE, "the page's script sends this document"
    headers = {"Accept": "application/graphql-response+json, application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = await http.post(
        urljoin(link, invitation_page.GRAPHQL_PATH),
        json={"query": query, "variables": variables},
        headers=headers,
    )
    body: dict[str, Any] = response.json()
    return body


async def test_an_invitation_link_points_at_the_server_that_made_it(
    server: Server, client: GraphQLClient
) -> None:
    _, _, _, link = await invite(client)
    assert origin(link) == server.base_url
    assert urlsplit(link).path == "/invitations/accept"


async def test_an_invitation_made_over_a_websocket_points_at_the_same_server(
    server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    ws_url = server.url.replace("http://", "ws://")
    async with websockets.connect(
        ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10
    ) as ws:
        init = {"Authorization": f"Bearer {owner.token}", "X-Tenant-Id": tenant_id}
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        variables = {"input": {"email": f"{unique('ws')}@example.com", "role": "viewer"}}
        payload = {"query": INVITE, "variables": variables}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert "errors" not in message["payload"], message
    link = message["payload"]["data"]["inviteMember"]["invitationUrl"]
    assert origin(link) == server.base_url


async def test_a_configured_public_url_wins(database_url: str) -> None:
    settings = make_settings(database_url, public_url="https://portal.example.com/")
    with running_server(settings) as srv:
        async with httpx.AsyncClient(timeout=30) as http:
            _, _, _, link = await invite(GraphQLClient(http, srv.url))
    assert link.startswith("https://portal.example.com/invitations/accept?token=cg_inv_")


async def test_the_link_opens_a_self_contained_accept_page(
    client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    _, _, _, link = await invite(client)
    token = parse_qs(urlsplit(link).query)["token"][0]
    page = await http.get(link)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    csp = {
        directive.split()[0]: directive.split()[1:]
        for directive in page.headers["content-security-policy"].split(";")
        if directive.strip()
    }
    assert csp["default-src"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]
    assert all(source.startswith("'sha256-") for source in csp["script-src"] + csp["style-src"])
    assert csp["frame-ancestors"] == ["'none'"] and csp["form-action"] == ["'none'"]
    assert token not in page.text
    assert "http://" not in page.text and "https://" not in page.text, "no external assets"
    assert "acceptInvitation" in page.text


async def test_the_page_never_reflects_the_token(client: GraphQLClient, server: Server) -> None:
    hostile = '"><script>alert(1)</script>'
    page = await client.http.get(f"{server.base_url}/invitations/accept", params={"token": hostile})
    assert page.status_code == 200
    assert "alert(1)" not in page.text


async def test_an_existing_user_signs_in_and_joins_as_the_page_does(
    client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    _, tenant_id, email, link = await invite(client)
    await client.sign_up(email=email)
    token = parse_qs(urlsplit(link).query)["token"][0]

    body = await page_call(
        http, link, invitation_page.LOGIN, {"input": {"email": email, "password": PASSWORD}}
    )
    access_token = body["data"]["login"]["accessToken"]
    body = await page_call(http, link, invitation_page.ACCEPT, {"token": token}, access_token)
    assert "errors" not in body, body
    membership = body["data"]["acceptInvitation"]["membership"]
    assert membership["tenant"]["id"] == tenant_id and membership["role"]["key"] == "viewer"

    again = await page_call(http, link, invitation_page.ACCEPT, {"token": token}, access_token)
    assert again["data"]["acceptInvitation"] is None
    assert again["errors"][0]["extensions"]["code"] == "CONFLICT", "the page shows this code"


async def test_a_new_user_creates_an_account_and_joins_as_the_page_does(
    client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    _, tenant_id, email, link = await invite(client, role="member")
    token = parse_qs(urlsplit(link).query)["token"][0]

    body = await page_call(
        http, link, invitation_page.SIGN_UP, {"input": {"email": email, "password": PASSWORD}}
    )
    access_token = body["data"]["signUp"]["accessToken"]
    body = await page_call(http, link, invitation_page.ACCEPT, {"token": token}, access_token)
    assert "errors" not in body, body
    assert body["data"]["acceptInvitation"]["membership"]["tenant"]["id"] == tenant_id
