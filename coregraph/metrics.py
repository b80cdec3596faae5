"""Prometheus metrics: what every process counts, and ``/metrics`` in the text format.

One observation point per operation on both transports (``observe_operation``, called by the
request log line), gauges kept by the WebSocket handler and counters by the webhook worker;
what lives in the database or in a pool is read when scraped (``exposition``).

The outbox lag is read from the database at scrape time (``coregraph.streams.relay_lag``: a row
per chain, under a ``PROBE_TIMEOUT_SECONDS`` statement timeout, one read at a time however many
scrapes arrive) rather than kept by the relay: a relay that is stuck, or failing every pass,
would keep its own figure frozen exactly when it matters. The processes that run a relay report
it (they hold the worker role's engine, which reads across tenants), as those that deliver
webhooks report the endpoints' health.

Label values are bounded whatever clients send: an operation's name comes from its parsed
document only (a request refused before parsing is ``unknown``, an unnamed operation
``anonymous``), must look like a GraphQL name of at most 64 characters, and after
``MAX_OPERATION_NAMES`` distinct names a process counts new ones as ``other``; an outcome is a
code coregraph knows (``OK``, the transports' own, every ``CoregraphError`` subclass's) or
``OTHER``.

Several processes on one host (``coregraph serve --workers N``, or API and worker side by side)
share their numbers when ``PROMETHEUS_MULTIPROC_DIR`` names a directory they all write
(prometheus-client's multiprocess mode, read when it is imported): any of them answers a scrape
with everyone's counters. Each process samples its pools there every ``POOL_SAMPLE_SECONDS``
(labelled with its ``pid``), and a process that ends removes its live gauges; ones a killed
process left behind are removed at the next scrape. Empty the directory between deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from coregraph.errors import CoregraphError

if TYPE_CHECKING:
    from fastapi import Request
    from fastapi.responses import Response
    from sqlalchemy.ext.asyncio import AsyncEngine

    from coregraph.settings import Settings
    from coregraph.streams.relay_lag import RelayLag

log = logging.getLogger("coregraph.metrics")

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
MAX_OPERATION_NAMES = 200
# A scrape's database reads (outbox lag, endpoint health) give up after this long.
PROBE_TIMEOUT_SECONDS = 2.0
POOL_SAMPLE_SECONDS = 5.0
OPERATION_TYPES = frozenset({"query", "mutation", "subscription"})
# Outcomes the transports name themselves, beside the codes of CoregraphError's subclasses.
TRANSPORT_OUTCOMES = frozenset(
    {
        "OK",
        "ERROR",
        "BAD_REQUEST",
        "METHOD_NOT_ALLOWED",
        "PAYLOAD_TOO_LARGE",
        "CANCELLED",
        "GRAPHQL_PARSE_FAILED",
        "GRAPHQL_VALIDATION_FAILED",
        "APPROVAL_REQUIRED",
    }
)
# Outcomes that are a limit saying no; whoever refuses with one of these codes is counted.
REFUSALS = ("RATE_LIMITED", "QUOTA_EXCEEDED")
_NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")
# Seconds: from a cached query (~1 ms) to a slow export.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A `_created` sample beside every counter and histogram series would double the series for
# nothing Prometheus needs.
disable_created_metrics()
# Multiprocess mode keeps values in files, not in a registry: these register nowhere, and a
# scrape builds the registry it reads (``_registry``).
_OWN: CollectorRegistry | None = None if MULTIPROCESS_DIR else CollectorRegistry(auto_describe=True)

OPERATIONS = Counter(
    "coregraph_operations",
    "GraphQL operations (HTTP requests to /graphql and WebSocket operations) by name, type "
    "and outcome (the first error's code, or OK)",
    ["operation", "type", "outcome"],
    registry=_OWN,
)
OPERATION_SECONDS = Histogram(
    "coregraph_operation_duration_seconds",
    "Time to answer a query or mutation, by name and type (subscriptions are not timed)",
    ["operation", "type"],
    buckets=_BUCKETS,
    registry=_OWN,
)
REFUSED = Counter(
    "coregraph_refusals",
    "Requests and operations refused by a rate limit or a quota, by code",
    ["code"],
    registry=_OWN,
)
SOCKETS = Gauge(
    "coregraph_websocket_connections",
    "Open WebSocket connections",
    registry=_OWN,
    multiprocess_mode="livesum",
)
SUBSCRIPTIONS = Gauge(
    "coregraph_subscriptions_active",
    "Subscriptions running on WebSocket connections",
    registry=_OWN,
    multiprocess_mode="livesum",
)
WEBHOOK_DELIVERIES = Counter(
    "coregraph_webhook_deliveries",
    "Webhook delivery attempts recorded, by what became of the delivery: succeeded, retrying "
    "(another attempt is scheduled) or failed (the schedule is spent)",
    ["outcome"],
    registry=_OWN,
)
for _outcome in ("succeeded", "retrying", "failed"):
    WEBHOOK_DELIVERIES.labels(_outcome)
for _code in REFUSALS:
    REFUSED.labels(_code)

_operation_names: set[str] = set()
_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_known_outcomes: frozenset[str] = frozenset()
_outcomes_read_at = 0.0


def operation_label(name: str | None, operation_type: str | None) -> str:
    """The ``operation`` label: a name the document gave, within the cap."""
    if operation_type not in OPERATION_TYPES:
        return "unknown"
    if not name:
        return "anonymous"
    if name in _operation_names:
        return name
    if len(_operation_names) >= MAX_OPERATION_NAMES or not _NAME.fullmatch(name):
        return "other"
    _operation_names.add(name)
    return name


def outcome_label(outcome: str) -> str:
    global _known_outcomes, _outcomes_read_at
    if outcome in TRANSPORT_OUTCOMES or outcome in _known_outcomes:
        return outcome
    now = time.monotonic()
    if now - _outcomes_read_at >= 1.0:
        # Error classes defined since the last look (a module imported later) count too; read
        # at most once a second, whatever unknown codes arrive.
        _outcomes_read_at = now
        _known_outcomes = frozenset(_error_codes())
        if outcome in _known_outcomes:
            return outcome
    return "OTHER"


def _error_codes() -> Iterator[str]:
    classes: list[type[CoregraphError]] = [CoregraphError]
    while classes:
        cls = classes.pop()
        yield cls.code
        classes.extend(cls.__subclasses__())


def observe_operation(
    transport: str,
    operation: str | None,
    operation_type: str | None,
    outcome: str,
    started: float,
    path: object = None,
) -> None:
    """Count one HTTP request or WebSocket operation as the request log line reports it.
    Requests to other routes than ``/graphql`` count only when they are refused by a limit."""
    if outcome in REFUSALS:
        REFUSED.labels(outcome).inc()
    if transport == "http" and path != "/graphql":
        return
    name = operation_label(operation, operation_type)
    kind = operation_type if operation_type in OPERATION_TYPES else "unknown"
    key = (name, kind, outcome_label(outcome))
    children = _children.get(key)
    if children is None:
        # labels() is most of an observation's cost; the label sets are bounded, so are these.
        timed = OPERATION_SECONDS.labels(name, kind) if kind != "subscription" else None
        children = _children[key] = (OPERATIONS.labels(*key), timed)
    children[0].inc()
    if children[1] is not None:
        children[1].observe(time.perf_counter() - started)


@contextlib.contextmanager
def open_socket() -> Iterator[None]:
    SOCKETS.inc()
    try:
        yield
    finally:
        SOCKETS.dec()


def subscription_started() -> None:
    SUBSCRIPTIONS.inc()


def subscription_ended() -> None:
    SUBSCRIPTIONS.dec()


def webhook_delivery(outcome: str) -> None:
    """``succeeded``, ``retrying`` or ``failed``: what one recorded attempt made of its delivery."""
    WEBHOOK_DELIVERIES.labels(outcome).inc()


# --- read when scraped: pools, outbox lag, webhook endpoints ------------------------------


@dataclass
class _Probed:
    """What a scrape read from the database: None where this process has nothing to read."""

    lag: RelayLag | None = None
    endpoint_states: dict[str, int] | None = None


class _Watched:
    """Engines this process reads at scrape time: pools by name, and the engines (the worker
    role's, which reads across tenants) that the outbox and endpoint probes query, each with
    the event loop it belongs to (a connection is used on its own loop only)."""

    def __init__(self) -> None:
        # The newest engine registered under a name, or for a probe, is the one read.
        self.pools: dict[str, list[AsyncEngine]] = {}
        self.outbox: list[tuple[AsyncEngine, asyncio.AbstractEventLoop]] = []
        self.endpoints: list[tuple[AsyncEngine, asyncio.AbstractEventLoop]] = []
        self._probing: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Task[_Probed]
        ] = weakref.WeakKeyDictionary()

    async def probe(self) -> _Probed:
        """Read the database once for all the scrapes waiting at the moment (single flight)."""
        loop = asyncio.get_running_loop()
        probing = self._probing.get(loop)
        if probing is None or probing.done():
            probing = self._probing[loop] = loop.create_task(self._probe(loop))
        return await asyncio.shield(probing)

    async def _probe(self, loop: asyncio.AbstractEventLoop) -> _Probed:
        outbox = next((e for e, on in reversed(self.outbox) if on is loop), None)
        endpoints = next((e for e, on in reversed(self.endpoints) if on is loop), None)
        return _Probed(
            await _bounded(_outbox_lag(outbox), "outbox lag") if outbox else None,
            await _bounded(_endpoint_states(endpoints), "webhook endpoints") if endpoints else None,
        )


_watched = _Watched()


def watch_engine(
    engine: AsyncEngine, pool: str, *, outbox: bool = False, webhook_endpoints: bool = False
) -> None:
    """Report ``engine``'s pool as ``pool``; with ``outbox`` the relay's lag and with
    ``webhook_endpoints`` the endpoints' health, read through it (the worker role) by the
    scrapes this event loop serves."""
    _watched.pools.setdefault(pool, []).append(engine)
    if outbox:
        _watched.outbox.append((engine, asyncio.get_running_loop()))
    if webhook_endpoints:
        _watched.endpoints.append((engine, asyncio.get_running_loop()))


def forget_engine(engine: AsyncEngine) -> None:
    for name, engines in list(_watched.pools.items()):
        engines[:] = [watched for watched in engines if watched is not engine]
        if not engines:
            del _watched.pools[name]
    _watched.outbox[:] = [item for item in _watched.outbox if item[0] is not engine]
    _watched.endpoints[:] = [item for item in _watched.endpoints if item[0] is not engine]


def _pool_readings() -> Iterator[tuple[str, int, int, int]]:
    """(name, connections checked out, overflow connections open, pool size) of each pool."""
    for name, engines in list(_watched.pools.items()):
        pool: Any = engines[-1].sync_engine.pool
        if not hasattr(pool, "checkedout"):
            continue  # a pool without accounting (NullPool, StaticPool)
        yield name, int(pool.checkedout()), max(0, int(pool.overflow())), int(pool.size())


_POOL_HELP = {
    "coregraph_db_pool_in_use": "Database connections checked out of the pool",
    "coregraph_db_pool_overflow": "Connections open beyond the pool's size (max_overflow)",
    "coregraph_db_pool_size": "The pool's size (COREGRAPH_DATABASE_POOL_SIZE)",
}


class _ScrapeTime(Collector):
    """What is read when scraped: pools (outside multiprocess mode, where they are sampled
    into files instead), the outbox lag and the endpoints' health."""

    def __init__(self, pools: bool, probed: _Probed) -> None:
        self.pools = pools
        self.probed = probed

    def collect(self) -> Iterable[Any]:
        if self.pools:
            families = [
                GaugeMetricFamily(name, help, labels=["pool"]) for name, help in _POOL_HELP.items()
            ]
            for name, *values in _pool_readings():
                for family, value in zip(families, values, strict=True):
                    family.add_metric([name], value)
            yield from families
        lag = self.probed.lag
        if lag is not None:
            yield GaugeMetricFamily(
                "coregraph_outbox_lag_events",
                "Events committed and not yet published by the relay, over every tenant",
                value=lag.events,
            )
            yield GaugeMetricFamily(
                "coregraph_outbox_lag_audit_entries",
                "Audit entries committed and not yet published by the relay",
                value=lag.audit_entries,
            )
            yield GaugeMetricFamily(
                "coregraph_outbox_lag_seconds",
                "Age of the oldest event or audit entry the relay has not published yet (0: "
                "none waiting)",
                value=lag.seconds,
            )
        if self.probed.endpoint_states is not None:
            states = GaugeMetricFamily(
                "coregraph_webhook_endpoints",
                "Webhook endpoints by state: healthy, failing (enabled, its last attempts "
                "failed) or disabled",
                labels=["state"],
            )
            for state, count in sorted(self.probed.endpoint_states.items()):
                states.add_metric([state], count)
            yield states


async def _bounded(read: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(read, PROBE_TIMEOUT_SECONDS)
    except Exception as exc:
        # The scrape goes on without it: a missing series is what alerts on it.
        log.warning("metrics probe failed", extra={"probe": what, "error": type(exc).__name__})
        return None


async def _limited(conn: Any) -> None:
    if conn.dialect.name == "postgresql":
        milliseconds = str(int(PROBE_TIMEOUT_SECONDS * 1000))
        await conn.exec_driver_sql(f"SET LOCAL statement_timeout = {milliseconds}")


async def _outbox_lag(engine: AsyncEngine) -> RelayLag:
    from coregraph.models.base import utcnow
    from coregraph.streams.relay_lag import measure_lag

    async with engine.begin() as conn:
        await _limited(conn)
        return await measure_lag(conn, utcnow())


async def _endpoint_states(engine: AsyncEngine) -> dict[str, int]:
    from sqlalchemy import case, func, select

    from coregraph.models import WebhookEndpoint

    endpoints = WebhookEndpoint.__table__
    state = case(
        (endpoints.c.enabled.is_(False), "disabled"),
        (endpoints.c.consecutive_failures > 0, "failing"),
        else_="healthy",
    ).label("state")
    async with engine.begin() as conn:
        await _limited(conn)
        rows = (await conn.execute(select(state, func.count()).group_by(state))).all()
    counts = {"healthy": 0, "failing": 0, "disabled": 0}
    counts.update({row[0]: int(row[1]) for row in rows})
    return counts


# --- multiprocess mode -------------------------------------------------------------------

_sampled: dict[str, Gauge] = {}


def _sample_pools() -> None:
    """Multiprocess mode: this process's pools into its files, labelled with its pid."""
    if not _sampled:
        for name, help in _POOL_HELP.items():
            _sampled[name] = Gauge(name, help, ["pool"], registry=None, multiprocess_mode="liveall")
    for name, *values in _pool_readings():
        for gauge, value in zip(_sampled.values(), values, strict=True):
            gauge.labels(name).set(value)


def _forget_dead_processes(directory: str) -> None:
    """Live gauges of processes that died without saying so (SIGKILL, OOM)."""
    from prometheus_client import multiprocess

    pids = set()
    for file in os.listdir(directory):
        if file.startswith("gauge_live") and file.endswith(".db"):
            digits = file.rsplit("_", 1)[-1].removesuffix(".db")
            if digits.isdigit():
                pids.add(int(digits))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            pass  # alive, another user's


def _counted() -> CollectorRegistry:
    """What the processes counted: this one's, or in multiprocess mode every one's files."""
    if MULTIPROCESS_DIR is None:
        assert _OWN is not None
        return _OWN
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, MULTIPROCESS_DIR)
    return registry


async def exposition() -> bytes:
    """Every metric in the Prometheus text format, database readings taken now."""
    probed = await _watched.probe()
    if MULTIPROCESS_DIR is not None:
        _sample_pools()
        _forget_dead_processes(MULTIPROCESS_DIR)
    read_now = CollectorRegistry(auto_describe=True)
    read_now.register(_ScrapeTime(pools=MULTIPROCESS_DIR is None, probed=probed))
    return generate_latest(_counted()) + generate_latest(read_now)


async def endpoint(request: Request) -> Response:
    """``GET /metrics`` on the API's own port (``COREGRAPH_METRICS_PUBLIC``)."""
    from fastapi.responses import Response

    return Response(await exposition(), media_type=CONTENT_TYPE_LATEST)


# --- the metrics listener ----------------------------------------------------------------

_MAX_HEAD_LINES = 100
_READ_SECONDS = 5.0


async def _answer_scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP/1.x exchange, then the connection closes: ``GET /metrics`` or 404."""
    try:
        async with asyncio.timeout(_READ_SECONDS):
            request_line = await reader.readline()
            for _ in range(_MAX_HEAD_LINES):
                if (await reader.readline()) in (b"\r\n", b"\n", b""):
                    break
        method, _, rest = request_line.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method in ("GET", "HEAD") and path == "/metrics":
            status, body, kind = "200 OK", await exposition(), CONTENT_TYPE_LATEST
        else:
            status, body, kind = "404 Not Found", b"not found\n", "text/plain; charset=utf-8"
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
        await writer.drain()
    except (TimeoutError, ValueError, ConnectionError):
        pass  # a client that sent nothing usable, or left
    except Exception:
        log.exception("metrics scrape failed")
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _sample_periodically() -> None:
    while True:
        try:
            _sample_pools()
        except Exception:
            log.exception("pool sampling failed")
        await asyncio.sleep(POOL_SAMPLE_SECONDS)


@contextlib.asynccontextmanager
async def running(settings: Settings, **pools: AsyncEngine) -> AsyncIterator[None]:
    """For a process's life (the API's lifespan, ``coregraph worker``): report ``pools``,
    serve ``/metrics`` on ``COREGRAPH_METRICS_HOST:COREGRAPH_METRICS_PORT`` when set, and in
    multiprocess mode sample the pools and leave no live gauges behind at the end."""
    for name, engine in pools.items():
        watch_engine(engine, name)
    tasks: list[asyncio.Task[None]] = []
    server: asyncio.Server | None = None
    if MULTIPROCESS_DIR is not None:
        _forget_dead_processes(MULTIPROCESS_DIR)
        tasks.append(asyncio.create_task(_sample_periodically(), name="coregraph-pool-sampling"))
    try:
        if settings.metrics_port is not None:
            # In multiprocess mode every process of the host binds the port (SO_REUSEPORT):
            # any one answers with everyone's numbers.
            try:
                server = await asyncio.start_server(
                    _answer_scrape,
                    settings.metrics_host,
                    settings.metrics_port,
                    reuse_port=MULTIPROCESS_DIR is not None,
                )
            except OSError:
                # Metrics are not worth an outage (nor a worker process restarted forever).
                log.exception(
                    "cannot serve metrics on COREGRAPH_METRICS_HOST:COREGRAPH_METRICS_PORT "
                    "(several processes of one host share the port only with "
                    "PROMETHEUS_MULTIPROC_DIR set)",
                    extra={"host": settings.metrics_host, "port": settings.metrics_port},
                )
            else:
                log.info(
                    "metrics served",
                    extra={"host": settings.metrics_host, "port": settings.metrics_port},
                )
        yield
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for engine in pools.values():
            forget_engine(engine)
        if MULTIPROCESS_DIR is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)
