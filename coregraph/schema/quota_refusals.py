"""Every quota refusal an operation answers is kept (``coregraph.services.quota_refusals``):
the refusals raised by a resolver and the api.requests cap refused before execution alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from coregraph.errors import QuotaExceeded


def keep_quota_refusals(context: Any, errors: list[GraphQLError]) -> None:
    """Notes each quota refusal among an operation's errors (before they are presented)."""
    runtime = getattr(context, "runtime", None)
    if runtime is None:
        return
    for error in errors:
        if isinstance(error.original_error, QuotaExceeded):
            runtime.quota_refusals.note(context.principal, error.original_error, context.meta)


class KeepQuotaRefusals(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        keep_quota_refusals(self.execution_context.context, result.errors)
