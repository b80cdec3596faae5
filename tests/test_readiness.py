"""`GET /readyz` as a load balancer or an orchestrator polls it: a JSON body with every check,
503 when Redis is down (killed, or black-holed: the probe still answers within its deadline)
or when the outbox relays have fallen further behind the commits than allowed, and ready
again once that is over.

Servers here have a database of their own and run no relay unless the test starts one, so
the lag they report is the test's doing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest

from coregraph.streams.relay import Relay, running as relaying
from tests.streams_support import (
    WAIT,
    broker_for_this_process,
    emit,
    engine_for,
    migrated_database,
    relay_settings,
)
from tests.support import GraphQLClient, running_server
from tests.test_stream_interruption import REDIS_SERVER, PrivateRedis

# What a probe may take beyond its checks' deadline.
SLACK = 3.0


@pytest.fixture(scope="module")
async def own_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("readiness"))) as url:
        yield url


async def probe(http: httpx.AsyncClient, base_url: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    r = await http.get(f"{base_url}/readyz")
    return r.status_code, r.json(), time.monotonic() - started


async def until(
    check: Callable[[], Awaitable[tuple[int, dict[str, Any], float]]],
    done: Callable[[int, dict[str, Any]], bool],
    what: str,
) -> tuple[int, dict[str, Any], float]:
    deadline = time.monotonic() + WAIT
    while True:
        status, body, took = await check()
        if done(status, body):
            return status, body, took
        assert time.monotonic() < deadline, f"not {what} within {WAIT} s: {status} {body}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers: a Redis behind a
    dropped route or a hung host looks like this. Its redis:// URL."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server to run a Redis it may kill")
async def test_readyz_reports_redis_down_while_it_is_and_ready_once_it_is_back(
    own_db: str, http: httpx.AsyncClient
) -> None:
    redis = PrivateRedis()
    await redis.start()
    try:
        settings = relay_settings(own_db, redis_url=redis.url, readyz_timeout_seconds=1.0)
        with running_server(settings, migrate_first=False) as srv:
            # The first probes of a fresh server open its first connections: on a loaded
            # machine one may miss the 1 s deadline, so wait for the ready state itself.
            _status, body, _ = await until(
                lambda: probe(http, srv.base_url), lambda s, _: s == 200, "ready"
            )
            assert body["status"] == "ready"
            assert body["checks"] == {
                "database": "ok",
                "migrations": "ok",
                "redis": "ok",
                "relay": "ok",
            }
            await redis.kill()

            def only_redis_named(status: int, body: dict[str, Any]) -> bool:
                # On a loaded machine a probe taken while the server is busy noticing the lost
                # connection may miss the 1 s deadline on other checks too; the state to reach
                # is the steady one, where only Redis is named.
                others = {k: v for k, v in body["checks"].items() if k != "redis"}
                return status == 503 and others == {
                    "database": "ok",
                    "migrations": "ok",
                    "relay": "ok",
                }

            _status, body, took = await until(
                lambda: probe(http, srv.base_url), only_redis_named, "unready, naming only Redis"
            )
            assert body["status"] == "unavailable"
            assert body["checks"]["redis"].startswith("unreachable"), body
            assert took < 1.0 + SLACK
            await redis.start()  # on the same port: the server's client reconnects
            await until(lambda: probe(http, srv.base_url), lambda s, _: s == 200, "ready again")
    finally:
        await redis.kill()


async def test_a_redis_that_never_answers_fails_the_probe_within_its_deadline(
    own_db: str, http: httpx.AsyncClient
) -> None:
    async with black_hole() as url:
        settings = relay_settings(own_db, redis_url=url, readyz_timeout_seconds=2.0)
        with running_server(settings, migrate_first=False) as srv:
            for _ in range(2):  # a second probe is as prompt: nothing queues behind the first
                status, body, took = await probe(http, srv.base_url)
                assert status == 503
                assert body["checks"]["redis"] == "unreachable: no answer within 2 s"
                assert took < 2.0 + SLACK, took


async def test_readyz_reports_the_relay_lag_and_fails_past_its_limit_until_a_relay_catches_up(
    own_db: str, http: httpx.AsyncClient
) -> None:
    limit = 1.0
    settings = relay_settings(
        own_db, run_relay="false", run_webhook_worker="false", readyz_max_relay_lag_seconds=limit
    )
    async with AsyncExitStack() as stack:
        srv = stack.enter_context(running_server(settings, migrate_first=False))
        app_engine = await stack.enter_async_context(engine_for(own_db))
        worker_engine = await stack.enter_async_context(engine_for(own_db, worker=True))
        broker = await stack.enter_async_context(broker_for_this_process())
        # Whatever earlier tests left unpublished is published first: the lag starts at 0.
        async with relaying(Relay(worker_engine, broker, poll_seconds=0.05)):
            status, body, _ = await until(
                lambda: probe(http, srv.base_url),
                lambda _, b: b["relay_lag"]["events"] == 0 and b["relay_lag"]["audit_entries"] == 0,
                "caught up",
            )
            assert status == 200 and body["relay_lag"]["seconds"] == 0
            api = GraphQLClient(http, srv.url)
            tenant_id = await api.create_tenant(await api.sign_up())
            await until(
                lambda: probe(http, srv.base_url),
                lambda _, b: b["relay_lag"]["audit_entries"] == 0,
                "the tenant's entries published",
            )

        await emit(app_engine, tenant_id, 7, per_commit=7)
        emitted = time.monotonic()
        status, body, _ = await probe(http, srv.base_url)
        assert body["relay_lag"]["events"] == 7, body
        if time.monotonic() - emitted < limit:
            assert status == 200 and body["checks"]["relay"] == "ok", body
        status, body, _ = await until(
            lambda: probe(http, srv.base_url), lambda s, _: s == 503, "unready"
        )
        assert body["checks"]["relay"].startswith("lagging: "), body
        # Past the limit, as the check found; the figure is rounded to milliseconds (1.0004 -> 1.0).
        assert body["relay_lag"]["events"] == 7 and body["relay_lag"]["seconds"] >= limit
        assert {k: v for k, v in body["checks"].items() if k != "relay"} == {
            "database": "ok",
            "migrations": "ok",
            **({"redis": "ok"} if settings.redis_url else {}),
        }

        async with relaying(Relay(worker_engine, broker, poll_seconds=0.05)):
            status, body, _ = await until(
                lambda: probe(http, srv.base_url), lambda s, _: s == 200, "ready again"
            )
        assert body["relay_lag"] == {"events": 0, "audit_entries": 0, "seconds": 0.0}


async def test_a_lag_limit_of_zero_reports_the_lag_without_checking_it(
    own_db: str, http: httpx.AsyncClient
) -> None:
    settings = relay_settings(
        own_db, run_relay="false", run_webhook_worker="false", readyz_max_relay_lag_seconds=0
    )
    with running_server(settings, migrate_first=False) as srv:
        api = GraphQLClient(http, srv.url)
        await api.create_tenant(await api.sign_up())  # its entries wait: no relay runs
        _status, body, _ = await until(
            lambda: probe(http, srv.base_url), lambda s, _: s == 200, "ready"
        )
    assert "relay" not in body["checks"]
    assert body["relay_lag"]["audit_entries"] > 0 and body["relay_lag"]["seconds"] >= 0


async def test_a_lag_that_cannot_be_read_fails_readiness_only_when_checked(
    own_db: str, http: httpx.AsyncClient
) -> None:
    """The lag is read as the worker role: a login that may not take it (a role that does not
    exist here) cannot read it."""
    if own_db.startswith("sqlite"):
        pytest.skip("SQLite has no roles")
    for limit, ready in ((300.0, False), (0.0, True)):
        settings = relay_settings(
            own_db,
            run_relay="false",
            run_webhook_worker="false",
            database_worker_role="coregraph_no_such_role",
            readyz_max_relay_lag_seconds=limit,
        )
        with running_server(settings, migrate_first=False) as srv:
            want = 200 if ready else 503
            status, body, _ = await until(
                lambda srv=srv: probe(http, srv.base_url),
                lambda s, _, want=want: s == want,
                "ready" if ready else "unready",
            )
        if ready:
            assert status == 200 and "relay" not in body["checks"], body
            assert body["relay_lag"]["unknown"].startswith("unreachable: "), body
        else:
            assert status == 503 and body["checks"]["relay"].startswith("unreachable: "), body
            assert "relay_lag" not in body
