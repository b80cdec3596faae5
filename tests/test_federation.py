"""coregraph as a Federation v2 subgraph: the SDL a gateway reads, its composition with an edge
subgraph under Apollo's and The Guild's libraries, and `_entities` (the call a gateway makes, but
which anyone can send straight to the subgraph) under the same rules as every other path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldDefinitionNode,
    GraphQLObjectType,
    ObjectTypeDefinitionNode,
    ObjectTypeExtensionNode,
    parse,
    value_from_ast_untyped,
)

from coregraph import ids
from coregraph.schema.authorization import Declaration, field_declarations
from tests.node_support import run_node_script
from tests.support import Actor, GraphQLClient, Server, unique

REPO = Path(__file__).resolve().parent.parent
EDGE_SUBGRAPH = REPO / "tests" / "node" / "edge-subgraph.graphql"
ENTITY_TYPES = ["Tenant", "User", "Membership", "Role", "ApiKey", "AuditEntry"]
AUTH_DIRECTIVES = ("authenticated", "requiresScopes", "policy")
LIBS = ("apollo", "guild")

# An edge subgraph that disagrees with the core about User.id: composition must reject it.
CONFLICTING_EDGE = """
extend schema @link(url: "https://specs.apollo.dev/federation/v2.9", import: ["@key"])

type Query { portalVersion: String! }

type User @key(fields: "id") {
  id: Int!
  portalNickname: String
}
"""


# --- helpers ---------------------------------------------------------------------------------


def export_schema_cli() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "coregraph.cli", "export-schema"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=os.environ.copy(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def service_sdl(client: GraphQLClient) -> str:
    r = await client.execute("{ _service { sdl } }")
    return str(r.ok()["_service"]["sdl"])


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record logged meanwhile, by the in-process test server too."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def object_types(document: DocumentNode) -> dict[str, list[ObjectTypeDefinitionNode]]:
    """Object type definitions and extensions by name (a supergraph may hold several)."""
    found: dict[str, list[Any]] = {}
    for definition in document.definitions:
        if isinstance(definition, ObjectTypeDefinitionNode | ObjectTypeExtensionNode):
            found.setdefault(definition.name.value, []).append(definition)
    return found


def directives_named(nodes: Any, name: str) -> list[DirectiveNode]:
    return [d for d in nodes or () if d.name.value == name]


def directive_arg(directive: DirectiveNode, arg: str) -> Any:
    for argument in directive.arguments or ():
        if argument.name.value == arg:
            return value_from_ast_untyped(argument.value)
    return None


def sdl_field(types: dict[str, list[Any]], type_name: str, field_name: str) -> FieldDefinitionNode:
    for definition in types.get(type_name, []):
        for field in definition.fields or ():
            if field.name.value == field_name:
                return field  # type: ignore[no-any-return]
    raise AssertionError(f"{type_name}.{field_name} is not in the SDL")


def auth_of(directives: Any) -> set[tuple[str, Any]]:
    """The authorization directives of a node, as comparable values."""
    found: set[tuple[str, Any]] = set()
    for directive in directives or ():
        name = directive.name.value
        if name == "authenticated":
            found.add(("authenticated", None))
        elif name == "requiresScopes":
            scopes = directive_arg(directive, "scopes")
            found.add(("requiresScopes", frozenset(frozenset(g) for g in scopes)))
        elif name == "policy":
            policies = directive_arg(directive, "policies")
            found.add(("policy", frozenset(tuple(g) for g in policies)))
    return found


def declared(declarations: list[Declaration]) -> set[tuple[str, Any]]:
    found: set[tuple[str, Any]] = set()
    for d in declarations:
        if d.authenticated:
            found.add(("authenticated", None))
        if d.scopes is not None:
            found.add(("requiresScopes", frozenset(d.scopes)))
        if d.policies is not None:
            found.add(("policy", frozenset(d.policies)))
    return found


def compose(tmp_path: Path, lib: str, core_sdl: str, edge: Path) -> tuple[int, dict[str, Any]]:
    core = tmp_path / "core.graphql"
    core.write_text(core_sdl)
    run = run_node_script("compose.mjs", "--lib", lib, f"core={core}", f"portal={edge}")
    return run.returncode, run.json()


# --- the subgraph SDL ------------------------------------------------------------------------


async def test_export_schema_prints_the_sdl_served_by_service(client: GraphQLClient) -> None:
    cli = export_schema_cli()
    served = await service_sdl(client)
    assert cli.strip() == served.strip()

    assert '@link(url: "https://specs.apollo.dev/federation/v2.9"' in served
    document = parse(served)
    types = object_types(document)
    for name in ENTITY_TYPES:
        assert name in types, f"{name} missing from the SDL"
        keys = [
            directive_arg(d, "fields")
            for definition in types[name]
            for d in directives_named(definition.directives, "key")
        ]
        assert keys == ["id"], f'{name} should carry exactly @key(fields: "id"), has {keys}'
    for directive in AUTH_DIRECTIVES:
        assert f"@{directive}" in served, f"@{directive} is not used in the SDL"


async def test_sdl_declares_exactly_what_coregraph_enforces(
    client: GraphQLClient, server: Server
) -> None:
    """A gateway reads the rules from `_service { sdl }`; coregraph enforces the declarations
    it reads back from its schema. Both must be the same rules, field by field."""
    types = object_types(parse(await service_sdl(client)))
    schema = server.runtime.schema._schema
    mismatches = []
    for type_ in schema.type_map.values():
        if not isinstance(type_, GraphQLObjectType) or type_.name.startswith("__"):
            continue
        type_auth = set()
        for definition in types.get(type_.name, []):
            type_auth |= auth_of(definition.directives)
        for name, field in type_.fields.items():
            in_sdl = type_auth | auth_of(sdl_field(types, type_.name, name).directives)
            enforced = declared(field_declarations(type_, name, field))
            if in_sdl != enforced:
                mismatches.append(f"{type_.name}.{name}: SDL {in_sdl} != enforced {enforced}")
    assert not mismatches, "\n".join(mismatches)


# --- composition -----------------------------------------------------------------------------


@pytest.mark.parametrize("lib", LIBS)
async def test_composes_with_an_edge_subgraph(
    client: GraphQLClient, tmp_path: Path, lib: str
) -> None:
    code, result = compose(tmp_path, lib, await service_sdl(client), EDGE_SUBGRAPH)
    assert code == 0 and result["ok"], result["errors"]
    assert result["errors"] == []

    types = object_types(parse(result["supergraphSdl"]))
    # The edge subgraph's fields join coregraph's entities, with its own declaration kept.
    preferences = sdl_field(types, "User", "portalPreferences")
    assert directives_named(preferences.directives, "authenticated")
    sdl_field(types, "Tenant", "portalTheme")
    sdl_field(types, "Query", "portalVersion")
    # coregraph's declarations survive composition, so the gateway enforces them too.
    assert ("requiresScopes", frozenset({frozenset({"apikeys:manage"})})) in auth_of(
        [d for t in types["ApiKey"] for d in t.directives or ()]
    )
    assert ("authenticated", None) in auth_of(
        [d for t in types["User"] for d in t.directives or ()]
    )
    assert ("policy", frozenset({("self",), ("colleague",)})) in auth_of(
        sdl_field(types, "User", "email").directives
    )
    assert ("requiresScopes", frozenset({frozenset({"tenant:read"})})) in auth_of(
        sdl_field(types, "Query", "tenant").directives
    )
    assert ("requiresScopes", frozenset({frozenset({"members:manage"})})) in auth_of(
        sdl_field(types, "Mutation", "inviteMember").directives
    )


@pytest.mark.parametrize("lib", LIBS)
async def test_composition_rejects_a_conflicting_edge_subgraph(
    client: GraphQLClient, tmp_path: Path, lib: str
) -> None:
    edge = tmp_path / "conflicting-edge.graphql"
    edge.write_text(CONFLICTING_EDGE)
    code, result = compose(tmp_path, lib, await service_sdl(client), edge)
    assert code == 1 and not result["ok"], result
    assert result["supergraphSdl"] is None
    assert any("User.id" in message for message in result["errors"]), result["errors"]


# --- _entities -------------------------------------------------------------------------------

ENTITY_SELECTIONS = {
    "Tenant": "... on Tenant { id name slug }",
    "Membership": "... on Membership { id createdAt }",
    "Role": "... on Role { id key permissions }",
    "ApiKey": "... on ApiKey { id name scopes }",
    "AuditEntry": "... on AuditEntry { id action }",
    "Invitation": "... on Invitation { id email }",
    "User": "... on User { id displayName email }",
}


async def entities(
    client: GraphQLClient,
    actor: Actor | None,
    typename: str,
    id_: str,
    tenant_id: str | None = None,
) -> Any:
    return await client.execute(
        "query($r: [_Any!]!) { _entities(representations: $r) { __typename "
        + ENTITY_SELECTIONS[typename]
        + " } }",
        {"r": [{"__typename": typename, "id": id_}]},
        actor=actor,
        tenant_id=tenant_id,
    )


async def create_key(client: GraphQLClient, owner: Actor, tenant_id: str) -> dict[str, Any]:
    r = await client.execute(
        """mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) {
            apiKey { id name scopes } } }""",
        {"input": {"name": unique("secret-key-name-"), "scopes": ["members:read"]}},
        actor=owner,
        tenant_id=tenant_id,
    )
    return dict(r.ok()["createApiKey"]["apiKey"])


async def tenant_objects(client: GraphQLClient, owner: Actor, tenant_id: str) -> dict[str, Any]:
    """One id of each entity type in the tenant, read by its owner the direct way."""
    invitee = f"{unique('invitee')}@example.com"
    r = await client.execute(
        """mutation($input: InviteMemberInput!) { inviteMember(input: $input) {
            invitation { id email } } }""",
        {"input": {"email": invitee, "role": "viewer"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    invitation = r.ok()["inviteMember"]["invitation"]
    key = await create_key(client, owner, tenant_id)
    r = await client.execute(
        """{ tenant { id name slug
             members(first: 10) { nodes { id user { id displayName email } } }
             roles { id key }
             auditLog(first: 1) { nodes { id action } } } }""",
        actor=owner,
        tenant_id=tenant_id,
    )
    tenant = r.ok()["tenant"]
    owner_membership = next(
        m for m in tenant["members"]["nodes"] if m["user"]["id"] == owner.user_id
    )
    return {
        "Tenant": tenant,
        "Membership": owner_membership,
        "Role": tenant["roles"][0],
        "ApiKey": key,
        "AuditEntry": tenant["auditLog"]["nodes"][0],
        "Invitation": invitation,
        "User": owner_membership["user"],
    }


def leaked_values(obj: dict[str, Any]) -> list[str]:
    """The distinctive strings of an object (not its id, which the caller supplied)."""
    values = []
    for key, value in obj.items():
        if key == "id" or not isinstance(value, str) or len(value) < 6:
            continue
        values.append(value)
    return values


async def test_entities_without_the_scope_is_forbidden_like_a_direct_query(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    viewer = await client.add_member(owner, tenant_id, role="viewer")
    key = await create_key(client, owner, tenant_id)

    # The direct path refuses the viewer (no apikeys:manage) ...
    direct = await client.execute("{ tenant { apiKeys { nodes { name scopes } } } }", actor=viewer)
    assert direct.codes == ["FORBIDDEN"]
    assert direct.data == {"tenant": {"apiKeys": None}}

    # ... and so does _entities, sent straight to the subgraph without a gateway.
    r = await entities(client, viewer, "ApiKey", key["id"])
    assert r.status == 200
    assert r.data == {"_entities": [None]}
    assert r.errors and set(r.codes) == {"FORBIDDEN"}, r.body
    assert all(e["path"][:2] == ["_entities", 0] for e in r.errors), r.errors
    raw = str(r.body)
    assert key["name"] not in raw and "members:read" not in raw

    # node(id:) is the third path to the same row and answers the same way.
    r = await client.execute(
        "query($id: ID!) { node(id: $id) { ... on ApiKey { name scopes } } }",
        {"id": key["id"]},
        actor=viewer,
    )
    assert set(r.codes) == {"FORBIDDEN"} and key["name"] not in str(r.body)

    # The owner reads the same entity through _entities.
    r = await entities(client, owner, "ApiKey", key["id"], tenant_id=tenant_id)
    assert r.ok() == {
        "_entities": [
            {"__typename": "ApiKey", "id": key["id"], "name": key["name"], "scopes": key["scopes"]}
        ]
    }


async def test_entities_of_another_tenant_are_not_found(client: GraphQLClient) -> None:
    owner_a = await client.sign_up()
    tenant_a = await client.create_tenant(owner_a)
    member_a = await client.add_member(owner_a, tenant_a, role="member")
    owner_b = await client.sign_up()
    tenant_b = await client.create_tenant(owner_b)
    objects_b = await tenant_objects(client, owner_b, tenant_b)

    for typename, obj in objects_b.items():
        # What a made-up id of the same type answers: "not yours" must look the same.
        missing = await entities(client, owner_a, typename, ids.new_id(obj["id"][:3]), tenant_a)
        for actor in (owner_a, member_a):
            r = await entities(client, actor, typename, obj["id"], tenant_a)
            assert r.status == 200, r.body
            assert r.data == {"_entities": [None]}, (typename, r.body)
            assert r.codes == ["NOT_FOUND"], (typename, r.body)
            assert r.data == missing.data and r.codes == missing.codes, (typename, r.body)
            raw = str(r.body)
            for value in leaked_values(obj):
                assert value not in raw, (typename, value, r.body)

    # B's owner reads every one of them through _entities, so the ids above were real.
    for typename, obj in objects_b.items():
        r = await entities(client, owner_b, typename, obj["id"], tenant_b)
        (entity,) = r.ok()["_entities"]
        assert entity["__typename"] == typename
        for field, value in obj.items():
            if field in entity:
                assert entity[field] == value, (typename, field)


async def test_entities_judge_each_row_by_its_own_tenant(client: GraphQLClient) -> None:
    """A user who owns tenant A and is a viewer in B cannot carry A's rights into B's rows,
    whichever tenant the request addresses."""
    owner_b = await client.sign_up()
    tenant_b = await client.create_tenant(owner_b)
    key_b = await create_key(client, owner_b, tenant_b)
    person = await client.add_member(owner_b, tenant_b, role="viewer")
    person.tenant_id = None
    tenant_a = await client.create_tenant(person)

    for addressed in (tenant_a, tenant_b):
        r = await entities(client, person, "ApiKey", key_b["id"], addressed)
        assert r.data == {"_entities": [None]}, r.body
        assert set(r.codes) == {"FORBIDDEN"}, r.body
        assert key_b["name"] not in str(r.body)


async def test_entities_anonymously_reveal_nothing(client: GraphQLClient) -> None:
    """Without a credential, `_entities` answers UNAUTHENTICATED like `node(id:)` does, for an
    id that exists as for one that does not."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    objects = await tenant_objects(client, owner, tenant_id)
    for typename, obj in objects.items():
        missing = ids.new_id(obj["id"][:3])
        for id_ in (obj["id"], missing):
            r = await entities(client, None, typename, id_)
            assert r.status == 200, r.body
            assert r.data == {"_entities": [None]}, (typename, r.body)
            assert r.codes == ["UNAUTHENTICATED"], (typename, r.body)
            assert r.errors[0]["path"] == ["_entities", 0], r.errors
            for value in leaked_values(obj):
                assert value not in str(r.body), (typename, value)
            r = await client.execute("query($id: ID!) { node(id: $id) { id } }", {"id": id_})
            assert r.data == {"node": None} and r.codes == ["UNAUTHENTICATED"], r.body


async def test_unusable_representations_are_bad_input_item_by_item(
    client: GraphQLClient,
) -> None:
    """A representation is client input: a wrong one is BAD_USER_INPUT at its own index (never
    an internal error), and the usable ones beside it still resolve."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    bad = [
        {"__typename": "NoSuchType", "id": tenant_id},
        {"__typename": "Query", "id": tenant_id},
        {"__typename": "Permission", "key": "members:read"},
        {"__typename": "Tenant", "id": tenant_id, "name": "forged"},
        {"__typename": "Tenant", "slug": "x"},
        {"__typename": "Tenant", "id": 7},
        {"id": tenant_id},
        "Tenant",
        # __typename of every JSON type that is not a string
        {"__typename": ["Tenant"], "id": tenant_id},
        {"__typename": {"name": "Tenant"}, "id": tenant_id},
        {"__typename": 7, "id": tenant_id},
        {"__typename": 7.5, "id": tenant_id},
        {"__typename": True, "id": tenant_id},
        {"__typename": None, "id": tenant_id},
    ]
    with captured_logs() as records:
        r = await client.execute(
            "query($r: [_Any!]!) { _entities(representations: $r) { ... on Tenant { id name } } }",
            {"r": [{"__typename": "Tenant", "id": tenant_id}, *bad]},
            actor=owner,
            tenant_id=tenant_id,
        )
    assert r.status == 200, r.body
    assert not [rec for rec in records if rec.exc_info or rec.levelno >= logging.ERROR], [
        rec.getMessage() for rec in records
    ]
    entities_ = r.data["_entities"]
    assert entities_[0]["id"] == tenant_id and entities_[0]["name"] != "forged"
    assert entities_[1:] == [None] * len(bad)
    assert sorted(e["path"][1] for e in r.errors) == list(range(1, len(bad) + 1)), r.errors
    assert set(r.codes) == {"BAD_USER_INPUT"}, r.body
