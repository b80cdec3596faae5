"""``python -m bench.inprocess``: server CPU per request without the network or a load
generator, for comparing changes on a noisy machine.

Both apps (coregraph and ``bench.plain``) run in this process on one fresh SQLite file, called
through ``httpx.ASGITransport`` (the whole ASGI path: middleware, routing, authentication, SQL,
execution, serialisation; no uvicorn, no sockets). Each target runs ``--batches`` batches of
``--per-batch`` sequential requests with the cyclic GC paused inside a batch and run between
batches; the figures are CPU time per request (minimum and median over batches) and the single
cheapest request. The minima are the steadiest figures on a shared machine, and the ratio
within one round steadier than either. ``--profile PATH`` writes a cProfile of extra coregraph
requests.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from bench import seed
from bench.__main__ import GRAPHQL_HEADERS, MEMBERS_QUERY
from bench.servers import bench_env

if TYPE_CHECKING:
    from coregraph.settings import Settings


async def _cpu_per_request(
    client: httpx.AsyncClient, request: httpx.Request, batches: int, per_batch: int
) -> tuple[float, float, float]:
    """(minimum, median) of the batches' CPU per request, and the single cheapest request."""
    results = []
    cheapest = float("inf")
    for _ in range(batches):
        gc.collect()
        gc.disable()
        try:
            batch_started = time.process_time()
            for _ in range(per_batch):
                started = time.process_time()
                response = await client.send(request)
                cheapest = min(cheapest, time.process_time() - started)
                if response.status_code != 200 or b'"errors"' in response.content:
                    raise SystemExit(f"bad response: {response.status_code} {response.text[:300]}")
            results.append((time.process_time() - batch_started) / per_batch * 1000)
        finally:
            gc.enable()
    return min(results), statistics.median(results), cheapest * 1000


@asynccontextmanager
async def both_apps(prefix: str) -> AsyncIterator[tuple[Settings, Any, Any]]:
    """(settings, coregraph's app, the plain app) in this process, on a fresh migrated SQLite
    file in a temporary directory removed on the way out."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        os.environ.update(bench_env(tmp))
        from bench import plain
        from coregraph import migrate
        from coregraph.app import create_app
        from coregraph.settings import load_settings

        settings = load_settings()
        await migrate.upgrade(settings)
        yield settings, create_app(settings), plain.create_app()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    async with both_apps("coregraph-inprocess-") as (settings, coregraph_app, plain_app):
        from coregraph.app import create_app

        walking_app = create_app(settings.model_copy(update={"compiled_plans": False}))
        cg = httpx.AsyncClient(transport=httpx.ASGITransport(coregraph_app), base_url="http://cg")
        walk = httpx.AsyncClient(transport=httpx.ASGITransport(walking_app), base_url="http://cg")
        pl = httpx.AsyncClient(transport=httpx.ASGITransport(plain_app), base_url="http://pl")
        tenant = await seed.load_tenant(
            settings, "http://cg/graphql", args.members, httpx.ASGITransport(coregraph_app)
        )
        graphql = cg.build_request(
            "POST",
            "/graphql",
            headers={**GRAPHQL_HEADERS, **tenant.headers()},
            content=orjson.dumps({"query": MEMBERS_QUERY}),
        )
        baseline = pl.build_request(
            "GET", f"/tenant/members?first={args.members}", headers=tenant.headers()
        )
        g = orjson.loads((await cg.send(graphql)).content)
        p = orjson.loads((await pl.send(baseline)).content)
        if g.get("errors") or g["data"] != p["data"]:
            raise SystemExit("coregraph and the plain endpoint disagree")
        gc.collect()
        gc.freeze()
        for _ in range(args.warmup):
            await cg.send(graphql)
            await walk.send(graphql)
            await pl.send(baseline)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.per_batch):
                await cg.send(graphql)
            profiler.disable()
            profiler.dump_stats(args.profile)
        w = orjson.loads((await walk.send(graphql)).content)
        if w.get("errors") or w["data"] != p["data"]:
            raise SystemExit("coregraph without plans and the plain endpoint disagree")
        for _ in range(args.rounds):
            g_min, g_med, g_one = await _cpu_per_request(cg, graphql, args.batches, args.per_batch)
            w_min, w_med, w_one = await _cpu_per_request(
                walk, graphql, args.batches, args.per_batch
            )
            p_min, p_med, p_one = await _cpu_per_request(pl, baseline, args.batches, args.per_batch)
            print(
                f"CPU ms/request, batches min/median, cheapest single: "
                f"coregraph {g_min:.2f}/{g_med:.2f}, {g_one:.2f} | "
                f"without plans {w_min:.2f}/{w_med:.2f}, {w_one:.2f} | "
                f"plain {p_min:.2f}/{p_med:.2f}, {p_one:.2f} | "
                f"ratio plain/coregraph {p_min / g_min:.2f}/{p_med / g_med:.2f}, "
                f"{p_one / g_one:.2f} (without plans {p_min / w_min:.2f}/{p_med / w_med:.2f}, "
                f"{p_one / w_one:.2f})",
                flush=True,
            )
        from coregraph.schema.compiled import STATS

        print(f"coregraph executions: {STATS} (planned / fell back / stock executor)")
        await cg.aclose()
        await walk.aclose()
        await pl.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--per-batch", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", metavar="PATH")
    asyncio.run(main(parser.parse_args()))
