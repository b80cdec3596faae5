"""``python -m bench.ingest_inprocess``: server CPU per request of the ingest paths on
PostgreSQL, in this process, for comparing changes on a noisy machine (``bench.ingest`` gives
the throughput figures).

A fresh database on the local PostgreSQL (created and dropped, as ``bench.ingest`` does), the
coregraph app called through ``httpx.ASGITransport`` (middleware, authentication, GraphQL, SQL;
no uvicorn, no sockets to the client, no relay: the ASGI lifespan does not run), the same
tenant, API key, event type and payload as ``bench.ingest``. Four targets, each ``--batches``
batches of ``--requests`` sequential requests with the cyclic GC paused inside a batch: an
anonymous ``{ __typename }``, the same with the API key, ``emitEvent``, and ``emitEvents`` of
``--batch`` events. Printed: CPU per request (minimum and median over batches) and wall time
per request (minimum). ``--profile DIR`` writes a cProfile of one more batch per target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson

from bench import seed
from bench.__main__ import GRAPHQL_HEADERS, migrate_database
from bench.ingest import (
    DATA,
    DEFAULT_ADMIN_DSN,
    EMIT,
    EMIT_MANY,
    EVENT_TYPE,
    SCHEMA,
    bench_database,
    reachable,
)
from bench.servers import bench_env

URL = "http://coregraph/graphql"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_inprocess", description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="per batch (200)")
    parser.add_argument("--batch", type=int, default=100, help="events per emitEvents (100)")
    parser.add_argument("--profile", metavar="DIR", help="write <target>.prof files there")
    parser.add_argument(
        "--only",
        metavar="NAME",
        help="only the target whose name's first word is NAME (anonymous, API, emitEvent...)",
    )
    return parser.parse_args(argv)


async def _post(
    http: httpx.AsyncClient,
    body: dict[str, object],
    token: str | None,
    tenant_id: str | None = None,
) -> bytes:
    headers = dict(GRAPHQL_HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if tenant_id is not None:
        headers["X-Tenant-Id"] = tenant_id
    response = await http.post(URL, content=orjson.dumps(body), headers=headers)
    if response.status_code != 200 or b'"errors"' in response.content:
        raise SystemExit(f"bad response: {response.status_code} {response.text[:300]}")
    return response.content


async def _measure(
    once: Callable[[], Awaitable[object]], batches: int, requests: int
) -> tuple[float, float, float]:
    """(minimum, median) CPU ms per request over batches, and the minimum wall ms."""
    for _ in range(max(requests // 4, 1)):
        await once()
    cpu, wall = [], []
    for _ in range(batches):
        gc.collect()
        gc.disable()
        try:
            cpu_started, wall_started = time.process_time(), time.perf_counter()
            for _ in range(requests):
                await once()
            cpu.append((time.process_time() - cpu_started) / requests * 1000)
            wall.append((time.perf_counter() - wall_started) / requests * 1000)
        finally:
            gc.enable()
    return min(cpu), statistics.median(cpu), min(wall)


async def unreachable(dsn: str, prog: str) -> bool:
    """True, having said so, when PostgreSQL at ``dsn`` cannot be reached (the bench skips)."""
    problem = await reachable(dsn)
    if problem is not None:
        print(f"{prog}: skipped, PostgreSQL is not reachable ({problem})")
    return problem is not None


@contextlib.asynccontextmanager
async def ingest_app(dsn: str, tmp: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient, str]]:
    """On a fresh database made from ``dsn``: the coregraph app (settings from ``bench_env``),
    a client calling it in process, and an API key holding ``events:write`` of a tenant that
    registered ``EVENT_TYPE``. Shared with ``bench.ingest_parts``."""
    async with bench_database(dsn) as database:
        env = {
            **bench_env(tmp),
            "COREGRAPH_DATABASE_URL": database.replace("postgresql://", "postgresql+asyncpg://", 1),
        }
        migrate_database(env)
        os.environ.update(env)
        from coregraph.app import create_app
        from coregraph.settings import load_settings

        settings = load_settings()
        app = create_app(settings)
        transport = httpx.ASGITransport(app)
        try:
            async with httpx.AsyncClient(transport=transport, timeout=60) as http:
                tenant = await seed.load_tenant(settings, URL, 1, transport)
                created = await _post(
                    http,
                    {
                        "query": """mutation($input: CreateApiKeyInput!) {
                            createApiKey(input: $input) { secret } }""",
                        "variables": {"input": {"name": "ingest", "scopes": ["events:write"]}},
                    },
                    tenant.owner_token,
                    tenant.id,
                )
                key = orjson.loads(created)["data"]["createApiKey"]["secret"]
                await _post(
                    http,
                    {
                        "query": """mutation($input: RegisterEventTypeInput!) {
                            registerEventType(input: $input) { eventType { id } } }""",
                        "variables": {"input": {"type": EVENT_TYPE, "schema": SCHEMA}},
                    },
                    key,
                )
                yield app, http, key
        finally:
            await app.state.runtime.close()


async def _main(args: argparse.Namespace, tmp: str) -> int:
    if await unreachable(args.dsn, "bench.ingest_inprocess"):
        return 0
    async with ingest_app(args.dsn, tmp) as (_app, http, key):
        keys = itertools.count()

        def item() -> dict[str, object]:
            return {"type": EVENT_TYPE, "data": DATA, "idempotencyKey": f"k{next(keys)}"}

        targets: dict[str, tuple[Callable[[], Awaitable[object]], int]] = {
            "anonymous { __typename }": (
                lambda: _post(http, {"query": "{ __typename }"}, None),
                args.requests,
            ),
            "API key { __typename }": (
                lambda: _post(http, {"query": "{ __typename }"}, key),
                args.requests,
            ),
            "emitEvent": (
                lambda: _post(http, {"query": EMIT, "variables": {"input": item()}}, key),
                args.requests,
            ),
            f"emitEvents x{args.batch}": (
                lambda: _post(
                    http,
                    {
                        "query": EMIT_MANY,
                        "variables": {"inputs": [item() for _ in range(args.batch)]},
                    },
                    key,
                ),
                max(args.requests // 20, 5),
            ),
        }
        gc.collect()
        gc.freeze()  # as a server process does after startup (coregraph.app)
        print(f"{'target':<26} {'CPU ms/req min':>14} {'median':>8} {'wall ms min':>12}")
        for name, (once, requests) in targets.items():
            if args.only and name.split(" ")[0] != args.only:
                continue
            low, median, wall = await _measure(once, args.batches, requests)
            print(f"{name:<26} {low:>14.3f} {median:>8.3f} {wall:>12.3f}", flush=True)
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(requests):
                    await once()
                profile.disable()
                filename = name.split()[0].strip("{").replace(" ", "_") or "target"
                profile.dump_stats(os.path.join(args.profile, f"{filename}.prof"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="coregraph-ingest-inprocess-")
    try:
        return asyncio.run(_main(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
