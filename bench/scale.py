"""``python -m bench.scale``: the production shape's figures (issue 12), on PostgreSQL + Redis.

1. a fresh database on the local PostgreSQL (created here, dropped on the way out whatever
   happens), ``coregraph migrate``; Redis at ``--redis-url`` under a prefix of this run; without
   a reachable PostgreSQL it says so and exits 0;
2. **throughput**: coregraph with 1, 2 and 4 API processes (``uvicorn --workers N`` on one
   port), all three up side by side; one tenant of ``--members`` members; the dashboard query
   (the members page, ``bench.__main__.MEMBERS_QUERY``) ``--requests`` times at
   ``--concurrency`` against each, in ``--rounds`` rounds whose order rotates. Per round the
   ratio of each to the single process; the verdict is their median. The load generator is
   this one Python process: on a machine with few cores it competes with the servers, which
   the printed client CPU shows;
3. **outbox lag**: one API process (no relay of its own) and one ``coregraph worker`` (the
   relay), a subscriber over graphql-transport-ws to a custom event type, and an emitter
   sending ``emitEvents`` batches at ``--rate`` events a second for ``--lag-seconds`` (a batch
   every 10 ms, at most 64 requests in flight). The lag of an event is the time from the answer
   to the mutation that committed it to its arrival at the subscriber: p50, p99 and max, and
   the rate the emitter achieved. The commit lies between the request's sending and its
   answer, so the same from the sending is printed too: the true lag is between the two (an
   event can reach the subscriber before its answer is read, a negative lag from the answer).
   CPU per event by stage (API, worker, the bench database's PostgreSQL backends, Redis, this
   client), from /proc;
4. **observability overhead**: the dashboard query against two single-process servers, one
   with tracing (OpenTelemetry over OTLP to a local sink started here) and metrics on, one with
   neither, alternating rounds in the same run; the issue's target is under 5 %.

Servers and the worker are stopped and the temp dir removed on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import websockets

from bench import load, seed
from bench.__main__ import GRAPHQL_HEADERS, MEMBERS_QUERY, migrate_database, print_machine
from bench.ingest import DEFAULT_ADMIN_DSN, bench_database, postgres_cpu_seconds, reachable
from bench.servers import Server, bench_env, bench_settings, uvicorn_server, worker_process

PROCESSES = (1, 2, 4)
LAG_EVENT = "bench.lagged"
EMIT_MANY = """mutation($inputs: [EmitEventInput!]!) { emitEvents(inputs: $inputs) {
    items { eventId } } }"""
SUBSCRIPTION = """subscription($types: [String!]) {
    events(types: $types) { cursor node { type data } } }"""
TARGET_OVERHEAD = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dsn", default=DEFAULT_ADMIN_DSN, help="PostgreSQL admin DSN")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--members", type=int, default=200, help="members in the tenant (200)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per run (1000)")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight (32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--rate", type=int, default=1000, help="events a second (1000)")
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="lag run length (10)")
    parser.add_argument(
        "--only", choices=("throughput", "lag", "overhead"), help="run only one part"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.members <= 200 or args.requests < 1 or args.rounds < 1:
        parser.error("--members 1..200, --requests >= 1, --rounds >= 1")
    if not 10 <= args.rate <= 20_000 or not 1 <= args.lag_seconds <= 600:
        parser.error("--rate 10..20000, --lag-seconds 1..600")
    return args


@contextlib.contextmanager
def coregraph_server(
    name: str, env: dict[str, str], tmp: str, workers: int = 1
) -> Iterator[Server]:
    with uvicorn_server(
        name, "coregraph.app:create_app", env, tmp, "/healthz", 120.0, workers=workers
    ) as server:
        yield server


def dashboard_target(server: Server, tenant: seed.Tenant, name: str) -> load.Target:
    body = orjson.dumps({"query": MEMBERS_QUERY})
    expected = len(tenant.emails)

    def check(response: httpx.Response) -> bool:
        if response.status_code != 200:
            return False
        answer = orjson.loads(response.content)
        return "errors" not in answer and len(answer["data"]["tenant"]["members"]["edges"]) == min(
            expected, 200
        )

    return load.Target(
        name,
        "POST",
        server.base_url + "/graphql",
        {**GRAPHQL_HEADERS, **tenant.headers()},
        body,
        check,
        server.process.pid,
    )


async def rounds(
    targets: list[load.Target], args: argparse.Namespace
) -> dict[str, list[load.Stats]]:
    """Every target for ``--requests`` per round after one warm-up, the order rotating."""
    runs: dict[str, list[load.Stats]] = {t.name: [] for t in targets}
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for target in targets:
            await load.run(client, target, min(200, args.requests), args.concurrency, 600)
        for index in range(args.rounds):
            shift = index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                stats = await load.run(client, target, args.requests, args.concurrency, 600)
                runs[target.name].append(stats)
                print(
                    f"  round {index + 1} {target.name:>22}: {stats.rps:7.1f} req/s, median "
                    f"{stats.median_ms:6.1f} ms, client CPU {stats.client_cpu_ms_per_request:.2f}"
                    " ms/req",
                    flush=True,
                )
    return runs


def ratios(runs: dict[str, list[load.Stats]], base: str) -> dict[str, float]:
    """Per target, the median over rounds of its rate over ``base``'s in the same round."""
    return {
        name: statistics.median(s.rps / b.rps for s, b in zip(stats, runs[base], strict=True))
        for name, stats in runs.items()
    }


async def throughput(args: argparse.Namespace, env: dict[str, str], tmp: str) -> None:
    print(f"\n## dashboard throughput with {', '.join(map(str, PROCESSES))} API processes")
    # Seven processes up at once: 8 connections each keeps them within PostgreSQL's default
    # max_connections (100) with room for the rest of the machine.
    env = {**env, "COREGRAPH_DATABASE_POOL_SIZE": "8"}
    with contextlib.ExitStack() as stack:
        servers = {
            n: stack.enter_context(coregraph_server(f"api-x{n}", env, tmp, workers=n))
            for n in PROCESSES
        }
        settings = bench_settings(env)
        tenant = await seed.load_tenant(
            settings, servers[1].base_url + "/graphql", members=args.members
        )
        targets = [dashboard_target(servers[n], tenant, f"{n} process(es)") for n in PROCESSES]
        try:
            runs = await rounds(targets, args)
        except* load.BadResponse:
            for server in servers.values():
                print(f"--- {server.name}'s log:\n{server.log_tail(40)}")
            raise
    scaling = ratios(runs, targets[0].name)
    for n, target in zip(PROCESSES, targets, strict=True):
        combined = load.combine(runs[target.name])
        print(
            f"{n} process(es): {combined.rps:7.1f} req/s over the rounds, median "
            f"{combined.median_ms:.1f} ms, p95 {combined.p95_ms:.1f} ms; "
            f"x{scaling[target.name]:.2f} of one process (median of rounds)"
        )


@dataclass
class LagRun:
    sent: int
    seconds: float
    lags_ms: list[float]
    # The same from when the emitter sent the request (the commit lies between the two).
    lags_from_sent_ms: list[float]
    # CPU seconds each stage spent from the first emit to the last arrival (or the cut-off).
    cpu_seconds: dict[str, float | None]
    # Why the subscription ended early (SUBSCRIBER_TOO_SLOW...), None when every event arrived.
    ended: str | None = None

    def percentile(self, p: float, *, from_sent: bool = False) -> float:
        ordered = sorted(self.lags_from_sent_ms if from_sent else self.lags_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Stages:
    """CPU used by each process on the lag path, from /proc: the API (emit and subscription),
    the worker (relay), the PostgreSQL backends of the bench's database, the machine's Redis
    (shared with whatever else uses it) and this client."""

    def __init__(self, api_pid: int, worker_pid: int, database: str) -> None:
        self.api_pid, self.worker_pid, self.database = api_pid, worker_pid, database

    def now(self) -> dict[str, float | None]:
        return {
            "api": load.process_cpu_seconds(self.api_pid),
            "worker": load.process_cpu_seconds(self.worker_pid),
            "postgres": postgres_cpu_seconds(self.database),
            "redis": _redis_cpu_seconds(),
            "client": time.process_time(),
        }

    @staticmethod
    def spent(
        before: dict[str, float | None], after: dict[str, float | None]
    ) -> dict[str, float | None]:
        return {
            name: None if (b := before[name]) is None or (a := after[name]) is None else a - b
            for name in before
        }


def _redis_cpu_seconds() -> float | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if not fh.read().startswith(b"redis-server"):
                    continue
        except OSError:
            continue
        return load.process_cpu_seconds(int(pid))
    return None


async def lag(args: argparse.Namespace, env: dict[str, str], tmp: str) -> None:
    print(f"\n## outbox lag at {args.rate} events/s for {args.lag_seconds:.0f} s")
    api_env = {
        **env,
        "COREGRAPH_RUN_RELAY": "false",
        "COREGRAPH_WEBHOOK_WORKER_IN_PROCESS": "false",
    }
    with (
        coregraph_server("api-lag", api_env, tmp) as api,
        worker_process({**env, "COREGRAPH_RELAY_POLL_SECONDS": "0.5"}, tmp) as worker,
    ):
        url = api.base_url + "/graphql"
        tenant = await seed.load_tenant(bench_settings(env), url, members=1)
        stages = Stages(
            api.process.pid, worker.pid, env["COREGRAPH_DATABASE_URL"].rsplit("/", 1)[1]
        )
        async with httpx.AsyncClient(timeout=60) as http:
            await register(http, url, tenant)
            result = await measure_lag(args, http, api, tenant, stages)
    arrived = len(result.lags_ms)
    print(
        f"sent {result.sent} events in {result.seconds:.1f} s ({result.sent / result.seconds:.0f}"
        f"/s achieved, {args.rate}/s asked); {arrived} arrived; lag from commit to subscriber:"
        f" p50 {result.percentile(50):.1f} ms, p99 {result.percentile(99):.1f} ms, max "
        f"{max(result.lags_ms):.1f} ms (from the request's sending: p50 "
        f"{result.percentile(50, from_sent=True):.1f} ms, p99 "
        f"{result.percentile(99, from_sent=True):.1f} ms)"
        if arrived
        else f"sent {result.sent} events in {result.seconds:.1f} s, none arrived"
    )
    if result.ended is not None:
        print(f"THE SUBSCRIPTION ENDED after {arrived} of {result.sent} events: {result.ended}")
    counted = max(arrived, 1)
    print(
        "CPU per event arrived (ms), by stage: "
        + ", ".join(
            f"{name} {'n/a' if cpu is None else f'{cpu * 1000 / counted:.2f}'}"
            for name, cpu in result.cpu_seconds.items()
        )
        + "; of the run's wall time: "
        + ", ".join(
            f"{name} {'n/a' if cpu is None else f'{cpu / result.seconds:.0%}'}"
            for name, cpu in result.cpu_seconds.items()
        )
    )


async def register(http: httpx.AsyncClient, url: str, tenant: seed.Tenant) -> None:
    response = await http.post(
        url,
        content=orjson.dumps(
            {
                "query": """mutation($input: RegisterEventTypeInput!) {
                    registerEventType(input: $input) { eventType { id } } }""",
                "variables": {
                    "input": {
                        "type": LAG_EVENT,
                        "description": "bench",
                        "schema": {"type": "object"},
                    }
                },
            }
        ),
        headers={**GRAPHQL_HEADERS, **tenant.headers()},
    )
    if orjson.loads(response.content).get("errors"):
        raise RuntimeError(f"registerEventType: {response.text[:300]}")


@contextlib.asynccontextmanager
async def subscribed(api: Server, tenant: seed.Tenant) -> AsyncIterator[Any]:
    ws_url = api.base_url.replace("http://", "ws://") + "/graphql"
    async with websockets.connect(
        ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")], max_queue=None
    ) as ws:
        await ws.send(
            orjson.dumps({"type": "connection_init", "payload": tenant.headers()}).decode()
        )
        ack = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"connection_init refused: {ack}")
        payload = {"query": SUBSCRIPTION, "variables": {"types": [LAG_EVENT]}}
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
        yield ws


async def measure_lag(
    args: argparse.Namespace,
    http: httpx.AsyncClient,
    api: Server,
    tenant: seed.Tenant,
    stages: Stages,
) -> LagRun:
    url = api.base_url + "/graphql"
    headers = {**GRAPHQL_HEADERS, **tenant.headers()}
    per_batch = max(1, args.rate // 100)
    batches = int(args.lag_seconds * 100)
    committed: dict[int, float] = {}
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    in_flight = asyncio.Semaphore(64)

    async def emit(batch: int) -> None:
        first = batch * per_batch
        inputs = [{"type": LAG_EVENT, "data": {"n": first + i}} for i in range(per_batch)]
        async with in_flight:
            sending = time.perf_counter()
            response = await http.post(
                url,
                content=orjson.dumps({"query": EMIT_MANY, "variables": {"inputs": inputs}}),
                headers=headers,
            )
        answered = time.perf_counter()
        if response.status_code != 200 or orjson.loads(response.content).get("errors"):
            raise RuntimeError(f"emitEvents: {response.text[:300]}")
        for i in range(per_batch):
            committed[first + i] = answered
            sent[first + i] = sending

    class Ended(Exception):
        pass

    async with subscribed(api, tenant) as ws:

        async def read() -> None:
            async for raw in ws:
                message = orjson.loads(raw)
                if message.get("type") == "next":
                    payload = message["payload"]
                    if payload.get("errors") or not (payload.get("data") or {}).get("events"):
                        raise Ended(orjson.dumps(payload.get("errors") or payload).decode())
                    arrived[int(payload["data"]["events"]["node"]["data"]["n"])] = (
                        time.perf_counter()
                    )
                elif message.get("type") in ("error", "complete"):
                    raise Ended(orjson.dumps(message).decode())

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.5)  # the subscription is in place before the first event
        before = stages.now()
        started = time.perf_counter()
        tasks = []
        for batch in range(batches):
            tasks.append(asyncio.create_task(emit(batch)))
            await asyncio.sleep(max(0.0, started + (batch + 1) / 100 - time.perf_counter()))
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
        total = batches * per_batch
        ended = None
        async with asyncio.timeout(120):
            while len(arrived) < total:
                if reader.done():
                    break
                await asyncio.sleep(0.05)
        after = stages.now()
        if reader.done():
            try:
                reader.result()
            except Ended as exc:
                ended = str(exc)[:300]
        reader.cancel()
    lags = [(arrived[n] - committed[n]) * 1000 for n in range(total) if n in arrived]
    from_sent = [(arrived[n] - sent[n]) * 1000 for n in range(total) if n in arrived]
    return LagRun(total, seconds, lags, from_sent, Stages.spent(before, after), ended)


@contextlib.asynccontextmanager
async def otlp_sink() -> AsyncIterator[str]:
    """A local OTLP/HTTP receiver that accepts and drops everything: the exporter's cost is
    measured, a collector's is not."""
    received = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                received += 1
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"
    print(f"(the OTLP sink received {received} export requests)")


async def overhead(args: argparse.Namespace, env: dict[str, str], tmp: str) -> None:
    print("\n## metrics and tracing overhead on the dashboard query")
    async with otlp_sink() as sink:
        observed_env = {
            **env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
            "OTEL_SERVICE_NAME": "coregraph-bench",
            "COREGRAPH_METRICS_PUBLIC": "true",
        }
        plain_env = {**env, "COREGRAPH_METRICS_PUBLIC": "false"}
        with (
            coregraph_server("api-observed", observed_env, tmp) as observed,
            coregraph_server("api-plain", plain_env, tmp) as plain,
        ):
            tenant = await seed.load_tenant(
                bench_settings(env), plain.base_url + "/graphql", members=args.members
            )
            targets = [
                dashboard_target(plain, tenant, "no metrics, no tracing"),
                dashboard_target(observed, tenant, "metrics + tracing"),
            ]
            runs = await rounds(targets, args)
            async with httpx.AsyncClient(timeout=10) as http:
                scraped = await http.get(observed.base_url + "/metrics")
    relative = ratios(runs, targets[0].name)[targets[1].name]
    cost = 1 - relative
    verdict = "met" if cost < TARGET_OVERHEAD else "NOT met"
    print(
        f"with metrics + tracing: x{relative:.3f} of the throughput without (median of rounds):"
        f" {cost * 100:.1f} % overhead (target < {TARGET_OVERHEAD * 100:.0f} %: {verdict});"
        f" /metrics answered {scraped.status_code}, {len(scraped.content)} bytes"
    )


async def _main(args: argparse.Namespace, tmp: str) -> int:
    problem = await reachable(args.dsn)
    if problem is not None:
        print(f"bench.scale: skipped, PostgreSQL is not reachable at {args.dsn} ({problem})")
        return 0
    print_machine()
    parts = {"throughput": throughput, "lag": lag, "overhead": overhead}
    for name, part in parts.items():
        if args.only not in (None, name):
            continue
        # A database of its own per part: each seeds the same owner and tenant.
        async with bench_database(args.dsn) as dsn:
            env = {
                **bench_env(tmp),
                "COREGRAPH_DATABASE_URL": dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
                "COREGRAPH_REDIS_URL": args.redis_url,
                "COREGRAPH_REDIS_PREFIX": f"cgbench-{secrets.token_hex(4)}",
            }
            migrate_database(env)
            await part(args, env, tmp)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


async def main(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp(prefix="coregraph-bench-scale-")
    try:
        return await _main(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(None))))
