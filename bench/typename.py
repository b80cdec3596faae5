"""``python -m bench.typename``: the fixed cost of a GraphQL request, ``{ __typename }``, under
wrk (a native load generator: the client costs little beside the servers), against a plain
FastAPI endpoint, everything on 127.0.0.1.

Two pairs, each answering ``{"data":{"__typename":"Query"}}``:

- **POST**: coregraph's ``POST /graphql`` with ``{"query": "{ __typename }"}``, against a plain
  FastAPI ``POST /typename`` that reads and parses the same JSON body;
- **persisted GET**: coregraph's ``GET /graphql?extensions={"persistedQuery": ...}`` (an
  automatic persisted query registered first, as Apollo's client would), against the plain
  ``GET /typename``.

Both servers run as ``bench`` runs them (uvicorn, one worker each, production settings, a
fresh SQLite file). Every answer is checked before the runs; wrk's count of non-2xx answers
must be zero. Per pair ``--rounds`` rounds of ``--seconds`` each, the pair's order alternating;
a ratio per round (coregraph req/s ÷ plain req/s), the verdict on their median (target 0.5).
Without wrk (``apt-get install -y wrk``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.parse

import httpx

from bench.__main__ import migrate_database, print_machine
from bench.servers import Server, bench_env, uvicorn_server

TARGET_RATIO = 0.5
QUERY = "{ __typename }"
ANSWER = {"data": {"__typename": "Query"}}
PERSISTED = {
    "persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(QUERY.encode()).hexdigest()}
}
ACCEPT = "application/graphql-response+json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.typename", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per pair (3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args(argv)


def lua_script(tmp: str, method: str, body: bytes | None, headers: dict[str, str]) -> str:
    """wrk's request: method, headers and body set once for every request."""
    lines = [f'wrk.method = "{method}"']
    for name, value in headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body.decode())}")
    path = os.path.join(tmp, f"{method.lower()}-{len(os.listdir(tmp))}.lua")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


class Target:
    def __init__(
        self, name: str, url: str, method: str, body: bytes | None, headers: dict[str, str]
    ) -> None:
        self.name = name
        self.url = url
        self.method = method
        self.body = body
        self.headers = headers

    def check(self) -> None:
        response = httpx.request(
            self.method, self.url, content=self.body, headers=self.headers, timeout=10
        )
        if response.status_code != 200 or response.json() != ANSWER:
            raise SystemExit(
                f"{self.name}: unexpected answer {response.status_code} {response.text}"
            )

    def run(self, wrk: str, tmp: str, args: argparse.Namespace) -> float:
        script = lua_script(tmp, self.method, self.body, self.headers)
        command = [
            wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "-s",
            script,
            self.url,
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=args.seconds + 60)
        if out.returncode != 0:
            raise SystemExit(f"wrk failed for {self.name}: {out.stderr or out.stdout}")
        if "Non-2xx or 3xx responses" in out.stdout or "Socket errors" in out.stdout:
            raise SystemExit(f"{self.name}: wrk saw failed requests:\n{out.stdout}")
        match = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
        if match is None:
            raise SystemExit(f"{self.name}: no Requests/sec in wrk's output:\n{out.stdout}")
        return float(match.group(1))


def pairs(cg: Server, plain: Server) -> list[tuple[str, Target, Target]]:
    json_headers = {"Content-Type": "application/json", "Accept": ACCEPT}
    extensions = urllib.parse.quote(json.dumps(PERSISTED, separators=(",", ":")))
    return [
        (
            "POST { __typename }",
            Target(
                "coregraph POST /graphql",
                cg.base_url + "/graphql",
                "POST",
                json.dumps({"query": QUERY}).encode(),
                json_headers,
            ),
            Target(
                "plain POST /typename",
                plain.base_url + "/typename",
                "POST",
                json.dumps({"query": QUERY}).encode(),
                json_headers,
            ),
        ),
        (
            "persisted GET",
            Target(
                "coregraph GET /graphql?extensions=…",
                f"{cg.base_url}/graphql?extensions={extensions}",
                "GET",
                None,
                {"Accept": ACCEPT},
            ),
            Target("plain GET /typename", plain.base_url + "/typename", "GET", None, {}),
        ),
    ]


def register(cg: Server) -> None:
    """As Apollo's client does after PersistedQueryNotFound: the document with its hash."""
    response = httpx.post(
        cg.base_url + "/graphql",
        json={"query": QUERY, "extensions": PERSISTED},
        headers={"Accept": ACCEPT},
        timeout=10,
    )
    if response.json() != ANSWER:
        raise SystemExit(f"registering the persisted query failed: {response.text}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_machine()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install -y wrk): nothing measured")
        return 0
    tmp = tempfile.mkdtemp(prefix="coregraph-typename-")
    report: dict[str, object] = {"load_average_start": os.getloadavg()}
    try:
        env = bench_env(tmp)
        migrate_database(env)
        with (
            uvicorn_server(
                "coregraph", "coregraph.app:create_app", env, tmp, "/healthz", start_timeout=120
            ) as cg,
            uvicorn_server(
                "plain", "bench.plain:create_app", env, tmp, "/healthz", start_timeout=120
            ) as plain,
        ):
            register(cg)
            verdicts = []
            for title, graphql, baseline in pairs(cg, plain):
                graphql.check()
                baseline.check()
                for target in (graphql, baseline):  # warm-up
                    target.run(wrk, tmp, argparse.Namespace(**{**vars(args), "seconds": 1}))
                ratios = []
                for round_number in range(args.rounds):
                    order = (graphql, baseline) if round_number % 2 == 0 else (baseline, graphql)
                    rps = {target.name: target.run(wrk, tmp, args) for target in order}
                    ratio = rps[graphql.name] / rps[baseline.name]
                    ratios.append(ratio)
                    print(
                        f"{title}, round {round_number + 1}: {graphql.name} "
                        f"{rps[graphql.name]:,.0f} req/s, {baseline.name} "
                        f"{rps[baseline.name]:,.0f} req/s, ratio {ratio:.2f}",
                        flush=True,
                    )
                median = statistics.median(ratios)
                met = "met" if median >= TARGET_RATIO else "NOT met"
                print(f"{title}: median ratio {median:.2f} (target >= {TARGET_RATIO}: {met})")
                report[title] = {
                    "ratios": [round(r, 3) for r in ratios],
                    "median": round(median, 3),
                }
                verdicts.append(median >= TARGET_RATIO)
        report["load_average_end"] = os.getloadavg()
        print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=2)
        return 0 if all(verdicts) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
