"""Helpers for the identity, token and access tests (test_identity, test_tokens, test_access).

- ``db_rows``: a read-only SELECT as the database owner. Only for facts the API deliberately
  never shows: how a password or a secret is stored.
- ``LoopbackHTTP``: a tiny HTTP server on 127.0.0.1 that serves fixed documents (a JWKS) and
  records every request it receives, so a test can assert what was (never) fetched.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import text

from coregraph import db
from tests.support import Response, Server

READ_TIMEOUT = 15.0


async def db_rows(server: Server, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Run one read-only SELECT as the database owner (past row-level security, which hides
    tenant rows from the application's own role): what an operator at a SQL prompt sees."""
    assert sql.lstrip().upper().startswith("SELECT"), "read-only: SELECT statements only"
    engine = db.create_engine(server.settings, as_owner=True)
    try:
        async with engine.connect() as conn:
            result = await asyncio.wait_for(conn.execute(text(sql), params), READ_TIMEOUT)
            rows = [dict(row._mapping) for row in result]
            await conn.rollback()
            return rows
    finally:
        await engine.dispose()


async def all_text_in_db(server: Server) -> str:
    """Every row of every coregraph table, serialised: to assert a secret is stored nowhere."""
    from coregraph.models import Base

    dump = []
    for table in Base.metadata.sorted_tables:
        for row in await db_rows(server, f"SELECT * FROM {table.name}"):
            dump.append(json.dumps(row, default=str))
    return "\n".join(dump)


def assert_unauthenticated(response: Response) -> None:
    """The credential was refused: an UNAUTHENTICATED error and no data for it."""
    assert response.codes, response.body
    assert set(response.codes) == {"UNAUTHENTICATED"}, response.body
    data = response.data
    if isinstance(data, dict):
        assert all(value is None for value in data.values()), response.body


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        body = self.server.documents.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, documents: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.documents = documents
        self.requests: list[str] = []


class LoopbackHTTP:
    def __init__(self, server: _RecordingServer) -> None:
        self._server = server

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def requests(self) -> list[str]:
        return list(self._server.requests)

    def serve(self, path: str, document: Any) -> None:
        self._server.documents[path] = document


@contextmanager
def loopback_http(documents: dict[str, Any] | None = None) -> Iterator[LoopbackHTTP]:
    server = _RecordingServer(dict(documents or {}))
    thread = threading.Thread(target=server.serve_forever, name="loopback-http", daemon=True)
    thread.start()
    try:
        yield LoopbackHTTP(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
