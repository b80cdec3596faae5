"""``python -m bench.executor``: the executor alone, coregraph's compiled plans against stock
graphql-core, on a 1,000-item list of 5 fields (issue 13: at least 3x).

No HTTP, no database, no authentication: one document executed over objects in memory, the
CPU time per execution (median of ``--runs``, the garbage collector paused inside each).

- **stock graphql-core**: ``graphql.execute_sync`` on a schema built from SDL, over plain
  dicts with graphql-core's default resolver — the cheapest stock configuration.
- **strawberry stock**: the same types written with strawberry, executed by strawberry's
  default execution context (what a strawberry service runs without coregraph's executor).
- **coregraph**: the same strawberry schema with coregraph's executor (``CoregraphExecutor``:
  the document's compiled plan, ``coregraph.schema.compiled``) and its resolvers.

Each target's answer is checked equal to stock graphql-core's before anything is timed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import strawberry
from graphql import build_schema, execute_sync, parse
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from bench.__main__ import print_machine
from coregraph.schema import compiled
from coregraph.schema.execution import CoregraphExecutor, install_fast_resolvers

QUERY = "{ items { id name count createdAt tags } }"

SDL = """
scalar DateTime
type Query { items: [Item!]! }
type Item { id: ID! name: String! count: Int! createdAt: DateTime! tags: [String!]! }
"""


@strawberry.type
class Item:
    id: strawberry.ID
    name: str
    count: int
    created_at: datetime
    tags: list[str]


def make_items(n: int) -> list[Item]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Item(
            id=strawberry.ID(f"itm_{i:026d}"),
            name=f"item {i}",
            count=i,
            created_at=start + timedelta(seconds=i),
            tags=["a", "b"],
        )
        for i in range(n)
    ]


def _strawberry_schema(items: list[Item], executor: type[Any]) -> strawberry.Schema:
    @strawberry.type
    class Query:
        @strawberry.field
        def items(self) -> list[Item]:
            return items

    schema = strawberry.Schema(query=Query, execution_context_class=executor)
    if executor is CoregraphExecutor:
        install_fast_resolvers(schema._schema, schema.config.info_class)
    return schema


def _time(run: Any, runs: int) -> float:
    """Median CPU ms per execution."""
    times = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            run()
            times.append((time.process_time() - started) * 1000)
        finally:
            gc.enable()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.executor", description=__doc__)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    print_machine()

    items = make_items(args.items)
    sdl_schema = build_schema(SDL)
    sdl_schema.type_map["DateTime"].coerce_output_value = datetime.isoformat  # type: ignore[attr-defined]
    document = parse(QUERY)
    root = {
        "items": [
            {
                "id": item.id,
                "name": item.name,
                "count": item.count,
                "createdAt": item.created_at,
                "tags": item.tags,
            }
            for item in items
        ]
    }
    stock_straw = _strawberry_schema(items, StrawberryGraphQLCoreExecutionContext)
    ours = _strawberry_schema(items, CoregraphExecutor)

    def run_graphql_core() -> Any:
        return execute_sync(sdl_schema, document, root)

    def run_strawberry() -> Any:
        return stock_straw.execute_sync(QUERY)

    def run_coregraph() -> Any:
        return ours.execute_sync(QUERY)

    expected = run_graphql_core()
    assert expected.errors is None, expected.errors
    for name, run in (("strawberry", run_strawberry), ("coregraph", run_coregraph)):
        result = run()
        assert result.errors is None, (name, result.errors)
        assert result.data == expected.data, f"{name} answers differently"
    before = compiled.STATS["planned"]
    run_coregraph()
    assert compiled.STATS["planned"] == before + 1, "coregraph did not run on a plan"

    figures: dict[str, float] = {}
    for _ in range(2):  # alternate, keep each target's better round
        for name, run in (
            ("stock graphql-core", run_graphql_core),
            ("strawberry stock", run_strawberry),
            ("coregraph (plan)", run_coregraph),
        ):
            ms = _time(run, args.runs)
            figures[name] = min(ms, figures.get(name, ms))
    base = figures["stock graphql-core"]
    print(f"{args.items} items x 5 fields, CPU ms per execution (median of {args.runs}):")
    for name, ms in figures.items():
        print(f"  {name:20s} {ms:8.2f} ms   speed vs stock graphql-core: {base / ms:5.2f}x")
    verdict = "met" if base / figures["coregraph (plan)"] >= 3 else "NOT met"
    print(f"target: coregraph >= 3x stock graphql-core: {verdict}")


if __name__ == "__main__":
    main()
