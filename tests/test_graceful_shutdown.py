"""Leaving on SIGTERM, as an orchestrator stops a process to replace it: `coregraph serve` stops
accepting connections, lets the HTTP requests in flight finish within
COREGRAPH_SHUTDOWN_GRACE_SECONDS and closes WebSockets with 1001 (going away) so clients
reconnect to another process; `coregraph worker --concurrency N` sends at most N webhooks at
once and, stopped, hands back the deliveries it could not finish.

Real `coregraph serve` and `coregraph worker` processes on 127.0.0.1, sharing the test
database (and Redis, when configured); requests are written byte by byte on raw sockets, so
one is reliably in flight when the signal arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from coregraph.serving import GOING_AWAY
from tests.conftest import make_settings
from tests.receiver_support import Receiver
from tests.streams_support import (
    PREFIX,
    PROTOCOL,
    WAIT,
    emit,
    engine_for,
    migrated_database,
    worker_process,
)
from tests.support import PASSWORD, GraphQLClient, free_port, running_server, unique
from tests.test_webhook_delivery import process_env
from tests.webhooks_support import Holding, Verifying, add_endpoint, deliveries

# What the process may take beyond its grace: the app's own shutdown (relay and webhook worker
# on the embedded defaults) and the interpreter's exit.
EXIT_SLACK = 8.0
SIGNUP = "mutation($i: SignUpInput!) { signUp(input: $i) { user { id email } } }"


def serve_env(database_url: str, **settings: str) -> dict[str, str]:
    """`coregraph serve`'s environment: the test settings, with ``settings`` on top."""
    values = make_settings(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREGRAPH_")}
    env.update(
        {
            "COREGRAPH_ENV": "test",
            "COREGRAPH_DATABASE_URL": database_url,
            "COREGRAPH_JWT_SECRET": values.jwt_secret,
            "COREGRAPH_WEBHOOK_SECRET_KEYS": values.webhook_secret_keys,
            "COREGRAPH_PASSWORD_HASH_TIME_COST": "1",
            "COREGRAPH_PASSWORD_HASH_MEMORY_KIB": "1024",
            "COREGRAPH_PASSWORD_HASH_PARALLELISM": "1",
            # As the test servers: every client here is 127.0.0.1.
            "COREGRAPH_AUTH_RATE_LIMIT_PER_IP": str(values.auth_rate_limit_per_ip),
        }
    )
    if values.redis_url:
        # This run's keys only: rate-limit counts on a shared Redis are other runs' too.
        env.update({"COREGRAPH_REDIS_URL": values.redis_url, "COREGRAPH_REDIS_PREFIX": PREFIX})
    env.update({f"COREGRAPH_{name.upper()}": value for name, value in settings.items()})
    return env


@contextmanager
def serving(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`coregraph serve` on a free port, ready; killed at the latest when the block ends."""
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "coregraph.cli", "serve", "--port", str(port), "--no-migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=2) as http:
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"coregraph serve exited: {log.read()[-2000:]!r}")
                assert time.monotonic() < deadline, "coregraph serve not ready within 60 s"
                with suppress(httpx.TransportError):
                    if http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                time.sleep(0.05)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)
        log.close()


async def exit_code_within(process: subprocess.Popen[bytes], seconds: float) -> int:
    return await asyncio.wait_for(asyncio.to_thread(process.wait), seconds)


def left(code: int) -> bool:
    """uvicorn re-raises the SIGTERM it handled once it is done, so the process ends by it."""
    return code in (0, -signal.SIGTERM)


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def wait_for(condition: Any, what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, f"not {what} within {seconds} s"
        await asyncio.sleep(0.02)


def graphql_request(port: int, query: str, variables: dict[str, Any]) -> tuple[bytes, bytes]:
    """A POST /graphql split in two: its head with the body's first bytes, and the rest."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nAccept: application/graphql-response+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body[:10], body[10:]


@pytest.mark.usefixtures("server")  # migrates the session's database
async def test_sigterm_lets_a_request_in_flight_finish_and_accepts_no_new_connection(
    database_url: str, client: GraphQLClient
) -> None:
    email = f"{unique('drain')}@example.com"
    with serving(serve_env(database_url, shutdown_grace_seconds="20")) as (process, port):
        first, rest = graphql_request(port, SIGNUP, {"i": {"email": email, "password": PASSWORD}})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.2)  # the server has read the head: the request is in flight
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await wait_for(lambda: refused(port), "refusing new connections")
        assert process.poll() is None, "the process waits for the request in flight"
        writer.write(rest)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        code = await exit_code_within(process, 20 + EXIT_SLACK)
        took = time.monotonic() - signalled
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:200]
    signed_up = json.loads(body)
    assert (signed_up.get("data") or {}).get("signUp"), signed_up
    assert signed_up["data"]["signUp"]["user"]["email"] == email
    assert left(code), code
    assert took < 20, f"it left once the request was answered, not at the deadline ({took:.1f} s)"
    # The mutation committed before the process left: the account logs in elsewhere.
    login = await client.execute(
        "mutation($i: LoginInput!) { login(input: $i) { user { email } } }",
        {"i": {"email": email, "password": PASSWORD}},
    )
    assert login.ok()["login"]["user"]["email"] == email


@pytest.mark.usefixtures("server")
async def test_a_request_still_running_at_the_deadline_is_cut_and_the_process_leaves(
    database_url: str,
) -> None:
    grace = 1.0
    with serving(serve_env(database_url, shutdown_grace_seconds=str(grace))) as (process, port):
        first, _ = graphql_request(port, "{ __typename }", {})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(first)  # and never the rest
        await writer.drain()
        await asyncio.sleep(0.2)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await exit_code_within(process, grace + EXIT_SLACK)
        took = time.monotonic() - signalled
        answer = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
    assert left(code), code
    assert grace <= took < grace + EXIT_SLACK, f"left {took:.1f} s after SIGTERM"
    assert not answer.startswith(b"HTTP/1.1 200"), "the unfinished request was not served"


@pytest.mark.usefixtures("server")
async def test_open_websockets_are_closed_with_1001_going_away(
    database_url: str, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    with serving(serve_env(database_url, shutdown_grace_seconds="20")) as (process, port):
        sockets = []
        for _ in range(2):  # one idle, one running a subscription
            ws = await websockets.connect(
                f"ws://127.0.0.1:{port}/graphql", subprotocols=[PROTOCOL], open_timeout=WAIT
            )
            sockets.append(ws)
            init = {"type": "connection_init", "payload": owner.headers(tenant_id)}
            await ws.send(json.dumps(init))
            ack = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            assert ack["type"] == "connection_ack", ack
        subscribe = {
            "id": "1",
            "type": "subscribe",
            "payload": {"query": "subscription { events { node { sequence } } }"},
        }
        await sockets[1].send(json.dumps(subscribe))
        await asyncio.sleep(0.3)  # the subscription is running (nothing to send yet)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        codes = []
        for ws in sockets:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), WAIT)
            codes.append((ws.close_code, ws.close_reason))
        closed_after = time.monotonic() - signalled
        code = await exit_code_within(process, 20 + EXIT_SLACK)
    assert codes == [(GOING_AWAY, "server shutting down")] * 2
    assert closed_after < 2, "sockets are closed at once, not after the HTTP grace"
    assert left(code), code


# --- `coregraph worker` --------------------------------------------------------------------


@pytest.fixture(scope="module")
async def hooks_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A database of its own: the only relay and workers on it are this module's."""
    async with migrated_database(str(tmp_path_factory.mktemp("shutdown"))) as url:
        yield url


async def test_worker_concurrency_caps_requests_and_sigterm_releases_the_claims_it_holds(
    hooks_db: str,
) -> None:
    settings = make_settings(hooks_db, webhook_allow_private=True)
    held = Holding()
    handler = Verifying(secrets=[], answer=held.answer)
    tenant_id = await _tenant(hooks_db)
    shutdown = 0.5
    env = process_env(
        hooks_db,
        webhook_claim_seconds="3600",  # only the release hands them back soon
        webhook_shutdown_seconds=str(shutdown),
    )
    async with Receiver(handler) as receiver, engine_for(hooks_db) as engine:
        endpoint = await add_endpoint(engine, settings, tenant_id, receiver.url())
        handler.secrets.append(endpoint.secret)
        process = await asyncio.to_thread(_start_worker, env, "2")
        try:
            await emit(engine, tenant_id, 5, per_commit=5)
            # Within the worker's start as well (seconds on a loaded machine).
            await receiver.wait_for(lambda: len(handler.verified) == 2, 4 * WAIT)
            await asyncio.sleep(0.5)  # time enough for a third request, were it allowed
            assert len(handler.verified) == 2, "--concurrency 2: two requests in flight"
            states = sorted(d.status for d in await deliveries(engine, endpoint))
            assert states == ["pending"] * 3 + ["sending"] * 2
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            code = await exit_code_within(process, shutdown + EXIT_SLACK)
            took = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
            await asyncio.to_thread(process.wait, WAIT)
        released = await deliveries(engine, endpoint)
        held.release()
        assert code == 0 and took < shutdown + EXIT_SLACK, (code, took)
        assert [(d.status, d.claimed_by, d.claimed_until) for d in released] == [
            ("pending", None, None)
        ] * 5, "nothing left claimed: another worker takes them at once"
        assert {d.attempts for d in released} == {0}
        # And another worker does, at once despite the hour-long claims.
        with worker_process(env):
            await receiver.wait_for(lambda: len(set(handler.ids())) == 5, WAIT)


def _start_worker(env: dict[str, str], concurrency: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "coregraph.cli", "worker", "--concurrency", concurrency],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _tenant(database_url: str) -> str:
    """A tenant on ``database_url``, made through the public API of a server of its own."""
    settings = make_settings(database_url, run_relay="false", run_webhook_worker="false")
    with running_server(settings, migrate_first=False) as srv:
        async with httpx.AsyncClient(timeout=30) as http:
            api = GraphQLClient(http, srv.url)
            return await api.create_tenant(await api.sign_up())


def test_worker_refuses_a_concurrency_below_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "coregraph.cli", "worker", "--concurrency", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--concurrency" in done.stderr
