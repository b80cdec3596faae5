"""Executing one document with two executor classes and comparing the answers: the shared part
of the equivalence tests (``test_equivalence.py``, ``test_generated_queries.py``,
``test_execution_check.py``) and of any test of a new executor.

The comparison itself is ``coregraph.schema.execution_check.difference`` (data with its key
order; errors by message, path, locations, extensions and the kind of exception behind them), the
one the suite-wide check uses. Here each executor gets a context of its own (``make_context``):
no dataloader cache is shared, so the data must not change between the two runs.

Against the real schema, ``RealSchema`` is a runtime of the test's own on the suite's database
(the server's runtime lives in the server's thread and event loop): its ``context`` acts as an
actor of ``tests.support`` would over HTTP, with the same principal.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from graphql import ExecutionResult, execute, parse, validate
from strawberry.execution import optimized_is_awaitable
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.utils.await_maybe import await_maybe

from coregraph.app import Runtime
from coregraph.context import Context
from coregraph.request import RequestMeta
from coregraph.schema import execution_check
from coregraph.schema.execution_check import Mismatch, difference
from coregraph.settings import Settings
from tests.support import Actor, GraphQLClient

STOCK = StrawberryGraphQLCoreExecutionContext


def executor_of(schema: Any) -> type[Any]:
    """The executor class ``schema`` (a strawberry schema) runs with, without the suite's check
    around it."""
    executor = schema.execution_context_class
    return getattr(executor, "checked_executor", executor)


async def execute_with(
    schema: Any,
    executor_class: type[Any],
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    context: Any = None,
    root: Any = None,
    operation_name: str | None = None,
) -> ExecutionResult:
    """``query`` through ``schema``'s GraphQLSchema with ``executor_class``, as strawberry
    executes it (its ``is_awaitable``, no middleware), after validation."""
    document = parse(query)
    problems = validate(schema._schema, document)
    assert not problems, problems
    result = execute(
        schema._schema,
        document,
        root_value=root,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        executor_class=executor_class,
        is_awaitable=optimized_is_awaitable,
    )
    return await await_maybe(result)  # type: ignore[arg-type]


async def assert_equivalent(
    schema: Any,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    make_context: Callable[[], Awaitable[Any]] | None = None,
    executor_class: type[Any] | None = None,
    root: Any = None,
) -> ExecutionResult:
    """Runs ``query`` on stock graphql-core and on ``executor_class`` (default: the schema's
    own), each with a fresh context, asserts both answered the same, and returns the answer."""
    answers = []
    for executor in (STOCK, executor_class or executor_of(schema)):
        context = await make_context() if make_context is not None else None
        try:
            answers.append(
                await execute_with(schema, executor, query, variables, context=context, root=root)
            )
        finally:
            close = getattr(context, "close", None)
            if close is not None:
                await close()
    stock, ours = answers
    diff = difference(stock, ours)
    assert diff is None, f"{query}\nvariables: {variables}\n{diff}"
    return ours


@contextlib.contextmanager
def expecting_mismatches() -> Iterator[list[Mismatch]]:
    """The suite-wide check's mismatches go to the returned list instead of failing the test:
    for a test that plants a divergence on purpose."""
    saved = list(execution_check.listeners)
    seen: list[Mismatch] = []
    execution_check.listeners[:] = [seen.append]
    try:
        yield seen
    finally:
        execution_check.listeners[:] = saved


class RealSchema:
    """coregraph's schema as ``build_schema`` makes it, on the suite's database, with a runtime
    in the test's event loop; contexts as the HTTP transport builds them."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.schema = runtime.schema

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, server_settings: Settings) -> AsyncIterator[RealSchema]:
        runtime = Runtime.create(server_settings.model_copy(update={"execution_check": False}))
        try:
            yield cls(runtime)
        finally:
            await runtime.close()

    def context_factory(
        self, actor: Actor | None, tenant_id: str | None = None
    ) -> Callable[[], Awaitable[Context]]:
        async def make() -> Context:
            meta = RequestMeta(request_id="equivalence", ip="127.0.0.1", base_url="http://test")
            authorization = None
            tenant = None
            extra: dict[str, str] = {}
            if actor is not None:
                headers = actor.headers(tenant_id)
                authorization = headers.get("Authorization")
                tenant = headers.get("X-Tenant-Id")
                extra = headers
            principal = await self.runtime.authenticator.authenticate(
                authorization, tenant, extra.get("X-Environment"), meta
            )
            return Context(self.runtime, principal, meta)

        return make

    async def assert_equivalent(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        actor: Actor | None = None,
        tenant_id: str | None = None,
        executor_class: type[Any] | None = None,
    ) -> ExecutionResult:
        return await assert_equivalent(
            self.schema,
            query,
            variables,
            make_context=self.context_factory(actor, tenant_id),
            executor_class=executor_class,
        )


@dataclass
class SeededTenant:
    """A tenant with something of every kind the services make quickly: members in built-in
    and custom roles, a second tenant one member also belongs to, API keys, registered event
    types and events, pending files, a webhook endpoint, and the audit entries all of that
    wrote. Made through the public API; read-only afterwards, so two runs read the same rows."""

    owner: Actor
    tenant_id: str
    admin: Actor
    member: Actor
    auditor: Actor  # a custom role: tenant:read and audit:read, not members:read
    key: Actor  # an API key with read scopes
    other_tenant_id: str  # member owns it; nobody else here belongs to it
    ids: dict[str, str] = field(default_factory=dict)  # an id of each kind, by type name


EMIT = """mutation($input: EmitEventInput!) { emitEvent(input: $input) { event { id } } }"""


async def seed_tenant(client: GraphQLClient) -> SeededTenant:
    owner = await client.sign_up(name="Ada Owner")
    tenant_id = await client.create_tenant(owner)

    async def run(query: str, variables: dict[str, Any], actor: Actor = owner) -> Any:
        return (await client.execute(query, variables, actor=actor, tenant_id=tenant_id)).ok()

    role = await run(
        """mutation($input: CreateRoleInput!) { createRole(input: $input) { role { id } } }""",
        {
            "input": {
                "key": "auditor",
                "name": "Auditor",
                "description": "reads the audit log",
                "permissions": ["tenant:read", "audit:read"],
            }
        },
    )
    admin = await client.add_member(owner, tenant_id, "admin", name="Grace Admin")
    member = await client.add_member(owner, tenant_id, "member", name="Linus Member")
    auditor = await client.add_member(owner, tenant_id, "auditor", name="Barbara Auditor")
    other_tenant_id = await client.create_tenant(member)
    key = await client.api_key(
        owner,
        tenant_id,
        ["tenant:read", "members:read", "audit:read", "events:read", "files:read"],
    )
    await client.api_key(owner, tenant_id, ["events:write"], environment="TEST")
    for type_ in ("order.paid", "order.refunded"):
        await run(
            """mutation($input: RegisterEventTypeInput!) {
                registerEventType(input: $input) { eventType { id } } }""",
            {"input": {"type": type_, "description": type_, "schema": {"type": "object"}}},
        )
    event_ids = []
    for number in range(3):
        made = await run(
            EMIT,
            {"input": {"type": "order.paid", "data": {"order": number, "total": 10.5 * number}}},
        )
        event_ids.append(made["emitEvent"]["event"]["id"])
    for name in ("report.pdf", "photo.png"):
        await run(
            """mutation($input: CreateUploadUrlInput!) { createUploadUrl(input: $input) {
                file { id } } }""",
            {"input": {"filename": name, "size": 1000, "labels": {"kind": name[-3:]}}},
        )
    # Loopback and an event type nothing emits from here on: no delivery changes a row while
    # the tests read.
    await run(
        """mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) {
            webhookEndpoint { id } } }""",
        {"input": {"url": "http://127.0.0.1:9/hook", "eventTypes": ["order.refunded"]}},
    )
    ids = await run(
        """{ tenant { id members(first: 10) { nodes { id user { id } } }
             roles { id key } apiKeys { nodes { id } } auditLog(first: 1) { nodes { id } }
             invitations(pendingOnly: false) { nodes { id } } }
           events(first: 1) { nodes { id } } files { nodes { id } }
           webhookEndpoints { nodes { id } } eventTypes { registered { id } } }""",
        {},
    )
    tenant = ids["tenant"]
    seeded = SeededTenant(owner, tenant_id, admin, member, auditor, key, other_tenant_id)
    seeded.ids = {
        "Tenant": tenant["id"],
        "Membership": tenant["members"]["nodes"][1]["id"],
        "User": tenant["members"]["nodes"][1]["user"]["id"],
        "Role": role["createRole"]["role"]["id"],
        "ApiKey": tenant["apiKeys"]["nodes"][0]["id"],
        "AuditEntry": tenant["auditLog"]["nodes"][0]["id"],
        "Invitation": tenant["invitations"]["nodes"][0]["id"],
        "Event": ids["events"]["nodes"][0]["id"],
        "File": ids["files"]["nodes"][0]["id"],
        "WebhookEndpoint": ids["webhookEndpoints"]["nodes"][0]["id"],
        "EventType": next(t["registered"]["id"] for t in ids["eventTypes"] if t["registered"]),
    }
    return seeded
