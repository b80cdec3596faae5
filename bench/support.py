"""``python -m bench.support``: ``supportTimeline``'s first page over a tenant with 1 million
audit entries and events on PostgreSQL, against the raw SQL of the same page through asyncpg,
measured in the same run.

1. a fresh database on the local PostgreSQL (created here and dropped on the way out, whatever
   happens), ``coregraph migrate``; without a reachable PostgreSQL it says so and exits 0;
2. coregraph (``uvicorn coregraph.app:create_app --factory``, one worker, production settings,
   no Redis) on 127.0.0.1; an owner and a tenant through the public API, a platform staff
   member through ``coregraph create-staff``, a READ support session requested by the staff
   member, approved by the owner, and an impersonation token (``startSupportSession``);
3. ``--rows`` (1,000,000) rows in the tenant, half audit entries and half events, spread over
   the last 30 days, ``--other-rows`` (200,000) in a second tenant, and ``--deliveries``
   (100,000) finished webhook deliveries of the tenant with one attempt each, one in 20 failed,
   seeded with COPY (positions and sequences far past the chains' heads: the seeded rows are
   not a valid chain, which nothing here reads) and analyzed;
4. ``supportTimeline(tenantId, first: --page)`` over HTTP, ``--queries`` times after three
   warm-ups, one at a time; then the same for a page deep in the timeline (the cursor of a
   row in the middle); the answers are checked against the raw SQL's (the same ids in the
   same order). Baseline: the very statement coregraph sends, compiled for PostgreSQL and run
   through asyncpg with its parameters, as the superuser (no row-level security, no GraphQL,
   no HTTP), the same number of times. Printed: median and p90, the ratio, and the
   database's plan (EXPLAIN ANALYZE as the API's role inside the tenant's wall). Target:
   first page median under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson

from bench import seed
from bench.__main__ import GRAPHQL_HEADERS, migrate_database, print_machine
from bench.ingest import DEFAULT_ADMIN_DSN, bench_database, graphql, reachable
from bench.servers import bench_env, bench_settings, uvicorn_server
from coregraph import db, ids
from coregraph.models.base import Environment
from coregraph.services import support_timeline as timeline
from coregraph.settings import Settings

TARGET_MEDIAN_MS = 100.0
STAFF_EMAIL = "staff@bench.example.com"
STAFF_PASSWORD = "bench-staff-password-0123"
SEEDED_FROM = 1_000_000_000  # audit positions and event sequences of seeded rows start here
TIMELINE = """query($tenant: ID!, $first: Int, $after: String) {
    supportTimeline(tenantId: $tenant, first: $first, after: $after) {
        edges { cursor node { at source id name actorKind actorId detail } }
        pageInfo { hasNextPage endCursor } } }"""
AUDIT_COLUMNS = (
    "id",
    "tenant_id",
    "environment",
    "actor_kind",
    "actor_id",
    "action",
    "target_type",
    "target_id",
    "changes",
    "created_at",
    "chain_id",
    "position",
    "previous_hash",
    "hash",
)
EVENT_COLUMNS = (
    "id",
    "tenant_id",
    "environment",
    "sequence",
    "type",
    "occurred_at",
    "actor_kind",
    "actor_id",
    "data",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.support", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_ADMIN_DSN),
        help="a PostgreSQL database to create (and drop) the bench database from"
        f" ({DEFAULT_ADMIN_DSN}, or BENCH_POSTGRES_DSN)",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="in the tenant (1000000)")
    parser.add_argument(
        "--other-rows", type=int, default=200_000, help="in another tenant (200000)"
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        default=100_000,
        help="webhook deliveries in the tenant, one attempt each, one in 20 failed (100000)",
    )
    parser.add_argument("--page", type=int, default=50, help="entries per page (50)")
    parser.add_argument("--queries", type=int, default=51, help="timed per target (51)")
    args = parser.parse_args(argv)
    if not 2 <= args.rows <= 50_000_000 or not 0 <= args.other_rows <= 50_000_000:
        parser.error("--rows in 2..50000000, --other-rows in 0..50000000")
    if not 0 <= args.deliveries <= 10_000_000:
        parser.error("--deliveries in 0..10000000")
    if not 1 <= args.page <= 200 or not 1 <= args.queries <= 10_000:
        parser.error("--page in 1..200, --queries in 1..10000")
    return args


@dataclass
class Setup:
    tenant_id: str
    other_tenant_id: str
    support_token: str
    endpoint_id: str


def create_staff(env: dict[str, str]) -> None:
    """A platform staff member through the CLI (its stable interface), bounded in time."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from coregraph.cli import app; app()",
            "create-staff",
            *("--email", STAFF_EMAIL, "--role", "platform:support"),
            *("--password", STAFF_PASSWORD),
        ],
        env={**os.environ, **env},
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )


async def set_up(url: str, settings: Settings, env: dict[str, str]) -> Setup:
    tenant = await seed.load_tenant(settings, url, members=1)
    create_staff(env)
    async with httpx.AsyncClient(timeout=30) as http:

        async def run(query: str, variables: dict[str, object], token: str, **extra: str) -> Any:
            headers = {**GRAPHQL_HEADERS, **extra}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = await http.post(
                url,
                content=orjson.dumps({"query": query, "variables": variables}),
                headers=headers,
            )
            body = orjson.loads(response.content)
            if response.status_code != 200 or body.get("errors"):
                raise RuntimeError(f"{query.split('(')[0]}: {response.text[:300]}")
            return body["data"]

        other = await graphql(
            http,
            url,
            """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
                tenant { id } } }""",
            {"input": {"name": "Other Tenant", "slug": "other-tenant"}},
            tenant.owner_token,
        )
        endpoint = (
            await run(
                """mutation($input: CreateWebhookEndpointInput!) {
                    createWebhookEndpoint(input: $input) { webhookEndpoint { id } } }""",
                {"input": {"url": "https://93.184.215.14/hooks", "eventTypes": ["order.*"]}},
                tenant.owner_token,
                **{"X-Tenant-Id": tenant.id},
            )
        )["createWebhookEndpoint"]["webhookEndpoint"]["id"]
        staff = (
            await run(
                "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
                {"i": {"email": STAFF_EMAIL, "password": STAFF_PASSWORD}},
                "",
            )
        )["login"]["accessToken"]
        session = (
            await run(
                """mutation($input: RequestSupportAccessInput!) {
                    requestSupportAccess(input: $input) { supportSession { id } } }""",
                {
                    "input": {
                        "tenantId": tenant.id,
                        "reason": "bench: what happened to this customer",
                        "duration": 3600,
                        "mode": "READ",
                    }
                },
                staff,
            )
        )["requestSupportAccess"]["supportSession"]["id"]
        await run(
            "mutation($id: ID!) { approveSupportAccess(id: $id) { supportSession { id } } }",
            {"id": session},
            tenant.owner_token,
            **{"X-Tenant-Id": tenant.id},
        )
        token = (
            await run(
                "mutation($id: ID!) { startSupportSession(id: $id) { token { accessToken } } }",
                {"id": session},
                staff,
            )
        )["startSupportSession"]["token"]["accessToken"]
    other_id = str(other["createTenant"]["tenant"]["id"])  # type: ignore[index]
    return Setup(tenant.id, other_id, str(token), str(endpoint))


async def seed_rows(dsn: str, tenant_id: str, count: int, now: datetime) -> None:
    """``count`` rows in ``tenant_id``, half audit entries and half events, evenly over the
    30 days before ``now``, through COPY."""
    span = timedelta(days=30).total_seconds()
    connection = await asyncpg.connect(dsn)
    try:
        chunk = 50_000
        for first in range(0, count, chunk):
            audit: list[tuple[object, ...]] = []
            events: list[tuple[object, ...]] = []
            for i in range(first, min(count, first + chunk)):
                at = now - timedelta(seconds=span * (count - i) / count)
                if i % 2 == 0:
                    audit.append(
                        (
                            ids.new_id("aud"),
                            tenant_id,
                            "live",
                            "user",
                            "usr_bench",
                            "member.role_changed",
                            "Membership",
                            "mem_bench",
                            '{"before": {"role": "member"}, "after": {"role": "admin"}}',
                            at,
                            tenant_id,
                            SEEDED_FROM + i,
                            "",
                            "",
                        )
                    )
                else:
                    events.append(
                        (
                            ids.new_id("evt"),
                            tenant_id,
                            "live",
                            SEEDED_FROM + i,
                            "order.paid",
                            at,
                            "api_key",
                            "key_bench",
                            '{"orderId": "o-1", "amount": 12.5, "currency": "EUR"}',
                        )
                    )
            await connection.copy_records_to_table(
                "audit_entries", records=audit, columns=AUDIT_COLUMNS
            )
            await connection.copy_records_to_table("events", records=events, columns=EVENT_COLUMNS)
        await connection.execute("ANALYZE audit_entries")
        await connection.execute("ANALYZE events")
    finally:
        await connection.close()


DELIVERY_COLUMNS = (
    "id",
    "tenant_id",
    "environment",
    "endpoint_id",
    "event_type",
    "payload",
    "status",
    "attempts",
    "created_at",
    "last_attempt_at",
)
ATTEMPT_COLUMNS = (
    "id",
    "tenant_id",
    "delivery_id",
    "endpoint_id",
    "attempt",
    "started_at",
    "duration_ms",
    "status_code",
    "succeeded",
)


async def seed_deliveries(
    dsn: str, tenant_id: str, endpoint_id: str, count: int, now: datetime
) -> None:
    """``count`` finished deliveries over the 30 days before ``now``, one attempt each, one in
    20 failed (HTTP 500): the failed-attempts branch must not walk the successes."""
    span = timedelta(days=30).total_seconds()
    connection = await asyncpg.connect(dsn)
    try:
        chunk = 50_000
        for first in range(0, count, chunk):
            deliveries: list[tuple[object, ...]] = []
            attempts: list[tuple[object, ...]] = []
            for i in range(first, min(count, first + chunk)):
                at = now - timedelta(seconds=span * (count - i) / count)
                failed = i % 20 == 0
                delivery_id = ids.new_id("msg")
                deliveries.append(
                    (
                        delivery_id,
                        tenant_id,
                        "live",
                        endpoint_id,
                        "order.paid",
                        '{"type": "order.paid"}',
                        "failed" if failed else "succeeded",
                        1,
                        at,
                        at,
                    )
                )
                attempts.append(
                    (
                        ids.new_id("wha"),
                        tenant_id,
                        delivery_id,
                        endpoint_id,
                        1,
                        at,
                        12.5,
                        500 if failed else 200,
                        not failed,
                    )
                )
            await connection.copy_records_to_table(
                "webhook_deliveries", records=deliveries, columns=DELIVERY_COLUMNS
            )
            await connection.copy_records_to_table(
                "webhook_attempts", records=attempts, columns=ATTEMPT_COLUMNS
            )
        await connection.execute("ANALYZE webhook_deliveries")
        await connection.execute("ANALYZE webhook_attempts")
    finally:
        await connection.close()


def page_query(tenant_id: str, size: int, before: tuple[datetime, str] | None) -> Any:
    return timeline.statement(
        timeline.TimelineQuery(
            tenant_id=tenant_id, environment=Environment.LIVE, before=before, limit=size + 1
        )
    )


def compiled(statement: Any, dialect: Any) -> tuple[str, list[object]]:
    """The statement as coregraph's engine sends it: PostgreSQL SQL and its parameters."""
    compiled = statement.compile(dialect=dialect)
    sql = str(compiled)
    names = compiled.positiontup or ()
    processors = compiled._bind_processors  # the type's own conversions (UTCDateTime, ...)
    values = []
    for name in names:
        value = compiled.params[name]
        processor = processors.get(name)
        values.append(processor(value) if processor is not None else value)
    return sql, values


async def explain(settings: Settings, tenant_id: str, statement: Any) -> str:
    """EXPLAIN ANALYZE of the page's statement through coregraph's engine (the API's role)
    inside the tenant's wall, row-level security included."""
    engine = db.create_engine(settings)
    try:
        sql, values = compiled(statement, engine.dialect)
        async with engine.connect() as connection:
            await connection.execute(
                db.SCOPE_STATEMENT, db.scope_parameters(tenant_ids=[tenant_id])
            )
            result = await connection.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + sql, tuple(values)
            )
            return "\n".join(row[0] for row in result)
    finally:
        await engine.dispose()


@dataclass
class Target:
    label: str
    latencies: list[float]


async def timed(
    queries: int, once: Callable[[], Awaitable[list[str]]]
) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    answer: list[str] = []
    for i in range(queries + 3):
        began = time.perf_counter()
        answer = await once()
        elapsed = time.perf_counter() - began
        if i >= 3:
            latencies.append(elapsed * 1000)
    return latencies, answer


async def run_pages(
    args: argparse.Namespace, base_url: str, dsn: str, setup: Setup, settings: Settings
) -> tuple[list[Target], str]:
    headers = {**GRAPHQL_HEADERS, "Authorization": f"Bearer {setup.support_token}"}
    engine = db.create_engine(settings)
    dialect = engine.dialect
    await engine.dispose()
    targets: list[Target] = []
    async with httpx.AsyncClient(timeout=120.0) as http:
        connection = await asyncpg.connect(dsn)
        try:
            # A row in the middle of the timeline: the deep page starts after it.
            middle = await connection.fetchrow(
                "SELECT created_at, id FROM audit_entries WHERE tenant_id = $1"
                " ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
                setup.tenant_id,
                args.rows // 4,
            )
            pages: list[tuple[str, tuple[datetime, str] | None]] = [
                ("first page", None),
                ("deep page", (middle["created_at"], middle["id"])),
            ]
            plan = ""
            for label, before in pages:
                statement = page_query(setup.tenant_id, args.page, before)
                sql, values = compiled(statement, dialect)
                after = None if before is None else timeline.encode_cursor(*before)
                variables = {"tenant": setup.tenant_id, "first": args.page, "after": after}

                async def over_http(variables: dict[str, object] = variables) -> list[str]:
                    response = await http.post(
                        base_url + "/graphql",
                        content=orjson.dumps({"query": TIMELINE, "variables": variables}),
                        headers=headers,
                    )
                    body = orjson.loads(response.content)
                    if response.status_code != 200 or body.get("errors"):
                        raise RuntimeError(f"supportTimeline: {response.text[:300]}")
                    return [e["node"]["id"] for e in body["data"]["supportTimeline"]["edges"]]

                async def raw(sql: str = sql, values: list[object] = values) -> list[str]:
                    rows = await connection.fetch(sql, *values)
                    return [row["id"] for row in rows[: args.page]]

                served, served_ids = await timed(args.queries, over_http)
                baseline, raw_ids = await timed(args.queries, raw)
                if served_ids != raw_ids or len(served_ids) != args.page:
                    raise SystemExit(f"verification: {label} differs from the raw SQL's page")
                targets.append(Target(f"supportTimeline, {label}", served))
                targets.append(Target(f"raw SQL via asyncpg, {label}", baseline))
                if before is None:
                    plan = await explain(settings, setup.tenant_id, statement)
        finally:
            await connection.close()
    return targets, plan


def report(args: argparse.Namespace, targets: list[Target], plan: str) -> None:
    print()
    print(f"{'target':<42} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'queries':>8}")
    print("-" * 80)
    for target in targets:
        latencies = sorted(target.latencies)
        p90 = latencies[max(0, int(len(latencies) * 0.9) - 1)]
        print(
            f"{target.label:<42} {statistics.median(latencies):>10.2f} {p90:>8.2f}"
            f" {latencies[0]:>8.2f} {len(latencies):>8}"
        )
    by_label = {target.label: statistics.median(target.latencies) for target in targets}
    first = by_label["supportTimeline, first page"]
    raw = by_label["raw SQL via asyncpg, first page"]
    verdict = "met" if first < TARGET_MEDIAN_MS else "NOT met"
    print()
    print(
        f"first page over {args.rows} rows and {args.deliveries} deliveries"
        f" (+{args.other_rows} rows in another tenant): median"
        f" {first:.1f} ms, raw SQL {raw:.1f} ms, x{first / raw:.1f}"
        f" (target median < {TARGET_MEDIAN_MS:.0f} ms: {verdict})"
    )
    print("database plan of the first page, as the API's role inside the tenant's wall:")
    print("\n".join("  " + line for line in plan.splitlines()))


async def _main(args: argparse.Namespace, tmp: str) -> int:
    problem = await reachable(args.dsn)
    if problem is not None:
        print(f"bench.support: skipped, PostgreSQL is not reachable at {args.dsn} ({problem})")
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
            setup = await set_up(cg.base_url + "/graphql", settings, env)
            print(f"server {cg.base_url}; tenant {setup.tenant_id}", flush=True)
            began = time.perf_counter()
            now = datetime.now(UTC) - timedelta(minutes=5)
            await seed_rows(dsn, setup.tenant_id, args.rows, now)
            await seed_rows(dsn, setup.other_tenant_id, args.other_rows, now)
            await seed_deliveries(dsn, setup.tenant_id, setup.endpoint_id, args.deliveries, now)
            print(
                f"  seeded {args.rows} + {args.other_rows} rows and {args.deliveries}"
                " deliveries in"
                f" {time.perf_counter() - began:.1f} s",
                flush=True,
            )
            targets, plan = await run_pages(args, cg.base_url, dsn, setup, settings)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    report(args, targets, plan)
    return 0


async def main(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="coregraph-bench-support-")
    try:
        return await _main(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(None))))
