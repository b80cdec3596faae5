"""The one federation schema: domain types, root operations, limits and enforcement."""

from __future__ import annotations

from functools import partial
from typing import Any

import strawberry
from graphql import GraphQLError, NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.tools import merge_types

from coregraph.resolvers.access import AccessMutation, AccessQuery
from coregraph.resolvers.identity import IdentityMutation, IdentityQuery
from coregraph.resolvers.node import NodeQuery
from coregraph.resolvers.tenancy import TenancyMutation, TenancyQuery
from coregraph.schema.access import ApiKey, Permission, Role
from coregraph.schema.audit import AuditEntry
from coregraph.schema.authorization import enforce_declarations
from coregraph.schema.errors import error_extension
from coregraph.schema.identity import User
from coregraph.schema.tenancy import Invitation, Membership, Tenant
from coregraph.settings import Settings

# The highest Federation version that both Apollo's and The Guild's composition accept (2.9);
# it has @authenticated/@requiresScopes (2.5) and @policy (2.6).
FEDERATION_VERSION = "2.9"

Query = merge_types("Query", (IdentityQuery, TenancyQuery, AccessQuery, NodeQuery))
Mutation = merge_types("Mutation", (IdentityMutation, TenancyMutation, AccessMutation))

ENTITY_TYPES = [Tenant, User, Membership, Role, ApiKey, Invitation, AuditEntry, Permission]


class CoregraphSchema(strawberry.federation.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """Errors are classified and logged once, in ``schema.errors``; expected ones
        (FORBIDDEN, BAD_USER_INPUT, ...) are not stack traces worth logging."""


def build_schema(settings: Settings) -> CoregraphSchema:
    # Factories: strawberry builds each extension per operation; the parser and validation
    # caches themselves live at module level, shared by every request.
    extensions: list[Any] = [
        error_extension(settings.suggestions_enabled),
        partial(ParserCache, maxsize=1024),
        partial(ValidationCache, maxsize=1024),
        partial(QueryDepthLimiter, max_depth=settings.max_query_depth),
        partial(MaxAliasesLimiter, max_alias_count=settings.max_aliases),
        partial(MaxTokensLimiter, max_token_count=settings.max_tokens),
    ]
    if not settings.introspection_enabled:
        extensions.append(partial(AddValidationRules, [NoSchemaIntrospectionCustomRule]))
    schema = CoregraphSchema(
        query=Query,
        mutation=Mutation,
        types=ENTITY_TYPES,
        extensions=extensions,
        federation_version=FEDERATION_VERSION,  # type: ignore[arg-type]
    )
    enforce_declarations(schema._schema)
    return schema


def federation_sdl() -> str:
    """The subgraph SDL as a gateway sees it through ``_service { sdl }``."""
    from coregraph.settings import Settings

    return build_schema(Settings()).as_str()
