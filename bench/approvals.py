"""``python -m bench.approvals``: what the approval gate costs a mutation it does not hold back
(issue 11: under 5 % of the mutation's time).

Two coregraph apps in this process on one fresh SQLite file, called through
``httpx.ASGITransport``: the real one, and the same app built without the gate
(``install_approval_gates`` left out) — the baseline, measured in the same run on the same
data. The mutation is ``updateTenant`` (a write with its audit entry and event), renaming the
tenant back and forth, in a tenant with no policy, then with ``--policies`` policies that do
not match it (the gate reads them and matches each). Per round, each app runs ``--batches``
batches of ``--per-batch`` sequential requests with the cyclic GC paused inside a batch; CPU
per request (minimum and median over batches) and the gate's overhead against the baseline's
(on the minima, the steadiest figure here; the verdict is the median over rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import httpx
import orjson

from bench import seed
from bench.__main__ import GRAPHQL_HEADERS
from bench.servers import bench_env

TARGET_OVERHEAD = 0.05
RENAME = "mutation($n: String!) { updateTenant(input: {name: $n}) { tenant { name } } }"
POLICY = """mutation($input: CreateApprovalPolicyInput!) { createApprovalPolicy(input: $input) {
    policy { id } } }"""


async def _cpu_per_request(
    client: httpx.AsyncClient, headers: dict[str, str], batches: int, per_batch: int
) -> tuple[float, float]:
    names = itertools.cycle(["Bench Tenant A", "Bench Tenant B"])
    results = []
    for _ in range(batches):
        requests = [
            client.build_request(
                "POST",
                "/graphql",
                headers=headers,
                content=orjson.dumps({"query": RENAME, "variables": {"n": next(names)}}),
            )
            for _ in range(per_batch)
        ]
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            for request in requests:
                response = await client.send(request)
                if response.status_code != 200 or b'"errors"' in response.content:
                    raise SystemExit(f"bad response: {response.status_code} {response.text[:300]}")
            results.append((time.process_time() - started) / per_batch * 1000)
        finally:
            gc.enable()
    return min(results), statistics.median(results)


async def _policies(client: httpx.AsyncClient, headers: dict[str, str], count: int) -> None:
    shapes: list[dict[str, Any]] = [
        {"actions": ["role.*"]},
        {"actions": ["api_key.create"], "argumentPath": "input.scopes", "argumentMatches": "*"},
        {"actions": ["member.remove", "member.change_role"], "approvalsRequired": 2},
        {"actions": ["*"], "principalKinds": ["AGENT"]},
    ]
    for index in range(count):
        shape = shapes[index % len(shapes)]
        response = await client.post(
            "/graphql",
            headers=headers,
            content=orjson.dumps(
                {"query": POLICY, "variables": {"input": {"name": f"p{index}", **shape}}}
            ),
        )
        if b'"errors"' in response.content:
            raise SystemExit(f"policy refused: {response.text[:300]}")


async def main(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="coregraph-approvals-")
    try:
        os.environ.update(bench_env(tmp))
        from coregraph import api, migrate
        from coregraph.app import create_app
        from coregraph.settings import load_settings

        settings = load_settings()
        await migrate.upgrade(settings)
        gated_app = create_app(settings)
        install = api.install_approval_gates
        api.install_approval_gates = lambda *_, **__: None  # type: ignore[assignment]
        try:
            baseline_app = create_app(settings)
        finally:
            api.install_approval_gates = install
        gated = httpx.AsyncClient(transport=httpx.ASGITransport(gated_app), base_url="http://cg")
        baseline = httpx.AsyncClient(
            transport=httpx.ASGITransport(baseline_app), base_url="http://cg"
        )
        tenant = await seed.load_tenant(
            settings, "http://cg/graphql", 1, httpx.ASGITransport(gated_app)
        )
        headers = {**GRAPHQL_HEADERS, **tenant.headers()}
        gc.collect()
        gc.freeze()
        print(f"updateTenant, CPU ms/request (min/median of {args.batches} batches)", flush=True)
        overheads: dict[str, list[float]] = {}
        for label, policies in (("no policy", 0), (f"{args.policies} policies", args.policies)):
            if policies:
                await _policies(gated, headers, policies)
            for _ in range(args.warmup):
                for client in (gated, baseline):
                    await _cpu_per_request(client, headers, 1, 1)
            for round_ in range(args.rounds):
                pair = [(gated, "gate"), (baseline, "baseline")]
                if round_ % 2:
                    pair.reverse()
                figures = {}
                for client, name in pair:
                    figures[name] = await _cpu_per_request(
                        client, headers, args.batches, args.per_batch
                    )
                # On the batches' minima: the steadiest figure on a shared machine.
                overhead = figures["gate"][0] / figures["baseline"][0] - 1
                overheads.setdefault(label, []).append(overhead)
                print(
                    f"  {label}: gate {figures['gate'][0]:.2f}/{figures['gate'][1]:.2f}"
                    f" | without {figures['baseline'][0]:.2f}/{figures['baseline'][1]:.2f}"
                    f" | overhead (minima) {overhead * 100:+.1f} %",
                    flush=True,
                )
        for label, values in overheads.items():
            median = statistics.median(values)
            verdict = "met" if median < TARGET_OVERHEAD else "NOT met"
            print(
                f"{label}: gate overhead, median of rounds {median * 100:+.1f} %"
                f" (target < {TARGET_OVERHEAD * 100:.0f} %: {verdict})"
            )
        await gated.aclose()
        await baseline.aclose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.approvals", description=__doc__)
    parser.add_argument("--policies", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--per-batch", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
