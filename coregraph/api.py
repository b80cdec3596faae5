"""The one federation schema, assembled: the domain types of ``coregraph.schema``, the root
operations of ``coregraph.resolvers``, the abuse limits and the authorization enforcement.

It sits above both packages, so neither imports the other through it."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable
from copy import copy
from functools import partial
from typing import Any

import strawberry
from graphql import GraphQLError, NoSchemaIntrospectionCustomRule
from strawberry.federation.schema import FederationAny
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.tools import merge_types
from strawberry.types.execution import ExecutionResult
from strawberry.types.graphql import OperationType

from coregraph import telemetry
from coregraph.auth.schema_reader import SCHEMA_SECRET_HEADER, may_read_schema
from coregraph.errors import BadUserInput, Forbidden, NotFound, Unauthenticated
from coregraph.resolvers.access import AccessMutation, AccessQuery
from coregraph.resolvers.agents import AgentsMutation, AgentsQuery
from coregraph.resolvers.approvals import (
    ApprovalsMutation,
    ApprovalsQuery,
    ApprovalsSubscription,
)
from coregraph.resolvers.audit import AuditQuery
from coregraph.resolvers.billing import BillingMutation, BillingQuery
from coregraph.resolvers.events import (
    RAW_RESOLVERS as EVENTS_RAW_RESOLVERS,
    EventsMutation,
    EventsQuery,
)
from coregraph.resolvers.files import FilesMutation, FilesQuery
from coregraph.resolvers.identity import IdentityMutation, IdentityQuery
from coregraph.resolvers.invoices import InvoicesQuery
from coregraph.resolvers.node import NodeQuery
from coregraph.resolvers.streams import StreamsSubscription
from coregraph.resolvers.support import SupportMutation, SupportQuery
from coregraph.resolvers.tenancy import TenancyMutation, TenancyQuery
from coregraph.resolvers.usage import (
    RAW_RESOLVERS as USAGE_RAW_RESOLVERS,
    UsageMutation,
    UsageQuery,
)
from coregraph.resolvers.webhooks import WebhooksMutation, WebhooksQuery, WebhooksSubscription
from coregraph.schema import scalars
from coregraph.schema.approval_gate import install_approval_gates
from coregraph.schema.authorization import enforce_declarations
from coregraph.schema.document_cache import CachedDocuments, DocumentCache
from coregraph.schema.errors import error_extension
from coregraph.schema.execution import CoregraphExecutor, WalkingExecutor, install_fast_resolvers
from coregraph.schema.execution_check import checked
from coregraph.schema.extension_runner import CachedHooksRunner
from coregraph.schema.lookup import ENTITIES
from coregraph.schema.operation import LeanOperations
from coregraph.schema.operation_limits import create_rule
from coregraph.schema.quota_refusals import KeepQuotaRefusals
from coregraph.schema.rate_limiting import PlanLimitsExtension
from coregraph.schema.support_mode import ReadOnlySupportExtension
from coregraph.settings import Settings

# The highest Federation version that both Apollo's and The Guild's composition accept (2.9);
# it has @authenticated/@requiresScopes (2.5) and @policy (2.6).
FEDERATION_VERSION = "2.9"

Query = merge_types(
    "Query",
    (
        IdentityQuery,
        TenancyQuery,
        AccessQuery,
        AgentsQuery,
        ApprovalsQuery,
        AuditQuery,
        EventsQuery,
        FilesQuery,
        WebhooksQuery,
        UsageQuery,
        BillingQuery,
        InvoicesQuery,
        SupportQuery,
        NodeQuery,
    ),
)
Mutation = merge_types(
    "Mutation",
    (
        IdentityMutation,
        TenancyMutation,
        AccessMutation,
        AgentsMutation,
        ApprovalsMutation,
        EventsMutation,
        FilesMutation,
        WebhooksMutation,
        UsageMutation,
        BillingMutation,
        SupportMutation,
    ),
)
Subscription = merge_types(
    "Subscription", (StreamsSubscription, WebhooksSubscription, ApprovalsSubscription)
)

# Every type declared with ``@entity`` (``schema.lookup``); importing the resolvers above
# imported every domain's types.
ENTITY_TYPES = list(ENTITIES.values())


def _found(result: Any) -> Any:
    """An entity that did not resolve is an error, not a silent null: NOT_FOUND, the same answer
    as ``node(id:)`` for "does not exist" and "not yours" (DESIGN.md, Errors)."""
    if inspect.isawaitable(result):
        return _await_found(result)
    if result is None:
        return NotFound("no object with this id", field="representations")
    return result


async def _await_found(result: Awaitable[Any]) -> Any:
    return _found(await result)


def _entity_keys() -> dict[str, frozenset[str]]:
    """Each entity type's key fields (from its ``@key`` directives), by type name."""
    from strawberry.federation.schema_directives import Key

    keys: dict[str, frozenset[str]] = {}
    for type_ in ENTITY_TYPES:
        definition = type_.__strawberry_definition__  # type: ignore[attr-defined]
        for directive in definition.directives or ():
            if isinstance(directive, Key):
                keys[definition.name] = frozenset(str(directive.fields).split())
    return keys


_ENTITY_KEYS = _entity_keys()


def _representation_problem(representation: Any) -> str | None:
    """Why a client-supplied ``_entities`` representation is unusable, or None. Without this
    check strawberry fails on it with an internal error (an unknown ``__typename``, a field that
    is not the key), and one bad item fails the whole list."""
    if not isinstance(representation, dict):
        return "must be an object"
    typename = representation.get("__typename")
    keys = _ENTITY_KEYS.get(typename) if isinstance(typename, str) else None
    if keys is None:
        return "__typename must name an entity type"
    given = representation.keys() - {"__typename"}
    if given != keys or not all(isinstance(representation[k], str) for k in keys):
        return f"give exactly the key fields {sorted(keys)}, as strings"
    return None


class CoregraphSchema(strawberry.federation.Schema):
    # Each text's parsed document and validation result (schema.document_cache), set by
    # build_schema: the rules it validates with are this schema's.
    documents: DocumentCache
    # Operations of cached documents without strawberry's pipeline (schema.operation); None
    # where the schema has extensions that pipeline must drive (tracing).
    lean: LeanOperations | None = None

    def entities_resolver(
        self, info: strawberry.Info, representations: list[FederationAny]
    ) -> list[FederationAny]:
        # graphql-core raises an Exception returned as a list item, so each unusable or
        # unresolved representation becomes null with its own error at ``_entities.<index>``.
        results: list[Any] = [None] * len(representations)
        usable: list[int] = []
        anonymous = not info.context.principal.is_authenticated
        for index, representation in enumerate(representations):
            problem = _representation_problem(representation)
            if problem is not None:
                results[index] = BadUserInput(
                    f"representations[{index}]: {problem}", field="representations"
                )
            elif anonymous:
                # Every entity type is @authenticated: the same answer as node(id:) gives.
                results[index] = Unauthenticated("_entities needs a signed-in user or an API key")
            else:
                usable.append(index)
        # Copies: strawberry's resolver pops ``__typename`` from each representation and adds
        # ``info`` to it, and the representations are the request's variables, which another
        # ``_entities`` field of the same operation (an alias) reads after this one.
        resolved = super().entities_resolver(info, [copy(representations[i]) for i in usable])
        for index, result in zip(usable, resolved, strict=True):
            results[index] = _found(result)
        return results

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """A document already parsed and valid runs without strawberry's per-operation
        pipeline (``schema.operation``); anything else, and every first request of a text,
        takes strawberry's."""
        lean = self.lean
        if lean is not None and query and operation_extensions is None:
            found = lean.operation(
                query, operation_name, allowed_operation_types or DEFAULT_ALLOWED_OPERATION_TYPES
            )
            if found is not None:
                document, operation_type, name = found
                return await lean.execute(
                    self,
                    query,
                    document,
                    operation_type,
                    name,
                    variable_values,
                    context_value,
                    root_value,
                )
        return await super().execute(
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            allowed_operation_types,
            operation_extensions,
        )

    def create_extensions_runner(
        self, execution_context: Any, extensions: list[Any]
    ) -> CachedHooksRunner:
        # The hooks' kinds found once per extension class (schema.extension_runner).
        return CachedHooksRunner(execution_context=execution_context, extensions=extensions)

    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Errors are classified and logged once, in ``schema.errors``; expected ones
        (FORBIDDEN, BAD_USER_INPUT, ...) are not stack traces worth logging."""


def _guard_service_sdl(schema: CoregraphSchema, settings: Settings) -> None:
    """``_service { sdl }`` is the whole schema: with introspection off, only a reader that
    carried the schema secret (a gateway) gets it (``coregraph.auth.schema_reader``)."""
    if settings.introspection_enabled:
        return
    field = schema._schema.query_type.fields["_service"]  # type: ignore[union-attr]
    resolve = field.resolve

    def guarded(source: Any, info: Any, **args: Any) -> Any:
        carried = getattr(info.context, "schema_reader", False) is True
        if not may_read_schema(settings, carried):
            raise Forbidden(
                f"_service: send the schema reader secret in {SCHEMA_SECRET_HEADER}",
                field="_service",
            )
        return resolve(source, info, **args) if resolve else None

    field.resolve = guarded


def _mutation_payloads(schema: CoregraphSchema) -> dict[str, type]:
    """Each Mutation field's payload class, by the field's GraphQL name."""
    payloads: dict[str, type] = {}
    for item in Mutation.__strawberry_definition__.fields:  # type: ignore[attr-defined]
        type_ = getattr(item.type, "of_type", item.type)
        payloads[schema.config.name_converter.get_graphql_name(item)] = type_
    return payloads


def build_schema(settings: Settings) -> CoregraphSchema:
    # Factories: strawberry builds each extension per operation; the document cache itself
    # belongs to the schema, shared by every request. Its validation rules are built once,
    # here (strawberry's QueryDepthLimiter and MaxAliasesLimiter would build new ones per
    # operation).
    limits: list[Any] = [
        create_rule(settings.max_query_depth, settings.max_aliases, settings.max_fields)
    ]
    if not settings.introspection_enabled:
        limits.append(NoSchemaIntrospectionCustomRule)
    documents = DocumentCache(tuple(limits), settings.max_tokens, maxsize=1024)
    extensions: list[Any] = [
        error_extension(settings.suggestions_enabled),
        KeepQuotaRefusals,
        # Parse and validation (with the limits above and the token limit), once per text.
        partial(CachedDocuments, documents),
        # After validation, before execution: a READ support session runs no mutation...
        ReadOnlySupportExtension,
        # ...and the plan's rate limits, api.requests and its cap.
        PlanLimitsExtension,
    ]
    if telemetry.enabled():
        from coregraph.schema.tracing import OperationTracing

        # First: its span is current around the others' work (and its error count sees
        # the presented errors).
        extensions.insert(0, partial(OperationTracing, tracer_provider=telemetry.provider()))
    schema = CoregraphSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=ENTITY_TYPES,
        extensions=extensions,
        federation_version=FEDERATION_VERSION,  # type: ignore[arg-type]
        execution_context_class=CoregraphExecutor if settings.compiled_plans else WalkingExecutor,
        scalar_overrides=scalars.OVERRIDES,
    )
    schema.documents = documents
    if LeanOperations.stands_in_for(extensions):
        schema.lean = LeanOperations(documents, settings.suggestions_enabled)
    # Leaner resolvers first: the approval gate then wraps one, and a declared field's guard
    # wraps both (a field's scopes are checked before a request for it is ever stored).
    install_fast_resolvers(schema._schema, schema.config.info_class)
    mutation = schema._schema.mutation_type
    assert mutation is not None
    for name, resolve in {**EVENTS_RAW_RESOLVERS, **USAGE_RAW_RESOLVERS}.items():
        mutation.fields[name].resolve = resolve
    install_approval_gates(schema._schema, _mutation_payloads(schema))
    enforce_declarations(schema._schema)
    _guard_service_sdl(schema, settings)
    if settings.execution_check:
        schema.execution_context_class = checked(schema.execution_context_class)
    return schema
