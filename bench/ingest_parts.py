"""``python -m bench.ingest_parts``: CPU per call of the parts of an ``emitEvent`` that are not
GraphQL or HTTP, in this process, on PostgreSQL — for comparing versions of the API key's
authentication, the emit's unit of work and the outbox relay's pass (``bench.ingest_inprocess``
gives the whole request, ``bench.ingest`` the throughput).

The same fresh database, tenant, API key, event type and payload as ``bench.ingest_inprocess``;
then, each ``--calls`` sequential calls in ``--batches`` batches with the cyclic GC paused
(user + system CPU per call, the lowest batch):

- ``authenticate``: ``Authenticator.authenticate`` with the API key (one read of the key);
- ``api_key_principal() on the driver``: that read alone on one held connection (the floor);
- ``emit_once``: ``services.events.emit_once`` in a ``UnitOfWork`` without the request's
  after-commit hooks (validation, the one-statement commit with its usage record);
- ``emit_once + relay pass``: the same, then one ``Relay.publish_pending`` pass (as the
  worker role) publishing that event to the in-process broker: the pass's own cost is the
  difference.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable

from bench.ingest import DATA, DEFAULT_ADMIN_DSN, EVENT_TYPE
from bench.ingest_inprocess import ingest_app, unreachable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_parts", description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_POSTGRES_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000, help="per batch (1000)")
    return parser.parse_args(argv)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(
    name: str, once: Callable[[], Awaitable[object]], args: argparse.Namespace
) -> None:
    for _ in range(args.calls // 5):
        await once()
    best = float("inf")
    for _ in range(args.batches):
        gc.collect()
        gc.disable()
        try:
            started = _cpu()
            for _ in range(args.calls):
                await once()
            best = min(best, (_cpu() - started) / args.calls * 1000)
        finally:
            gc.enable()
    print(f"{name:<36} {best:>8.3f}", flush=True)


async def _main(args: argparse.Namespace, tmp: str) -> int:
    if await unreachable(args.dsn, "bench.ingest_parts"):
        return 0
    async with ingest_app(args.dsn, tmp) as (app, _http, key):
        from coregraph import db
        from coregraph.auth import secrets
        from coregraph.request import RequestMeta
        from coregraph.services import events
        from coregraph.services.uow import UnitOfWork
        from coregraph.streams.relay import Relay

        runtime = app.state.runtime
        settings = runtime.settings
        worker_engine = db.create_engine(settings, role=settings.database_worker_role)
        try:
            meta = RequestMeta(request_id="bench")
            bearer = f"Bearer {key}"
            authenticator = runtime.authenticator
            principal = await authenticator.authenticate(bearer, None, None, meta)
            tenant_id = principal.tenant_id
            assert tenant_id is not None
            keys = itertools.count()
            relay = Relay(worker_engine, runtime.broker)

            def unit_of_work() -> UnitOfWork:
                return UnitOfWork(runtime.engine, principal, meta)

            async def emit() -> None:
                await events.emit_once(
                    unit_of_work,
                    tenant_id,
                    type=EVENT_TYPE,
                    data=DATA,
                    idempotency_key=f"k{next(keys)}",
                    default_plan=settings.default_plan,
                )

            async def emit_and_relay() -> None:
                await emit()
                assert await relay.publish_pending() == 1

            gc.collect()
            gc.freeze()
            print(f"{'CPU ms per call (min over batches)':<36} {'':>8}")
            await _measure(
                "authenticate",
                lambda: authenticator.authenticate(bearer, None, None, meta),
                args,
            )
            digest = secrets.digest(key)
            async with runtime.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                await _measure(
                    "api_key_principal() on the driver",
                    lambda: driver.fetchrow("SELECT * FROM api_key_principal($1)", digest),
                    args,
                )
            await _measure("emit_once", emit, args)
            while await relay.publish_pending():
                pass  # what the targets before left behind
            await _measure("emit_once + relay pass", emit_and_relay, args)
        finally:
            await worker_engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="coregraph-ingest-parts-")
    try:
        return asyncio.run(_main(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
