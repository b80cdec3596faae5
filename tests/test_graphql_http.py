"""GraphQL over HTTP as clients depend on it: the graphql-http conformance audit, plus the
rules coregraph adds (no mutation over GET, no non-JSON POST, request ids on every error)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.node_support import run_node_script
from tests.support import PASSWORD, GraphQLClient, Server, running_server, unique

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


def media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def sign_up_mutation(email: str) -> str:
    fields = f'email: "{email}", password: "{PASSWORD}"'
    return "mutation { signUp(input: {" + fields + "}) { user { id } } }"


async def can_sign_up(client: GraphQLClient, email: str) -> bool:
    """Whether ``email`` is still free: a sign-up with it succeeds (and then takes it)."""
    r = await client.execute(
        "mutation($i: SignUpInput!) { signUp(input: $i) { user { id } } }",
        {"i": {"email": email, "password": PASSWORD}},
    )
    if r.errors:
        assert r.codes == ["CONFLICT"], r.body
        return False
    return True


# --- the graphql-http audit --------------------------------------------------------------


def test_graphql_http_server_audit(server: Server) -> None:
    run = run_node_script("audit.mjs", server.url)
    report = run.json()
    assert run.returncode == 0, "graphql-http audit failed:\n" + json.dumps(
        {k: report.get(k) for k in ("total", "ok", "error", "warn")}, indent=2
    )
    assert report["total"] > 0 and report["ok"] == report["total"] - len(report["notice"])


# --- methods and media types -------------------------------------------------------------


async def test_mutation_over_get_is_refused_and_writes_nothing(
    client: GraphQLClient, http: httpx.AsyncClient, server: Server
) -> None:
    email = f"{unique('get')}@example.com"
    for accept in (GRAPHQL_RESPONSE, JSON):
        response = await http.get(
            server.url, params={"query": sign_up_mutation(email)}, headers={"Accept": accept}
        )
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "POST"
        body = response.json()
        assert "data" not in body
        assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    # The mutation never ran: the address is still free (and the check can tell).
    assert await can_sign_up(client, email)
    assert not await can_sign_up(client, email)

    # Also for a signed-in user: a tenant created over GET would show up among their memberships.
    owner = await client.sign_up()
    slug = unique("get-tenant-")
    mutation = (
        f'mutation {{ createTenant(input: {{name: "x", slug: "{slug}"}}) {{ tenant {{ id }} }} }}'
    )
    response = await http.get(
        server.url,
        params={"query": mutation},
        headers={"Accept": GRAPHQL_RESPONSE, **owner.headers()},
    )
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    r = await client.execute("{ viewer { memberships { id } } }", actor=owner)
    assert r.ok() == {"viewer": {"memberships": []}}


@pytest.mark.parametrize(("accept", "status"), [(GRAPHQL_RESPONSE, 400), (JSON, 200)])
async def test_a_subscription_over_http_is_pointed_to_the_websocket(
    http: httpx.AsyncClient, server: Server, accept: str, status: int
) -> None:
    """A subscription is a request error over HTTP (status as for any request error with that
    media type), and the answer says where subscriptions are served — not "use POST"."""
    for document in ("subscription { tenantEvents { id } }", "subscription S { __typename }"):
        for send in (
            http.post(server.url, json={"query": document}, headers={"Accept": accept}),
            http.get(server.url, params={"query": document}, headers={"Accept": accept}),
        ):
            response = await send
            assert response.status_code == status, response.text
            assert media_type(response) == accept
            body = response.json()
            assert "data" not in body, body
            (error,) = body["errors"]
            assert error["extensions"]["code"] == "BAD_REQUEST", error
            assert error["extensions"]["requestId"] == response.headers["x-request-id"]
            assert "WebSocket" in error["message"] and "graphql-transport-ws" in error["message"]
            assert "GET" not in error["message"] and "POST" not in error["message"], error


async def test_query_over_get(
    client: GraphQLClient, http: httpx.AsyncClient, server: Server
) -> None:
    owner = await client.sign_up()
    response = await http.get(
        server.url,
        params={
            "query": "query Me($x: Boolean!) { viewer @include(if: $x) { id email } }",
            "variables": json.dumps({"x": True}),
            "operationName": "Me",
        },
        headers={"Accept": GRAPHQL_RESPONSE, **owner.headers()},
    )
    assert response.status_code == 200, response.text
    assert media_type(response) == GRAPHQL_RESPONSE
    assert response.json() == {"data": {"viewer": {"id": owner.user_id, "email": owner.email}}}


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_post_without_json_content_type_is_415_and_runs_nothing(
    client: GraphQLClient, http: httpx.AsyncClient, server: Server, content_type: str | None
) -> None:
    """The content types a browser may send cross-site without a preflight never execute.
    Multipart is read only for file uploads, and only with a header that forces a preflight
    (tests/test_files.py): without one it is a bad request (400), as Apollo Server answers."""
    email = f"{unique('csrf')}@example.com"
    headers = {"Accept": GRAPHQL_RESPONSE}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await http.post(
        server.url,
        content=json.dumps({"query": sign_up_mutation(email)}).encode(),
        headers=headers,
    )
    multipart = content_type is not None and content_type.startswith("multipart/")
    assert response.status_code == (400 if multipart else 415), response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert await can_sign_up(client, email)


async def test_syntax_error_with_graphql_response_json_is_400_without_data(
    http: httpx.AsyncClient, server: Server
) -> None:
    response = await http.post(
        server.url, json={"query": "{ viewer { id "}, headers={"Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400, response.text
    assert media_type(response) == GRAPHQL_RESPONSE
    body = response.json()
    assert "data" not in body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_PARSE_FAILED"]


async def test_syntax_error_with_application_json_is_200(
    http: httpx.AsyncClient, server: Server
) -> None:
    response = await http.post(
        server.url, json={"query": "{ viewer { id "}, headers={"Accept": JSON}
    )
    assert response.status_code == 200, response.text
    assert media_type(response) == JSON
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["GRAPHQL_PARSE_FAILED"]


async def test_validation_error_with_graphql_response_json_is_400(
    http: httpx.AsyncClient, server: Server
) -> None:
    response = await http.post(
        server.url, json={"query": "{ noSuchField }"}, headers={"Accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert "data" not in body
    assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_VALIDATION_FAILED"]


@pytest.mark.parametrize("accept", ["text/plain", "text/plain, text/csv;q=0.5"])
async def test_unacceptable_accept_is_406(
    http: httpx.AsyncClient, server: Server, accept: str
) -> None:
    response = await http.post(
        server.url, json={"query": "{ __typename }"}, headers={"Accept": accept}
    )
    assert response.status_code == 406, response.text
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


# --- errors: code and request id ---------------------------------------------------------


async def _bad_requests(client: GraphQLClient) -> list[tuple[str, int, str, dict[str, Any]]]:
    """(what, status, code, httpx request kwargs) for a spread of failures, each on a
    different code path: transport, authentication, validation, execution."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    viewer = await client.add_member(owner, tenant_id, role="viewer")
    stranger = await client.sign_up()
    gql = {"Accept": GRAPHQL_RESPONSE}
    signed_in = {**gql, **owner.headers()}

    def post(query: Any, headers: dict[str, str] = gql, **body: Any) -> dict[str, Any]:
        return {"method": "POST", "json": {"query": query, **body}, "headers": headers}

    node = "query($n: ID!) { node(id: $n) { id } }"
    key_input = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
    return [
        ("parse error", 400, "GRAPHQL_PARSE_FAILED", post("{")),
        ("validation error", 400, "GRAPHQL_VALIDATION_FAILED", post("{ nope }")),
        ("missing variable", 400, "BAD_USER_INPUT", post(node, signed_in, variables={})),
        (
            "variable of the wrong type",
            400,
            "BAD_USER_INPUT",
            post(node, signed_in, variables={"n": {"x": 1}}),
        ),
        (
            "bad scalar in an input variable",
            400,
            "BAD_USER_INPUT",
            post(
                key_input,
                signed_in,
                variables={"i": {"name": "k", "scopes": [], "expiresAt": "soon"}},
            ),
        ),
        (
            "body not JSON",
            400,
            "BAD_REQUEST",
            {"method": "POST", "content": b"{", "headers": {**gql, "Content-Type": JSON}},
        ),
        ("query not a string", 400, "BAD_REQUEST", post(1)),
        ("no query", 400, "BAD_REQUEST", {"method": "GET", "headers": gql}),
        (
            "mutation over GET",
            405,
            "BAD_REQUEST",
            {"method": "GET", "params": {"query": "mutation { logout { ended } }"}, "headers": gql},
        ),
        (
            "wrong content type",
            415,
            "BAD_REQUEST",
            {"method": "POST", "content": b"{}", "headers": {**gql, "Content-Type": "text/plain"}},
        ),
        ("not acceptable", 406, "BAD_REQUEST", post("{ __typename }", {"Accept": "text/plain"})),
        (
            "bad token",
            401,
            "UNAUTHENTICATED",
            post("{ viewer { id } }", {**gql, "Authorization": "Bearer not-a-token"}),
        ),
        ("unauthenticated field", 200, "UNAUTHENTICATED", post("{ viewer { id } }")),
        (
            "forbidden field",
            200,
            "FORBIDDEN",
            post("{ tenant { apiKeys { totalCount } } }", {**gql, **viewer.headers()}),
        ),
        (
            "not found",
            200,
            "NOT_FOUND",
            post('{ node(id: "ten_00000000000000000000000000") { id } }', signed_in),
        ),
        ("bad id", 200, "BAD_USER_INPUT", post('{ node(id: "nonsense") { id } }', signed_in)),
        (
            "X-Tenant-Id of a stranger",
            403,
            "FORBIDDEN",
            post("{ tenant { id } }", {**gql, **stranger.headers(tenant_id)}),
        ),
    ]


async def test_every_error_carries_a_code_and_the_request_id(
    client: GraphQLClient, http: httpx.AsyncClient, server: Server
) -> None:
    failures = []
    for what, status, code, kwargs in await _bad_requests(client):
        for supplied in (f"req-{uuid.uuid4().hex[:12]}", None):
            headers = dict(kwargs.get("headers") or {})
            if supplied is not None:
                headers["X-Request-Id"] = supplied
            response = await http.request(url=server.url, **{**kwargs, "headers": headers})
            body = response.json()
            echoed = response.headers.get("x-request-id")
            errors = body.get("errors") or []
            if (response.status_code, [e.get("extensions", {}).get("code") for e in errors]) != (
                status,
                [code],
            ):
                failures.append(
                    f"{what}: expected {status} {code}, got {response.status_code} {body}"
                )
            if supplied is not None and echoed != supplied:
                failures.append(f"{what}: X-Request-Id {echoed!r} != supplied {supplied!r}")
            if not echoed:
                failures.append(f"{what}: no X-Request-Id header")
            for error in errors:
                extensions = error.get("extensions") or {}
                if extensions.get("requestId") != echoed:
                    failures.append(
                        f"{what}: requestId {extensions.get('requestId')!r} != header {echoed!r}"
                    )
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("supplied", ["has spaces in it", "x" * 65, "semi;colon", ""])
async def test_an_unusable_request_id_is_replaced(
    http: httpx.AsyncClient, server: Server, supplied: str
) -> None:
    response = await http.post(
        server.url,
        json={"query": "{"},
        headers={"Accept": GRAPHQL_RESPONSE, "X-Request-Id": supplied},
    )
    echoed = response.headers["x-request-id"]
    assert echoed and echoed != supplied
    assert response.json()["errors"][0]["extensions"]["requestId"] == echoed


# --- GraphiQL ----------------------------------------------------------------------------


async def test_graphiql_is_served_to_a_browser(http: httpx.AsyncClient, server: Server) -> None:
    assert server.settings.graphiql_enabled  # the default outside production
    response = await http.get(server.url, headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 200
    assert media_type(response) == "text/html"
    assert "graphiql" in response.text.lower()


@pytest.fixture(scope="module")
def quiet_server(database_url: str) -> Iterator[Server]:
    """A second server on the same database with production's defaults for what a client sees:
    no field suggestions, no GraphiQL."""
    with running_server(
        make_settings(database_url, field_suggestions=False, graphiql=False)
    ) as srv:
        yield srv


async def test_no_graphiql_when_it_is_off(http: httpx.AsyncClient, quiet_server: Server) -> None:
    response = await http.get(quiet_server.url, headers={"Accept": "text/html"})
    assert response.status_code == 406
    assert "graphiql" not in response.text.lower()


async def test_no_suggestions_when_they_are_off(
    client: GraphQLClient, http: httpx.AsyncClient, quiet_server: Server
) -> None:
    """Production turns field suggestions off: no "Did you mean" in validation errors nor in
    variable errors (which graphql-core words differently)."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    requests = [
        {"query": "{ viewr { id } }"},
        {
            "query": "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            "variables": {"i": {"name": "k", "scopes": [], "environment": "LIV"}},
        },
    ]
    for payload in requests:
        for url, expect_hint in ((quiet_server.url, False), (client.url, True)):
            response = await http.post(
                url, json=payload, headers={"Accept": JSON, **owner.headers(tenant_id)}
            )
            (error,) = response.json()["errors"]
            assert error["extensions"]["code"] in {
                "GRAPHQL_VALIDATION_FAILED",
                "BAD_USER_INPUT",
            }, error
            assert ("Did you mean" in error["message"]) is expect_hint, (url, error)


async def test_request_errors_carry_no_data_and_other_methods_are_typed_405(
    http: httpx.AsyncClient, server: Server
) -> None:
    r = await http.post(
        server.url, json={"query": "{ nope }"}, headers={"Accept": "application/json"}
    )
    assert r.status_code == 200 and "data" not in r.json()
    assert r.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    r = await http.put(server.url, json={"query": "{ __typename }"})
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["errors"][0]["extensions"]["requestId"] == r.headers["x-request-id"]


async def test_cors_allows_only_configured_origins(
    http: httpx.AsyncClient, database_url: str
) -> None:
    settings = make_settings(database_url, cors_origins=["https://portal.example.com"])
    with running_server(settings) as srv:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-tenant-id",
        }
        r = await http.options(
            srv.url, headers={"Origin": "https://portal.example.com", **preflight}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://portal.example.com"
        assert "x-tenant-id" in r.headers["access-control-allow-headers"].lower()
        r = await http.options(srv.url, headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in r.headers


async def test_cached_validation_errors_carry_each_requests_own_id(
    client: GraphQLClient,
) -> None:
    query = "{ definitelyNotAField }"
    first = await client.execute(query, headers={"X-Request-Id": "cache-check-1"})
    second = await client.execute(query, headers={"X-Request-Id": "cache-check-2"})
    assert first.errors[0]["extensions"]["requestId"] == "cache-check-1"
    assert second.errors[0]["extensions"]["requestId"] == "cache-check-2"
