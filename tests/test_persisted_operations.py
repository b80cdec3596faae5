"""Persisted operations as clients use them: Apollo's automatic persisted queries (the
PersistedQueryLink's round trip, over POST and GET), and trusted-documents mode with the
manifests client builds write. A persisted document is checked exactly like a sent one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coregraph.api import build_schema
from coregraph.app import Runtime
from coregraph.persisted import PersistedOperations, PersistedQueryRefused, TrustedDocumentsError
from tests.conftest import make_settings
from tests.support import GraphQLClient, Server, running_server, unique
from tests.test_websocket import run_payload, socket

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
SCHEMA_SECRET = "a-gateway-secret-of-at-least-32-characters"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def apq(text: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256(text)}}


def typename_query() -> str:
    """A document no earlier run registered (Redis outlives test runs)."""
    return f"query {unique('Q').replace('-', '_')} {{ __typename }}"


async def post(
    http: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    accept: str = GRAPHQL_RESPONSE,
) -> httpx.Response:
    return await http.post(url, json=body, headers={"Accept": accept, **(headers or {})})


async def get(
    http: httpx.AsyncClient,
    url: str,
    params: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
    return await http.get(
        url, params=encoded, headers={"Accept": GRAPHQL_RESPONSE, **(headers or {})}
    )


def code(response: httpx.Response) -> str | None:
    errors = response.json().get("errors") or [{}]
    return (errors[0].get("extensions") or {}).get("code")


# --- automatic persisted queries -----------------------------------------------------------


async def test_apq_round_trip_as_apollo_client_sends_it(
    http: httpx.AsyncClient, server: Server
) -> None:
    query = typename_query()
    # 1. The hash alone: unknown. The message and code Apollo's link retries on.
    first = await post(http, server.url, {"extensions": apq(query)})
    assert first.status_code == 404, first.text
    assert first.json() == {
        "errors": [
            {
                "message": "PersistedQueryNotFound",
                "extensions": {
                    "code": "PERSISTED_QUERY_NOT_FOUND",
                    "requestId": first.headers["x-request-id"],
                },
            }
        ]
    }
    as_json = await post(http, server.url, {"extensions": apq(query)}, accept=JSON)
    assert as_json.status_code == 200 and code(as_json) == "PERSISTED_QUERY_NOT_FOUND"
    # 2. The retry with the document registers it, and runs it.
    second = await post(http, server.url, {"query": query, "extensions": apq(query)})
    assert second.status_code == 200 and second.json() == {"data": {"__typename": "Query"}}
    # 3. From now on the hash alone runs it, over POST...
    third = await post(http, server.url, {"extensions": apq(query)})
    assert third.status_code == 200 and third.json() == {"data": {"__typename": "Query"}}
    # ...and over GET (useGETForHashedQueries): an answer only the caller's own cache may keep,
    # keyed on the credential headers too.
    fourth = await get(http, server.url, {"extensions": apq(query)})
    assert fourth.status_code == 200 and fourth.json() == {"data": {"__typename": "Query"}}
    assert fourth.headers["cache-control"] == "private, no-cache"
    vary = {v.strip().lower() for v in fourth.headers["vary"].split(",")}
    assert {"authorization", "x-tenant-id", "x-environment", "accept"} <= vary
    # An unknown hash over GET: never stored by any cache.
    missing = await get(http, server.url, {"extensions": apq(typename_query())})
    assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"


async def test_a_hash_that_does_not_match_its_document_stores_nothing(
    http: httpx.AsyncClient, server: Server
) -> None:
    claimed, sent = typename_query(), typename_query()
    r = await post(http, server.url, {"query": sent, "extensions": apq(claimed)})
    assert r.status_code == 400 and code(r) == "PERSISTED_QUERY_HASH_MISMATCH"
    assert "data" not in r.json()
    for text in (claimed, sent):
        r = await post(http, server.url, {"extensions": apq(text)})
        assert code(r) == "PERSISTED_QUERY_NOT_FOUND"


async def test_an_invalid_document_is_not_registered(
    http: httpx.AsyncClient, server: Server
) -> None:
    query = f"query {unique('Bad').replace('-', '_')} {{ noSuchField }}"
    r = await post(http, server.url, {"query": query, "extensions": apq(query)})
    assert r.status_code == 400 and code(r) == "GRAPHQL_VALIDATION_FAILED"
    r = await post(http, server.url, {"extensions": apq(query)})
    assert code(r) == "PERSISTED_QUERY_NOT_FOUND"


async def test_malformed_persisted_query_extensions_are_bad_requests(
    http: httpx.AsyncClient, server: Server
) -> None:
    query = typename_query()
    wrong_version = {"persistedQuery": {"version": 2, "sha256Hash": sha256(query)}}
    for extensions in (wrong_version, {"persistedQuery": {"version": 1}}, {"persistedQuery": 1}):
        r = await post(http, server.url, {"query": query, "extensions": extensions})
        assert r.status_code == 400 and code(r) == "BAD_REQUEST", (extensions, r.text)
    for accept in (GRAPHQL_RESPONSE, JSON):  # malformed: 400 with either media type
        r = await post(http, server.url, {}, accept=accept)
        assert r.status_code == 400 and code(r) == "BAD_REQUEST"
        r = await post(http, server.url, {"documentId": 12}, accept=accept)
        assert r.status_code == 400 and code(r) == "BAD_REQUEST"


async def test_a_persisted_mutation_is_refused_over_get(
    http: httpx.AsyncClient, server: Server, client: GraphQLClient
) -> None:
    mutation = (
        f"mutation {unique('M').replace('-', '_')}($t: String!) "
        "{ acceptInvitation(token: $t) { membership { id } } }"
    )
    # Registering it over GET is refused (405) and registers nothing...
    r = await get(
        http,
        server.url,
        {"query": mutation, "extensions": apq(mutation), "variables": {"t": "x"}},
    )
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await post(http, server.url, {"extensions": apq(mutation), "variables": {"t": "x"}})
    assert code(r) == "PERSISTED_QUERY_NOT_FOUND"
    # ...registered over POST (it runs: anonymous, so it is refused and changes nothing)...
    r = await post(
        http, server.url, {"query": mutation, "extensions": apq(mutation), "variables": {"t": "x"}}
    )
    assert code(r) == "UNAUTHENTICATED", r.text
    # ...it still does not run over GET, by hash.
    r = await get(http, server.url, {"extensions": apq(mutation), "variables": {"t": "x"}})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["cache-control"] == "no-store"


async def test_a_persisted_query_is_authorized_field_by_field_like_any_other(
    http: httpx.AsyncClient, client: GraphQLClient, server: Server
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    key = await client.api_key(owner, tenant_id, ["tenant:read"])  # no members:read
    query = (
        f"query {unique('T').replace('-', '_')} "
        "{ tenant { name members(first: 5) { nodes { id } } } }"
    )
    sent = await client.execute(query, actor=key)
    assert sent.data["tenant"]["name"].startswith("Tenant ")
    assert sent.data["tenant"]["members"] is None and sent.codes == ["FORBIDDEN"]
    registered = await post(
        http, server.url, {"query": query, "extensions": apq(query)}, key.headers()
    )
    by_hash = await post(http, server.url, {"extensions": apq(query)}, key.headers())
    by_get = await get(http, server.url, {"extensions": apq(query)}, key.headers())
    for r in (registered, by_hash, by_get):
        body = r.json()
        assert body["data"] == sent.data, body
        assert [(e["extensions"]["code"], e["path"]) for e in body["errors"]] == [
            ("FORBIDDEN", ["tenant", "members"])
        ]
    assert by_get.headers["cache-control"] == "no-store"  # an answer with errors
    # Anonymous: the same document, by hash, reads nothing.
    r = await post(http, server.url, {"extensions": apq(query)})
    assert r.json()["data"] == {"tenant": None} and code(r) == "UNAUTHENTICATED"


@pytest.fixture(scope="module")
def caching_server(database_url: str) -> Iterator[Server]:
    with running_server(make_settings(database_url, persisted_queries_max_age=60)) as srv:
        yield srv


async def test_persisted_get_answers_may_be_kept_for_max_age(
    http: httpx.AsyncClient, client: GraphQLClient, caching_server: Server
) -> None:
    url = caching_server.url
    query = typename_query()
    await post(http, url, {"query": query, "extensions": apq(query)})
    anonymous = await get(http, url, {"extensions": apq(query)})
    assert anonymous.headers["cache-control"] == "public, max-age=60"
    user = await client.sign_up()
    signed_in = await get(http, url, {"extensions": apq(query)}, user.headers())
    assert signed_in.json() == {"data": {"__typename": "Query"}}
    assert signed_in.headers["cache-control"] == "private, max-age=60"
    # Only persisted queries: a GET with the document is revalidated every time.
    plain = await get(http, url, {"query": query})
    assert plain.headers["cache-control"] == "private, no-cache"


async def test_processes_share_registered_queries_through_redis(
    http: httpx.AsyncClient, database_url: str, server: Server
) -> None:
    """Another API process (its own runtime and store) knows a hash this one registered when
    they share Redis; without Redis each process learns it for itself."""
    query = typename_query()
    r = await post(http, server.url, {"query": query, "extensions": apq(query)})
    assert r.json() == {"data": {"__typename": "Query"}}
    with running_server(make_settings(database_url), migrate_first=False) as other:
        r = await post(http, other.url, {"extensions": apq(query)})
        if os.environ.get("COREGRAPH_REDIS_URL"):
            assert r.json() == {"data": {"__typename": "Query"}}, r.text
        else:
            assert code(r) == "PERSISTED_QUERY_NOT_FOUND"


# --- trusted documents ---------------------------------------------------------------------

TENANT_NAME = "query TenantName { tenant { name } }"
TYPENAME = "query Typename { __typename }"
MEMBERS = "query Members { tenant { members(first: 5) { nodes { id } } } }"


@pytest.fixture(scope="module")
def trusted_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # GraphQL Code Generator's client preset: {"<sha256 of the document>": "<document>"}.
    manifest = tmp_path_factory.mktemp("trusted") / "persisted-documents.json"
    manifest.write_text(json.dumps({sha256(t): t for t in (TENANT_NAME, TYPENAME, MEMBERS)}))
    settings = make_settings(
        database_url, trusted_documents=manifest, schema_reader_secret=SCHEMA_SECRET
    )
    with running_server(settings, migrate_first=False) as srv:
        yield srv


async def test_trusted_documents_run_by_id_and_nothing_else_runs(
    http: httpx.AsyncClient, client: GraphQLClient, trusted_server: Server
) -> None:
    url = trusted_server.url
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    name = (await client.execute("{ tenant { name } }", actor=owner)).ok()["tenant"]["name"]
    expected = {"data": {"tenant": {"name": name}}}
    by_document_id = await post(
        http, url, {"documentId": f"sha256:{sha256(TENANT_NAME)}"}, owner.headers()
    )
    by_bare_id = await post(http, url, {"documentId": sha256(TENANT_NAME)}, owner.headers())
    by_apq_hash = await post(http, url, {"extensions": apq(TENANT_NAME)}, owner.headers())
    by_get = await get(http, url, {"documentId": sha256(TENANT_NAME)}, owner.headers())
    by_text = await post(http, url, {"query": TENANT_NAME}, owner.headers())
    for r in (by_document_id, by_bare_id, by_apq_hash, by_get, by_text):
        assert r.status_code == 200 and r.json() == expected, r.text

    # A document not in the manifest, sent whole or registered through APQ: refused unrun.
    other = "query Other { tenant { name slug } }"
    for body in ({"query": other}, {"query": other, "extensions": apq(other)}):
        r = await post(http, url, body, owner.headers())
        assert r.status_code == 403 and code(r) == "PERSISTED_QUERY_NOT_IN_LIST", r.text
        assert "data" not in r.json()
    r = await post(http, url, {"documentId": sha256(other)}, owner.headers())
    assert r.status_code == 404 and code(r) == "PERSISTED_QUERY_NOT_FOUND"
    # An id with another document than its own: refused.
    r = await post(http, url, {"documentId": sha256(TYPENAME), "query": other}, owner.headers())
    assert code(r) == "PERSISTED_QUERY_NOT_IN_LIST"
    # No IDE: it could run nothing.
    r = await http.get(url, headers={"Accept": "text/html"})
    assert "graphiql" not in r.text.lower()

    # Field-level authorization applies to a trusted document as to any other.
    key = await client.api_key(owner, tenant_id, ["tenant:read"])
    r = await post(http, url, {"documentId": sha256(MEMBERS)}, key.headers())
    assert r.json()["data"] == {"tenant": {"members": None}}
    assert [(e["extensions"]["code"], e["path"]) for e in r.json()["errors"]] == [
        ("FORBIDDEN", ["tenant", "members"])
    ]


async def test_a_gateway_with_the_schema_secret_is_not_held_to_the_manifest(
    http: httpx.AsyncClient, trusted_server: Server
) -> None:
    """Its query planner writes the subgraph documents (``_entities``, ``_service``); it holds
    clients to its own operation list at the edge."""
    query = "{ _service { sdl } }"
    r = await post(http, trusted_server.url, {"query": query})
    assert code(r) == "PERSISTED_QUERY_NOT_IN_LIST"
    r = await post(
        http,
        trusted_server.url,
        {"query": query},
        {"X-Coregraph-Schema-Secret": SCHEMA_SECRET},
    )
    assert r.status_code == 200 and "type Query" in r.json()["data"]["_service"]["sdl"]


def _manifests(tmp_path: Path) -> dict[str, tuple[Path, dict[str, str]]]:
    """The same two documents in each format client builds write, with the ids each uses."""
    relay = {
        "a8c5e5a1d1a6f0b2c3d4e5f60718293a": TYPENAME,
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0": TENANT_NAME,
    }
    apollo = {
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [
            {"id": sha256(TYPENAME), "body": TYPENAME, "name": "Typename", "type": "query"},
            {"id": sha256(TENANT_NAME), "body": TENANT_NAME, "name": "TenantName", "type": "query"},
        ],
    }
    codegen = {sha256(TYPENAME): TYPENAME, sha256(TENANT_NAME): TENANT_NAME}
    written = {}
    for name, content, ids in (
        ("relay", relay, relay),
        ("apollo", apollo, {sha256(TYPENAME): TYPENAME, sha256(TENANT_NAME): TENANT_NAME}),
        ("codegen", codegen, codegen),
    ):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content))
        written[name] = (path, ids)
    return written


@pytest.mark.parametrize("format_name", ["relay", "apollo", "codegen"])
async def test_each_manifest_format_loads_and_resolves_by_its_ids(
    tmp_path: Path, database_url: str, format_name: str
) -> None:
    path, ids = _manifests(tmp_path)[format_name]
    settings = make_settings(database_url, trusted_documents=path)
    operations = PersistedOperations(settings, build_schema(settings))
    for document_id, text in ids.items():
        resolved = await operations.resolve(None, None, document_id, exempt=False)
        assert resolved.query == text
    with pytest.raises(PersistedQueryRefused) as refused:
        await operations.resolve("{ __typename }", None, None, exempt=False)
    assert refused.value.code == "PERSISTED_QUERY_NOT_IN_LIST"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "is not JSON"),
        ('["a list"]', "a manifest is a JSON object"),
        ("{}", "holds no documents"),
        ('{"abc": 12}', "must map to a document's text"),
        ('{"abc": "query { noSuchField }"}', "Cannot query field 'noSuchField'"),
        ('{"abc": "query {"}', "Syntax Error"),
        (
            '{"format": "apollo-persisted-query-manifest", "version": 2, "operations": []}',
            "version 2 is not supported",
        ),
    ],
)
def test_a_bad_manifest_refuses_the_start_with_the_reason(
    tmp_path: Path, content: str, reason: str
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREGRAPH_")}
    env["COREGRAPH_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/never-created.sqlite3"
    env["COREGRAPH_TRUSTED_DOCUMENTS"] = str(manifest)
    run = subprocess.run(
        [sys.executable, "-m", "coregraph.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "COREGRAPH_TRUSTED_DOCUMENTS" in run.stderr and reason in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "never-created.sqlite3").exists()  # refused before migrating


def test_the_app_itself_refuses_a_bad_manifest(tmp_path: Path, database_url: str) -> None:
    """Started another way (uvicorn coregraph.app:create_app --factory), the same refusal."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"abc": "query { noSuchField }"}')
    with pytest.raises(TrustedDocumentsError, match="noSuchField"):
        Runtime.create(make_settings(database_url, trusted_documents=manifest))


async def test_a_socket_is_held_to_the_manifest_too(
    client: GraphQLClient, trusted_server: Server
) -> None:
    """Otherwise graphql-transport-ws would run what HTTP refuses."""
    owner = await client.sign_up()
    await client.create_tenant(owner)
    async with socket(trusted_server, owner.headers()) as ws:
        by_id = await run_payload(ws, "1", {"documentId": sha256(TYPENAME)})
        assert by_id[0] == {"id": "1", "type": "next", "payload": {"data": {"__typename": "Query"}}}
        by_text = await run_payload(ws, "2", {"query": TYPENAME})
        assert by_text[0]["payload"] == {"data": {"__typename": "Query"}}
        refused = await run_payload(ws, "3", {"query": "{ viewer { id } }"})
        assert refused[-1]["type"] == "error"
        assert refused[-1]["payload"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_IN_LIST"
        unknown = await run_payload(ws, "4", {"documentId": "nope"})
        assert unknown[-1]["payload"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
        # The socket stays usable after a refusal.
        again = await run_payload(ws, "5", {"documentId": sha256(TYPENAME)})
        assert again[0]["payload"] == {"data": {"__typename": "Query"}}


async def test_with_apq_off_a_hash_is_answered_as_not_supported(database_url: str) -> None:
    """What Apollo's link takes as "stop sending hashes" (PersistedQueryNotSupported)."""
    settings = make_settings(database_url, persisted_queries=False)
    operations = PersistedOperations(settings, build_schema(settings))
    for query in (None, TYPENAME):
        with pytest.raises(PersistedQueryRefused) as refused:
            await operations.resolve(query, apq(TYPENAME), None, exempt=False)
        assert refused.value.code == "PERSISTED_QUERY_NOT_SUPPORTED"
        assert refused.value.message == "PersistedQueryNotSupported"
    assert (await operations.resolve(TYPENAME, None, None, exempt=False)).query == TYPENAME
