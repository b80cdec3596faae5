"""The worker process (``coregraph worker``): the outbox relay, webhook delivery
(``coregraph.streams.webhooks``), audit retention every
``COREGRAPH_AUDIT_PRUNE_INTERVAL_SECONDS`` and the files' cleanup (``coregraph files-cleanup``)
every ``COREGRAPH_FILES_CLEANUP_INTERVAL_SECONDS``, until SIGTERM or SIGINT.

Production runs it next to the API processes, as many as wanted (they share the chains, see
``coregraph.streams.relay``; two prunes of one chain wait for each other on its head row);
``coregraph serve`` on the embedded defaults runs the same tasks in-process instead
(``relay_in_process``, ``webhooks_in_process``). On PostgreSQL they connect as
``COREGRAPH_DATABASE_WORKER_ROLE``, which reads across tenants through its own policies and
alone may delete expired audit entries; never as a superuser or the tables' owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db, telemetry
from coregraph.metrics import forget_engine, running as running_metrics, watch_engine
from coregraph.services import approvals, audit_retention, files
from coregraph.settings import Settings
from coregraph.streams.broker import Broker, create_broker
from coregraph.streams.relay import Relay, running
from coregraph.streams.webhooks import WebhookWorker, running as delivering

log = logging.getLogger("coregraph.worker")


@contextlib.asynccontextmanager
async def relay_in_process(settings: Settings, broker: Broker) -> AsyncIterator[Relay]:
    """A relay, the audit pruning, the files' cleanup and the approvals' expiry with an
    engine of their own (the worker role), running for the block."""
    engine = db.create_engine(settings, role=settings.database_worker_role)
    watch_engine(engine, "relay", outbox=True)
    relay = Relay(engine, broker, poll_seconds=settings.relay_poll_seconds)
    pruning = asyncio.create_task(
        prune_periodically(engine, settings.audit_prune_interval_seconds),
        name="coregraph-audit-pruning",
    )
    cleaning = asyncio.create_task(
        files.clean_periodically(engine, settings), name="coregraph-files-cleanup"
    )
    expiring = asyncio.create_task(
        approvals.expire_periodically(engine, settings.approval_expiry_interval_seconds),
        name="coregraph-approval-expiry",
    )
    try:
        async with running(relay):
            yield relay
    finally:
        for task in (pruning, cleaning, expiring):
            task.cancel()
        await asyncio.gather(pruning, cleaning, expiring, return_exceptions=True)
        forget_engine(engine)
        await engine.dispose()


@contextlib.asynccontextmanager
async def webhooks_in_process(settings: Settings, broker: Broker) -> AsyncIterator[WebhookWorker]:
    """A webhook worker with an engine of its own (the worker role), running for the block; on
    exit it finishes or releases its requests in flight (``COREGRAPH_WEBHOOK_SHUTDOWN_SECONDS``)."""
    engine = db.create_engine(settings, role=settings.database_worker_role)
    watch_engine(engine, "webhooks", webhook_endpoints=True)
    worker = WebhookWorker(engine, broker, settings)
    try:
        async with delivering(worker):
            yield worker
    finally:
        forget_engine(engine)
        await engine.dispose()


async def prune_periodically(engine: AsyncEngine, interval_seconds: float) -> None:
    """Prune expired audit entries now and then every ``interval_seconds``, until cancelled.
    A prune that is cut short rolls back whole: its batch is taken again next time."""
    while True:
        try:
            pruned = await audit_retention.prune_expired(engine)
            if pruned:
                log.info(
                    "audit entries pruned",
                    extra={
                        "tenants": len({p.tenant_id for p in pruned}),
                        "entries": sum(p.count for p in pruned),
                    },
                )
        except Exception:
            # The database is away (or one tenant's prune failed): try again next interval.
            log.exception("audit pruning failed; retrying")
        await asyncio.sleep(interval_seconds)


async def run(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then finish the current pass and leave."""
    # Before the engines are made: they are instrumented as they are (OTEL_* variables).
    telemetry.configure_from_environment()
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
        async with (
            running_metrics(settings),
            relay_in_process(settings, broker),
            webhooks_in_process(settings, broker),
        ):
            log.info("worker running", extra={"broker": type(broker).__name__})
            await stop.wait()
            log.info("worker stopping")
    finally:
        await broker.close()
        if redis is not None:
            await redis.aclose()
