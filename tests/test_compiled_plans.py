"""Compiled plans (``coregraph.schema.compiled``): a query runs on its document's plan, built
once and reused, and answers exactly what graphql-core's own walk answers — data, errors and
their paths — whatever the document does (variables for ``@skip``/``@include``, abstract
types, lists of lists, async resolvers, resolvers that change their input, errors anywhere).

Each query runs on two builds of the same schema: strawberry's stock executor and
coregraph's (``CoregraphExecutor``, which plans). The suite-wide check compares the two on
every query the other tests send; these tests make sure the plan is really taken (or really
left) where it should be.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import pytest
import strawberry
from aiodataloader import DataLoader
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from coregraph.schema import compiled
from coregraph.schema.execution import CoregraphExecutor, install_fast_resolvers
from coregraph.schema.prefetch import NOT_LOADED, prefetched


@strawberry.interface
class Animal:
    name: str


@strawberry.type
class Dog(Animal):
    barks: int


@strawberry.type
class Cat(Animal):
    lives: int
    friend: Animal | None = None


@strawberry.type
class Stone:
    weight: float


Thing = Annotated[Dog | Cat | Stone, strawberry.union("Thing")]


class Loaders:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

        async def load(keys: list[int]) -> list[int]:
            self.batches.append(list(keys))
            return [key * 10 for key in keys]

        self.tenfold = DataLoader(load)


@strawberry.type
class Item:
    id: int

    @strawberry.field
    async def tenfold(self, info: strawberry.Info) -> int:
        return await info.context.loaders.tenfold.load(self.id)  # type: ignore[no-any-return]

    @strawberry.field
    def grid(self) -> list[list[int]]:
        return [[self.id, self.id + 1], [], [self.id * 2]]

    @strawberry.field
    def broken(self) -> int | None:
        if self.id == 2:
            raise ValueError(f"item {self.id} is broken")
        return self.id


PARTNER_CALLS: list[int] = []


@strawberry.type
class Pair:
    id: int
    loaded_partner: strawberry.Private[Any] = NOT_LOADED

    @strawberry.field
    def where(self, info: strawberry.Info) -> str:
        return ".".join(str(key) for key in info.path.as_list())

    @strawberry.field
    @prefetched("loaded_partner")
    def partner(self) -> Pair | None:
        PARTNER_CALLS.append(self.id)
        if self.loaded_partner is not NOT_LOADED:
            return self.loaded_partner  # type: ignore[no-any-return]
        return Pair(id=-self.id) if self.id % 3 else None


@strawberry.type
class Badge:
    id: int
    tags: list[str]


@strawberry.type
class Holder:
    id: int
    loaded_badge: strawberry.Private[Any] = NOT_LOADED

    @strawberry.field
    @prefetched("loaded_badge")
    def badge(self) -> Badge | None:
        if self.loaded_badge is not NOT_LOADED:
            return self.loaded_badge  # type: ignore[no-any-return]
        return Badge(id=-self.id, tags=[])


@strawberry.type
class Query:
    @strawberry.field
    def holders(self) -> list[Holder]:
        # Two holders are handed one badge, a third an equal one, the fourth loads its own.
        shared = Badge(id=1, tags=["a", "b"])
        handed = [shared, shared, Badge(id=1, tags=["a", "b"])]
        holders = [Holder(id=i) for i in range(1, 5)]
        for holder, badge in zip(holders, handed, strict=False):
            holder.loaded_badge = badge
        return holders

    @strawberry.field
    def pairs(self) -> list[Pair]:
        # Even items are handed their partner (an object, or None), odd ones load it.
        pairs = [Pair(id=i) for i in range(1, 7)]
        for pair in pairs:
            if pair.id % 2 == 0:
                pair.loaded_partner = Pair(id=100 + pair.id) if pair.id != 4 else None
        return pairs

    @strawberry.field
    def animals(self) -> list[Animal]:
        return [
            Dog(name="rex", barks=3),
            Cat(name="tom", lives=9, friend=Dog(name="fido", barks=1)),
            Cat(name="kit", lives=7),
        ]

    @strawberry.field
    def things(self) -> list[Thing]:
        return [Stone(weight=1.5), Dog(name="rex", barks=2), Cat(name="tom", lives=9)]

    @strawberry.field
    def items(self, count: int = 3) -> list[Item]:
        return [Item(id=i) for i in range(count)]

    @strawberry.field
    def first_key(self, data: JSON, fail: bool = False) -> str | None:
        # Changes its input, as federation's _entities does (it pops __typename).
        assert isinstance(data, dict)
        key = next(iter(data))
        data.pop(key)
        if fail:
            raise ValueError(f"refused {key}")
        return str(key)


@strawberry.type
class Mutation:
    @strawberry.mutation
    def touch(self) -> int:
        return 1


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def ticks(self, count: int) -> AsyncGenerator[Item, None]:
        for i in range(count):
            yield Item(id=i)


class Context:
    def __init__(self) -> None:
        self.loaders = Loaders()
        self.principal = None


def build(executor: type[Any]) -> strawberry.Schema:
    schema = strawberry.Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        execution_context_class=executor,
    )
    if executor is CoregraphExecutor:
        install_fast_resolvers(schema._schema, schema.config.info_class)
    return schema


STOCK = build(StrawberryGraphQLCoreExecutionContext)
PLANNED = build(CoregraphExecutor)


async def both(
    query: str, variables: dict[str, Any] | None = None
) -> tuple[Any, dict[str, int], Context]:
    """The planned answer (asserted equal to stock's), what happened to it, its context."""
    answers = []
    context = Context()
    before = dict(compiled.STATS)
    for schema, ctx in ((PLANNED, context), (STOCK, Context())):
        result = await schema.execute(
            query,
            variable_values=copy.deepcopy(variables),
            context_value=ctx,
        )
        answers.append(
            (result.data, [(e.message, e.path, e.locations) for e in result.errors or []])
        )
        if schema is PLANNED:
            happened = {k: compiled.STATS[k] - before[k] for k in before}
    assert answers[0] == answers[1]
    return answers[0], happened, context


async def test_a_query_is_planned_once_and_the_plan_is_reused() -> None:
    query = "{ animals { name ... on Dog { barks } } items { id grid } }"
    answer, happened, _ = await both(query)
    assert answer[1] == []
    assert happened == {"planned": 1, "fallback": 0, "stock": 0}
    plans = len(compiled.plans_of(PLANNED._schema))
    for _ in range(3):
        _, happened, _ = await both(query)
        assert happened["planned"] == 1
    assert len(compiled.plans_of(PLANNED._schema)) == plans  # the same plan, not one per request


async def test_abstract_types_are_planned_per_runtime_type() -> None:
    answer, happened, _ = await both(
        "{ things { __typename ... on Animal { name } ... on Dog { barks } ... on Stone "
        "{ weight } } animals { __typename ... on Cat { lives friend { name __typename } } } }"
    )
    assert happened["planned"] == 1
    assert answer[0]["things"] == [
        {"__typename": "Stone", "weight": 1.5},
        {"__typename": "Dog", "name": "rex", "barks": 2},
        {"__typename": "Cat", "name": "tom"},
    ]
    assert answer[0]["animals"][1] == {
        "__typename": "Cat",
        "lives": 9,
        "friend": {"name": "fido", "__typename": "Dog"},
    }


async def test_skip_and_include_variables_choose_their_own_plan() -> None:
    query = (
        "query($with: Boolean!, $without: Boolean!) { items { id "
        "tenfold @include(if: $with) grid @skip(if: $without) } }"
    )
    seen = []
    for with_, without in ((True, False), (False, True), (True, True), (True, False)):
        answer, happened, _ = await both(query, {"with": with_, "without": without})
        assert happened["planned"] == 1
        seen.append(sorted(answer[0]["items"][0]))
    assert seen == [["grid", "id", "tenfold"], ["id"], ["id", "tenfold"], seen[0]]


async def test_lists_of_lists_and_aliases_with_arguments() -> None:
    answer, happened, _ = await both(
        "{ few: items(count: 1) { id grid } many: items(count: 4) { g: grid id } }"
    )
    assert happened["planned"] == 1
    assert answer[0]["few"] == [{"id": 0, "grid": [[0, 1], [], [0]]}]
    assert [item["g"] for item in answer[0]["many"]][3] == [[3, 4], [], [6]]


async def test_async_fields_of_a_list_load_in_one_batch_as_on_the_stock_path() -> None:
    _, happened, context = await both("{ items(count: 5) { id tenfold } }")
    assert happened["planned"] == 1
    assert context.loaders.batches == [[0, 1, 2, 3, 4]]


async def test_prefetched_fields_are_read_and_the_resolver_runs_only_where_not_handed_over() -> (
    None
):
    PARTNER_CALLS.clear()
    context = Context()
    result = await PLANNED.execute("{ pairs { id partner { id } } }", context_value=context)
    assert result.errors is None
    assert [p["partner"] for p in result.data["pairs"]] == [
        {"id": -1},
        {"id": 102},
        None,  # 3: loaded, and its resolver answers None
        None,  # 4: handed None
        {"id": -5},
        {"id": 106},
    ]
    assert PARTNER_CALLS == [1, 3, 5]  # the odd ones: nothing was handed to them
    answer, happened, _ = await both("{ pairs { id partner { id partner { id } } } }")
    assert happened["planned"] == 1
    assert answer[0]["pairs"][1] == {"id": 2, "partner": {"id": 102, "partner": None}}


async def test_resolvers_get_their_response_path_below_objects_read_without_one() -> None:
    # Plans build paths only where a resolver below reads one: through lists, attribute
    # objects and prefetched fields, each resolver still sees its own.
    answer, happened, _ = await both(
        "{ pairs { id partner { w: where partner { where } } } "
        "animals { ... on Cat { friend { name } } } }"
    )
    assert happened["planned"] == 1
    assert answer[0]["pairs"][1]["partner"]["w"] == "pairs.1.partner.w"
    assert answer[0]["pairs"][0]["partner"]["partner"] == {"where": "pairs.0.partner.partner.where"}
    assert answer[0]["pairs"][1]["partner"]["partner"] is None


async def test_an_error_falls_back_to_graphql_core_which_answers_it() -> None:
    answer, happened, _ = await both("{ items(count: 4) { id broken tenfold } }")
    assert happened == {"planned": 0, "fallback": 1, "stock": 0}
    data, errors = answer
    assert [item["broken"] for item in data["items"]] == [0, 1, None, 3]
    assert errors == [("item 2 is broken", ["items", 2, "broken"], [errors[0][2][0]])]


async def test_the_fallback_starts_from_the_variables_the_client_sent() -> None:
    # The plan's attempt changes the variable (the resolver pops a key), then fails: the
    # fallback must see the client's variable, as the stock executor does, not the leftover.
    query = "query($d: JSON!) { a: firstKey(data: $d) b: firstKey(data: $d, fail: true) }"
    answer, happened, _ = await both(query, {"d": {"x": 1, "y": 2, "z": 3}})
    assert happened["fallback"] == 1
    assert answer == ({"a": "x", "b": None}, [("refused y", ["b"], answer[1][0][2])])


async def test_mutations_and_introspection_run_on_graphql_core() -> None:
    _, happened, _ = await both("mutation { touch }")
    assert happened == {"planned": 0, "fallback": 0, "stock": 1}
    _, happened, _ = await both("{ __schema { queryType { name } } }")
    assert happened == {"planned": 0, "fallback": 0, "stock": 1}


async def test_each_subscription_event_runs_on_the_subscription_documents_plan() -> None:
    query = "subscription { ticks(count: 3) { id grid tenfold } }"
    results: dict[Any, tuple[list[Any], int]] = {}
    for schema in (PLANNED, STOCK):
        before = compiled.STATS["planned"]
        stream = await schema.subscribe(query, context_value=Context())
        assert not isinstance(stream, strawberry.types.ExecutionResult) or not stream.errors
        events = []
        async for event in stream:  # type: ignore[union-attr]
            events.append((event.data, event.errors))
        results[schema] = (events, compiled.STATS["planned"] - before)
    assert results[PLANNED][0] == results[STOCK][0]
    assert [data["ticks"]["id"] for data, _ in results[PLANNED][0]] == [0, 1, 2]  # type: ignore[index]
    assert results[PLANNED][1] == 3  # every event planned...
    keys = [key for key in compiled.plans_of(PLANNED._schema) if key[0] == query]
    assert len(keys) == 1  # ...on one plan


@pytest.mark.parametrize("count", [0, 1, 50])
async def test_empty_and_long_lists(count: int) -> None:
    answer, happened, _ = await both(f"{{ items(count: {count}) {{ id tenfold grid }} }}")
    assert happened["planned"] == 1
    assert len(answer[0]["items"]) == count


async def test_concurrent_requests_share_a_plan_and_keep_their_own_answers() -> None:
    queries = [f"{{ items(count: {n}) {{ id tenfold }} }}" for n in (3, 5)] * 4
    answers = await asyncio.gather(*(both(query) for query in queries))
    for query, (answer, happened, _) in zip(queries, answers, strict=True):
        assert happened["planned"] >= 1
        assert len(answer[0]["items"]) == int(query.split("count: ")[1][0])


async def test_plans_can_be_switched_off_and_the_answers_stay_the_same() -> None:
    from coregraph.api import build_schema
    from tests.conftest import make_settings

    query = "{ __typename _service { sdl } }"
    answers: dict[bool, Any] = {}
    for enabled in (True, False):
        schema = build_schema(make_settings("sqlite+aiosqlite://", compiled_plans=enabled))
        before = dict(compiled.STATS)
        result = await schema.execute(query, context_value=Context())
        assert not result.errors, result.errors
        answers[enabled] = result.data
        happened = {k: compiled.STATS[k] - before[k] for k in before}
        assert happened == (
            {"planned": 1, "fallback": 0, "stock": 0}
            if enabled
            else {"planned": 0, "fallback": 0, "stock": 1}
        )
    assert answers[True] == answers[False]
    assert "type Query" in answers[True]["_service"]["sdl"]


async def test_each_schema_keeps_its_own_plans() -> None:
    # The same text on two schemas of different shape: each runs on a plan of its own (a
    # plan holds its schema's types and resolvers), whatever schema came and went before.
    @strawberry.type
    class Other:
        @strawberry.field
        def items(self) -> list[Dog]:
            return [Dog(name="a", barks=1)]

    query = "{ items { __typename } }"
    for _ in range(3):
        other = strawberry.Schema(query=Other, execution_context_class=CoregraphExecutor)
        mine = await PLANNED.execute(query, context_value=Context())
        theirs = await other.execute(query, context_value=Context())
        assert mine.data == {"items": [{"__typename": "Item"}] * 3}
        assert theirs.data == {"items": [{"__typename": "Dog"}]}
        assert len(compiled.plans_of(other._schema)) == 1


async def test_an_object_handed_to_many_items_is_completed_once() -> None:
    answer, happened, _ = await both("{ holders { id badge { id tags __typename } } }")
    assert happened["planned"] == 1
    badges = [holder["badge"] for holder in answer[0]["holders"]]
    assert badges[:3] == [{"id": 1, "tags": ["a", "b"], "__typename": "Badge"}] * 3
    assert badges[3] == {"id": -4, "tags": [], "__typename": "Badge"}
    # The shared object's answer is reused; an equal object of its own is completed anew.
    assert badges[0] is badges[1]
    assert badges[2] is not badges[0]
