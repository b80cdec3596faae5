"""The operation's span, when tracing is on (``coregraph.telemetry``; imported only then).

strawberry's ``OpenTelemetryExtension`` with three changes:
- the operation span is the *current* span while the operation runs, so the database spans of
  its resolvers and the ``traceparent`` its unit of work stores with each event
  (``coregraph.services.uow``) are its children, not the HTTP span's;
- no span per resolver: an extension with a ``resolve`` hook installs resolver middleware, which
  turns off the executor's shortcuts (``coregraph.schema.execution``) and makes every field of
  a large answer several times slower, traced or not;
- no parsing and validation spans: both are cached (``schema.document_cache``), so
  they were two of a small query's six spans for microseconds of work;
- the document is not recorded: literals in it (a password, a token) would reach the trace
  backend. The span carries the operation's name and type instead.
"""

from __future__ import annotations

from collections.abc import Generator

from opentelemetry import context, trace
from opentelemetry.trace import StatusCode
from strawberry.extensions import LifecycleStep, SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension


class OperationTracing(OpenTelemetryExtension):
    resolve = SchemaExtension.resolve  # type: ignore[assignment]
    on_parse = SchemaExtension.on_parse  # type: ignore[assignment]
    on_validate = SchemaExtension.on_validate  # type: ignore[assignment]

    def on_operation(self) -> Generator[None, None, None]:
        span = self._tracer.start_span("GraphQL operation")
        span.set_attribute("component", "graphql")
        self._span_holder[LifecycleStep.OPERATION] = span
        token = context.attach(trace.set_span_in_context(span))
        try:
            yield
        finally:
            context.detach(token)
            self._finish(span)

    def _finish(self, span: trace.Span) -> None:
        execution = self.execution_context
        name = execution.operation_name
        try:
            kind = execution.operation_type.value
        except Exception:  # no document (a parse error): no type to name
            kind = None
        if kind:
            span.set_attribute("graphql.operation.type", kind)
        if name:
            span.set_attribute("graphql.operation.name", name)
        span.update_name(" ".join(part for part in (kind, name) if part) or "GraphQL operation")
        result = execution.result
        errors = getattr(result, "errors", None) if result is not None else None
        if errors:
            span.set_attribute("graphql.errors", len(errors))
            codes = [(error.extensions or {}).get("code") for error in errors]
            if "INTERNAL_SERVER_ERROR" in codes:
                span.set_status(StatusCode.ERROR, "INTERNAL_SERVER_ERROR")
        span.end()
