"""The production shape under failure: two `coregraph serve` processes and two `coregraph worker`
processes on PostgreSQL + Redis, each API behind a real Hive Gateway, 1,000 mutations spread
over both while subscribers sit on both APIs and a webhook receiver verifies every signature.
One API process and one worker are SIGKILLed in the middle. Then: every committed event
reached every subscriber exactly once and in order (the subscriber of the dead API resumes on
the other from its last cursor), every event's webhook was delivered (a redelivery, if any,
carries the same ``webhook-id``), and the tenant's audit chain verifies.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import select

from coregraph import db
from coregraph.models import Event, WebhookDelivery
from tests.node_support import run_node_script, running_node_server
from tests.receiver_support import Receiver
from tests.streams_support import (
    PROTOCOL,
    REDIS_URL,
    WAIT,
    engine_for,
    migrated_database,
    relay_settings,
)
from tests.support import Actor, GraphQLClient, env_database_url, free_port, unique
from tests.test_subscriptions import EVENTS
from tests.test_webhook_delivery import process_env
from tests.webhooks_support import Verifying, add_endpoint

pytestmark = pytest.mark.skipif(
    not (env_database_url() or "").startswith("postgresql") or REDIS_URL is None,
    reason="the scale-out shape runs on PostgreSQL + Redis",
)

EDGE_SUBGRAPH = Path(__file__).resolve().parent / "node" / "edge-subgraph.graphql"
MUTATIONS = 1000
KILL_AFTER = 500
CONCURRENCY = 8
CREATE_ROLE = """mutation($input: CreateRoleInput!) { createRole(input: $input) { role { id } } }"""


def api_env(database_url: str, port: int) -> dict[str, str]:
    """`coregraph serve` as a stateless API process: no relay, no webhook delivery (the workers
    do both), the tests' cheap password hashing and shared JWT secret."""
    settings = relay_settings(database_url)
    env = process_env(database_url)
    env.update(
        {
            "COREGRAPH_HOST": "127.0.0.1",
            "COREGRAPH_PORT": str(port),
            "COREGRAPH_RUN_RELAY": "false",
            "COREGRAPH_WEBHOOK_WORKER_IN_PROCESS": "false",
            "COREGRAPH_JWT_SECRET": settings.jwt_secret,
            "COREGRAPH_PASSWORD_HASH_TIME_COST": "1",
            "COREGRAPH_PASSWORD_HASH_MEMORY_KIB": "1024",
            "COREGRAPH_PASSWORD_HASH_PARALLELISM": "1",
            "COREGRAPH_AUTH_RATE_LIMIT_PER_IP": "100000",
            "COREGRAPH_LOG_LEVEL": "WARNING",
        }
    )
    return env


@contextmanager
def process(*args: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`coregraph <args>` as a deployment runs it; its log in ``log`` (shown if it fails)."""
    with log.open("wb") as output:
        child = subprocess.Popen(
            [sys.executable, "-m", "coregraph.cli", *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=WAIT)


async def healthy(url: str) -> None:
    async with httpx.AsyncClient(timeout=2) as http:
        for _ in range(int(30 / 0.1)):
            try:
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer /healthz within 30 s")


class ResumingSubscriber:
    """A client that subscribes to the tenant's role.created events on one API and, when that
    process dies under it, subscribes again on the next with the last cursor it saw."""

    def __init__(self, urls: list[str], credential: dict[str, str]) -> None:
        self.urls = urls
        self.credential = credential
        self.items: list[dict[str, Any]] = []
        self.resumed = 0
        self.ready = asyncio.Event()
        self.errors: list[Any] = []

    async def run(self) -> None:
        for attempt, url in enumerate(self.urls):
            after = self.items[-1]["cursor"] if self.items else None
            ws_url = url.replace("http://", "ws://") + "/graphql"
            try:
                async with websockets.connect(
                    ws_url, subprotocols=[PROTOCOL], open_timeout=WAIT
                ) as ws:
                    await ws.send(
                        json.dumps({"type": "connection_init", "payload": self.credential})
                    )
                    ack = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                    assert ack["type"] == "connection_ack", ack
                    variables: dict[str, Any] = {"types": ["role.created"]}
                    if after is not None:
                        variables["after"] = after
                    payload = {"query": EVENTS, "variables": variables}
                    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
                    if attempt:
                        self.resumed += 1
                    self.ready.set()
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "next":
                            if message["payload"].get("errors"):
                                self.errors.extend(message["payload"]["errors"])
                                break
                            self.items.append(message["payload"]["data"]["events"])
                        elif message["type"] in ("error", "complete"):
                            self.errors.append(message)
                            return
            except (websockets.ConnectionClosed, OSError):
                continue  # the process died: resume on the next one
            if self.errors:
                return


@asynccontextmanager
async def gateway_for(core_url: str, supergraph: Path) -> AsyncIterator[str]:
    with running_node_server("gateway.mjs", str(supergraph), f"core={core_url}") as urls:
        yield str(urls["gateway"])


async def test_two_apis_and_two_workers_lose_nothing_when_one_of_each_is_killed(
    tmp_path: Path,
) -> None:
    async with migrated_database(str(tmp_path)) as database_url:
        ports = [free_port(), free_port()]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        worker_env = process_env(
            database_url,
            webhook_timeout_seconds="1",
            webhook_claim_seconds="6",
            webhook_endpoint_concurrency="16",
        )
        handler = Verifying(secrets=[])
        logs = [tmp_path / f"{name}.log" for name in ("api1", "api2", "worker1", "worker2")]
        with (
            process(
                "serve", "--no-migrate", env=api_env(database_url, ports[0]), log=logs[0]
            ) as api1,
            process("serve", "--no-migrate", env=api_env(database_url, ports[1]), log=logs[1]),
            process("worker", env=worker_env, log=logs[2]) as worker1,
            process("worker", env=worker_env, log=logs[3]),
        ):
            try:
                await asyncio.gather(*(healthy(url) for url in urls))
            except AssertionError:
                raise AssertionError(
                    "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)
                ) from None
            async with httpx.AsyncClient(timeout=30) as http:
                sdl = (
                    await http.post(f"{urls[0]}/graphql", json={"query": "{ _service { sdl } }"})
                ).json()["data"]["_service"]["sdl"]
            core = tmp_path / "core.graphql"
            core.write_text(sdl)
            composed = run_node_script(
                "compose.mjs", "--lib", "guild", f"core={core}", f"portal={EDGE_SUBGRAPH}"
            )
            assert composed.returncode == 0 and composed.json()["ok"], composed.stderr
            supergraph = tmp_path / "supergraph.graphql"
            supergraph.write_text(composed.json()["supergraphSdl"])

            async with (
                gateway_for(f"{urls[0]}/graphql", supergraph) as gateway1,
                gateway_for(f"{urls[1]}/graphql", supergraph) as gateway2,
                httpx.AsyncClient(timeout=30) as http,
                Receiver(handler) as receiver,
                engine_for(database_url) as engine,
            ):
                gateways = [GraphQLClient(http, gateway1), GraphQLClient(http, gateway2)]
                owner = await gateways[1].sign_up()
                tenant_id = await gateways[1].create_tenant(owner)
                endpoint = await add_endpoint(
                    engine,
                    relay_settings(database_url),
                    tenant_id,
                    receiver.url(),
                    event_types=["role.created"],
                )
                handler.secrets.append(endpoint.secret)
                credential = owner.headers(tenant_id)
                subscribers = [
                    ResumingSubscriber([urls[0], urls[1]], credential),
                    ResumingSubscriber([urls[1]], credential),
                ]
                tasks = [asyncio.create_task(s.run()) for s in subscribers]
                for subscriber in subscribers:
                    await asyncio.wait_for(subscriber.ready.wait(), WAIT)

                acknowledged = await drive(gateways, owner, tenant_id, api1, worker1)
                committed = await role_events(engine, tenant_id)
                assert set(acknowledged) <= {e.data["key"] for e in committed.values()}
                assert len(committed) >= len(acknowledged) >= MUTATIONS - 3 * CONCURRENCY

                # Every subscriber: every committed event once, in order.
                async def all_heard() -> None:
                    while any(len(s.items) < len(committed) for s in subscribers):
                        assert all(t.done() is False for t in tasks), [
                            s.errors for s in subscribers
                        ]
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(all_heard(), 60)
                for subscriber in subscribers:
                    ids = [item["node"]["id"] for item in subscriber.items]
                    assert len(ids) == len(set(ids)) == len(committed), "exactly once"
                    assert set(ids) == set(committed)
                    sequences = [item["node"]["sequence"] for item in subscriber.items]
                    assert sequences == sorted(sequences), "in order"
                    assert subscriber.errors == []
                assert subscribers[0].resumed == 1, "the dead API's subscriber resumed elsewhere"

                # Every webhook delivered; a redelivery only under the same webhook-id.
                deliveries = await webhook_deliveries(engine, tenant_id)
                assert len(deliveries) == len(committed), "one delivery per event"

                await receiver.wait_for(lambda: set(handler.ids()) >= set(deliveries), within=60)
                assert handler.forged == []
                by_id: dict[str, set[str]] = {}
                for request, payload in zip(handler.verified, handler.payloads, strict=True):
                    by_id.setdefault(request.headers["webhook-id"], set()).add(
                        json.dumps(payload, sort_keys=True)
                    )
                assert all(len(bodies) == 1 for bodies in by_id.values()), "same id, same body"
                assert set(by_id) == set(deliveries)
                assert {deliveries[d] for d in by_id} == set(committed)

                verified = await gateways[1].execute(
                    "{ verifyAuditChain { ok checked reason } }", actor=owner, tenant_id=tenant_id
                )
                check = verified.ok()["verifyAuditChain"]
                assert check["ok"] is True, check
                assert check["checked"] >= len(committed)
                for task in tasks:
                    task.cancel()


async def drive(
    gateways: list[GraphQLClient],
    owner: Actor,
    tenant_id: str,
    api1: subprocess.Popen[bytes],
    worker1: subprocess.Popen[bytes],
) -> list[str]:
    """1,000 createRole mutations, alternating over both gateways, ``CONCURRENCY`` at a time;
    after ``KILL_AFTER`` of them, API 1 and worker 1 are SIGKILLed and the rest go through the
    surviving gateway. Returns the keys of the roles whose creation was acknowledged."""
    acknowledged: list[str] = []
    killed = asyncio.Event()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(MUTATIONS):
        queue.put_nowait(n)

    async def one(n: int) -> None:
        key = f"r{n}_{unique('x').replace('-', '_').lower()}"[:60]
        gateway = gateways[1] if killed.is_set() else gateways[n % 2]
        try:
            r = await gateway.execute(
                CREATE_ROLE,
                {"input": {"key": key, "name": key, "permissions": ["tenant:read"]}},
                actor=owner,
                tenant_id=tenant_id,
                accept="application/json",
            )
        except httpx.TransportError:
            return
        if r.status == 200 and not r.errors and r.data and r.data.get("createRole"):
            acknowledged.append(key)

    async def runner() -> None:
        while True:
            try:
                n = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if n == KILL_AFTER and not killed.is_set():
                api1.send_signal(signal.SIGKILL)
                worker1.send_signal(signal.SIGKILL)
                killed.set()
            await one(n)

    await asyncio.wait_for(asyncio.gather(*(runner() for _ in range(CONCURRENCY))), 300)
    assert killed.is_set()
    await asyncio.wait_for(asyncio.to_thread(api1.wait), WAIT)
    await asyncio.wait_for(asyncio.to_thread(worker1.wait), WAIT)
    return acknowledged


async def role_events(engine: Any, tenant_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        rows = await conn.execute(
            select(Event).where(Event.tenant_id == tenant_id, Event.type == "role.created")
        )
        return {row.id: row for row in rows}


async def webhook_deliveries(engine: Any, tenant_id: str) -> dict[str, str]:
    """delivery id (the webhook-id) -> event id."""
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        rows = await conn.execute(
            select(WebhookDelivery.id, WebhookDelivery.event_id).where(
                WebhookDelivery.tenant_id == tenant_id
            )
        )
        return {row.id: row.event_id for row in rows}
