"""The suite-wide execution check (``coregraph.schema.execution_check``) catches an executor
that answers differently from stock graphql-core, fails the test that issued the query, and
changes nothing a client receives; it runs no mutation twice.

Each divergence here is planted on purpose: an executor subclass that drops the errors it
collected, as a compiled executor that forgot an error path would.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import strawberry
from graphql.execution.executor import CollectedErrors
from strawberry.scalars import JSON

from coregraph import api
from coregraph.schema import execution_check
from coregraph.schema.execution import CoregraphExecutor, install_fast_resolvers
from coregraph.schema.execution_check import CHANGED_VARIABLES, checked
from tests.conftest import make_settings
from tests.equivalence import expecting_mismatches
from tests.support import GraphQLClient, running_server

pytest_plugins = ["pytester"]


class LosesErrors(CoregraphExecutor):
    """Answers with the data but none of the errors."""

    def build_response(self, data: Any) -> Any:
        self.collected_errors = CollectedErrors()
        return super().build_response(data)


CALLS = {"bump": 0, "reading": 0}
RUNS: list[bool] = []


@strawberry.type
class Item:
    name: str

    @strawberry.field
    def broken(self) -> str | None:
        raise ValueError(f"{self.name} cannot say")


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item]:
        return [Item(name="a"), Item(name="b")]

    @strawberry.field
    async def later(self) -> list[Item]:
        return [Item(name="c")]

    @strawberry.field
    def reading(self) -> int:
        """A row that changes once, between the first run and the second."""
        CALLS["reading"] += 1
        return 1 if CALLS["reading"] == 1 else 2

    @strawberry.field
    async def whoami(self) -> str:
        RUNS.append(execution_check.in_second_run())
        return "me"

    @strawberry.field
    def consume(self, order: JSON) -> str:
        """Takes its argument apart in place, as strawberry's ``_entities`` resolver did."""
        return str(order.pop("kind", "none"))


@strawberry.type
class Mutation:
    @strawberry.mutation
    def bump(self) -> int | None:
        CALLS["bump"] += 1
        raise ValueError("bumped")


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def ticks(self, count: int) -> AsyncIterator[Item]:
        for number in range(count):
            yield Item(name=f"tick {number}")


def schema(executor: type[Any]) -> strawberry.Schema:
    built = strawberry.Schema(
        query=Query, mutation=Mutation, subscription=Subscription, execution_context_class=executor
    )
    install_fast_resolvers(built._schema, built.config.info_class)
    return built


async def test_a_divergence_is_reported_and_the_client_still_gets_its_answer() -> None:
    with expecting_mismatches() as seen:
        result = await schema(checked(LosesErrors)).execute("{ items { name broken } }")
    assert result.data == {"items": [{"name": "a", "broken": None}, {"name": "b", "broken": None}]}
    assert not result.errors  # what the broken executor answered, unchanged
    [mismatch] = seen
    assert mismatch.executor == "LosesErrors"
    assert "{\n  items {\n    name\n    broken\n  }\n}" in mismatch.operation
    assert "errors differ:" in mismatch.diff
    assert "'message': 'a cannot say', 'path': ['items', 0, 'broken']" in mismatch.diff
    assert "'original': 'ValueError'" in mismatch.diff


async def test_the_check_stays_synchronous_and_covers_async_operations() -> None:
    with expecting_mismatches() as seen:
        result = schema(checked(LosesErrors)).execute_sync("{ items { broken } }")
        assert result.data is not None and not result.errors
        await schema(checked(LosesErrors)).execute("{ later { broken } }")
    assert [m.diff.count("only stock") for m in seen] == [2, 1]


async def test_the_executor_in_use_agrees_with_stock_graphql_core() -> None:
    with expecting_mismatches() as seen:
        result = await schema(checked(CoregraphExecutor)).execute("{ items { name broken } }")
    assert [error.path for error in result.errors or []] == [
        ["items", 0, "broken"],
        ["items", 1, "broken"],
    ]
    assert seen == []


async def test_data_that_changed_between_the_two_runs_is_not_a_mismatch() -> None:
    """The first run reads 1, the stock run 2; a second pair, back to back, agrees on 2."""
    CALLS["reading"] = 0
    with expecting_mismatches() as seen:
        result = await schema(checked(CoregraphExecutor)).execute("{ reading }")
    assert result.data == {"reading": 1}
    assert CALLS["reading"] == 4
    assert seen == []


async def test_a_resolver_changing_its_arguments_is_reported_and_runs_on_fresh_input() -> None:
    """Each run gets the variables as the request carried them; the first run's change to them
    is a finding of its own (a second field reading the variable would get other input)."""
    with expecting_mismatches() as seen:
        result = await schema(checked(CoregraphExecutor)).execute(
            "query($o: JSON!) { consume(order: $o) }", {"o": {"kind": "book"}}
        )
    assert result.data == {"consume": "book"}
    [mismatch] = seen  # only the change: the stock run, on a fresh copy, answered "book" too
    assert mismatch.headline == CHANGED_VARIABLES
    assert "variables.o: keys ['kind'] (before) != [] (after)" in mismatch.diff


async def test_each_subscription_event_is_checked() -> None:
    with expecting_mismatches() as seen:
        stream = await schema(checked(LosesErrors)).subscribe(
            "subscription { ticks(count: 2) { name broken } }"
        )
        events = [event async for event in stream]  # type: ignore[union-attr]
    assert [event.data for event in events] == [
        {"ticks": {"name": "tick 0", "broken": None}},
        {"ticks": {"name": "tick 1", "broken": None}},
    ]
    assert len(seen) == 2
    assert "'message': 'tick 1 cannot say', 'path': ['ticks', 'broken']" in seen[1].diff


async def test_the_second_run_is_told_apart_from_the_request() -> None:
    """A test counting what a request costs (``test_dataloaders``' SQL statements) leaves out
    what the check's own run reads."""
    RUNS.clear()
    with expecting_mismatches() as seen:
        await schema(checked(CoregraphExecutor)).execute("{ whoami }")
    assert RUNS == [False, True] and seen == []
    assert not execution_check.in_second_run()


async def test_a_mutation_runs_once_and_is_not_compared() -> None:
    CALLS["bump"] = 0
    with expecting_mismatches() as seen:
        result = await schema(checked(LosesErrors)).execute("mutation { bump }")
    assert CALLS["bump"] == 1
    assert result.data == {"bump": None}
    assert seen == []


async def test_the_real_server_checks_its_queries(
    database_url: str, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose schema runs a broken executor: the check reports the query it answered
    wrongly, while the client gets that wrong answer as the executor made it."""
    monkeypatch.setattr(api, "CoregraphExecutor", LosesErrors)
    with running_server(make_settings(database_url, execution_check=True)) as server:
        client = GraphQLClient(http, server.url)
        with expecting_mismatches() as seen:
            r = await client.execute("query Anonymous { viewer { id } __typename }")
    assert r.status == 200 and r.data == {"viewer": None, "__typename": "Query"}
    assert r.errors == []  # UNAUTHENTICATED, dropped by the broken executor
    [mismatch] = seen
    assert mismatch.executor == "LosesErrors"
    assert "query Anonymous" in mismatch.operation
    assert (
        "'path': ['viewer']" in mismatch.diff and "'original': 'Unauthenticated'" in mismatch.diff
    )


def test_a_mismatch_fails_the_test_that_issued_the_query(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suite's hook (``tests/conftest.py``) in a pytest run of its own: a test whose query
    the executor answers wrongly fails, with the difference, though its own asserts pass."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    pytester.makeconftest("from tests.conftest import pytest_runtest_call  # noqa: F401\n")
    pytester.makepyfile(
        test_planted=textwrap.dedent(
            """
            from tests.test_execution_check import LosesErrors, schema
            from coregraph.schema.execution_check import checked

            def test_broken_executor():
                result = schema(checked(LosesErrors)).execute_sync("{ items { broken } }")
                assert result.data == {"items": [{"broken": None}, {"broken": None}]}

            def test_sound_executor():
                from coregraph.schema.execution import CoregraphExecutor

                result = schema(checked(CoregraphExecutor)).execute_sync("{ items { broken } }")
                assert len(result.errors) == 2
            """
        )
    )
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    outcome.assert_outcomes(passed=1, failed=1)
    outcome.stdout.fnmatch_lines(
        [
            "*test_broken_executor*",
            "*LosesErrors answered differently from stock graphql-core*",
            "*only stock: {'message': 'a cannot say', 'path': ?'items', 0, 'broken'?*",
        ]
    )
