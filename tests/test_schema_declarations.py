"""Every field that can expose tenant data carries an authorization declaration, and the guard
that enforces it is installed. The walk is over the built schema, so a new type or field that
forgets its declaration fails here before it ships.

Rule: every field of every object type is covered by a declaration (on the field or on its
type), except
  (a) a small allow-list of public root fields and federation internals, and
  (b) fields of *wrapper* types (connections, edges, PageInfo, mutation payloads, ...). A type
      counts as a wrapper only if it is reached, and every field that returns it (through lists
      and non-null) is declared, is a public root field that may vouch for its result, or
      belongs to another acceptable wrapper. Types reached only through an interface or a union
      (`node`, `_entities`) cannot be wrappers: they must carry their own declarations.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest
import strawberry
from graphql import (
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    get_named_type,
)
from strawberry.federation.schema_directives import RequiresScopes

from coregraph.api import build_schema
from coregraph.auth.principal import ANONYMOUS, Principal, PrincipalKind
from coregraph.errors import Forbidden, Unauthenticated
from coregraph.schema.authorization import (
    declarations_of,
    enforce_declarations,
    field_declarations,
    own_declarations,
)
from coregraph.settings import Settings

# Public root fields: anyone may call them. Their results are the caller's own (a new session,
# or the token an exchange of the caller's own credentials buys); `_service` answers the SDL,
# which declares nothing secret.
PUBLIC_ROOT_FIELDS = frozenset(
    {
        "Mutation.signUp",
        "Mutation.login",
        "Mutation.refreshSession",
        "Mutation.logout",
        "Mutation.exchangeToken",
        "Query._service",
        "Query._entities",
    }
)
# Federation internals: fields of federation's own types.
FEDERATION_INTERNALS = frozenset({"_Service.sdl"})
# `_entities` may be called by anyone, but it does not vouch for what it returns: each entity
# it can return must be declared itself.
NOT_VOUCHING = frozenset({"Query._entities"})


@dataclass
class Coverage:
    offenders: list[str] = field(default_factory=list)
    wrappers: set[str] = field(default_factory=set)
    declared: dict[str, GraphQLObjectType] = field(default_factory=dict)


def _object_types(schema: GraphQLSchema) -> list[GraphQLObjectType]:
    return [
        t
        for t in schema.type_map.values()
        if isinstance(t, GraphQLObjectType) and not t.name.startswith("__")
    ]


def check_declarations(
    schema: GraphQLSchema,
    public_root_fields: frozenset[str] = PUBLIC_ROOT_FIELDS,
    federation_internals: frozenset[str] = FEDERATION_INTERNALS,
) -> Coverage:
    """Walk ``schema`` and report every uncovered field by its coordinate."""
    coverage = Coverage()
    types = _object_types(schema)
    declared: set[str] = set()
    # Fields returning each object type directly (through lists / non-null only) ...
    direct: dict[str, set[str]] = {t.name: set() for t in types}
    # ... and through an interface or a union.
    abstract: dict[str, set[str]] = {t.name: set() for t in types}
    for type_ in types:
        for name, graphql_field in type_.fields.items():
            coordinate = f"{type_.name}.{name}"
            if field_declarations(type_, name, graphql_field):
                declared.add(coordinate)
                coverage.declared[coordinate] = type_
            target = get_named_type(graphql_field.type)
            if isinstance(target, GraphQLObjectType):
                direct.setdefault(target.name, set()).add(coordinate)
            elif isinstance(target, GraphQLUnionType):
                for member in target.types:
                    abstract.setdefault(member.name, set()).add(coordinate)
            elif isinstance(target, GraphQLInterfaceType):
                for member in schema.get_implementations(target).objects:
                    abstract.setdefault(member.name, set()).add(coordinate)

    vouching_roots = public_root_fields - NOT_VOUCHING
    # Least fixpoint: a type becomes an acceptable wrapper once every field reaching it is
    # declared, a vouching public root field, or a field of a wrapper already accepted.
    changed = True
    while changed:
        changed = False
        for type_ in types:
            if type_.name in coverage.wrappers:
                continue
            referrers = direct.get(type_.name, set())
            if not referrers or abstract.get(type_.name):
                continue
            if all(
                ref in declared
                or ref in vouching_roots
                or ref.split(".", 1)[0] in coverage.wrappers
                for ref in referrers
            ):
                coverage.wrappers.add(type_.name)
                changed = True

    for type_ in types:
        for name in type_.fields:
            coordinate = f"{type_.name}.{name}"
            if (
                coordinate in declared
                or coordinate in public_root_fields
                or coordinate in federation_internals
                or type_.name in coverage.wrappers
            ):
                continue
            coverage.offenders.append(coordinate)
    return coverage


def enforcers(schema: GraphQLSchema, type_: GraphQLObjectType, name: str) -> list[Any]:
    """The checks that must stand between a caller and this field: the field's guard for
    its own declaration (and, on a root type, for the type's), the type's ``IsTypeOf`` check
    for the type's declaration. An entry is None where the check is missing."""
    roots = {schema.query_type, schema.mutation_type, schema.subscription_type}
    resolve = type_.fields[name].resolve
    field_guard = resolve if hasattr(resolve, "rules") else None
    type_guard = type_.is_type_of if hasattr(type_.is_type_of, "rules") else None
    needed = []
    if own_declarations(type_.fields[name], name):
        needed.append(field_guard)
    if own_declarations(type_, type_.name):
        needed.append(field_guard if type_ in roots else type_guard)
    return needed


def unguarded(coverage: Coverage, schema: GraphQLSchema) -> list[str]:
    """Declared fields without the check that enforces each of their declarations."""
    missing = []
    for coordinate, type_ in coverage.declared.items():
        if None in enforcers(schema, type_, coordinate.split(".", 1)[1]):
            missing.append(coordinate)
    return missing


@pytest.fixture(scope="module")
def coregraph_schema() -> GraphQLSchema:
    return build_schema(Settings())._schema


# --- coregraph's schema ------------------------------------------------------------------


def test_every_field_is_declared_or_inside_an_acceptable_wrapper(
    coregraph_schema: GraphQLSchema,
) -> None:
    coverage = check_declarations(coregraph_schema)
    assert coverage.offenders == [], (
        "fields that may expose tenant data without @authenticated/@requiresScopes/@policy "
        "(declare them, or on their type):\n  " + "\n  ".join(coverage.offenders)
    )
    # The walk really looked: the types we expect to be wrappers are, and entities are not.
    assert {
        "PageInfo",
        "MembershipConnection",
        "MembershipEdge",
        "AuthPayload",
        "CreateApiKeyPayload",
        "_Service",
    } <= coverage.wrappers
    assert not coverage.wrappers & {"Tenant", "User", "Membership", "Role", "ApiKey"}
    # The allow-list is exactly what the schema has: an entry that no longer exists is stale.
    fields = {f"{t.name}.{n}" for t in _object_types(coregraph_schema) for n in t.fields}
    assert (PUBLIC_ROOT_FIELDS | FEDERATION_INTERNALS) <= fields


def test_every_declared_field_has_the_guard_installed(coregraph_schema: GraphQLSchema) -> None:
    coverage = check_declarations(coregraph_schema)
    assert len(coverage.declared) > 50
    assert unguarded(coverage, coregraph_schema) == []


def test_every_guard_refuses_an_anonymous_caller(coregraph_schema: GraphQLSchema) -> None:
    """The installed checks are the guards, not any decorator: called without a credential,
    each field guard raises UNAUTHENTICATED before its own resolver runs, and each type's
    ``IsTypeOf`` check raises it for an object of that type."""
    info = SimpleNamespace(context=SimpleNamespace(principal=ANONYMOUS))
    letting_through = []
    for coordinate, type_ in check_declarations(coregraph_schema).declared.items():
        for check in enforcers(coregraph_schema, type_, coordinate.split(".", 1)[1]):
            assert check is not None
            if check is type_.is_type_of:
                origin = type_.extensions["strawberry-definition"].origin
                value = origin.__new__(origin)  # an object of the type, nothing to read
            else:
                value = None
            try:
                check(value, info)
            except Unauthenticated:
                continue
            letting_through.append(coordinate)
    assert letting_through == []


# --- the checker itself can fail ---------------------------------------------------------


@strawberry.federation.type(keys=["id"], requires_scopes=[["things:read"]])
class GuardedThing:
    id: strawberry.ID
    secret: str


@strawberry.type
class GuardedThingPayload:
    thing: GuardedThing | None


@strawberry.federation.type(keys=["id"])
class LeakyThing:
    """An entity without a declaration: reachable through a root field and `_entities`."""

    id: strawberry.ID
    secret: str


@strawberry.federation.type(keys=["id"])
class OrphanEntity:
    """Only reachable through `_entities`: it is not a wrapper, whoever calls `_entities`."""

    id: strawberry.ID
    secret: str


@strawberry.type
class SharedPayload:
    """Returned by a declared field and by an undeclared one: not an acceptable wrapper."""

    thing: GuardedThing | None
    note: str


@strawberry.type
class LeakyPayload:
    thing: LeakyThing | None


@strawberry.type(name="Query")
class TinyQuery:
    @strawberry.federation.field(authenticated=True)
    def guarded(self) -> GuardedThing | None:
        return None

    @strawberry.field
    def leaky(self) -> LeakyThing | None:
        return None

    @strawberry.federation.field(authenticated=True)
    def shared(self) -> SharedPayload | None:
        return None


@strawberry.type(name="Mutation")
class TinyMutation:
    @strawberry.federation.field(requires_scopes=[["things:write"]])
    def update_thing(self) -> GuardedThingPayload | None:
        return None

    @strawberry.field
    def leak(self) -> LeakyPayload | None:
        return None

    @strawberry.field
    def share(self) -> SharedPayload | None:
        return None


def tiny_schema(enforce: bool) -> GraphQLSchema:
    schema = strawberry.federation.Schema(
        query=TinyQuery, mutation=TinyMutation, types=[OrphanEntity], federation_version="2.9"
    )
    if enforce:
        enforce_declarations(schema._schema)
    return schema._schema


def test_the_walk_reports_undeclared_fields() -> None:
    coverage = check_declarations(
        tiny_schema(enforce=True),
        public_root_fields=frozenset({"Query._service", "Query._entities"}),
    )
    assert sorted(coverage.offenders) == sorted(
        [
            "Query.leaky",
            "Mutation.leak",
            "Mutation.share",
            "LeakyPayload.thing",
            "LeakyThing.id",
            "LeakyThing.secret",
            "OrphanEntity.id",
            "OrphanEntity.secret",
            "SharedPayload.thing",
            "SharedPayload.note",
        ]
    )
    assert "GuardedThingPayload" in coverage.wrappers
    assert not coverage.wrappers & {"SharedPayload", "LeakyPayload", "OrphanEntity"}


def test_the_guard_check_reports_an_unenforced_schema() -> None:
    expected = {
        "GuardedThing.id",
        "GuardedThing.secret",
        "Query.guarded",
        "Query.shared",
        "Mutation.updateThing",
    }
    bare = tiny_schema(enforce=False)
    coverage = check_declarations(bare)
    assert set(coverage.declared) == expected
    assert set(unguarded(coverage, bare)) == expected

    enforced = tiny_schema(enforce=True)
    assert unguarded(check_declarations(enforced), enforced) == []


# --- what the checks refuse to enforce, and edge rows -------------------------------------


@strawberry.federation.interface(requires_scopes=[["secrets:read"]])
class Secretive:
    secret: str


@strawberry.type
class Vault(Secretive):
    id: strawberry.ID


@strawberry.federation.enum(authenticated=True)
class Level(enum.Enum):
    TOP = "top"


@strawberry.type(name="Query")
class VaultQuery:
    @strawberry.field
    def vault(self) -> Vault | None:
        return None

    @strawberry.field
    def level(self) -> Level | None:
        return None


@pytest.mark.parametrize("types", [[Vault], [Level]])
def test_declarations_on_interfaces_and_enums_are_refused(types: list[Any]) -> None:
    """Nothing would enforce them here (and Apollo's composition rejects them on interfaces):
    the build fails rather than publish a rule only a gateway might apply."""
    schema = strawberry.federation.Schema(query=VaultQuery, types=types, federation_version="2.9")
    with pytest.raises(ValueError, match="declared on object types and fields only"):
        enforce_declarations(schema._schema)


def test_a_row_of_no_tenant_holds_no_tenant_scope() -> None:
    """Scope checks judge a row in its own tenant. A row whose tenant is empty (a user's own
    sign-in audit entry) is not judged in the tenant the caller addresses."""
    (rule,) = declarations_of([RequiresScopes(scopes=[["audit:read"]])], "AuditEntry")
    principal = Principal(
        kind=PrincipalKind.USER,
        user_id="usr_1",
        tenant_id="ten_a",
        tenant_scopes={"ten_a": frozenset({"audit:read"})},
    )
    assert rule.denial(principal, SimpleNamespace(tenant_id="ten_a")) is None
    assert isinstance(rule.denial(principal, SimpleNamespace(tenant_id=None)), Forbidden)
    assert isinstance(rule.denial(principal, SimpleNamespace(tenant_id="ten_b")), Forbidden)
    # Root fields and objects that are not tenant rows: the addressed tenant.
    assert rule.denial(principal, None) is None
    assert rule.denial(replace(principal, tenant_id=None), None) is not None


@strawberry.federation.type(authenticated=True)
class Badge:
    key: str


@strawberry.type(name="Query")
class BadgeQuery:
    @strawberry.field
    def badges(self) -> list[Badge]:
        return [strawberry.cast(Badge, SimpleNamespace(key="cast"))]  # type: ignore[list-item]


def test_the_type_check_accepts_what_strawberry_accepts() -> None:
    """A declared type without interfaces gets an IsTypeOf check; it must still accept an
    object ``strawberry.cast`` to the type, as strawberry does."""
    schema = strawberry.federation.Schema(query=BadgeQuery, federation_version="2.9")
    enforce_declarations(schema._schema)
    principal = Principal(kind=PrincipalKind.USER, user_id="usr_1")
    result = schema.execute_sync(
        "{ badges { key } }", context_value=SimpleNamespace(principal=principal)
    )
    assert result.errors is None and result.data == {"badges": [{"key": "cast"}]}
    result = schema.execute_sync(
        "{ badges { key } }", context_value=SimpleNamespace(principal=ANONYMOUS)
    )
    assert result.data is None and result.errors
    assert isinstance(result.errors[0].original_error, Unauthenticated)
