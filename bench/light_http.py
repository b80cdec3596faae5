"""A minimal HTTP/1.1 keep-alive client for load generation: POST a body, read the status and
a ``Content-Length`` body, nothing else (no redirects, cookies, chunked bodies or TLS).

Why: the load generator shares the machine's two cores with the server and PostgreSQL. httpx
spends about as much CPU per small request as the request costs the server's HTTP layer,
while the raw-insert baseline's client (asyncpg) spends a few microseconds; this client spends
a fraction of httpx's (``python -m bench.ingest --httpx`` measures with httpx instead).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

# A connection idle this long is not reused: uvicorn closes keep-alive connections after 5 s.
MAX_IDLE_SECONDS = 2.0


class LightHTTPError(Exception):
    pass


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = None
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise LightHTTPError("the response has no Content-Length")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class LightClient:
    """POSTs to one URL over pooled keep-alive connections (as many as requests in flight)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []

    async def post(self, body: bytes) -> tuple[int, bytes]:
        connection = self._idle.pop() if self._idle else None
        if connection is not None and time.monotonic() - connection.idle_since > MAX_IDLE_SECONDS:
            await self.close()
            connection.close()
            connection = None
        if connection is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            connection = _Connection(reader, writer)
        try:
            answer = await connection.post(self._head, body)
        except BaseException:
            connection.close()
            raise
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        return answer

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
