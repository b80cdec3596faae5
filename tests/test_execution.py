"""The executor's shortcut for plain leaf fields (``coregraph.schema.execution``) answers
exactly what graphql-core's normal path answers, errors included, and is really taken.

Each query runs against two builds of the same schema: strawberry's stock executor and
coregraph's. Data and errors (message and path) must be identical.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import strawberry
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.schema.authorization import enforce_declarations
from coregraph.schema.execution import CoregraphExecutor, install_fast_resolvers


@strawberry.enum
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.interface
class Named:
    name: str


@strawberry.type
class Owner(Named):  # an interface gives it strawberry's IsTypeOf check, as Node does ours
    id: strawberry.ID


@strawberry.type
class Thing:
    id: strawberry.ID
    name: str
    nickname: str | None
    count: int
    created_at: datetime
    color: Color
    tags: list[str]
    loose_tags: list[str | None]
    owner: Owner | None
    extra: JSON | None = None

    @strawberry.field
    def shout(self, suffix: str = "!") -> str:
        return self.name.upper() + suffix

    # Object fields: each kind of result the object shortcut hands to graphql-core's paths.
    @strawberry.field
    def keeper(self) -> Owner:  # non-null: null for odd things, an error that propagates
        return self.owner  # type: ignore[return-value]

    @strawberry.field
    async def later(self) -> Owner | None:  # an awaitable
        return self.owner

    @strawberry.field
    def failing(self) -> Owner | None:  # raises for one thing
        if self.count == 3:
            raise ValueError(f"no owner for {self.id}")
        return self.owner

    @strawberry.field(graphql_type=Owner | None)
    def impostor(self) -> Any:  # not an Owner at all
        return Color.RED if self.owner else None

    # Lists of objects: each item kind the list shortcut hands to graphql-core's paths.
    @strawberry.field(graphql_type=list[Owner | None])
    def crowd(self) -> Any:
        return [self.owner, None, ValueError(f"item of {self.id}"), Color.BLUE][: 1 + self.count]

    @strawberry.field(graphql_type=list[Owner] | None)
    def strict_crowd(self) -> Any:  # a null or a wrong item nulls the whole list
        return [self.owner or Owner(id=strawberry.ID("own_x"), name="x"), None][: 1 + self.count]


def things() -> list[Thing]:
    made = [
        Thing(
            id=strawberry.ID(f"thg_{i}"),
            name=f"thing {i}",
            nickname=None if i % 2 else f"t{i}",
            count=i,
            created_at=datetime(2026, 1, 1, i, tzinfo=UTC),
            color=Color.RED if i % 3 else Color.BLUE,
            tags=[f"a{i}", f"b{i}"],
            loose_tags=["x", None],
            owner=Owner(id=strawberry.ID(f"own_{i}"), name=f"owner {i}") if i % 2 else None,
        )
        for i in range(6)
    ]
    # What the normal path must report, and the shortcut must not hide:
    made[1].name = None  # type: ignore[assignment]  # null in a non-null position
    made[2].count = "many"  # type: ignore[assignment]  # a value Int refuses
    made[3].tags = ["ok", None]  # type: ignore[list-item]  # null item in [String!]!
    del made[4].nickname  # an attribute that is not there
    made[5].tags = "ab"  # type: ignore[assignment]  # a string is not a list
    made[0].extra = PermissionError("an exception object is an error, not data")
    made[3] = FailingThing(**{k: getattr(made[3], k) for k in Thing.__annotations__})
    return made


class FailingThing(Thing):
    """An object whose attribute read fails (as an ORM lazy load can)."""

    @property  # type: ignore[override]
    def nickname(self) -> str | None:
        raise ValueError("lazy load failed")

    @nickname.setter
    def nickname(self, value: str | None) -> None:
        pass


@strawberry.type
class Query:
    @strawberry.field
    def things(self) -> list[Thing | None]:
        return things()


class CountingExecutor(CoregraphExecutor):
    fields_executed = 0

    def execute_field(self, *args: Any, **kwargs: Any) -> Any:
        CountingExecutor.fields_executed += 1
        return super().execute_field(*args, **kwargs)


def stock() -> strawberry.Schema:
    return strawberry.Schema(
        query=Query, execution_context_class=StrawberryGraphQLCoreExecutionContext
    )


def shortcut(executor: type[CoregraphExecutor] = CoregraphExecutor) -> strawberry.Schema:
    schema = strawberry.Schema(query=Query, execution_context_class=executor)
    install_fast_resolvers(schema._schema, schema.config.info_class)
    return schema


QUERIES = [
    "{ things { id crowd { id name } strictCrowd { id } } }",
    "{ things { id nickname extra } }",
    "{ things { id owner { id name } keeper { id } later { name } failing { id } } }",
    "{ things { id impostor { id } } }",
    "{ things { id name nickname count createdAt color tags looseTags } }",
    "{ things { ...F owner { id name __typename } } } fragment F on Thing { id n: name count }",
    '{ things { a: id b: id shout loud: shout(suffix: "?") tags } }',
    "{ things { id ... on Thing { name } __typename } }",
]


def outcome(schema: strawberry.Schema, query: str) -> tuple[Any, list[tuple[str, Any]]]:
    result = schema.execute_sync(query)
    errors = [(error.message, error.path) for error in result.errors or []]
    return result.data, errors


async def async_outcome(schema: strawberry.Schema, query: str) -> tuple[Any, list[Any]]:
    result = await schema.execute(query)
    errors = [(error.message, error.path) for error in result.errors or []]
    return result.data, errors


async def test_the_shortcut_answers_as_graphql_core_does() -> None:
    for query in QUERIES:
        expected = await async_outcome(stock(), query)
        assert await async_outcome(shortcut(), query) == expected, query
    # The comparisons covered every kind of failure the shortcut hands back.
    data, errors = await async_outcome(stock(), QUERIES[0])
    assert data["things"][5]["crowd"][:3] == [{"id": "own_5", "name": "owner 5"}, None, None]
    paths = {tuple(path) for _, path in errors}
    # an error item, a wrong-typed item; a null in a non-null list nulls the list
    assert {("things", 3, "crowd", 2), ("things", 3, "crowd", 3)} <= paths
    assert ("things", 1, "strictCrowd", 1) in paths and data["things"][1]["strictCrowd"] is None
    data, errors = await async_outcome(stock(), QUERIES[2])
    assert [thing and thing["id"] for thing in data["things"]] == [
        None,
        "thg_1",
        None,
        "thg_3",
        None,
        "thg_5",
    ]
    assert {tuple(path) for _, path in errors} == {
        ("things", 0, "keeper"),
        ("things", 2, "keeper"),
        ("things", 3, "failing"),
        ("things", 4, "keeper"),
    }
    _, errors = await async_outcome(stock(), QUERIES[3])
    assert {tuple(path) for _, path in errors} == {("things", i, "impostor") for i in (1, 3, 5)}
    _, errors = await async_outcome(stock(), QUERIES[1])
    assert {tuple(path) for _, path in errors} == {
        ("things", 0, "extra"),
        ("things", 3, "nickname"),
        ("things", 4, "nickname"),
    }
    _, errors = outcome(stock(), QUERIES[4])
    assert {tuple(path) for _, path in errors} == {
        ("things", 1, "name"),
        ("things", 2, "count"),
        ("things", 3, "tags", 1),
        ("things", 3, "nickname"),
        ("things", 4, "nickname"),
        ("things", 5, "tags"),
    }


def test_plain_leaves_skip_the_per_field_machinery() -> None:
    CountingExecutor.fields_executed = 0
    data, _ = outcome(shortcut(CountingExecutor), "{ things { id count createdAt color tags } }")
    assert data is not None and len(data["things"]) == 6
    # The root field, plus one normal-path retry for each bad value selected (thing 2's count,
    # thing 3's and thing 5's tags); the 27 good leaves never reach execute_field.
    assert CountingExecutor.fields_executed == 1 + 3


def test_resolver_fields_and_arguments_take_the_normal_path() -> None:
    CountingExecutor.fields_executed = 0
    data, errors = outcome(shortcut(CountingExecutor), '{ things { shout(suffix: "?") } }')
    assert CountingExecutor.fields_executed == 1 + 6
    assert data is not None and data["things"][0] == {"shout": "THING 0?"}
    assert [path for _, path in errors] == [["things", 1, "shout"]]


@strawberry.federation.type(keys=["id"])
class Person:
    id: strawberry.ID
    user_id: strawberry.Private[str]
    email: str | None = strawberry.federation.field(policy=[["self"]])


@strawberry.type(name="Query")
class PeopleQuery:
    @strawberry.field
    def people(self) -> list[Person]:
        return [
            Person(id=strawberry.ID(f"prs_{i}"), user_id=f"usr_{i}", email=f"{i}@example.com")
            for i in range(3)
        ]


def test_a_declared_leaf_is_checked_on_the_shortcut_too() -> None:
    """``Person.email`` carries ``@policy(self)``: its guard wraps an attribute read, which the
    shortcut may take only after the guard's own check passes."""
    context = SimpleNamespace(principal=Principal(kind=PrincipalKind.USER, user_id="usr_1"))
    answers = []
    for executor in (StrawberryGraphQLCoreExecutionContext, CountingExecutor):
        schema = strawberry.federation.Schema(
            query=PeopleQuery, execution_context_class=executor, federation_version="2.9"
        )
        if executor is CountingExecutor:
            install_fast_resolvers(schema._schema, schema.config.info_class)
        enforce_declarations(schema._schema)
        CountingExecutor.fields_executed = 0
        result = schema.execute_sync("{ people { id email } }", context_value=context)
        answers.append(
            (result.data, [(e.message, e.path, e.original_error) for e in result.errors or []])
        )
    stock_answer, shortcut_answer = answers
    data, errors = shortcut_answer
    assert data == {
        "people": [
            {"id": "prs_0", "email": None},
            {"id": "prs_1", "email": "1@example.com"},
            {"id": "prs_2", "email": None},
        ]
    }
    assert [(path, type(error).__name__) for _, path, error in errors] == [
        (["people", 0, "email"], "Forbidden"),
        (["people", 2, "email"], "Forbidden"),
    ]
    assert [(m, p) for m, p, _ in errors] == [(m, p) for m, p, _ in stock_answer[1]]
    assert data == stock_answer[0]
    # The allowed email came off the shortcut; the two denied ones went through the guard.
    assert CountingExecutor.fields_executed == 1 + 2


def test_installing_fast_resolvers_after_the_guards_is_refused() -> None:
    """Replacing a guarded resolver would drop its check: the wrong order fails the build."""
    schema = strawberry.federation.Schema(query=PeopleQuery, federation_version="2.9")
    enforce_declarations(schema._schema)
    with pytest.raises(RuntimeError, match="must run before enforce_declarations"):
        install_fast_resolvers(schema._schema, schema.config.info_class)
