"""An operation of a document already parsed and validated, run without strawberry's
per-operation pipeline.

For every operation ``strawberry.Schema.execute`` builds an execution context, one instance of
each schema extension and a middleware manager, and drives four phases of hooks (operation,
parsing, validation, execution) around graphql-core's ``execute``. Once a document's text is in
the schema's ``DocumentCache`` (parsed, and valid), what those phases still do for coregraph's
own extensions is a handful of calls, which ``LeanOperations.execute`` makes in the same order:

- ``CoregraphErrors.on_validate``: the operation's type and name reach the context (request
  log, metrics);
- the execution phase's hooks, in the extensions' order: ``ReadOnlySupportExtension`` (no
  mutation under a READ support session), then ``PlanLimitsExtension`` (rate limits, the
  ``api.requests`` cap and meter) — a refusal raised there answers as strawberry answers an
  exception raised before execution: no data, that one error;
- graphql-core's ``execute`` with the schema's executor (compiled plans);
- the operation phase's exits, in reverse order: ``KeepQuotaRefusals``, then
  ``CoregraphErrors`` (errors presented).

Every one of those is a function the extension itself calls, so the two paths cannot drift
apart. Anything else takes strawberry's path: a text not yet in the cache (its first request
parses and validates it there), an invalid document, an operation the document lacks or the
transport does not allow (strawberry raises the errors the transports answer); and a schema
with any extension this module does not stand in for (tracing) has no lean path at all
(``stands_in_for``, checked by ``api.build_schema``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING, Any

from graphql import GraphQLError, OperationDefinitionNode, execute
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.types.execution import ExecutionResult, PreExecutionError
from strawberry.types.graphql import OperationType

from coregraph.schema.document_cache import CachedDocuments
from coregraph.schema.errors import CoregraphErrors, present
from coregraph.schema.quota_refusals import KeepQuotaRefusals, keep_quota_refusals
from coregraph.schema.rate_limiting import PlanLimitsExtension, admit_operation
from coregraph.schema.support_mode import ReadOnlySupportExtension, refuse_in_read_session

if TYPE_CHECKING:
    from graphql import DocumentNode
    from strawberry import Schema

    from coregraph.schema.document_cache import DocumentCache


class LeanOperations:
    @staticmethod
    def stands_in_for(extensions: Iterable[Any]) -> bool:
        """Whether these schema extensions (classes or factories) are exactly those whose
        duties ``execute`` performs: any other makes the schema keep strawberry's pipeline."""
        known = (
            CoregraphErrors,
            KeepQuotaRefusals,
            CachedDocuments,
            ReadOnlySupportExtension,
            PlanLimitsExtension,
        )
        for extension in extensions:
            cls = extension.func if isinstance(extension, partial) else extension
            if not (isinstance(cls, type) and issubclass(cls, known)):
                return False
        return True

    def __init__(self, documents: DocumentCache, suggestions: bool) -> None:
        self.documents = documents
        self.suggestions = suggestions

    def operation(
        self, query: str, operation_name: str | None, allowed: Iterable[OperationType]
    ) -> tuple[DocumentNode, OperationType, str | None] | None:
        """The cached, valid document of ``query``, the type of the operation it runs and
        its name as strawberry names it (the request's, or else the first operation's);
        None where strawberry's path must answer."""
        prepared = self.documents.get(query)
        if prepared is None or prepared.errors:
            return None
        document = prepared.document
        first: OperationDefinitionNode | None = None
        chosen: OperationDefinitionNode | None = None
        for definition in document.definitions:
            if not isinstance(definition, OperationDefinitionNode):
                continue
            if first is None:
                first = definition
            if operation_name is not None and definition.name is not None:
                if definition.name.value == operation_name:
                    chosen = definition
                    break
        if operation_name is None:
            chosen = first
            operation_name = first.name.value if first and first.name else None
        if chosen is None:
            return None
        operation_type = OperationType(chosen.operation.value)
        if operation_type not in allowed:
            return None
        return document, operation_type, operation_name

    async def execute(
        self,
        schema: Schema,
        query: str,
        document: DocumentNode,
        operation_type: OperationType,
        operation_name: str | None,
        variable_values: dict[str, Any] | None,
        context: Any,
        root_value: Any,
    ) -> ExecutionResult:
        # CoregraphErrors.on_validate (its on_operation names the operation again, for the
        # requests whose document never parsed: here it did).
        resolved = getattr(context, "operation_resolved", None)
        if resolved is not None:
            resolved(operation_type.value, operation_name)
        result: ExecutionResult
        try:
            refuse_in_read_session(getattr(context, "principal", None), operation_type)
            await admit_operation(context, query, operation_name, document)
            executed: Any = execute(
                schema._schema,
                document,
                root_value=root_value,
                variable_values=variable_values,
                operation_name=operation_name,
                context_value=context,
                is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
                executor_class=schema.execution_context_class,
                operation_extensions=None,
            )
            if inspect.isawaitable(executed):
                executed = await executed
            result = ExecutionResult(data=executed.data, errors=executed.errors, extensions={})
        except Exception as exc:  # as strawberry: what fails around execution is the answer
            error = (
                exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
            )
            result = PreExecutionError(data=None, errors=[error], extensions={})
        if result.errors:
            schema.process_errors(result.errors)
            keep_quota_refusals(context, result.errors)
        if result.errors:
            result.errors = present(
                result.errors, getattr(context, "request_id", None), self.suggestions
            )
        return result
