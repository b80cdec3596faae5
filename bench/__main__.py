"""``python -m bench``: coregraph's members query against a plain FastAPI endpoint running the
same SQL, on a fresh embedded (SQLite) database, everything on 127.0.0.1.

1. a temp dir, a SQLite file in it, ``coregraph migrate``;
2. coregraph (``uvicorn coregraph.app:create_app --factory``) and the plain app
   (``uvicorn bench.plain:create_app --factory``) in subprocesses, one worker each;
3. one tenant with ``--members`` members (``bench.seed``);
4. both answers fetched and compared (the whole ``data`` document must be equal, with the
   expected member count and emails) before anything is measured;
5. per target a warm-up; then ``--rounds`` rounds, each running every target for ``--requests``
   requests at ``--concurrency``, the pair's order alternating from round to round. A ratio is
   taken per round (the pair ran back to back, under the same conditions); the verdict uses
   their median. The table adds the rounds up. Each server's resident memory (and peak) is read
   from /proc after seeding and after the runs.

Servers are stopped and the temp dir removed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata

import httpx
import orjson

from bench import load, seed
from bench.servers import bench_env, bench_settings, uvicorn_server

MEMBERS_QUERY = (
    "{ tenant { id name members(first: 200) { edges { node { id createdAt "
    "user { id displayName email } role { id key name permissions } } } } } }"
)
TYPENAME_QUERY = "{ __typename }"
# Issue 13: the dashboard query at 0.8x the plain endpoint (the median of rounds, one run).
TARGET_RATIO = 0.8
GRAPHQL_HEADERS = {
    "Accept": "application/graphql-response+json",
    "Content-Type": "application/json",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=200, help="members in the tenant (200)")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests (1000)")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests (100)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds per pair of targets (3)"
    )
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="deadline per measured run, s (600)"
    )
    parser.add_argument(
        "--only", choices=("members", "typename"), help="run only one pair of targets"
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the servers' database: a fresh SQLite file (default) or a fresh database on the "
        "PostgreSQL of --dsn (created and dropped by the run)",
    )
    parser.add_argument(
        "--dsn",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="PostgreSQL to create the bench database next to (with --database postgresql)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.members <= 200:
        parser.error("--members: 1..200 (one page of the query)")
    if args.requests < 1 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--requests >= 1, --warmup >= 0, --concurrency >= 1, --rounds >= 1")
    return args


def print_machine() -> None:
    """The machine and its load now: the first line of every bench's output."""
    info = machine()
    print(
        f"machine: nproc={info['nproc']}, python {info['python']}, {info['cpu']}, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )


def machine() -> dict[str, str]:
    info = {
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
    }
    for package in (
        "strawberry-graphql",
        "graphql-core",
        "fastapi",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
        "aiosqlite",
        "httpx",
        "orjson",
    ):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "-"
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def migrate_database(env: dict[str, str]) -> None:
    """``coregraph migrate`` through the CLI (its stable interface), bounded in time."""
    subprocess.run(
        [sys.executable, "-c", "from coregraph.cli import app; app()", "migrate"],
        env={**os.environ, **env},
        check=True,
        timeout=120,
        stdout=subprocess.DEVNULL,
    )


def body_check(expected_length: int, graphql: bool) -> Callable[[httpx.Response], bool]:
    """Per response: 200, the verified length, and (GraphQL) no errors entry."""

    def check(response: httpx.Response) -> bool:
        content = response.content
        if response.status_code != 200 or len(content) != expected_length:
            return False
        return not graphql or b'"errors"' not in content

    return check


async def verify_members(
    http: httpx.AsyncClient, graphql: load.Target, plain: load.Target, tenant: seed.Tenant
) -> tuple[int, int]:
    """Both endpoints must give the same, correct answer. Returns both body lengths."""
    g = await http.request(
        graphql.method, graphql.url, headers=graphql.headers, content=graphql.body
    )
    p = await http.request(plain.method, plain.url, headers=plain.headers)
    if g.status_code != 200 or p.status_code != 200:
        raise SystemExit(f"verification: HTTP {g.status_code} / {p.status_code}: {g.text[:300]}")
    g_body, p_body = orjson.loads(g.content), orjson.loads(p.content)
    if g_body.get("errors"):
        raise SystemExit(f"verification: coregraph answered with errors: {g_body['errors'][:3]}")
    edges = g_body["data"]["tenant"]["members"]["edges"]
    emails = sorted(edge["node"]["user"]["email"] for edge in edges)
    if len(edges) != len(tenant.emails) or emails != sorted(tenant.emails):
        raise SystemExit(
            f"verification: coregraph returned {len(edges)} members, expected "
            f"{len(tenant.emails)} with the seeded emails"
        )
    expected_roles = {"owner", *seed.ROLE_CYCLE[1 : len(tenant.emails)]}
    if {edge["node"]["role"]["key"] for edge in edges} != expected_roles:
        raise SystemExit("verification: the members do not have the seeded roles")
    if g_body["data"] != p_body["data"]:
        raise SystemExit("verification: coregraph and the plain endpoint disagree")
    return len(g.content), len(p.content)


async def verify_typename(
    http: httpx.AsyncClient, graphql: load.Target, plain: load.Target
) -> tuple[int, int]:
    g = await http.request(
        graphql.method, graphql.url, headers=graphql.headers, content=graphql.body
    )
    p = await http.request(plain.method, plain.url)
    if g.status_code != 200 or orjson.loads(g.content) != orjson.loads(p.content):
        raise SystemExit(f"verification: __typename differs: {g.text} / {p.text}")
    return len(g.content), len(p.content)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def table(results: list[load.Stats], lengths: dict[str, int]) -> str:
    header = [
        "target",
        "requests",
        "conc",
        "median ms",
        "p95 ms",
        "req/s",
        "server CPU ms/req",
        "client CPU ms/req",
        "body bytes",
    ]
    rows = [
        [
            s.name,
            str(s.requests),
            str(s.concurrency),
            f"{s.median_ms:.2f}",
            f"{s.p95_ms:.2f}",
            f"{s.rps:.1f}",
            _ms(s.server_cpu_ms_per_request),
            _ms(s.client_cpu_ms_per_request),
            str(lengths.get(s.name, "")),
        ]
        for s in results
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cols: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def ratios(a: load.Stats, b: load.Stats) -> tuple[float, float | None]:
    """(req/s of a / req/s of b, server CPU per request of b / of a)."""
    rps = a.rps / b.rps
    ca, cb = a.server_cpu_ms_per_request, b.server_cpu_ms_per_request
    return rps, (cb / ca if ca and cb else None)


async def main(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="coregraph-bench-")
    try:
        if args.database == "sqlite":
            return await _main(args, tmp, bench_env(tmp))
        from bench.ingest import bench_database, reachable

        problem = await reachable(args.dsn)
        if problem is not None:
            print(f"bench: skipped, PostgreSQL is not reachable at {args.dsn} ({problem})")
            return 0
        async with bench_database(args.dsn) as dsn:
            url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
            return await _main(args, tmp, {**bench_env(tmp), "COREGRAPH_DATABASE_URL": url})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _main(args: argparse.Namespace, tmp: str, env: dict[str, str]) -> int:
    settings = bench_settings(env)
    migrate_database(env)

    info = machine()
    print(
        f"machine: nproc={info['nproc']}, python {info['python']}, {info['cpu']}, "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
        f"database: {args.database}\n"
        f"         strawberry {info['strawberry-graphql']}, graphql-core {info['graphql-core']}, "
        f"fastapi {info['fastapi']}, uvicorn {info['uvicorn']} (uvloop {info['uvloop']}), "
        f"sqlalchemy {info['sqlalchemy']}, httpx {info['httpx']}",
        flush=True,
    )
    with (
        uvicorn_server("coregraph", "coregraph.app:create_app", env, tmp, "/healthz") as cg,
        uvicorn_server("plain", "bench.plain:create_app", env, tmp, "/healthz") as plain,
    ):
        print(f"servers: coregraph {cg.base_url}, plain {plain.base_url}", flush=True)
        tenant = await seed.load_tenant(settings, cg.base_url + "/graphql", args.members)
        print(f"tenant {tenant.id}: {len(tenant.emails)} members", flush=True)
        memory_before = {
            "coregraph": load.process_memory_mib(cg.process.pid),
            "plain": load.process_memory_mib(plain.process.pid),
        }

        graphql_members = load.Target(
            "coregraph members",
            "POST",
            cg.base_url + "/graphql",
            {**GRAPHQL_HEADERS, **tenant.headers()},
            orjson.dumps({"query": MEMBERS_QUERY}),
            server_pid=cg.process.pid,
        )
        plain_members = load.Target(
            "plain members",
            "GET",
            f"{plain.base_url}/tenant/members?first={args.members}",
            tenant.headers(),
            server_pid=plain.process.pid,
        )
        graphql_typename = load.Target(
            "coregraph { __typename }",
            "POST",
            cg.base_url + "/graphql",
            GRAPHQL_HEADERS,
            orjson.dumps({"query": TYPENAME_QUERY}),
            server_pid=cg.process.pid,
        )
        plain_typename = load.Target(
            "plain JSON", "GET", plain.base_url + "/typename", {}, server_pid=plain.process.pid
        )
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )
        async with httpx.AsyncClient(limits=limits, timeout=60.0) as http:
            g_len, p_len = await verify_members(http, graphql_members, plain_members, tenant)
            print(
                f"verified: both return the same {len(tenant.emails)} members "
                f"(same data document, {g_len} and {p_len} bytes)",
                flush=True,
            )
            gt_len, pt_len = await verify_typename(http, graphql_typename, plain_typename)
            lengths = {
                graphql_members.name: g_len,
                plain_members.name: p_len,
                graphql_typename.name: gt_len,
                plain_typename.name: pt_len,
            }
            pairs = []
            if args.only in (None, "members"):
                pairs.append(
                    (
                        replace(graphql_members, check=body_check(g_len, graphql=True)),
                        replace(plain_members, check=body_check(p_len, graphql=False)),
                    )
                )
            if args.only in (None, "typename"):
                pairs.append(
                    (
                        replace(graphql_typename, check=body_check(gt_len, graphql=True)),
                        replace(plain_typename, check=body_check(pt_len, graphql=False)),
                    )
                )
            runs: dict[str, list[load.Stats]] = {}
            round_ratios: dict[str, list[float]] = {}
            for pair in pairs:
                for target in pair:
                    if args.warmup:
                        await load.run(http, target, args.warmup, args.concurrency, args.deadline)
            for round_ in range(args.rounds):
                for graphql_target, plain_target in pairs:
                    order = [graphql_target, plain_target]
                    if round_ % 2:
                        order.reverse()
                    for target in order:
                        stats = await load.run(
                            http, target, args.requests, args.concurrency, args.deadline
                        )
                        runs.setdefault(target.name, []).append(stats)
                    g, p = runs[graphql_target.name][-1], runs[plain_target.name][-1]
                    ratio = g.rps / p.rps
                    round_ratios.setdefault(graphql_target.name, []).append(ratio)
                    print(
                        f"  round {round_ + 1}: {g.name} {g.rps:.1f} req/s, "
                        f"{p.name} {p.rps:.1f} req/s: ratio {ratio:.2f}",
                        flush=True,
                    )
            results = [load.combine(r) for r in runs.values()]
        memory_after = {
            "coregraph": load.process_memory_mib(cg.process.pid),
            "plain": load.process_memory_mib(plain.process.pid),
        }

    print()
    print(table(results, lengths))
    print()
    memory: dict[str, object] = {}
    for name in ("coregraph", "plain"):
        before, after = memory_before[name], memory_after[name]
        if before is not None and after is not None:
            memory[name] = {
                "rss_mib_after_seeding": round(before[0], 1),
                "rss_mib_after_runs": round(after[0], 1),
                "peak_rss_mib": round(after[1], 1),
            }
            print(
                f"memory {name}: {before[0]:.0f} MiB resident after seeding, "
                f"{after[0]:.0f} MiB after the runs, peak {after[1]:.0f} MiB"
            )
    report: dict[str, object] = {
        "machine": info,
        "args": vars(args),
        "memory": memory,
        "results": {
            s.name: {
                "requests": s.requests,
                "concurrency": s.concurrency,
                "seconds": round(s.seconds, 3),
                "median_ms": round(s.median_ms, 3),
                "p95_ms": round(s.p95_ms, 3),
                "rps": round(s.rps, 2),
                "server_cpu_ms_per_request": s.server_cpu_ms_per_request,
                "client_cpu_ms_per_request": round(s.client_cpu_ms_per_request, 3),
            }
            for s in results
        },
    }
    by_name = {s.name: s for s in results}
    if graphql_members.name in by_name and plain_members.name in by_name:
        rps, cpu = ratios(by_name[graphql_members.name], by_name[plain_members.name])
        per_round = round_ratios[graphql_members.name]
        median = statistics.median(per_round)
        report["members_rps_ratio_per_round"] = [round(r, 3) for r in per_round]
        report["members_rps_ratio"] = round(median, 3)
        report["members_server_cpu_ratio"] = round(cpu, 3) if cpu else None
        verdict = "met" if median >= TARGET_RATIO else "NOT met"
        print(
            f"members: GraphQL req/s / plain req/s = {median:.2f}, the median of "
            f"{len(per_round)} rounds ({', '.join(f'{r:.2f}' for r in per_round)}); "
            f"all rounds added up: {rps:.2f} (target >= {TARGET_RATIO}: {verdict})"
        )
        if cpu:
            print(f"         plain server CPU/req / GraphQL server CPU/req = {cpu:.2f}")
    if graphql_typename.name in by_name and plain_typename.name in by_name:
        rps, cpu = ratios(by_name[graphql_typename.name], by_name[plain_typename.name])
        report["typename_rps_ratio"] = round(rps, 3)
        report["typename_server_cpu_ratio"] = round(cpu, 3) if cpu else None
        print(
            f"__typename: GraphQL req/s / plain req/s = {rps:.2f}"
            + (f", server CPU ratio {cpu:.2f}" if cpu else "")
            + " (orientation only)"
        )
    if args.json:
        await asyncio.to_thread(_write_json, args.json, report)
    return 0


def _write_json(path: str, report: dict[str, object]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(None))))
