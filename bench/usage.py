"""``python -m bench.usage``: usage metering on PostgreSQL — ingest through
``recordUsageBatch`` (GraphQL) and ``POST /usage/bulk`` (JSON Lines) against raw asyncpg COPY
of the same rows into the same table, measured in the same run; then the ``usage`` query by
DAY over a month of 1 million records.

1. a fresh database on the local PostgreSQL (created here and dropped on the way out, whatever
   happens), ``coregraph migrate``; without a reachable PostgreSQL it says so and exits 0;
2. coregraph (``uvicorn coregraph.app:create_app --factory``, one worker, production settings,
   no Redis) on 127.0.0.1; an owner, a tenant, an API key holding ``usage:write`` and
   ``usage:read``, and two SUM meters with a ``model`` dimension, all through the public API;
3. ingest, three targets, each for ``--seconds`` at ``--concurrency`` after a warm-up, every
   call ``--batch`` records (default 1,000) with a fresh idempotency key, one dimension and an
   occurredAt of now: (a) raw asyncpg ``copy_records_to_table`` of the rows, one transaction
   per call, as the superuser into a second tenant (no row-level security, no key lookup, no
   event: the cheapest way to get those rows into that table); (b) ``recordUsageBatch``;
   (c) ``POST /usage/bulk``. ``usage_records`` is analyzed after each warm-up. Every record
   sent is verified written once. Ratios (b)/(a) and (c)/(a); the issue's target is >= 0.2;
4. aggregation: ``--records`` (1,000,000) records of a second meter, spread evenly over the
   previous calendar month (three models), seeded with COPY and analyzed; then ``usage(meter,
   from, to, granularity: DAY)`` over that month, ``--queries`` times after two warm-ups, one
   at a time; the answer is checked against the seeded totals. Printed: median and p90
   latency (HTTP round trip), and the database's own plan and time (EXPLAIN ANALYZE of the
   statement coregraph sends, as the API's role inside the tenant's wall). Target: median
   under 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson

from bench import seed
from bench.__main__ import GRAPHQL_HEADERS, migrate_database, print_machine
from bench.ingest import (
    DEFAULT_ADMIN_DSN,
    Result,
    bench_database,
    graphql,
    measure,
    reachable,
)
from bench.servers import bench_env, bench_settings, uvicorn_server
from coregraph import db, ids
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.schema.usage import usage_records, usage_rollups
from coregraph.services import usage, usage_store
from coregraph.settings import Settings

TARGET_RATIO = 0.2
TARGET_MEDIAN_MS = 500.0
INGEST_METER = "bench.tokens"
AGGREGATE_METER = "bench.requests"
MODELS = ("small", "medium", "large")
ROLLUP_KEY = ("tenant_id", "environment", "meter", "hour", "dimensions_key")
COLUMNS = (
    "id",
    "tenant_id",
    "environment",
    "meter",
    "quantity",
    "occurred_at",
    "dimensions",
    "idempotency_key",
    "recorded_at",
)
RECORD_BATCH = """mutation($records: [RecordUsageInput!]!) { recordUsageBatch(records: $records) {
    recorded replayed } }"""
USAGE = """query($meter: String!, $from: DateTime!, $to: DateTime!) {
    usage(meter: $meter, from: $from, to: $to, granularity: DAY) { points { start value } } }"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.usage", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_ADMIN_DSN),
        help="a PostgreSQL database to create (and drop) the bench database from"
        f" ({DEFAULT_ADMIN_DSN}, or BENCH_POSTGRES_DSN)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per ingest target (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up per target, s (2)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight (4)")
    parser.add_argument("--batch", type=int, default=1000, help="records per call (1000)")
    parser.add_argument("--records", type=int, default=1_000_000, help="aggregated (1000000)")
    parser.add_argument("--queries", type=int, default=21, help="usage queries timed (21)")
    parser.add_argument("--skip-ingest", action="store_true", help="aggregation only")
    parser.add_argument(
        "--bucket-statistics",
        action="store_true",
        help="then CREATE STATISTICS on the DAY and HOUR bucket expressions (a proposed"
        " migration, not in the schema) and time the queries again: the planner then knows a"
        " month has ~30 days and aggregates in a hash table instead of sorting 1M rows",
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds in (0, 600], --warmup in [0, 60]")
    if args.concurrency < 1 or not 1 <= args.batch <= 1000:
        parser.error("--concurrency >= 1, --batch in 1..1000 (COREGRAPH_MAX_USAGE_BATCH)")
    if not 1 <= args.records <= 50_000_000 or not 1 <= args.queries <= 1000:
        parser.error("--records in 1..50000000, --queries in 1..1000")
    return args


@dataclass
class Setup:
    tenant_id: str
    raw_tenant_id: str
    api_key: str


async def set_up(url: str, settings: Settings) -> Setup:
    tenant = await seed.load_tenant(settings, url, members=1)
    token = tenant.owner_token
    async with httpx.AsyncClient(timeout=30) as http:
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
                        createApiKey(input: $input) { secret } }""",
                    "variables": {
                        "input": {
                            "name": "usage",
                            "scopes": ["usage:write", "usage:read", "meters:manage"],
                        }
                    },
                }
            ),
            headers={**GRAPHQL_HEADERS, **tenant.headers()},
        )
        key = str(orjson.loads(response.content)["data"]["createApiKey"]["secret"])
        for meter in (INGEST_METER, AGGREGATE_METER):
            await graphql(
                http,
                url,
                """mutation($input: CreateMeterInput!) { createMeter(input: $input) {
                    meter { id } } }""",
                {
                    "input": {
                        "key": meter,
                        "name": meter,
                        "unit": "unit",
                        "aggregation": "SUM",
                        "dimensions": ["model"],
                    }
                },
                key,
            )
    raw = str(other["createTenant"]["tenant"]["id"])  # type: ignore[index]
    return Setup(tenant.id, raw, key)


async def run_ingest(
    args: argparse.Namespace, base_url: str, dsn: str, setup: Setup, server_pid: int
) -> dict[str, Result]:
    database = dsn.rsplit("/", 1)[1]
    keys = itertools.count()
    run_id = secrets.token_hex(4)
    url = base_url + "/graphql"
    graphql_headers = {**GRAPHQL_HEADERS, "Authorization": f"Bearer {setup.api_key}"}
    bulk_headers = {
        "Content-Type": "application/x-ndjson",
        "Authorization": graphql_headers["Authorization"],
    }
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )

    def record(i: int) -> dict[str, object]:
        return {
            "meter": INGEST_METER,
            "quantity": "12.5",
            "dimensions": {"model": MODELS[i % len(MODELS)]},
            "idempotencyKey": f"{run_id}-{next(keys)}",
        }

    def raw_rows() -> list[tuple[object, ...]]:
        now = datetime.now(UTC)
        return [
            (
                ids.new_id("usg"),
                setup.raw_tenant_id,
                "live",
                INGEST_METER,
                Decimal("12.5"),
                now,
                orjson.dumps({"model": MODELS[i % len(MODELS)]}).decode(),
                f"{run_id}-{next(keys)}",
                now,
            )
            for i in range(args.batch)
        ]

    results: dict[str, Result] = {}
    async with (
        httpx.AsyncClient(limits=limits, timeout=120.0) as http,
        asyncpg.create_pool(dsn, min_size=args.concurrency, max_size=args.concurrency) as pool,
    ):

        async def raw_copy() -> int:
            rows = raw_rows()
            async with pool.acquire() as connection, connection.transaction():
                await connection.copy_records_to_table(
                    "usage_records", records=rows, columns=COLUMNS
                )
            return len(rows)

        async def batch() -> int:
            records = [record(i) for i in range(args.batch)]
            response = await http.post(
                url,
                content=orjson.dumps({"query": RECORD_BATCH, "variables": {"records": records}}),
                headers=graphql_headers,
            )
            body = orjson.loads(response.content)
            if response.status_code != 200 or body.get("errors"):
                raise RuntimeError(f"recordUsageBatch: {response.text[:300]}")
            recorded: int = body["data"]["recordUsageBatch"]["recorded"]
            return recorded

        async def bulk() -> int:
            lines = b"".join(orjson.dumps(record(i)) + b"\n" for i in range(args.batch))
            response = await http.post(
                base_url + "/usage/bulk", content=lines, headers=bulk_headers
            )
            if response.status_code != 200:
                raise RuntimeError(f"/usage/bulk: {response.status_code} {response.text[:300]}")
            recorded: int = orjson.loads(response.content)["recorded"]
            return recorded

        targets: list[tuple[str, Callable[[], Awaitable[int]], str]] = [
            (f"raw COPY, {args.batch} rows/tx", raw_copy, setup.raw_tenant_id),
            (f"recordUsageBatch, {args.batch}/call", batch, setup.tenant_id),
            (f"POST /usage/bulk, {args.batch}/call", bulk, setup.tenant_id),
        ]
        sent = {setup.tenant_id: 0, setup.raw_tenant_id: 0}
        for name, once, tenant_id in targets:
            pid = server_pid if tenant_id == setup.tenant_id else None
            if args.warmup:
                warmup = await measure(name, once, args.concurrency, args.warmup, None, database)
                sent[tenant_id] += warmup.events
            async with pool.acquire() as connection:
                await connection.execute("ANALYZE usage_records")
            result = await measure(name, once, args.concurrency, args.seconds, pid, database)
            sent[tenant_id] += result.events
            results[name] = result
            print(f"  {name}: {result.per_second:.0f} records/s", flush=True)
        async with pool.acquire() as connection:
            for tenant_id, count in sent.items():
                written = await connection.fetchval(
                    "SELECT count(*) FROM usage_records WHERE tenant_id = $1 AND meter = $2",
                    tenant_id,
                    INGEST_METER,
                )
                if written != count:
                    raise SystemExit(
                        f"verification: {written} records in {tenant_id}, sent {count}"
                    )
    print(f"verified: all {sum(sent.values())} records written once")
    return results


def previous_month(now: datetime) -> tuple[datetime, datetime]:
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (this_month - timedelta(days=1)).replace(day=1), this_month


async def seed_month(
    dsn: str,
    tenant_id: str,
    count: int,
    start: datetime,
    end: datetime,
) -> dict[datetime, Decimal]:
    """``count`` records of ``AGGREGATE_METER`` evenly over [start, end), quantities 1..10;
    the expected DAY totals."""
    span = (end - start).total_seconds()
    expected: dict[datetime, Decimal] = {}
    # The hourly rollups coregraph's ingest keeps beside the records (services.usage), added up
    # by the same function as the records are made, then copied in as well.
    rollups: dict[tuple[Any, ...], dict[str, Any]] = {}
    connection = await asyncpg.connect(dsn)
    try:
        chunk = 100_000
        for first in range(0, count, chunk):
            rows = []
            for i in range(first, min(count, first + chunk)):
                at = start + timedelta(seconds=span * i / count)
                quantity = Decimal(i % 10 + 1)
                day = at.replace(hour=0, minute=0, second=0, microsecond=0)
                expected[day] = expected.get(day, Decimal(0)) + quantity
                rows.append(
                    (
                        ids.new_id("usg"),
                        tenant_id,
                        "live",
                        AGGREGATE_METER,
                        quantity,
                        at,
                        orjson.dumps({"model": MODELS[i % len(MODELS)]}).decode(),
                        None,
                        at,
                    )
                )
            await connection.copy_records_to_table("usage_records", records=rows, columns=COLUMNS)
            for rollup in usage_store.rollup_rows(
                [
                    {
                        "tenant_id": row[1],
                        "environment": row[2],
                        "meter": row[3],
                        "quantity": row[4],
                        "occurred_at": row[5],
                        "dimensions": orjson.loads(row[6]),
                    }
                    for row in rows
                ]
            ):
                key = tuple(rollup[name] for name in ROLLUP_KEY)
                kept = rollups.get(key)
                if kept is None:
                    rollups[key] = rollup
                else:
                    kept["quantity_sum"] += rollup["quantity_sum"]
                    kept["record_count"] += rollup["record_count"]
                    kept["quantity_max"] = max(kept["quantity_max"], rollup["quantity_max"])
        await connection.copy_records_to_table(
            "usage_rollups",
            records=[
                (
                    *(r[name] for name in ROLLUP_KEY),
                    orjson.dumps(r["dimensions"]).decode(),
                    r["quantity_sum"],
                    r["record_count"],
                    r["quantity_max"],
                )
                for r in rollups.values()
            ],
            columns=(*ROLLUP_KEY, "dimensions", "quantity_sum", "record_count", "quantity_max"),
        )
        await connection.execute("ANALYZE usage_records")
        await connection.execute("ANALYZE usage_rollups")
    finally:
        await connection.close()
    return expected


async def explain(settings: Settings, tenant_id: str, start: datetime, end: datetime) -> str:
    """EXPLAIN ANALYZE of the statement the ``usage`` query sends, through coregraph's engine
    (the API's role) inside the tenant's wall, row-level security included."""
    principal = Principal(
        kind=PrincipalKind.USER,
        user_id="usr_bench",
        tenant_id=tenant_id,
        tenant_scopes={tenant_id: frozenset({"usage:read"})},
    )
    spec = usage.MeterSpec(AGGREGATE_METER, "", "", usage.Aggregation.SUM, ("model",))
    statement = usage.series_statement(
        usage_records(principal, tenant_id),
        usage_rollups(principal, tenant_id),
        spec,
        start=start,
        end=end,
        granularity=usage.Granularity.DAY,
        group_by=(),
        dialect="postgresql",
    )
    engine = db.create_engine(settings)
    try:
        compiled = statement.compile(dialect=engine.dialect)
        parameters = tuple(compiled.params[name] for name in compiled.positiontup or ())
        async with engine.connect() as connection:
            await connection.execute(
                db.SCOPE_STATEMENT, db.scope_parameters(tenant_ids=[tenant_id])
            )
            result = await connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), parameters
            )
            return "\n".join(row[0] for row in result)
    finally:
        await engine.dispose()


async def create_bucket_statistics(dsn: str) -> None:
    """The proposed migration: extended statistics on the DAY and HOUR bucket expressions."""
    connection = await asyncpg.connect(dsn)
    try:
        for name, width in (("day", "1 day"), ("hour", "1 hour")):
            await connection.execute(
                f"CREATE STATISTICS usage_records_{name}_bins ON (date_bin(interval"
                f" '{width}', occurred_at, timestamptz '2000-01-01 00:00:00+00'))"
                " FROM usage_records"
            )
        await connection.execute("ANALYZE usage_records")
    finally:
        await connection.close()


@dataclass
class Aggregation:
    label: str
    latencies: list[float]
    plan: str


async def run_aggregation(
    args: argparse.Namespace, base_url: str, dsn: str, setup: Setup, settings: Settings
) -> list[Aggregation]:
    start, end = previous_month(datetime.now(UTC))
    began = time.perf_counter()
    expected = await seed_month(dsn, setup.tenant_id, args.records, start, end)
    print(
        f"  seeded {args.records} records over {start:%Y-%m} in {time.perf_counter() - began:.1f} s"
    )
    variables = {"meter": AGGREGATE_METER, "from": start.isoformat(), "to": end.isoformat()}
    headers = {**GRAPHQL_HEADERS, "Authorization": f"Bearer {setup.api_key}"}

    async def timed(http: httpx.AsyncClient) -> list[float]:
        latencies: list[float] = []
        for i in range(args.queries + 2):
            began = time.perf_counter()
            response = await http.post(
                base_url + "/graphql",
                content=orjson.dumps({"query": USAGE, "variables": variables}),
                headers=headers,
            )
            elapsed = time.perf_counter() - began
            body = orjson.loads(response.content)
            if response.status_code != 200 or body.get("errors"):
                raise RuntimeError(f"usage: {response.text[:300]}")
            points = {
                datetime.fromisoformat(p["start"]): Decimal(p["value"])
                for p in body["data"]["usage"]["points"]
            }
            if points != expected:
                raise SystemExit("verification: the usage series differs from the seeded totals")
            if i >= 2:
                latencies.append(elapsed * 1000)
        return latencies

    results: list[Aggregation] = []
    async with httpx.AsyncClient(timeout=120.0) as http:
        latencies = await timed(http)
        plan = await explain(settings, setup.tenant_id, start, end)
        results.append(Aggregation("as migrated", latencies, plan))
        if args.bucket_statistics:
            await create_bucket_statistics(dsn)
            latencies = await timed(http)
            plan = await explain(settings, setup.tenant_id, start, end)
            results.append(Aggregation("with bucket statistics", latencies, plan))
    return results


def report(
    args: argparse.Namespace, ingest: dict[str, Result], aggregations: list[Aggregation]
) -> None:
    print()
    if ingest:
        header = f"{'target':<34} {'records':>8} {'s':>6} {'records/s':>10} {'srv CPU us/rec':>14}"
        print(header + f" {'db CPU us/rec':>13}")
        print("-" * (len(header) + 14))
        for r in ingest.values():
            server = f"{r.server_cpu_seconds * 1e6 / r.events:.1f}" if r.server_cpu_seconds else "-"
            database = (
                f"{r.database_cpu_seconds * 1e6 / r.events:.1f}" if r.database_cpu_seconds else "-"
            )
            print(
                f"{r.name:<34} {r.events:>8} {r.seconds:>6.1f} {r.per_second:>10.0f}"
                f" {server:>14} {database:>13}"
            )
        names = list(ingest)
        print()
        for name in names[1:]:
            ratio = ingest[name].per_second / ingest[names[0]].per_second
            verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
            print(f"{name} / {names[0]} = {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")
    for aggregation in aggregations:
        latencies = aggregation.latencies
        median = statistics.median(latencies)
        p90 = sorted(latencies)[max(0, int(len(latencies) * 0.9) - 1)]
        verdict = "met" if median < TARGET_MEDIAN_MS else "NOT met"
        print(
            f"usage(DAY) over {args.records} records, {aggregation.label}: median {median:.0f} ms,"
            f" p90 {p90:.0f} ms, min {min(latencies):.0f} ms over {len(latencies)} queries"
            f" (target median < {TARGET_MEDIAN_MS:.0f} ms: {verdict})"
        )
        print(f"database plan of the statement, {aggregation.label}:")
        print("\n".join("  " + line for line in aggregation.plan.splitlines()))


async def _main(args: argparse.Namespace, tmp: str) -> int:
    problem = await reachable(args.dsn)
    if problem is not None:
        print(f"bench.usage: skipped, PostgreSQL is not reachable at {args.dsn} ({problem})")
        return 0
    print_machine()
    async with bench_database(args.dsn) as dsn:
        env = {
            **bench_env(tmp),
            "COREGRAPH_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
        }
        settings = bench_settings(env)
        migrate_database(env)
        with uvicorn_server("coregraph", "coregraph.app:create_app", env, tmp, "/healthz") as cg:
            setup = await set_up(cg.base_url + "/graphql", settings)
            print(f"server {cg.base_url}; tenant {setup.tenant_id}", flush=True)
            ingest = (
                {}
                if args.skip_ingest
                else await run_ingest(args, cg.base_url, dsn, setup, cg.process.pid)
            )
            aggregations = await run_aggregation(args, cg.base_url, dsn, setup, settings)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    report(args, ingest, aggregations)
    return 0


async def main(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="coregraph-bench-usage-")
    try:
        return await _main(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(None))))
