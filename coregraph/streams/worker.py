"""The worker process (``coregraph worker``): the outbox relay until SIGTERM or SIGINT.

Production runs it next to the API processes, as many as wanted (they share the chains, see
``coregraph.streams.relay``); ``coregraph serve`` on the embedded defaults runs the same relay
in-process instead (``relay_in_process``). On PostgreSQL the relay connects as
``COREGRAPH_DATABASE_WORKER_ROLE``, which reads across tenants through its own policies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from coregraph import db
from coregraph.settings import Settings
from coregraph.streams.broker import Broker, create_broker
from coregraph.streams.relay import Relay, running

log = logging.getLogger("coregraph.worker")


@contextlib.asynccontextmanager
async def relay_in_process(settings: Settings, broker: Broker) -> AsyncIterator[Relay]:
    """A relay with an engine of its own (the worker role), running for the block."""
    engine = db.create_engine(settings, role=settings.database_worker_role)
    relay = Relay(engine, broker, poll_seconds=settings.relay_poll_seconds)
    try:
        async with running(relay):
            yield relay
    finally:
        await engine.dispose()


async def run(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then finish the current pass and leave."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    redis = None
    if settings.redis_url:
        from redis.asyncio import Redis

        redis = Redis.from_url(settings.redis_url)
    broker = create_broker(settings, redis)
    if redis is None:
        log.warning(
            "COREGRAPH_REDIS_URL is not set: what this worker publishes reaches no other "
            "process (coregraph serve runs the relay itself on the embedded defaults)"
        )
    try:
        async with relay_in_process(settings, broker):
            log.info("worker running", extra={"broker": type(broker).__name__})
            await stop.wait()
            log.info("worker stopping")
    finally:
        await broker.close()
        if redis is not None:
            await redis.aclose()
