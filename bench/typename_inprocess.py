"""``python -m bench.typename_inprocess``: CPU per ``{ __typename }`` request through the ASGI
apps themselves, no sockets and no uvicorn: the steadier figure for comparing changes to the
fixed cost of a request on a shared machine (``bench.typename`` measures over HTTP).

coregraph (POST, and the persisted GET after registering the hash) and the plain FastAPI app
(``POST``/``GET /typename``) are called with a minimal HTTP scope, one request at a time; per
target ``--batches`` batches of ``--per-batch`` requests with the cyclic GC paused in a batch;
the minimum and median CPU per request. ``--profile PATH`` writes a cProfile of coregraph's
POST.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import json
import statistics
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from bench.__main__ import print_machine
from bench.inprocess import both_apps

QUERY = "{ __typename }"
ANSWER = b'{"data":{"__typename":"Query"}}'
PERSISTED = {
    "persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(QUERY.encode()).hexdigest()}
}


def asgi_call(
    app: Any, method: str, path: str, query_string: bytes = b"", body: bytes = b""
) -> Callable[[], Awaitable[bytes]]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"accept", b"application/graphql-response+json"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]

    async def call() -> bytes:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query_string,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
        }
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client never disconnects
            raise AssertionError

        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await app(scope, receive, send)
        return b"".join(chunks)

    return call


async def cpu_per_request(
    call: Callable[[], Awaitable[bytes]], batches: int, per_batch: int
) -> tuple[float, float]:
    for _ in range(200):
        if await call() != ANSWER:
            raise SystemExit(f"unexpected answer: {await call()!r}")
    results = []
    for _ in range(batches):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            for _ in range(per_batch):
                await call()
            results.append((time.process_time() - started) / per_batch * 1e6)
        finally:
            gc.enable()
    return min(results), statistics.median(results)


async def main(args: argparse.Namespace) -> None:
    async with both_apps("coregraph-typename-inprocess-") as (_, coregraph_app, plain_app):
        body = json.dumps({"query": QUERY}).encode()
        register = asgi_call(
            coregraph_app,
            "POST",
            "/graphql",
            body=json.dumps({"query": QUERY, "extensions": PERSISTED}).encode(),
        )
        if await register() != ANSWER:
            raise SystemExit("registering the persisted query failed")
        extensions = ("extensions=" + urllib.parse.quote(json.dumps(PERSISTED))).encode()
        targets = {
            "coregraph POST /graphql": asgi_call(coregraph_app, "POST", "/graphql", body=body),
            "coregraph persisted GET": asgi_call(coregraph_app, "GET", "/graphql", extensions),
            "plain POST /typename": asgi_call(plain_app, "POST", "/typename", body=body),
            "plain GET /typename": asgi_call(plain_app, "GET", "/typename"),
        }
        for name, call in targets.items():
            least, median = await cpu_per_request(call, args.batches, args.per_batch)
            print(f"{name}: min {least:.0f} us, median {median:.0f} us CPU per request", flush=True)
        if args.profile:
            profile = cProfile.Profile()
            call = targets["coregraph POST /graphql"]
            profile.enable()
            for _ in range(args.batches * args.per_batch):
                await call()
            profile.disable()
            profile.dump_stats(args.profile)
            print(f"profile written to {args.profile}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.typename_inprocess", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--per-batch", type=int, default=300)
    parser.add_argument("--profile", help="write a cProfile of coregraph's POST here")
    print_machine()
    asyncio.run(main(parser.parse_args()))
