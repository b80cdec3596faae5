"""A bounded closed-loop load generator: N requests, C in flight, one overall deadline."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Target:
    """One request, repeated: method, url, headers, optional JSON body (pre-encoded)."""

    name: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    # Cheap per-response check (the full answer is verified once, before measuring).
    check: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200
    # The server process, to charge it the CPU it spent on the run.
    server_pid: int | None = None


@dataclass(frozen=True)
class Stats:
    name: str
    requests: int
    concurrency: int
    seconds: float
    latencies_ms: tuple[float, ...]
    # CPU the server process used during the run (None where /proc is not available).
    server_cpu_seconds: float | None = None
    # CPU this (client) process used during the run.
    client_cpu_seconds: float = 0.0

    @property
    def client_cpu_ms_per_request(self) -> float:
        return self.client_cpu_seconds * 1000 / self.requests

    @property
    def server_cpu_ms_per_request(self) -> float | None:
        if self.server_cpu_seconds is None:
            return None
        return self.server_cpu_seconds * 1000 / self.requests

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_ms)

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
        return ordered[index]

    @property
    def p95_ms(self) -> float:
        return self.percentile_ms(95)


def combine(runs: list[Stats]) -> Stats:
    """Several runs of one target as one: requests, time, latencies and CPU added up."""
    first = runs[0]
    server = [r.server_cpu_seconds for r in runs]
    return Stats(
        first.name,
        sum(r.requests for r in runs),
        first.concurrency,
        sum(r.seconds for r in runs),
        tuple(latency for r in runs for latency in r.latencies_ms),
        None if None in server else sum(s for s in server if s is not None),
        sum(r.client_cpu_seconds for r in runs),
    )


class BadResponse(RuntimeError):
    pass


def process_memory_mib(pid: int) -> tuple[float, float] | None:
    """(resident now, peak resident) of a process in MiB, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(
    client: httpx.AsyncClient,
    target: Target,
    requests: int,
    concurrency: int,
    deadline_seconds: float,
) -> Stats:
    """Send ``requests`` requests from ``concurrency`` workers; fail on any bad response."""
    remaining = requests
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await client.request(
                target.method, target.url, headers=target.headers, content=target.body
            )
            latencies.append((time.perf_counter() - started) * 1000)
            if not target.check(response):
                raise BadResponse(
                    f"{target.name}: unexpected response {response.status_code} "
                    f"{response.text[:300]!r}"
                )

    server_pid = target.server_pid
    cpu_before = process_cpu_seconds(server_pid) if server_pid else None
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    async with asyncio.timeout(deadline_seconds):
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, requests)):
                group.create_task(worker())
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu_before
    cpu_after = process_cpu_seconds(server_pid) if server_pid else None
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return Stats(target.name, requests, concurrency, elapsed, tuple(latencies), cpu, client_cpu)
