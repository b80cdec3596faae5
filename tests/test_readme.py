"""The README's first session works as written: every GraphQL operation in "A first session" runs,
in order, against a fresh server, with the credentials the text tells the reader to send."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import OperationDefinitionNode, parse, print_ast

from tests.conftest import make_settings
from tests.support import (
    Server,
    create_test_database,
    drop_test_database,
    env_database_url,
    running_server,
)

README = Path(__file__).resolve().parent.parent / "README.md"


def first_session_operations() -> list[str]:
    """Each operation of the section's ```graphql blocks, in reading order."""
    text = README.read_text()
    section = text.split("## A first session", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```graphql\n(.*?)```", section, flags=re.DOTALL)
    return [
        print_ast(definition)
        for block in blocks
        for definition in parse(block).definitions
        if isinstance(definition, OperationDefinitionNode)
    ]


@pytest.fixture(scope="module")
async def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """A server of its own: the README's addresses and slug are fixed."""
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path_factory.mktemp("readme")))
    try:
        with running_server(make_settings(url)) as srv:
            yield srv
    finally:
        if name and base:
            await drop_test_database(base, name)


async def test_the_first_session_runs_as_written(
    fresh_server: Server, http: httpx.AsyncClient
) -> None:
    operations = first_session_operations()
    assert len(operations) >= 5
    section = README.read_text().split("## A first session", 1)[1].split("\n## ", 1)[0]
    assert "X-Environment" in section

    access_token = tenant_id = key_secret = None
    results: list[dict[str, Any]] = []
    for operation in operations:
        # As the text says: the access token from sign-up on, the tenant header once it
        # exists, and the API key alone (it carries its tenant) once it is made.
        headers: dict[str, str] = {"Accept": "application/graphql-response+json"}
        if key_secret:
            headers["Authorization"] = f"Bearer {key_secret}"
        elif access_token:
            headers["Authorization"] = f"Bearer {access_token}"
            if tenant_id:
                headers["X-Tenant-Id"] = tenant_id
        response = await http.post(fresh_server.url, json={"query": operation}, headers=headers)
        body = response.json()
        assert response.status_code == 200 and "errors" not in body, (operation, body)
        data = body["data"]
        results.append(data)
        if "signUp" in data:
            access_token = data["signUp"]["accessToken"]
        if "createTenant" in data:
            tenant_id = data["createTenant"]["tenant"]["id"]
        if "inviteMember" in data:
            link = data["inviteMember"]["invitationUrl"]
            assert link.startswith(f"{fresh_server.base_url}/invitations/accept?token=")
            assert (await http.get(link)).status_code == 200
        if "createApiKey" in data:
            assert data["createApiKey"]["apiKey"]["id"].startswith("key_")
            key_secret = data["createApiKey"]["secret"]

    assert key_secret is not None, "the session makes an API key"
    tenant = results[-1]["tenant"]
    assert tenant["name"] == "Acme"
    emails = [edge["node"]["user"]["email"] for edge in tenant["members"]["edges"]]
    assert emails == ["ada@example.com"]
    actions = {node["action"] for node in tenant["auditLog"]["nodes"]}
    assert {"tenant.created", "invitation.created", "api_key.created"} <= actions

    # The key carries its environment: a request claiming the other one is refused.
    other = "test" if key_secret.startswith("cg_live_") else "live"
    refused = await http.post(
        fresh_server.url,
        json={"query": operations[-1]},
        headers={"Authorization": f"Bearer {key_secret}", "X-Environment": other},
    )
    assert refused.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
