"""``python -m bench.ingest``: event ingest on PostgreSQL — coregraph's ``emitEvent`` (one event
per request) and ``emitEvents`` (batches) through GraphQL over HTTP, against raw asyncpg
inserts of the same rows into the same table, measured in the same run.

1. a fresh database on the local PostgreSQL (created here and dropped on the way out, whatever
   happens), ``coregraph migrate``; without a reachable PostgreSQL it says so and exits 0;
2. coregraph (``uvicorn coregraph.app:create_app --factory``, one worker by default,
   ``--workers N`` for more, production settings, no Redis, so the outbox relay runs in the
   server as ``coregraph serve`` would) on 127.0.0.1; its requests are sent with
   ``bench.light_http`` (``--httpx``: with httpx), over one keep-alive connection per request
   in flight;
3. an owner, a tenant, an API key holding ``events:write`` and one registered event type, all
   through the public API;
4. four targets, each for ``--seconds`` at ``--concurrency`` after a short warm-up:
   (a) ``emitEvent`` per request, (b) ``emitEvents`` with ``--batch`` events per request,
   (c1) raw asyncpg, one row per transaction, (c2) raw asyncpg, ``executemany`` of ``--batch``
   rows per transaction. Every event carries the same JSON data and a fresh idempotency key
   (``--no-keys``: none). The events table is analyzed after each warm-up (``--no-analyze``:
   not), as autovacuum would be on a table that did not grow from nothing a minute ago.
   The raw rows go to a second tenant of the same database (their sequence numbers come from
   a counter in this process: no head row, no lock) as the superuser, so no row-level security
   either: the baseline is the cheapest way to get those rows into that table.

Ratios: (a) / (c1) and (b) / (c2); the issue's target is at least 0.25 for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson

from bench import load, seed
from bench.__main__ import GRAPHQL_HEADERS, migrate_database, print_machine
from bench.light_http import LightClient
from bench.servers import bench_env, bench_settings, uvicorn_server, worker_process
from coregraph import ids
from coregraph.settings import Settings

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_RATIO = 0.25
EVENT_TYPE = "order.paid"
SCHEMA = {
    "type": "object",
    "properties": {
        "orderId": {"type": "string"},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
        "lines": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["orderId", "amount", "currency"],
}
DATA = {
    "orderId": "ord_0001",
    "amount": 129.9,
    "currency": "EUR",
    "lines": [{"sku": "A-1", "quantity": 2}, {"sku": "B-7", "quantity": 1}],
}
EMIT = """mutation($input: EmitEventInput!) { emitEvent(input: $input) { eventId replayed } }"""
EMIT_MANY = """mutation($inputs: [EmitEventInput!]!) { emitEvents(inputs: $inputs) {
    items { eventId replayed } } }"""
RAW_INSERT = """INSERT INTO events (id, tenant_id, environment, sequence, type, occurred_at,
    actor_kind, actor_id, acting_for_user_id, data, idempotency_key, request_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_ADMIN_DSN),
        help="a PostgreSQL database to create (and drop) the bench database from"
        f" ({DEFAULT_ADMIN_DSN}, or BENCH_POSTGRES_DSN)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per target (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per target, s (2)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--batch", type=int, default=100, help="events per batch (100)")
    parser.add_argument(
        "--no-keys",
        dest="keys",
        action="store_false",
        help="emit without idempotency keys (coregraph then looks nothing up before writing)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="coregraph server processes (uvicorn --workers; 1): production runs one or more"
        " API processes per machine, each with the relay in-process on these settings",
    )
    parser.add_argument(
        "--separate-worker",
        action="store_true",
        help="run the outbox relay and webhook delivery in a `coregraph worker` process beside"
        " the API, as production does, instead of in the API process (server CPU then counts"
        " both processes)",
    )
    parser.add_argument(
        "--httpx",
        action="store_true",
        help="send coregraph's requests with httpx instead of bench.light_http (the load"
        " generator then takes about as much CPU per request as the server's HTTP layer)",
    )
    parser.add_argument(
        "--no-analyze",
        dest="analyze",
        action="store_false",
        help="do not ANALYZE the events table after each warm-up",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds in (0, 600], --warmup in [0, 60]")
    if args.concurrency < 1 or not 1 <= args.batch <= 500 or not 1 <= args.workers <= 8:
        parser.error("--concurrency >= 1, --batch in 1..500, --workers in 1..8")
    return args


@dataclass(frozen=True)
class Result:
    name: str
    events: int
    seconds: float
    server_cpu_seconds: float | None
    database_cpu_seconds: float | None
    # This process's (the load generator's) CPU, and the 1-minute load average at the end.
    client_cpu_seconds: float = 0.0
    load_average: float = 0.0

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


def postgres_cpu_seconds(database: str) -> float | None:
    """CPU used so far by the PostgreSQL backends serving ``database`` (their command line
    names it), from /proc: what the database spent on this bench, not on whatever else the
    machine's PostgreSQL serves meanwhile. Shared work (the WAL writer, checkpoints) is left
    out on both sides."""
    total, found = 0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                command = fh.read()
            if not command.startswith(b"postgres:") or database.encode() not in command:
                continue
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU used so far by ``pid`` and its descendants (uvicorn's worker processes), from
    /proc."""
    own = load.process_cpu_seconds(pid)
    if own is None:
        return None
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            children = [int(child) for child in fh.read().split()]
    except OSError:
        children = []
    return own + sum(process_tree_cpu_seconds(child) or 0.0 for child in children)


def servers_cpu_seconds(pids: list[int] | None) -> float | None:
    if not pids:
        return None
    found = [process_tree_cpu_seconds(pid) for pid in pids]
    return None if None in found else sum(seconds or 0.0 for seconds in found)


async def measure(
    name: str,
    once: Callable[[], Awaitable[int]],
    concurrency: int,
    seconds: float,
    server_pids: list[int] | None,
    database: str,
) -> Result:
    """``concurrency`` workers call ``once`` (which writes and returns how many events it
    wrote) until ``seconds`` have passed; every call started is awaited, and counted."""
    events = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal events
        while time.perf_counter() < stop_at:
            # Not `events += await once()`: that reads `events` before awaiting and loses what
            # the other workers added meanwhile.
            written = await once()
            events += written

    server_before = servers_cpu_seconds(server_pids)
    database_before = postgres_cpu_seconds(database)
    client_before = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout(seconds + 120):
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    elapsed = time.perf_counter() - started
    client = time.process_time() - client_before
    server_after = servers_cpu_seconds(server_pids)
    database_after = postgres_cpu_seconds(database)
    server = (
        server_after - server_before
        if server_before is not None and server_after is not None
        else None
    )
    database_cpu = (
        database_after - database_before
        if database_before is not None and database_after is not None
        else None
    )
    return Result(name, events, elapsed, server, database_cpu, client, os.getloadavg()[0])


@contextlib.asynccontextmanager
async def bench_database(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database next to ``admin_dsn``'s; its asyncpg DSN. Dropped afterwards."""
    name = f"coregraph_bench_ingest_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield admin_dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        admin = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def reachable(dsn: str) -> str | None:
    """None when PostgreSQL answers at ``dsn``; otherwise why not."""
    try:
        connection = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError) as error:
        return f"{type(error).__name__}: {error}"
    await connection.close()
    return None


async def graphql(
    http: httpx.AsyncClient, url: str, query: str, variables: dict[str, object], token: str
) -> dict[str, object]:
    response = await http.post(
        url,
        content=orjson.dumps({"query": query, "variables": variables}),
        headers={**GRAPHQL_HEADERS, "Authorization": f"Bearer {token}"},
    )
    body = orjson.loads(response.content)
    if response.status_code != 200 or body.get("errors"):
        raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
    return body["data"]  # type: ignore[no-any-return]


@dataclass
class Setup:
    tenant_id: str  # coregraph's writes
    raw_tenant_id: str  # the baseline's rows
    api_key: str
    api_key_id: str


async def set_up(settings: Settings, url: str) -> Setup:
    tenant = await seed.load_tenant(settings, url, members=1)
    async with httpx.AsyncClient(timeout=30) as http:
        headers = tenant.headers()
        token = tenant.owner_token
        other = await graphql(
            http,
            url,
            """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
                tenant { id } } }""",
            {"input": {"name": "Raw Baseline", "slug": "raw-baseline"}},
            token,
        )
        response = await http.post(
            url,
            content=orjson.dumps(
                {
                    "query": """mutation($input: CreateApiKeyInput!) {
                        createApiKey(input: $input) { secret apiKey { id } } }""",
                    "variables": {"input": {"name": "ingest", "scopes": ["events:write"]}},
                }
            ),
            headers={**GRAPHQL_HEADERS, **headers},
        )
        key = orjson.loads(response.content)["data"]["createApiKey"]
        await graphql(
            http,
            url,
            """mutation($input: RegisterEventTypeInput!) { registerEventType(input: $input) {
                eventType { id } } }""",
            {"input": {"type": EVENT_TYPE, "description": "bench", "schema": SCHEMA}},
            key["secret"],
        )
    return Setup(
        tenant.id,
        str(other["createTenant"]["tenant"]["id"]),  # type: ignore[index]
        key["secret"],
        key["apiKey"]["id"],
    )


def _key(prefix: str, counter: itertools.count[int]) -> str:
    return f"{prefix}-{next(counter)}"


async def _main(args: argparse.Namespace, tmp: str) -> int:
    problem = await reachable(args.dsn)
    if problem is not None:
        print(f"bench.ingest: skipped, PostgreSQL is not reachable at {args.dsn} ({problem})")
        return 0
    print_machine()
    async with bench_database(args.dsn) as dsn:
        env = {
            **bench_env(tmp),
            "COREGRAPH_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        }
        settings = bench_settings(env)
        migrate_database(env)
        if args.separate_worker:
            # The production shape: the API relays nothing; `coregraph worker` does, finding
            # new events by polling (no Redis here to wake it).
            env.update({"COREGRAPH_RUN_RELAY": "false", "COREGRAPH_RUN_WEBHOOK_WORKER": "false"})
        with contextlib.ExitStack() as processes:
            cg = processes.enter_context(
                uvicorn_server(
                    "coregraph",
                    "coregraph.app:create_app",
                    env,
                    tmp,
                    "/healthz",
                    # A loaded machine (other sessions' suites) can take a while to start it.
                    start_timeout=120,
                    workers=args.workers,
                )
            )
            pids = [cg.process.pid]
            if args.separate_worker:
                pids.append(processes.enter_context(worker_process(env, tmp)).pid)
            url = cg.base_url + "/graphql"
            setup = await set_up(settings, url)
            print(
                f"server {cg.base_url} ({args.workers} process(es),"
                f" relay {'in a worker process' if args.separate_worker else 'in-process'},"
                f" client"
                f" {'httpx' if args.httpx else 'bench.light_http'}); tenant {setup.tenant_id},"
                f" key {setup.api_key_id}"
            )
            try:
                results = await run_targets(args, url, dsn, setup, pids)
            except BaseException:
                # The server's side of a failure goes with the rest of the temporary files.
                print(f"--- the server's log:\n{cg.log_tail(80)}", file=sys.stderr)
                raise
    report(args, results)
    return 0


async def run_targets(
    args: argparse.Namespace, url: str, dsn: str, setup: Setup, server_pids: list[int]
) -> dict[str, Result]:
    database = dsn.rsplit("/", 1)[1]
    keys = itertools.count()
    run_id = secrets.token_hex(4)
    headers = {**GRAPHQL_HEADERS, "Authorization": f"Bearer {setup.api_key}"}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )

    def item() -> dict[str, object]:
        key = _key(run_id, keys) if args.keys else None
        return {"type": EVENT_TYPE, "data": DATA, "idempotencyKey": key}

    # Past the events the tenant already has (tenant.created): never in their way.
    raw_sequence = itertools.count(1_000_000)
    data_text = orjson.dumps(DATA).decode()

    def raw_row() -> tuple[object, ...]:
        return (
            ids.new_id("evt"),
            setup.raw_tenant_id,
            "live",
            next(raw_sequence),
            EVENT_TYPE,
            datetime.now(UTC),
            "api_key",
            setup.api_key_id,
            None,
            data_text,
            _key(run_id, keys) if args.keys else None,
            secrets.token_hex(8),
        )

    results: dict[str, Result] = {}
    light = LightClient(url, headers)
    async with (
        httpx.AsyncClient(limits=limits, timeout=60.0) as http,
        asyncpg.create_pool(dsn, min_size=args.concurrency, max_size=args.concurrency) as pool,
    ):

        async def post(name: str, request: dict[str, object]) -> dict[str, object]:
            content = orjson.dumps(request)
            if args.httpx:
                response = await http.post(url, content=content, headers=headers)
                status, raw = response.status_code, response.content
            else:
                status, raw = await light.post(content)
            body = orjson.loads(raw)
            if status != 200 or body.get("errors"):
                raise RuntimeError(f"{name}: {status} {raw[:300]!r}")
            return body["data"]  # type: ignore[no-any-return]

        async def emit_one() -> int:
            await post("emitEvent", {"query": EMIT, "variables": {"input": item()}})
            return 1

        async def emit_batch() -> int:
            inputs = [item() for _ in range(args.batch)]
            data = await post("emitEvents", {"query": EMIT_MANY, "variables": {"inputs": inputs}})
            return len(data["emitEvents"]["items"])  # type: ignore[index,arg-type]

        async def raw_one() -> int:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute(RAW_INSERT, *raw_row())
            return 1

        async def raw_batch() -> int:
            rows = [raw_row() for _ in range(args.batch)]
            async with pool.acquire() as connection, connection.transaction():
                await connection.executemany(RAW_INSERT, rows)
            return len(rows)

        targets: list[tuple[str, Callable[[], Awaitable[int]], str]] = [
            ("raw insert, 1 row/tx", raw_one, setup.raw_tenant_id),
            ("emitEvent, 1 event/request", emit_one, setup.tenant_id),
            (f"raw executemany, {args.batch} rows/tx", raw_batch, setup.raw_tenant_id),
            (f"emitEvents, {args.batch} events/request", emit_batch, setup.tenant_id),
        ]
        sent = {setup.tenant_id: 0, setup.raw_tenant_id: 0}
        for name, once, tenant_id in targets:
            pids = server_pids if tenant_id == setup.tenant_id else None
            if args.warmup:
                warmup = await measure(name, once, args.concurrency, args.warmup, None, database)
                sent[tenant_id] += warmup.events
            if args.analyze:
                # What autovacuum does on a live system, and cannot keep up with here, where
                # the table grows from nothing in a minute: without statistics the planner
                # checks idempotency keys by filtering every row of the tenant.
                async with pool.acquire() as connection:
                    await connection.execute("ANALYZE events")
            result = await measure(name, once, args.concurrency, args.seconds, pids, database)
            sent[tenant_id] += result.events
            results[name] = result
            print(f"  {name}: {result.per_second:.0f} events/s", flush=True)
        # Every event sent is there once, and coregraph's stream has no gap.
        async with pool.acquire() as connection:
            for tenant_id, count in sent.items():
                written = await connection.fetchval(
                    "SELECT count(*) FROM events WHERE tenant_id = $1 AND type = $2",
                    tenant_id,
                    EVENT_TYPE,
                )
                if written != count:
                    raise SystemExit(f"verification: {written} events in {tenant_id}, sent {count}")
            gaps = await connection.fetchval(
                "SELECT max(sequence) - min(sequence) + 1 - count(*) FROM events"
                " WHERE tenant_id = $1",
                setup.tenant_id,
            )
            # And the relay (in the API or the worker process) published all of them.
            deadline = time.monotonic() + 60
            while True:
                behind = await connection.fetchval(
                    "SELECT (SELECT max(sequence) FROM events WHERE tenant_id = $1)"
                    " - coalesce((SELECT events_published FROM relay_positions"
                    " WHERE chain_id = $1), 0)",
                    setup.tenant_id,
                )
                if behind == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
    await light.close()
    if behind != 0:
        raise SystemExit(f"verification: the relay left {behind} events unpublished")
    if gaps != 0:
        raise SystemExit(f"verification: coregraph's sequence has {gaps} gaps")
    written = sum(sent.values())
    print(
        f"verified: all {written} events written, coregraph's sequence without gaps, all"
        " published by the relay"
    )
    return results


def report(args: argparse.Namespace, results: dict[str, Result]) -> None:
    print()
    header = f"{'target':<34} {'events':>8} {'s':>6} {'events/s':>9} {'srv CPU ms/ev':>13}"
    header += f" {'db CPU ms/ev':>12} {'client ms/ev':>12} {'load':>5}"
    print(header)
    print("-" * len(header))
    for r in results.values():
        server = f"{r.server_cpu_seconds * 1000 / r.events:.3f}" if r.server_cpu_seconds else "-"
        database = (
            f"{r.database_cpu_seconds * 1000 / r.events:.3f}" if r.database_cpu_seconds else "-"
        )
        client = r.client_cpu_seconds * 1000 / r.events
        print(
            f"{r.name:<34} {r.events:>8} {r.seconds:>6.1f} {r.per_second:>9.0f} {server:>13}"
            f" {database:>12} {client:>12.3f} {r.load_average:>5.1f}"
        )
    names = list(results)
    print()
    for coregraph_name, raw_name in ((names[1], names[0]), (names[3], names[2])):
        ratio = results[coregraph_name].per_second / results[raw_name].per_second
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"{coregraph_name} / {raw_name} = {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")


async def main(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="coregraph-bench-ingest-")
    try:
        return await _main(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(None))))
