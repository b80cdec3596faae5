"""``python -m bench.instructions``: instructions per request of the members page, coregraph
against the plain endpoint, counted by valgrind's callgrind — the same figure however busy the
machine is (time-based figures here move by 20-50 % with other sessions' work).

Both apps run in one process on one fresh SQLite file (``bench.inprocess``'s setup), called
through ``httpx.ASGITransport``. The process runs under ``valgrind --tool=callgrind`` with
instrumentation off; after a warm-up it switches counting on around ``--requests`` requests of
each target (``callgrind_control -i on/off``) and dumps each target's count (``-d``). Costs
about a minute; without valgrind it says so and exits 0. Instructions are not time (a cache
miss costs more than an add), but a change that removes instructions from the request path
shows here first and exactly; confirm with ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import orjson

from bench import seed
from bench.__main__ import GRAPHQL_HEADERS, MEMBERS_QUERY
from bench.inprocess import both_apps

_INSIDE = "COREGRAPH_BENCH_UNDER_CALLGRIND"


def _control(*args: str) -> None:
    subprocess.run(
        ["callgrind_control", *args, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


async def _count(requests: int, first: int) -> None:
    """Inside callgrind: seed, warm up, then count each target's requests."""
    async with both_apps("coregraph-instructions-") as (settings, cg_app, plain_app):
        cg = httpx.AsyncClient(transport=httpx.ASGITransport(cg_app), base_url="http://cg")
        pl = httpx.AsyncClient(transport=httpx.ASGITransport(plain_app), base_url="http://pl")
        tenant = await seed.load_tenant(
            settings, "http://cg/graphql", 200, httpx.ASGITransport(cg_app)
        )
        query = MEMBERS_QUERY.replace("first: 200", f"first: {first}")
        targets = {
            "coregraph": (
                cg,
                cg.build_request(
                    "POST",
                    "/graphql",
                    headers={**GRAPHQL_HEADERS, **tenant.headers()},
                    content=orjson.dumps({"query": query}),
                ),
            ),
            "plain": (
                pl,
                pl.build_request("GET", f"/tenant/members?first={first}", headers=tenant.headers()),
            ),
        }
        answers = [orjson.loads((await c.send(r)).content) for c, r in targets.values()]
        if answers[0].get("errors") or answers[0]["data"] != answers[1]["data"]:
            raise SystemExit("coregraph and the plain endpoint disagree")
        for _ in range(5):
            for client, request in targets.values():
                await client.send(request)
        gc.collect()
        gc.freeze()
        for name, (client, request) in targets.items():
            _control("-z")
            _control("-i", "on")
            for _ in range(requests):
                if (await client.send(request)).status_code != 200:
                    raise SystemExit(f"{name}: not 200")
            _control("-i", "off")
            _control("-d", name)
        await cg.aclose()
        await pl.aclose()


def _totals(directory: Path) -> dict[str, int]:
    found = {}
    for path in directory.iterdir():
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: dump (\w+)$", text, re.M)
        totals = re.search(r"^totals: (\d+)", text, re.M)
        if trigger and totals:
            found[trigger.group(1)] = int(totals.group(1))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5, help="counted per target (5)")
    parser.add_argument("--first", type=int, default=200, help="members per page (200)")
    args = parser.parse_args()
    if not 1 <= args.first <= 200 or not 1 <= args.requests <= 100:
        parser.error("--first: 1..200, --requests: 1..100")
    if os.environ.get(_INSIDE) == "1":
        asyncio.run(_count(args.requests, args.first))
        return
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind is not installed (apt-get install valgrind): nothing measured")
        return
    with tempfile.TemporaryDirectory(prefix="coregraph-callgrind-") as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={tmp}/callgrind.%p",
            sys.executable,
            "-m",
            "bench.instructions",
            f"--requests={args.requests}",
            f"--first={args.first}",
        ]
        log = Path(tmp) / "valgrind.log"
        with log.open("wb") as out:
            done = subprocess.run(command, env={**os.environ, _INSIDE: "1"}, stdout=out, stderr=out)
        if done.returncode != 0:
            raise SystemExit(f"the counted run failed:\n{log.read_text()[-3000:]}")
        totals = _totals(Path(tmp))
    per = {name: count / args.requests for name, count in totals.items()}
    print(f"members page of {args.first}, instructions per request ({args.requests} counted):")
    for name, count in per.items():
        print(f"  {name:<10} {count / 1e6:8.2f} M")
    print(f"plain / coregraph = {per['plain'] / per['coregraph']:.3f}")


if __name__ == "__main__":
    main()
