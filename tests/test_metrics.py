"""Prometheus metrics: an operator scrapes ``/metrics`` and reads what the API and the workers
did, by operation and outcome, with label values no client can multiply.

The in-process servers of the suite share this process's metrics, so each test names its
operations uniquely (or compares before and after); tests whose numbers must be the whole
process's (the cardinality cap, multiprocess mode) run `coregraph serve` processes of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from coregraph.metrics import MAX_OPERATION_NAMES, exposition, forget_engine, watch_engine
from coregraph.streams.relay import Relay, running as relaying
from tests.conftest import TEST_WEBHOOK_KEY
from tests.receiver_support import ReceivedRequest, Receiver, Reply
from tests.streams_support import (
    PREFIX,
    PROTOCOL,
    REDIS_URL,
    WAIT,
    broker_for_this_process,
    emit,
    engine_for,
    migrated_database,
    relay_settings,
    subscribed,
)
from tests.support import GraphQLClient, Server, free_port, running_server, unique
from tests.test_cli_and_deploy import cli_env_for, wait_until_ready
from tests.test_production_surface import production_settings
from tests.webhooks_support import Verifying, add_endpoint

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels (prometheus-client's own parser)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in samples if sample == name]


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def until(
    read: Callable[[], Awaitable[Samples]], done: Callable[[Samples], bool], wait: float = WAIT
) -> Samples:
    """Scrapes until ``done`` holds: a request is counted once its answer has left."""
    deadline = time.monotonic() + wait
    while True:
        samples = await read()
        if done(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the condition: {samples}")
        await asyncio.sleep(0.05)


async def scrape_until(
    http: httpx.AsyncClient, url: str, done: Callable[[Samples], bool], wait: float = WAIT
) -> Samples:
    return await until(lambda: scrape(http, url), done, wait)


def operations(samples: Samples, operation: str, kind: str, outcome: str) -> float:
    return (
        value(
            samples, "coregraph_operations_total", operation=operation, type=kind, outcome=outcome
        )
        or 0.0
    )


async def test_operations_are_counted_by_name_type_and_outcome_on_both_transports(
    server: Server, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    ok, bad, anonymous = unique("MetricsOk"), unique("MetricsBad"), unique("MetricsAnon")
    assert (await client.execute(f"query {ok} {{ viewer {{ id }} }}", actor=owner)).ok()
    r = await client.execute(
        f'query {bad} {{ tenant {{ auditLog(after: "garbage") {{ totalCount }} }} }}',
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.codes == ["BAD_USER_INPUT"]
    r = await client.execute(f"query {anonymous} {{ permissions {{ key }} }}")
    assert r.codes == ["UNAUTHENTICATED"]
    before = await scrape(http, f"{server.base_url}/metrics")
    # Refused before its document was read: no name of the client's reaches a label.
    r = await client.execute(
        f"query {unique('NeverParsed')} {{ viewer {{ id }} }}",
        headers={"Authorization": "Bearer not-a-token"},
    )
    assert r.codes == ["UNAUTHENTICATED"]
    # The same operation over a WebSocket counts under the same labels.
    url = server.url.replace("http://", "ws://")
    async with websockets.connect(url, subprotocols=[PROTOCOL], open_timeout=WAIT) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": owner.headers()}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        query = {"query": f"query {ok} {{ viewer {{ id }} }}"}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": query}))
        assert json.loads(await ws.recv())["type"] == "next"
        assert json.loads(await ws.recv())["type"] == "complete"

    samples = await scrape_until(
        http,
        f"{server.base_url}/metrics",
        lambda s: (
            operations(s, ok, "query", "OK") == 2
            and operations(s, "unknown", "unknown", "UNAUTHENTICATED")
            > operations(before, "unknown", "unknown", "UNAUTHENTICATED")
        ),
    )
    assert operations(samples, bad, "query", "BAD_USER_INPUT") == 1
    assert operations(samples, anonymous, "query", "UNAUTHENTICATED") == 1
    assert not [s for s in series(samples, "coregraph_operations_total") if "NeverParsed" in str(s)]
    histogram = "coregraph_operation_duration_seconds"
    assert value(samples, f"{histogram}_count", operation=ok, type="query") == 2
    assert value(samples, f"{histogram}_bucket", operation=ok, type="query", le="+Inf") == 2
    assert 0 < (value(samples, f"{histogram}_sum", operation=ok, type="query") or 0) < 10
    assert value(samples, f"{histogram}_count", operation=bad, type="query") == 1
    # The API's own pool, read when scraped.
    assert (value(samples, "coregraph_db_pool_size", pool="api") or 0) >= 1
    assert value(samples, "coregraph_db_pool_in_use", pool="api") is not None
    assert value(samples, "coregraph_db_pool_overflow", pool="api") is not None


async def test_refusals_by_a_limit_are_counted_by_their_code(
    server: Server, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    user = await client.sign_up()
    name = unique("MetricsLogin")
    login = f"mutation {name}($i: LoginInput!) {{ login(input: $i) {{ accessToken }} }}"
    wrong = {"i": {"email": user.email, "password": "wrong password 123"}}
    before = await scrape(http, f"{server.base_url}/metrics")
    refused = value(before, "coregraph_refusals_total", code="RATE_LIMITED") or 0
    codes = []
    for _ in range(server.settings.auth_rate_limit_per_account + 1):
        codes += (await client.execute(login, wrong)).codes
    assert codes[-1] == "RATE_LIMITED"
    samples = await scrape_until(
        http,
        f"{server.base_url}/metrics",
        lambda s: operations(s, name, "mutation", "RATE_LIMITED") == 1,
    )
    assert value(samples, "coregraph_refusals_total", code="RATE_LIMITED") == refused + 1
    assert operations(samples, name, "mutation", "UNAUTHENTICATED") == len(codes) - 1


async def test_open_sockets_and_running_subscriptions_are_gauges(
    server: Server, client: GraphQLClient, http: httpx.AsyncClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    metrics_url = f"{server.base_url}/metrics"
    before = await scrape(http, metrics_url)
    sockets = value(before, "coregraph_websocket_connections") or 0
    running = value(before, "coregraph_subscriptions_active") or 0
    name = unique("MetricsWatch")
    query = f"subscription {name} {{ events {{ cursor }} }}"
    async with subscribed(server, owner.headers(tenant_id), query, field="events"):
        samples = await scrape_until(
            http,
            metrics_url,
            lambda s: value(s, "coregraph_subscriptions_active") == running + 1,
        )
        assert value(samples, "coregraph_websocket_connections") == sockets + 1
    samples = await scrape_until(
        http,
        metrics_url,
        # Counted when it ended (the socket closed under it).
        lambda s: (
            value(s, "coregraph_subscriptions_active") == running
            and value(s, "coregraph_websocket_connections") == sockets
            and sum(
                v
                for (metric, labels), v in s.items()
                if metric == "coregraph_operations_total" and ("operation", name) in labels
            )
            == 1
        ),
    )
    # The client went away under it; a subscription is not timed (that is how long it listened).
    assert operations(samples, name, "subscription", "CANCELLED") == 1
    histogram = "coregraph_operation_duration_seconds_count"
    assert value(samples, histogram, operation=name, type="subscription") is None


# --- the workers' metrics: outbox lag, webhook deliveries, endpoint health -----------------


@pytest.fixture(scope="module")
async def own_db(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with migrated_database(str(tmp_path_factory.mktemp("metrics"))) as url:
        yield url


@pytest.fixture(scope="module")
def api(own_db: str) -> Iterator[Server]:
    """The API alone: each test runs the relay and workers it is about."""
    settings = relay_settings(own_db, run_relay="false", run_webhook_worker="false")
    with running_server(settings, migrate_first=False) as srv:
        yield srv


async def this_process() -> Samples:
    """A scrape answered in this test's event loop, where its own engines live."""
    return parse((await exposition()).decode())


async def test_outbox_lag_is_read_from_the_database_when_scraped(
    api: Server, own_db: str, http: httpx.AsyncClient
) -> None:
    client = GraphQLClient(http, api.url)
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with engine_for(own_db, worker=True) as engine, broker_for_this_process() as broker:
        # A process whose relay is stuck: it reports the lag, and nothing publishes.
        watch_engine(engine, "relay", outbox=True)
        try:
            await emit(engine, tenant_id, 3)
            samples = await this_process()
            assert (value(samples, "coregraph_outbox_lag_events") or 0) >= 3
            assert (value(samples, "coregraph_outbox_lag_seconds") or 0) > 0
            assert value(samples, "coregraph_outbox_lag_audit_entries") is not None
            assert value(samples, "coregraph_db_pool_size", pool="relay") is not None
            async with relaying(Relay(engine, broker, poll_seconds=0.05)):
                samples = await until(
                    this_process,
                    lambda s: (
                        value(s, "coregraph_outbox_lag_events") == 0
                        and value(s, "coregraph_outbox_lag_audit_entries") == 0
                    ),
                )
            assert value(samples, "coregraph_outbox_lag_seconds") == 0
        finally:
            forget_engine(engine)


async def test_webhook_deliveries_are_counted_by_outcome_and_endpoints_by_state(
    own_db: str, http: httpx.AsyncClient
) -> None:
    # The embedded shape: the API runs the relay and the webhook worker in its own process.
    settings = relay_settings(
        own_db,
        run_relay="true",
        run_webhook_worker="true",
        relay_poll_seconds=0.05,
        webhook_allow_private=True,
        webhook_retry_schedule=[0.2, 0.2, 60],
        webhook_poll_seconds=0.05,
        webhook_timeout_seconds=5.0,
        webhook_claim_seconds=30.0,
        webhook_shutdown_seconds=2.0,
    )

    async def refuse(request: ReceivedRequest) -> Reply:
        return Reply(500, b"down")

    delivered = "coregraph_webhook_deliveries_total"
    async with AsyncExitStack() as stack:
        server = stack.enter_context(running_server(settings, migrate_first=False))
        client = GraphQLClient(http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        metrics_url = f"{server.base_url}/metrics"
        engine = await stack.enter_async_context(engine_for(own_db))
        verifying = Verifying([])
        good = await stack.enter_async_context(Receiver(verifying))
        bad = await stack.enter_async_context(Receiver(refuse))
        healthy = await add_endpoint(engine, settings, tenant_id, good.url("/hook"))
        verifying.secrets.append(healthy.secret)
        await add_endpoint(engine, settings, tenant_id, bad.url("/hook"))
        before = await scrape(http, metrics_url)
        await emit(engine, tenant_id, 1)
        await good.wait_for(lambda: len(verifying.verified) == 1, WAIT)
        samples = await scrape_until(
            http,
            metrics_url,
            lambda s: (
                (value(s, delivered, outcome="succeeded") or 0)
                == (value(before, delivered, outcome="succeeded") or 0) + 1
                and (value(s, delivered, outcome="retrying") or 0)
                >= (value(before, delivered, outcome="retrying") or 0) + 2
                and value(s, "coregraph_webhook_endpoints", state="failing") == 1
            ),
        )
        assert value(samples, "coregraph_webhook_endpoints", state="healthy") == 1
        assert value(samples, "coregraph_webhook_endpoints", state="disabled") == 0
        assert value(samples, delivered, outcome="failed") == value(
            before, delivered, outcome="failed"
        )
        for pool in ("api", "relay", "webhooks"):
            assert value(samples, "coregraph_db_pool_size", pool=pool) is not None
        assert value(samples, "coregraph_outbox_lag_events") is not None


# --- where /metrics is served ----------------------------------------------------------------


async def test_production_serves_metrics_on_the_metrics_port_only_unless_configured(
    database_url: str, http: httpx.AsyncClient
) -> None:
    port = free_port()
    with running_server(production_settings(database_url, metrics_port=port)) as production:
        assert (await http.get(f"{production.base_url}/metrics")).status_code == 404
        await http.post(production.url, json={"query": "query ProductionProbe { __typename }"})
        samples = await scrape_until(
            http,
            f"http://127.0.0.1:{port}/metrics",
            lambda s: operations(s, "ProductionProbe", "query", "OK") >= 1,
        )
        assert value(samples, "coregraph_db_pool_size", pool="api") is not None
        assert (await http.get(f"http://127.0.0.1:{port}/graphql")).status_code == 404
    with running_server(
        production_settings(database_url, metrics_public=True), migrate_first=False
    ) as production:
        await scrape(http, f"{production.base_url}/metrics")


# --- processes of their own ------------------------------------------------------------------


def _serve(env: dict[str, str], port: int, log: Path, *extra: str) -> subprocess.Popen[str]:
    return _coregraph(env, log, "serve", "--port", str(port), *extra)


def _coregraph(env: dict[str, str], log: Path, *command: str) -> subprocess.Popen[str]:
    """A `coregraph` command, its log lines (one per request) in ``log``: a pipe nobody reads
    would stall it once full."""
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "coregraph.cli", *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def serve_env(database_url: str) -> dict[str, str]:
    """`coregraph serve` on the suite's database, beside its server: no relay of its own."""
    return cli_env_for(database_url) | {
        "COREGRAPH_RUN_RELAY": "false",
        "COREGRAPH_RUN_WEBHOOK_WORKER": "false",
    }


async def test_thousands_of_operation_names_cannot_grow_the_series_past_the_cap(
    database_url: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    port = free_port()
    server = _serve(serve_env(database_url), port, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as sync_http:
            wait_until_ready(sync_http, base, server)
        sent = 5 * MAX_OPERATION_NAMES
        limit = asyncio.Semaphore(16)

        async def send(n: int) -> None:
            async with limit:
                r = await http.post(
                    f"{base}/graphql", json={"query": f"query Client{n} {{ __typename }}"}
                )
                assert r.status_code == 200

        await asyncio.gather(*(send(n) for n in range(sent)))
        # Names no document holds, and names too long for a label, are not labels either.
        r = await http.post(
            f"{base}/graphql",
            json={"query": "query A { __typename }", "operationName": "usr_01HX/secret"},
        )
        assert r.json()["errors"]
        long_name = "N" * 65
        await http.post(f"{base}/graphql", json={"query": f"query {long_name} {{ __typename }}"})
        samples = await scrape_until(
            http,
            f"{base}/metrics",
            lambda s: (
                sum(v for (name, _), v in s.items() if name == "coregraph_operations_total")
                >= sent + 2
            ),
        )
        names = {labels["operation"] for labels in series(samples, "coregraph_operations_total")}
        assert len(names - {"other", "unknown", "anonymous"}) <= MAX_OPERATION_NAMES
        assert "usr_01HX/secret" not in names and long_name not in names
        others = operations(samples, "other", "query", "OK")
        assert others >= sent - MAX_OPERATION_NAMES + 1
        outcomes = {labels["outcome"] for labels in series(samples, "coregraph_operations_total")}
        assert outcomes <= {"OK", "BAD_REQUEST", "GRAPHQL_VALIDATION_FAILED", "OTHER"}
        histograms = series(samples, "coregraph_operation_duration_seconds_count")
        assert len(histograms) <= MAX_OPERATION_NAMES + 3
    finally:
        _stop(server)


def test_several_processes_on_one_port_share_their_counts_in_multiprocess_mode(
    database_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    port, metrics_port = free_port(), free_port()
    env = serve_env(database_url) | {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "COREGRAPH_ENV": "production",
        "COREGRAPH_JWT_SECRET": "multiprocess-test-secret-0123456789-abcdef",
        "COREGRAPH_WEBHOOK_SECRET_KEYS": TEST_WEBHOOK_KEY,
        "COREGRAPH_PASSWORD_HASH_TIME_COST": "2",
        "COREGRAPH_PASSWORD_HASH_MEMORY_KIB": "19456",
        "COREGRAPH_METRICS_PORT": str(metrics_port),
    }
    server = _serve(env, port, tmp_path / "serve.log", "--workers", "2")
    base = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with httpx.Client(timeout=10) as http:
            wait_until_ready(http, base, server)
            assert http.get(f"{base}/metrics").status_code == 404
            sent = 40
            for _ in range(sent):
                # A connection each, so both processes take some.
                with httpx.Client(timeout=10) as once:
                    r = once.post(f"{base}/graphql", json={"query": "query Spread { __typename }"})
                    assert r.status_code == 200
            deadline = time.monotonic() + WAIT
            while True:
                response = http.get(metrics_url)
                assert response.status_code == 200
                samples = parse(response.text)
                pids = {labels["pid"] for labels in series(samples, "coregraph_db_pool_size")}
                if operations(samples, "Spread", "query", "OK") == sent and len(pids) == 2:
                    break
                assert time.monotonic() < deadline, (samples, pids)
                time.sleep(0.1)
            # Every scrape, whichever process answers it, counts every process's requests.
            for _ in range(10):
                samples = parse(http.get(metrics_url).text)
                assert operations(samples, "Spread", "query", "OK") == sent
    finally:
        _stop(server)
    assert not [f for f in os.listdir(directory) if f.startswith("gauge_live")]


async def test_the_worker_serves_its_own_metrics_on_its_metrics_port(
    own_db: str, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    port = free_port()
    env = cli_env_for(own_db) | {
        "COREGRAPH_METRICS_PORT": str(port),
        "COREGRAPH_WEBHOOK_SECRET_KEYS": TEST_WEBHOOK_KEY,
        "COREGRAPH_REDIS_PREFIX": PREFIX,
    }
    if REDIS_URL:
        env["COREGRAPH_REDIS_URL"] = REDIS_URL
    worker = _coregraph(env, tmp_path / "worker.log", "worker")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            try:
                samples = await scrape(http, f"http://127.0.0.1:{port}/metrics")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the worker never served its metrics"
                await asyncio.sleep(0.1)
        # What a worker does: relay (its lag), deliver webhooks (counts and endpoints).
        assert value(samples, "coregraph_outbox_lag_events") is not None
        assert value(samples, "coregraph_webhook_endpoints", state="healthy") is not None
        assert value(samples, "coregraph_webhook_deliveries_total", outcome="succeeded") is not None
        for pool in ("relay", "webhooks"):
            assert value(samples, "coregraph_db_pool_size", pool=pool) is not None
        assert value(samples, "coregraph_db_pool_size", pool="api") is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
