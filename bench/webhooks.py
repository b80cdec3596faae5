"""``python -m bench.webhooks``: webhook delivery by one ``coregraph worker`` process on
PostgreSQL: deliveries per second to a local receiver that answers 200 at once, the worker's
CPU per delivery, and the time from an event's commit to its receipt.

1. a fresh database on the local PostgreSQL (created here and dropped on the way out), ``coregraph
   migrate``; without a reachable PostgreSQL it says so and exits 0;
2. a tenant through the public API (a ``coregraph serve`` started for that alone), and one
   endpoint, its secret sealed as the API seals it, pointing at a receiver in this process (an
   HTTP/1.1 keep-alive server on 127.0.0.1 that verifies every request with ``standardwebhooks``
   and answers 200 with no body);
3. one ``coregraph worker`` (relay and webhook worker, as production runs it; Redis for the
   relay's wake-ups when one answers on 127.0.0.1:6379, else the relay polls every 50 ms);
4. **throughput**: ``--events`` events committed as fast as this process can (``--batch`` to a
   unit of work); deliveries/s = events / (last receipt - first commit), and the worker's CPU
   (from /proc) per delivery;
5. **latency**: ``--rate`` events/s, one per commit, for ``--seconds``; p50/p99 from each
   commit to its receipt (both clocks are this process's).

Every event must arrive exactly once (by ``webhook-id``) with a valid signature, or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import orjson
from cryptography.fernet import Fernet
from standardwebhooks import Webhook, WebhookVerificationError

from bench import seed
from bench.__main__ import migrate_database, print_machine
from bench.ingest import DEFAULT_ADMIN_DSN, bench_database, reachable
from bench.load import process_cpu_seconds
from bench.servers import HOST, bench_env, bench_settings, stop, uvicorn_server
from coregraph import db, ids
from coregraph.auth.principal import system_principal
from coregraph.request import RequestMeta
from coregraph.services.uow import UnitOfWork
from coregraph.services.webhooks import SecretBox, new_secret
from coregraph.settings import Settings
from coregraph.streams.broker import Broker, InProcessBroker, RedisBroker
from coregraph.streams.relay import wake_after_commit

REDIS_URL = "redis://127.0.0.1:6379/0"
TARGET_PER_SECOND = 300
EVENT_TYPE = "bench.pinged"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_ADMIN_DSN),
        help="a PostgreSQL database to create (and drop) the bench database from"
        f" ({DEFAULT_ADMIN_DSN}, or BENCH_POSTGRES_DSN)",
    )
    parser.add_argument("--events", type=int, default=5000, help="throughput events (5000)")
    parser.add_argument("--batch", type=int, default=100, help="events per commit (100)")
    parser.add_argument("--rate", type=float, default=100.0, help="latency events/s (100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run, s (10)")
    parser.add_argument(
        "--endpoint-concurrency",
        type=int,
        default=32,
        help="COREGRAPH_WEBHOOK_ENDPOINT_CONCURRENCY (32, the worker's whole concurrency: the"
        " bench has one endpoint, and measures the worker, not the per-endpoint limit)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.events <= 200_000 or not 1 <= args.batch <= 1000:
        parser.error("--events in 1..200000, --batch in 1..1000")
    if not 0 < args.rate <= 2000 or not 0 < args.seconds <= 600:
        parser.error("--rate in (0, 2000], --seconds in (0, 600]")
    return args


@dataclass
class Receiver:
    """Counts and verifies what arrives: the receipt time of each event, by event id."""

    secret: str
    received: dict[str, float] = field(default_factory=dict)
    webhook_ids: dict[str, int] = field(default_factory=dict)
    forged: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def take(self, headers: dict[str, str], body: bytes) -> None:
        now = time.perf_counter()
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError:
            self.forged += 1
            return
        webhook_id = headers["webhook-id"]
        self.webhook_ids[webhook_id] = self.webhook_ids.get(webhook_id, 0) + 1
        self.received.setdefault(payload["id"], now)
        if len(self.received) >= self.expected:
            self.arrived.set()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers: dict[str, str] = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.take(headers, body)
                writer.write(OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def emit(
    engine: Any, broker: Broker, tenant_id: str, count: int, commits: dict[str, float]
) -> None:
    """``count`` events in one unit of work, waking the relay as the API does; each event's
    commit time goes to ``commits``."""
    meta = RequestMeta(user_agent="bench.webhooks")
    async with UnitOfWork(engine, system_principal("bench"), meta) as uow:
        await uow.allow_tenant(tenant_id)
        made = [
            uow.emit(EVENT_TYPE, tenant_id=tenant_id, data={"n": n, "pad": "x" * 200})
            for n in range(count)
        ]
        uow.on_commit(partial(wake_after_commit, broker, uow))
    now = time.perf_counter()
    for event in made:
        commits[event.id] = now


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def add_endpoint(dsn: str, settings: Settings, tenant_id: str, url: str) -> str:
    secret = new_secret()
    box = SecretBox(settings.webhook_secret_key_list)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            """INSERT INTO webhook_endpoints (id, tenant_id, environment, url, description,
            event_types, enabled, secret, consecutive_failures, updated_at, created_at)
            VALUES ($1, $2, 'live', $3, 'bench', $4::jsonb, true, $5, 0, now(), now())""",
            ids.new_id("whe"),
            tenant_id,
            url,
            orjson.dumps([EVENT_TYPE]).decode(),
            box.seal(secret),
        )
    finally:
        await connection.close()
    return secret


async def redis_broker() -> tuple[Broker, Any, str]:
    """A Redis broker when Redis answers on loopback, else an in-process one (the relay then
    polls)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    try:
        await asyncio.wait_for(redis.ping(), 2)
    except Exception:
        await redis.aclose()
        return InProcessBroker(), None, ""
    prefix = f"bench-webhooks-{secrets.token_hex(4)}"
    return RedisBroker(redis, prefix), redis, prefix


async def _main(args: argparse.Namespace, tmp: str) -> int:
    problem = await reachable(args.dsn)
    if problem is not None:
        print(f"bench.webhooks: skipped, PostgreSQL is not reachable at {args.dsn} ({problem})")
        return 0
    print_machine()
    broker, redis, prefix = await redis_broker()
    try:
        async with bench_database(args.dsn) as dsn:
            return await run(args, tmp, dsn, broker, redis is not None, prefix)
    finally:
        await broker.close()
        if redis is not None:
            await redis.aclose()


async def run(
    args: argparse.Namespace, tmp: str, dsn: str, broker: Broker, with_redis: bool, prefix: str
) -> int:
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    # Development mode: the receiver is on loopback, which production refuses to deliver to.
    env = {
        **bench_env(tmp),
        "COREGRAPH_ENV": "development",
        "COREGRAPH_DATABASE_URL": url,
        "COREGRAPH_WEBHOOK_SECRET_KEYS": Fernet.generate_key().decode(),
        "COREGRAPH_WEBHOOK_ALLOW_PRIVATE": "true",
        "COREGRAPH_RUN_RELAY": "false",
        "COREGRAPH_RUN_WEBHOOK_WORKER": "false",
        "COREGRAPH_WEBHOOK_ENDPOINT_CONCURRENCY": str(args.endpoint_concurrency),
        "COREGRAPH_REDIS_URL": REDIS_URL if with_redis else "",
        "COREGRAPH_REDIS_PREFIX": prefix or "coregraph",
        "COREGRAPH_RELAY_POLL_SECONDS": "0.5" if with_redis else "0.05",
    }
    settings = bench_settings(env, env="development", database_url=url)
    migrate_database(env)
    with uvicorn_server("coregraph", "coregraph.app:create_app", env, tmp, "/healthz") as cg:
        tenant = await seed.load_tenant(settings, cg.base_url + "/graphql", members=1)
    receiver = Receiver(secret="")
    server = await asyncio.start_server(receiver.connection, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    receiver.secret = await add_endpoint(dsn, settings, tenant.id, f"http://{HOST}:{port}/hooks")
    engine = db.create_engine(settings)
    worker = start_worker(env, os.path.join(tmp, "worker.log"))
    try:
        # The worker is up once it delivers a first event.
        commits: dict[str, float] = {}
        receiver.expected = 1
        await emit(engine, broker, tenant.id, 1, commits)
        await asyncio.wait_for(receiver.arrived.wait(), 60)
        throughput = await measure_throughput(args, engine, broker, tenant.id, receiver, worker)
        latency = await measure_latency(args, engine, broker, tenant.id, receiver)
    finally:
        stop(worker)
        server.close()
        await engine.dispose()
    duplicates = sum(count - 1 for count in receiver.webhook_ids.values())
    total = 1 + args.events + latency["events"]
    print(
        f"\nthroughput: {args.events} events in {throughput['seconds']:.2f} s = "
        f"{throughput['per_second']:.0f} deliveries/s (target >= {TARGET_PER_SECOND}); "
        f"worker CPU {throughput['cpu_ms']:.2f} ms per delivery; "
        f"commit to receipt p50 {throughput['p50']:.0f} ms, p99 {throughput['p99']:.0f} ms "
        "(a backlog)"
    )
    print(
        f"latency at {args.rate:.0f} events/s for {args.seconds:.0f} s: "
        f"commit to receipt p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms "
        f"(relay woken over {'Redis' if with_redis else 'nothing: 50 ms polls'})"
    )
    print(
        f"received {len(receiver.received)} of {total} events, {duplicates} duplicates, "
        f"{receiver.forged} bad signatures"
    )
    if len(receiver.received) != total or duplicates or receiver.forged:
        print("FAILED: every event must arrive once, signed")
        return 1
    return 0


def start_worker(env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
    """``coregraph worker`` as production runs it, its output in ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "coregraph.cli", "worker"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def measure_throughput(
    args: argparse.Namespace,
    engine: Any,
    broker: Broker,
    tenant_id: str,
    receiver: Receiver,
    worker: subprocess.Popen[bytes],
) -> dict[str, float]:
    commits: dict[str, float] = {}
    before = len(receiver.received)
    receiver.expected = before + args.events
    receiver.arrived.clear()
    cpu_before = process_cpu_seconds(worker.pid) or 0.0
    started = time.perf_counter()
    for start in range(0, args.events, args.batch):
        await emit(engine, broker, tenant_id, min(args.batch, args.events - start), commits)
    await asyncio.wait_for(receiver.arrived.wait(), 600)
    seconds = max(receiver.received[event] for event in commits) - started
    cpu = (process_cpu_seconds(worker.pid) or 0.0) - cpu_before
    waits = [(receiver.received[event] - at) * 1000 for event, at in commits.items()]
    return {
        "seconds": seconds,
        "per_second": args.events / seconds,
        "cpu_ms": cpu * 1000 / args.events,
        "p50": percentile(waits, 0.5),
        "p99": percentile(waits, 0.99),
    }


async def measure_latency(
    args: argparse.Namespace, engine: Any, broker: Broker, tenant_id: str, receiver: Receiver
) -> dict[str, float]:
    commits: dict[str, float] = {}
    count = int(args.rate * args.seconds)
    receiver.expected = len(receiver.received) + count
    receiver.arrived.clear()
    interval = 1 / args.rate
    started = time.perf_counter()
    for n in range(count):
        await emit(engine, broker, tenant_id, 1, commits)
        delay = started + (n + 1) * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.wait_for(receiver.arrived.wait(), 120)
    waits = [(receiver.received[event] - at) * 1000 for event, at in commits.items()]
    return {
        "events": count,
        "p50": percentile(waits, 0.5),
        "p99": percentile(waits, 0.99),
        "mean": statistics.fmean(waits),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="coregraph-bench-webhooks-") as tmp:
        return asyncio.run(_main(args, tmp))


if __name__ == "__main__":
    sys.exit(main())
