"""When the database cannot serve a request, the client gets a typed, retryable answer — never
a bare 500 page or a stack trace."""

from __future__ import annotations

from pathlib import Path

import httpx

from coregraph.auth import secrets
from tests.conftest import make_settings
from tests.support import running_server


async def test_a_credential_that_cannot_be_checked_is_a_typed_503(tmp_path: Path) -> None:
    # A database file in a directory that does not exist: every connection fails.
    url = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/coregraph.sqlite3"
    settings = make_settings(url, run_relay="false", webhook_worker_in_process=False)
    with running_server(settings, migrate_first=False) as server:
        key = secrets.generate(secrets.API_KEY_PREFIX["live"])
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                server.url,
                json={"query": "{ tenant { id } }"},
                headers={
                    "Authorization": f"Bearer {key}",
                    "Accept": "application/graphql-response+json",
                },
            )
    assert r.status_code == 503, r.text
    error = r.json()["errors"][0]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert error["extensions"]["requestId"]
    assert "retry" in error["message"]
    assert "Traceback" not in r.text and "sqlite" not in r.text.lower()
