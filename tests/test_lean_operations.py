"""Operations of a cached document skip strawberry's per-operation pipeline
(``coregraph.schema.operation``) and answer exactly as through it.

Each case sends the same request twice to one server: once with the lean path switched off
(strawberry's ``Schema.execute`` and its extensions), once with it on (and asserted taken),
and compares what a client and the operator see: status, body (the request id aside),
headers, and the side effects the extensions own — the plan's rate limits, the quota refusal
kept as a ``quota.refused`` event, a READ support session's refusal of mutations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import Actor, GraphQLClient, Response, Server, running_server, unique
from tests.test_plan_rate_limits import ASSIGN, DEFINE, early_in_a_second, wait_until
from tests.test_support import CREATE_ENDPOINT, Customer, make_staff, session_token

MEMBERS = """query Members($first: Int) { tenant { id name members(first: $first) {
    edges { node { id role { key } user { email } } } } } }"""
TWO = "query A { tenant { id } } query B { viewer { id } }"
MISSING_NODE = '{ node(id: "VXNlcjpub3QtYS11c2Vy") { id } tenant { id } }'
EVENTS = """query($types: [String!]) { events(types: $types, first: 50) {
    edges { node { type data } } } }"""
RENAME = 'mutation { updateTenant(input: {name: "Renamed"}) { tenant { name } } }'


@pytest.fixture(scope="module")
async def operator(client: GraphQLClient) -> tuple[Actor, str]:
    owner = await client.sign_up()
    return owner, await client.create_tenant(owner)


@pytest.fixture(scope="module")
def lean_server(database_url: str, operator: tuple[Actor, str]) -> Iterator[Server]:
    settings = make_settings(
        database_url,
        billing_operator_tenant=operator[1],
        plan_limits_cache_seconds=0,
        webhook_max_endpoints=1,
        redis_prefix=unique("lean-"),
    )
    with running_server(settings, migrate_first=False) as server:
        yield server


class Paths:
    """Sends through strawberry's pipeline or the lean path (counted, to assert it taken)."""

    def __init__(self, server: Server) -> None:
        self.schema = server.runtime.schema
        operations = self.schema.lean
        assert operations is not None, "the suite's servers run without tracing"
        self.operations = operations
        self.taken: list[str] = []
        taken = self.taken

        class Counting(type(operations)):  # type: ignore[misc]
            async def execute(self, *args: Any, **kwargs: Any) -> Any:
                taken.append(args[1])
                return await super().execute(*args, **kwargs)

        self.counting = Counting(operations.documents, operations.suggestions)

    async def send(self, lean: bool, send: Callable[[], Awaitable[Response]]) -> Response:
        before = len(self.taken)
        self.schema.lean = self.counting if lean else None
        try:
            response = await send()
        finally:
            self.schema.lean = self.operations
        assert len(self.taken) == before + lean, "the path under test answered"
        return response

    async def both(self, send: Callable[[], Awaitable[Response]]) -> list[tuple[Any, ...]]:
        """``send()`` through strawberry's pipeline, then the lean path: both answers, as
        (status, body without request ids, headers)."""
        return [_seen(await self.send(lean, send)) for lean in (False, True)]


@pytest.fixture
def paths(lean_server: Server) -> Paths:
    return Paths(lean_server)


def _seen(response: Response) -> tuple[Any, ...]:
    body = dict(response.body)
    if "errors" in body:
        body["errors"] = [
            {**e, "extensions": {k: v for k, v in e["extensions"].items() if k != "requestId"}}
            for e in body["errors"]
        ]
    headers = {
        name: response.headers.get(name)
        for name in ("content-type", "ratelimit-policy", "ratelimit", "www-authenticate")
    }
    return response.status, body, headers


async def test_queries_answer_alike_data_errors_and_request_errors(
    lean_server: Server, http: httpx.AsyncClient, paths: Paths
) -> None:
    client = GraphQLClient(http, lean_server.url)
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    await client.add_member(owner, tenant_id, role="member")
    # The first request of each text parses and validates it (strawberry's path).
    for query in (MEMBERS, TWO, MISSING_NODE):
        await client.execute(query, actor=owner, tenant_id=tenant_id)
    cases: list[Callable[[], Awaitable[Response]]] = [
        lambda: client.execute(MEMBERS, {"first": 10}, actor=owner, tenant_id=tenant_id),
        # A field error, with its path and code, beside data.
        lambda: client.execute(MISSING_NODE, actor=owner, tenant_id=tenant_id),
        # Variables that do not coerce: a request error (400, no data).
        lambda: client.execute(MEMBERS, {"first": "ten"}, actor=owner, tenant_id=tenant_id),
        # Under application/json: 200 for the same.
        lambda: client.execute(
            MEMBERS, {"first": "ten"}, actor=owner, tenant_id=tenant_id, accept="application/json"
        ),
        # The operation the request names, of two in the document.
        lambda: _named(client, TWO, "B", owner, tenant_id),
        # No credential: the resolvers' own refusal.
        lambda: client.execute(MEMBERS, {"first": 1}),
    ]
    for send in cases:
        strawberry_answer, lean_answer = await paths.both(send)
        assert strawberry_answer == lean_answer
    status, body, _ = lean_answer
    assert status == 200 and body["data"] == {"tenant": None}
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def _named(
    client: GraphQLClient, query: str, name: str, actor: Actor, tenant_id: str
) -> Response:
    r = await client.http.post(
        client.url,
        json={"query": query, "operationName": name},
        headers={"Accept": "application/graphql-response+json", **actor.headers(tenant_id)},
    )
    return Response(r.status_code, r.json(), r.headers)


async def test_the_plans_rate_limits_refuse_alike(
    lean_server: Server,
    http: httpx.AsyncClient,
    operator: tuple[Actor, str],
    paths: Paths,
) -> None:
    client = GraphQLClient(http, lean_server.url)
    owner, operator_tenant = operator
    key = unique("plan").lower().replace("-", "_")
    defined = await client.execute(
        DEFINE,
        {"input": {"key": key, "name": f"Plan {key}", "rateLimits": {"perSecond": 2}}},
        actor=owner,
        tenant_id=operator_tenant,
    )
    defined.ok()
    customer = await client.sign_up()
    tenant_id = await client.create_tenant(customer)
    assigned = await client.execute(
        ASSIGN, {"tenantId": tenant_id, "plan": key}, actor=owner, tenant_id=operator_tenant
    )
    assigned.ok()
    # A burst early in a second stays in one window: two admitted, then both paths refuse,
    # with the same answer and headers.
    await early_in_a_second()
    used = [(await client.execute(MEMBERS, actor=customer, tenant_id=tenant_id)) for _ in range(2)]
    assert [r.status for r in used] == [200, 200]
    strawberry_answer, lean_answer = await paths.both(
        lambda: client.execute(MEMBERS, actor=customer, tenant_id=tenant_id)
    )
    assert strawberry_answer == lean_answer
    status, body, headers = lean_answer
    assert status == 429 and "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert headers["ratelimit-policy"] == '"second";q=2;w=1'


async def test_quota_refusals_are_kept_on_both_paths(
    lean_server: Server, http: httpx.AsyncClient, paths: Paths
) -> None:
    client = GraphQLClient(http, lean_server.url)
    endpoint = {"url": "http://127.0.0.1:9/hooks", "eventTypes": ["order.*"]}
    answers = []
    # One tenant refused on each path (a tenant's refusals are kept once a minute).
    for lean in (None, False, True):
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)

        async def create(owner: Actor = owner, tenant_id: str = tenant_id) -> Response:
            return await client.execute(
                CREATE_ENDPOINT, {"input": endpoint}, actor=owner, tenant_id=tenant_id
            )

        (await create()).ok()
        if lean is None:
            continue  # the text is cached now
        answers.append(_seen(await paths.send(lean, create)))

        async def kept(owner: Actor = owner, tenant_id: str = tenant_id) -> bool:
            refusals = await client.execute(
                EVENTS, {"types": ["quota.refused"]}, actor=owner, tenant_id=tenant_id
            )
            edges = refusals.ok()["events"]["edges"]
            return [edge["node"]["data"]["meter"] for edge in edges] == ["webhook_endpoints"]

        await wait_until(kept, within=10)
    assert answers[0] == answers[1]
    assert answers[1][1]["errors"][0]["extensions"]["code"] == "QUOTA_EXCEEDED"


async def test_a_read_support_session_runs_no_mutation_on_either_path(
    lean_server: Server,
    database_url: str,
    http: httpx.AsyncClient,
    paths: Paths,
) -> None:
    client = GraphQLClient(http, lean_server.url)
    staff = await make_staff(client, database_url)
    owner = await client.sign_up()
    tenant = Customer(owner, await client.create_tenant(owner))
    _, support = await session_token(client, staff, tenant, "READ")
    await client.execute(RENAME, actor=support, tenant_id=tenant.tenant_id)  # the text's first
    strawberry_answer, lean_answer = await paths.both(
        lambda: client.execute(RENAME, actor=support, tenant_id=tenant.tenant_id)
    )
    assert strawberry_answer == lean_answer
    _, body, _ = lean_answer
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "read-only" in body["errors"][0]["message"]
    name = (
        await client.execute("{ tenant { name } }", actor=owner, tenant_id=tenant.tenant_id)
    ).ok()
    assert name["tenant"]["name"] != "Renamed"


def test_an_extension_the_lean_path_does_not_stand_in_for_switches_it_off(
    lean_server: Server,
) -> None:
    from functools import partial

    from strawberry.extensions import SchemaExtension

    from coregraph.schema.operation import LeanOperations
    from coregraph.schema.tracing import OperationTracing

    schema = lean_server.runtime.schema
    assert LeanOperations.stands_in_for(schema.extensions)

    class Other(SchemaExtension):
        pass

    for extra in (Other, partial(OperationTracing, tracer_provider=None)):
        assert not LeanOperations.stands_in_for([*schema.extensions, extra])
