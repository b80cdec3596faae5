"""A real HTTP/1.1 receiver on 127.0.0.1 for outbound-request tests: it runs in the test's
event loop, keeps connections alive, records every request, and answers through a handler a
test chooses (including answers that never come, dribble, or never end)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes | AsyncIterator[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Content-Length to announce when ``body`` is a stream (None: close-delimited).
    length: int | None = None


Handler = Callable[[ReceivedRequest], Awaitable[Reply]]

REASONS = {200: "OK", 204: "No Content", 302: "Found", 500: "Internal Server Error"}


async def answer_ok(request: ReceivedRequest) -> Reply:
    return Reply(200, b"ok")


class Receiver:
    def __init__(self, handler: Handler = answer_ok, *, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[ReceivedRequest] = []
        self.connections = 0
        self.open_connections = 0
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, ssl=self.ssl_context
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def drop_connections(self) -> None:
        """Close every open connection, as a server does with idle keep-alive ones (at once:
        a TLS close would wait for the client's close_notify)."""
        for writer in list(self._writers):
            writer.transport.abort()
        await self.wait_for(lambda: self.open_connections == 0)

    async def wait_for(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            async with self.changed:
                await self.changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        self.open_connections += 1
        self._writers.add(writer)
        await self._notify()
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # closed by __aexit__; asyncio would log a cancelled callback task otherwise
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            self._writers.discard(writer)
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            await self._notify()

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = ReceivedRequest(method, path, headers, body)
        self.requests.append(request)
        await self._notify()

        reply = await self.handler(request)
        keep_alive = headers.get("connection", "").lower() != "close"
        reply_headers = dict(reply.headers)
        if isinstance(reply.body, bytes):
            reply_headers["Content-Length"] = str(len(reply.body))
        elif reply.length is not None:
            reply_headers["Content-Length"] = str(reply.length)
        else:
            keep_alive = False
        if not keep_alive:
            reply_headers["Connection"] = "close"
        status_line = f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}\r\n"
        writer.write(
            (
                status_line
                + "".join(f"{name}: {value}\r\n" for name, value in reply_headers.items())
                + "\r\n"
            ).encode("latin-1")
        )
        if isinstance(reply.body, bytes):
            writer.write(reply.body)
        else:
            async for chunk in reply.body:
                writer.write(chunk)
                await writer.drain()
        await writer.drain()
        return keep_alive and reply_headers.get("Connection", "").lower() != "close"
