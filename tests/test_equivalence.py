"""The executor coregraph's schema runs with answers as stock graphql-core does, case by case:
null propagation, errors inside lists, ``@skip``/``@include`` with variables, fragments on
interfaces and unions, aliases of one field with different arguments, lists of lists,
``__typename`` and introspection.

Each case runs on stock graphql-core and on the executor class the real schema uses
(``tests.equivalence``), and then asserts what the case is about, so a comparison of two empty
answers cannot pass for one. The real schema has no list of lists and few non-null fields that
can fail; those cases run on a small schema built with the same executor class and the same
install steps (``install_fast_resolvers``, then ``enforce_declarations``).
"""

from __future__ import annotations

from typing import Annotated, Any

import pytest
import strawberry
from graphql import get_introspection_query

from coregraph.api import build_schema
from coregraph.schema.authorization import enforce_declarations
from coregraph.schema.execution import install_fast_resolvers
from coregraph.settings import Settings
from tests.equivalence import RealSchema, SeededTenant, assert_equivalent, executor_of
from tests.support import GraphQLClient

# --- a small schema: what the real one lacks ------------------------------------------------


@strawberry.type
class Cell:
    value: int

    @strawberry.field
    def checked(self) -> int:
        """Non-null, and fails for a negative value: the error propagates to the parent."""
        if self.value < 0:
            raise ValueError(f"negative cell {self.value}")
        return self.value

    @strawberry.field
    async def later(self) -> int | None:
        if self.value == 0:
            raise ValueError("zero, later")
        return self.value * 10


@strawberry.interface
class Shape:
    id: strawberry.ID
    name: str


@strawberry.type
class Square(Shape):
    side: int

    @strawberry.field
    def corners(self) -> list[list[int]]:
        return [[0, 0], [0, self.side], [self.side, self.side], [self.side, 0]]


@strawberry.type
class Circle(Shape):
    radius: float | None


@strawberry.type
class Label:
    text: str


Figure = Annotated[Square | Circle | Label, strawberry.union("Figure")]


@strawberry.type
class Inner:
    @strawberry.field
    def cell(self, value: int) -> Cell:  # non-null: a failing cell nulls Inner
        return Cell(value=value)


@strawberry.type
class Outer:
    @strawberry.field
    def inner(self) -> Inner:  # non-null: and Inner's null goes on up to Outer
        return Inner()

    @strawberry.field
    def maybe(self) -> Inner | None:
        return Inner()


ROWS = [[1, 2], [3, -4], [0, 5]]


def grid() -> list[list[Cell]]:
    return [[Cell(value=v) for v in row] for row in ROWS]


@strawberry.type
class SmallQuery:
    @strawberry.field
    def grid(self) -> list[list[Cell | None]]:  # [[Cell]!]!
        return grid()  # type: ignore[return-value]

    @strawberry.field
    def rows(self) -> list[list[Cell] | None]:  # [[Cell!]]!
        return grid()

    @strawberry.field
    def strict_grid(self) -> list[list[Cell]] | None:  # [[Cell!]!]
        return grid()

    @strawberry.field
    async def async_grid(self) -> list[list[Cell | None]] | None:
        return grid()  # type: ignore[return-value]

    @strawberry.field
    def matrix(self) -> list[list[int | None] | None]:
        return [[1, None], None, [3, 4]]

    @strawberry.field(graphql_type=list[list[int]] | None)
    def bad_matrix(self) -> Any:
        return [[1, 2], [3, "four"]]  # Int refuses "four": the whole matrix is null

    @strawberry.field
    def outer(self) -> Outer | None:
        return Outer()

    @strawberry.field
    def cells(self, first: int = 10, offset: int = 0) -> list[Cell]:
        return [Cell(value=v) for v in range(offset, offset + first)]

    @strawberry.field
    def shapes(self) -> list[Shape]:
        return [
            Square(id=strawberry.ID("sq1"), name="square", side=2),
            Circle(id=strawberry.ID("ci1"), name="circle", radius=None),
        ]

    @strawberry.field
    def figures(self) -> list[Figure]:
        return [
            Circle(id=strawberry.ID("ci2"), name="disc", radius=1.5),
            Label(text="hello"),
            Square(id=strawberry.ID("sq2"), name="tile", side=1),
        ]


@pytest.fixture(scope="module")
def small() -> strawberry.Schema:
    executor = executor_of(build_schema(Settings()))  # the class the real schema runs with
    schema = strawberry.federation.Schema(
        query=SmallQuery,
        execution_context_class=executor,
        federation_version="2.9",
        types=[Square, Circle, Label],
    )
    install_fast_resolvers(schema._schema, schema.config.info_class)
    enforce_declarations(schema._schema)
    return schema


def paths(result: Any) -> list[list[Any]]:
    return sorted((error.path for error in result.errors or []), key=str)


async def test_null_propagates_to_the_nearest_nullable_parent(small: strawberry.Schema) -> None:
    result = await assert_equivalent(
        small,
        """{ outer { inner { cell(value: -1) { checked } } maybe { cell(value: -2) { checked } }
                     alsoMaybe: maybe { cell(value: 7) { checked value } } } }""",
    )
    # inner's failure nulls outer; the error of a field inside what was nulled is not reported
    # (graphql-core 3.3 drops errors under a nulled position)
    assert result.data == {"outer": None}
    assert paths(result) == [["outer", "inner", "cell", "checked"]]
    result = await assert_equivalent(
        small,
        """{ outer { maybe { cell(value: -2) { checked } }
                     ok: maybe { cell(value: 3) { value } } } }""",
    )
    assert result.data == {"outer": {"maybe": None, "ok": {"cell": {"value": 3}}}}


async def test_errors_inside_lists_carry_their_item_paths(small: strawberry.Schema) -> None:
    result = await assert_equivalent(
        small, "{ grid { value checked later } rows { checked } cells(first: 3) { later } }"
    )
    data = result.data
    assert data["grid"][1] == [{"value": 3, "checked": 3, "later": 30}, None]
    assert data["grid"][2][0] == {"value": 0, "checked": 0, "later": None}
    assert data["rows"] == [
        [{"checked": 1}, {"checked": 2}],
        None,
        [{"checked": 0}, {"checked": 5}],
    ]
    assert paths(result) == [
        ["cells", 0, "later"],
        ["grid", 1, 1, "checked"],
        ["grid", 2, 0, "later"],
        ["rows", 1, 1, "checked"],
    ]


async def test_lists_of_lists_complete_as_stock_graphql_core(small: strawberry.Schema) -> None:
    result = await assert_equivalent(
        small,
        """{ strictGrid { checked } asyncGrid { value later } matrix badMatrix
             shapes { ... on Square { corners } } }""",
    )
    data = result.data
    assert data["strictGrid"] is None  # one failing cell nulls the whole [[Cell!]!]
    assert data["asyncGrid"][0] == [{"value": 1, "later": 10}, {"value": 2, "later": 20}]
    assert data["matrix"] == [[1, None], None, [3, 4]]
    assert data["badMatrix"] is None
    assert data["shapes"][0] == {"corners": [[0, 0], [0, 2], [2, 2], [2, 0]]}
    assert ["badMatrix", 1, 1] in paths(result)


async def test_skip_and_include_follow_their_variables(small: strawberry.Schema) -> None:
    query = """query($a: Boolean!, $b: Boolean!) {
        cells(first: 2) { value @include(if: $a) checked @skip(if: $b)
                          ... on Cell @include(if: $b) { later }
                          ...More @skip(if: $a) }
        shapes @skip(if: $a) { name } }
      fragment More on Cell { v: value }"""
    seen = []
    for a in (True, False):
        for b in (True, False):
            result = await assert_equivalent(small, query, {"a": a, "b": b})
            seen.append(sorted(result.data["cells"][1]))
            assert ("shapes" in result.data) is not a
    assert seen == [
        ["later", "value"],
        ["checked", "value"],
        ["later", "v"],
        ["checked", "v"],
    ]


async def test_fragments_on_interfaces_and_unions(small: strawberry.Schema) -> None:
    result = await assert_equivalent(
        small,
        """{ shapes { __typename id ...Named ... on Square { side } ... on Circle { radius } }
             figures { __typename ... on Shape { name } ... on Label { text }
                       ... on Circle { radius } ...Round } }
           fragment Named on Shape { label: name }
           fragment Round on Figure { ... on Circle { id } }""",
    )
    assert result.data["shapes"] == [
        {"__typename": "Square", "id": "sq1", "label": "square", "side": 2},
        {"__typename": "Circle", "id": "ci1", "label": "circle", "radius": None},
    ]
    assert result.data["figures"] == [
        {"__typename": "Circle", "name": "disc", "radius": 1.5, "id": "ci2"},
        {"__typename": "Label", "text": "hello"},
        {"__typename": "Square", "name": "tile"},
    ]


async def test_aliases_of_one_field_with_different_arguments(small: strawberry.Schema) -> None:
    result = await assert_equivalent(
        small,
        """{ few: cells(first: 1) { value } more: cells(first: 3, offset: 5) { value n: value }
             cells { value } again: cells(first: 1) { checked } }""",
    )
    assert result.data["few"] == [{"value": 0}]
    assert result.data["more"] == [{"value": v, "n": v} for v in (5, 6, 7)]
    assert len(result.data["cells"]) == 10 and result.data["again"] == [{"checked": 0}]


async def test_typename_and_introspection_on_the_small_schema(small: strawberry.Schema) -> None:
    result = await assert_equivalent(
        small,
        "{ __typename grid { __typename } outer { __typename inner { __typename } } "
        '__type(name: "Figure") { possibleTypes { name } } }',
    )
    assert result.data["outer"] == {"__typename": "Outer", "inner": {"__typename": "Inner"}}
    assert {t["name"] for t in result.data["__type"]["possibleTypes"]} == {
        "Square",
        "Circle",
        "Label",
    }
    introspection = await assert_equivalent(small, get_introspection_query(descriptions=True))
    assert introspection.data["__schema"]["queryType"]["name"] == "Query"


# --- the real schema, on a seeded tenant ----------------------------------------------------


async def test_real_aliases_with_different_arguments(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    result = await real_schema.assert_equivalent(
        """{ tenant { one: members(first: 1) { nodes { id } pageInfo { hasNextPage } }
                      three: members(first: 3) { nodes { user { displayName } } totalCount }
                      invited: auditLog(first: 50, action: "invitation.created") {
                        nodes { action } }
                      recent: auditLog(first: 2) { nodes { action actorKind } } }
             paid: events(types: ["order.paid"], first: 2) { nodes { type data } }
             none: events(types: ["order.refunded"]) { nodes { id } } }""",
        actor=seeded_tenant.owner,
    )
    tenant = result.data["tenant"]
    assert len(tenant["one"]["nodes"]) == 1 and tenant["one"]["pageInfo"]["hasNextPage"]
    assert len(tenant["three"]["nodes"]) == 3 and tenant["three"]["totalCount"] == 4
    assert {n["action"] for n in tenant["invited"]["nodes"]} == {"invitation.created"}
    assert len(tenant["invited"]["nodes"]) == 3 and len(tenant["recent"]["nodes"]) == 2
    assert [n["data"]["order"] for n in result.data["paid"]["nodes"]] == [0, 1]
    assert result.data["none"] == {"nodes": []}


async def test_real_skip_and_include_with_variables(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    query = """query($members: Boolean!, $roles: Boolean!) {
        tenant { name members(first: 5) @include(if: $members) { totalCount }
                 roles @skip(if: $roles) { key }
                 ... on Tenant @include(if: $roles) { slug }
                 ...Keys @skip(if: $members) } }
      fragment Keys on Tenant { apiKeys { nodes { name scopes } } }"""
    for members in (True, False):
        for roles in (True, False):
            result = await real_schema.assert_equivalent(
                query, {"members": members, "roles": roles}, actor=seeded_tenant.owner
            )
            tenant = result.data["tenant"]
            assert ("members" in tenant) is members and ("apiKeys" in tenant) is not members
            assert ("roles" in tenant) is not roles and ("slug" in tenant) is roles


async def test_real_fragments_on_the_node_interface(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    query = """query($id: ID!) { node(id: $id) { __typename id ...Details ... on Node { id } } }
      fragment Details on Node {
        ... on Tenant { slug members(first: 2) { nodes { role { key } } } }
        ... on Membership { role { key permissions } user { displayName email } }
        ... on User { displayName memberships { id } }
        ... on Role { key builtin }
        ... on ApiKey { name scopes keyStatus: status createdBy { displayName } }
        ... on AuditEntry { action actorKind changes }
        ... on Invitation { email invitationStatus: status }
        ... on Event { type data sequence }
        ... on File { name status labels size }
        ... on WebhookEndpoint { url eventTypes enabled }
        ... on EventType { type description }
      }"""
    for type_name, id_ in seeded_tenant.ids.items():
        result = await real_schema.assert_equivalent(query, {"id": id_}, actor=seeded_tenant.owner)
        assert result.data["node"]["__typename"] == type_name, result.errors
    # another tenant's and a malformed id: null with NOT_FOUND / BAD_USER_INPUT, alike
    for id_ in (seeded_tenant.other_tenant_id, "nope"):
        result = await real_schema.assert_equivalent(query, {"id": id_}, actor=seeded_tenant.owner)
        assert result.data == {"node": None} and paths(result) == [["node"]]


async def test_real_fragments_on_the_entities_union_and_errors_in_lists(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    representations: list[Any] = [
        {"__typename": type_name, "id": id_} for type_name, id_ in seeded_tenant.ids.items()
    ]
    representations += [
        {"__typename": "Tenant", "id": seeded_tenant.other_tenant_id},  # not ours: NOT_FOUND
        {"__typename": "Nope", "id": "x"},  # not an entity type: BAD_USER_INPUT
        {"__typename": "Role"},  # no key
        "not an object",
    ]
    query = """query($r: [_Any!]!) { _entities(representations: $r) {
        __typename
        ... on Tenant { name }
        ... on Membership { role { key } user { email } }
        ... on User { displayName email }
        ... on Role { key }
        ... on ApiKey { name }
        ... on Node { id }
      } }"""
    for actor in (seeded_tenant.owner, seeded_tenant.key, seeded_tenant.auditor):
        result = await real_schema.assert_equivalent(query, {"r": representations}, actor=actor)
        entities = result.data["_entities"]
        assert len(entities) == len(representations)
        assert entities[-4:] == [None] * 4
        assert {tuple(p) for p in paths(result)} >= {("_entities", i) for i in range(11, 15)}
    # the auditor may not read memberships, roles or keys: null items with FORBIDDEN, in place
    assert entities[list(seeded_tenant.ids).index("Membership")] is None
    assert entities[0] == {
        "__typename": "Tenant",
        "name": entities[0]["name"],
        "id": seeded_tenant.tenant_id,
    }


async def test_real_denials_inside_lists_and_nested_nulls(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    query = """{ viewer { displayName memberships { role { key } tenant { name
                   members(first: 10) { nodes { user { displayName email } role { key } } } } } }
                 tenant { name members { totalCount } auditLog(first: 5) { nodes { action } }
                          roles { key } apiKeys { nodes { id } } } }"""
    for actor in (
        seeded_tenant.owner,
        seeded_tenant.admin,
        seeded_tenant.member,
        seeded_tenant.auditor,
        seeded_tenant.key,
    ):
        result = await real_schema.assert_equivalent(
            query, actor=actor, tenant_id=seeded_tenant.tenant_id
        )
    # the API key (the last actor) is no user, and may not manage keys
    assert result.data["viewer"] is None
    assert result.data["tenant"]["apiKeys"] is None
    result = await real_schema.assert_equivalent(
        query, actor=seeded_tenant.auditor, tenant_id=seeded_tenant.tenant_id
    )
    assert result.data["tenant"]["members"] is None and result.data["tenant"]["roles"] is None
    assert ["tenant", "members"] in paths(result)


async def test_real_typename_everywhere(
    real_schema: RealSchema, seeded_tenant: SeededTenant
) -> None:
    result = await real_schema.assert_equivalent(
        """query($role: ID!) {
             __typename viewer { __typename memberships { __typename tenant { __typename } } }
             tenant { __typename members(first: 2) { __typename edges { __typename cursor
               node { __typename user { __typename } } } pageInfo { __typename } } }
             node(id: $role) { __typename } }""",
        {"role": seeded_tenant.ids["Role"]},
        actor=seeded_tenant.owner,
    )
    assert result.data["__typename"] == "Query"
    members = result.data["tenant"]["members"]
    assert members["__typename"] == "MembershipConnection"
    assert members["edges"][0]["node"]["user"] == {"__typename": "User"}
    assert result.data["node"] == {"__typename": "Role"}


async def test_real_introspection(real_schema: RealSchema, seeded_tenant: SeededTenant) -> None:
    result = await real_schema.assert_equivalent(
        get_introspection_query(descriptions=True, directive_is_repeatable=True),
        actor=seeded_tenant.owner,
    )
    names = {type_["name"] for type_ in result.data["__schema"]["types"]}
    assert {"Tenant", "Membership", "_Entity", "Node", "__Schema"} <= names


async def test_two_entities_fields_read_the_same_representations(
    client: GraphQLClient, seeded_tenant: SeededTenant
) -> None:
    """Found by the comparison: strawberry's ``_entities`` resolver rewrote the representation
    objects in place (it pops ``__typename``), so a second ``_entities`` field reading the same
    variable — or a second run of the operation — found them without their type."""
    representations = [
        {"__typename": "Tenant", "id": seeded_tenant.tenant_id},
        {"__typename": "Role", "id": seeded_tenant.ids["Role"]},
    ]
    r = await client.execute(
        """query($r: [_Any!]!) { a: _entities(representations: $r) { ... on Node { id } }
                                 b: _entities(representations: $r) { ... on Node { id } } }""",
        {"r": representations},
        actor=seeded_tenant.owner,
        tenant_id=seeded_tenant.tenant_id,
    )
    expected = [{"id": seeded_tenant.tenant_id}, {"id": seeded_tenant.ids["Role"]}]
    assert r.ok() == {"a": expected, "b": expected}
