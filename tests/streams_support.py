"""What the stream tests share: this run's Redis prefix, events committed as a service states
them, `coregraph worker` as a process, and a graphql-transport-ws subscriber."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import websockets
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from coregraph import db, migrate
from coregraph.auth.principal import system_principal
from coregraph.models import Event
from coregraph.models.base import Environment
from coregraph.request import system_request
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings
from coregraph.streams.broker import Broker, InProcessBroker, RedisBroker
from tests.conftest import make_settings
from tests.support import Server, create_test_database, drop_test_database, env_database_url

REDIS_URL = os.environ.get("COREGRAPH_REDIS_URL") or None
# Messages of this run only, even on a Redis other runs share.
PREFIX = f"cgtest-{uuid.uuid4().hex[:8]}"
WAIT = 15.0
PROTOCOL = Subprotocol("graphql-transport-ws")


def relay_settings(url: str, **overrides: object) -> Settings:
    return make_settings(url, redis_prefix=PREFIX, **overrides)


@asynccontextmanager
async def engine_for(url: str, *, worker: bool = False) -> AsyncIterator[AsyncEngine]:
    """An engine on ``url`` as the API connects, or as the worker role (``worker=True``)."""
    settings = relay_settings(url)
    engine = db.create_engine(settings, role=settings.database_worker_role if worker else None)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def migrated_database(tmp_dir: str) -> AsyncIterator[str]:
    """A migrated database of its own (a SQLite file in ``tmp_dir``, or a new PostgreSQL
    database), for tests whose relay must be the only one publishing it."""
    base = env_database_url()
    url, name = await create_test_database(base, tmp_dir)
    await migrate.upgrade(relay_settings(url))
    try:
        yield url
    finally:
        if name and base:
            await drop_test_database(base, name)


async def emit(
    engine: AsyncEngine,
    tenant_id: str,
    count: int,
    environment: Environment = Environment.LIVE,
    *,
    per_commit: int = 1,
    type: str = "test.pinged",
) -> None:
    """``count`` events, ``per_commit`` to a unit of work, as a service would state them."""
    for start in range(0, count, per_commit):
        async with UnitOfWork(engine, system_principal("test"), system_request("test")) as uow:
            await uow.allow_tenant(tenant_id)
            for n in range(start, min(count, start + per_commit)):
                uow.emit(type, tenant_id=tenant_id, data={"n": n}, environment=environment)


async def sequences(engine: AsyncEngine, tenant_id: str, environment: Environment) -> list[int]:
    async with engine.connect() as conn:
        await db.scope_transaction(conn, tenant_ids=[tenant_id])
        rows = await conn.scalars(
            select(Event.sequence)
            .where(Event.tenant_id == tenant_id, Event.environment == environment)
            .order_by(Event.sequence)
        )
        return list(rows)


def worker_env(database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "COREGRAPH_ENV": "test",
        "COREGRAPH_DATABASE_URL": database_url,
        "COREGRAPH_REDIS_URL": str(REDIS_URL),
        "COREGRAPH_REDIS_PREFIX": PREFIX,
        "COREGRAPH_RELAY_POLL_SECONDS": "0.05",
    }


@contextmanager
def worker_process(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`coregraph worker` as production runs it, killed at the latest when the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "coregraph.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)
        if process.stderr is not None:
            process.stderr.close()


@asynccontextmanager
async def broker_for_this_process() -> AsyncIterator[Broker]:
    """The broker a process of this deployment holds: Redis when configured."""
    if REDIS_URL is None:
        broker: Broker = InProcessBroker()
        yield broker
        await broker.close()
        return
    from redis.asyncio import Redis

    redis = Redis.from_url(REDIS_URL)
    broker = RedisBroker(redis, PREFIX)
    try:
        yield broker
    finally:
        await broker.close()
        await redis.aclose()


class Subscriber:
    """One graphql-transport-ws subscription on its own socket, as a client library runs it."""

    def __init__(self, ws: ClientConnection, field: str, operation_id: str = "1") -> None:
        self.ws = ws
        self.field = field
        self.operation_id = operation_id
        self.items: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.completed = False

    async def start(self, query: str, variables: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {"query": query, "variables": variables or {}}
        message = {"id": self.operation_id, "type": "subscribe", "payload": payload}
        await self.ws.send(json.dumps(message))

    async def _take_one(self) -> None:
        message = json.loads(await self.ws.recv())
        if message.get("id", self.operation_id) != self.operation_id:
            return  # another subscription's, on the same socket
        kind = message["type"]
        if kind == "next":
            payload = message["payload"]
            if payload.get("errors"):
                self.errors.extend(payload["errors"])
            if payload.get("data") and payload["data"].get(self.field) is not None:
                self.items.append(payload["data"][self.field])
        elif kind == "error":
            self.errors.extend(message["payload"])
            self.completed = True
        elif kind == "complete":
            self.completed = True

    async def until(self, done: Any, wait: float = WAIT) -> None:
        """Reads messages until ``done(self)``, or fails after ``wait`` seconds."""

        async def run() -> None:
            while not done(self):
                if self.completed:
                    raise AssertionError(f"ended: items {self.items}, errors {self.errors}")
                await self._take_one()

        try:
            await asyncio.wait_for(run(), wait)
        except TimeoutError:
            raise AssertionError(
                f"stopped waiting with {len(self.items)} items, errors {self.errors}"
            ) from None

    async def items_count(self, count: int) -> list[dict[str, Any]]:
        await self.until(lambda s: len(s.items) >= count)
        return self.items

    async def ended(self, wait: float = WAIT) -> list[dict[str, Any]]:
        """Reads until the subscription ends; its errors."""

        async def run() -> None:
            while not self.completed:
                await self._take_one()

        try:
            await asyncio.wait_for(run(), wait)
        except TimeoutError:
            raise AssertionError(f"still running with {len(self.items)} items") from None
        return self.errors

    def sequences(self) -> list[int]:
        return [item["node"]["sequence"] for item in self.items]


@asynccontextmanager
async def subscribed(
    server: Server,
    credential: dict[str, str],
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    field: str,
    max_queue: int | None = 16,
) -> AsyncIterator[Subscriber]:
    """A socket acknowledged with ``credential``, with one subscription started on it."""
    url = server.url.replace("http://", "ws://")
    async with websockets.connect(
        url, subprotocols=[PROTOCOL], open_timeout=WAIT, max_queue=max_queue
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": credential}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert ack["type"] == "connection_ack", ack
        subscriber = Subscriber(ws, field)
        await subscriber.start(query, variables)
        yield subscriber
