"""Error masking: every error leaves with a stable ``extensions.code`` and the request id (and
the trace id while tracing).

Known failures (``CoregraphError``) keep their message and code; parse and validation errors get
``GRAPHQL_PARSE_FAILED`` / ``GRAPHQL_VALIDATION_FAILED``; anything else is logged with its stack
and reaches the client only as ``INTERNAL_SERVER_ERROR``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from coregraph import telemetry
from coregraph.errors import CoregraphError

log = logging.getLogger("coregraph.errors")

# graphql-core's ``did_you_mean``: " Did you mean [the enum value ]'a', 'b', or 'c'?", at the
# end of a message or in its middle (an unknown input field: "... Did you mean 'x'? Found: ...").
# Strawberry does not pass graphql-core's ``hide_suggestions`` to validation nor execution.
_SUGGESTION = re.compile(r" Did you mean [^?]*\?")
# What graphql-core quotes of a variable's value when it cannot coerce it: the whole input
# object (", found: {'email': ..., 'password': ...}") or the one scalar ("... non string
# value: 12345678"). Variables carry passwords and tokens; an error must not repeat them to
# logs, proxies or error trackers, and the client already has them.
_QUOTED_VALUE = re.compile(r"(?:,? [Ff]ound: .*|(cannot represent [^:]*value): .*)$", re.DOTALL)


def classify(error: GraphQLError) -> GraphQLError:
    if (error.extensions or {}).get("code"):
        return error  # already classified (e.g. by the extension, then again by the transport)
    original = error.original_error
    if isinstance(original, CoregraphError):
        return GraphQLError(
            original.message,
            nodes=error.nodes,
            source=error.source,
            positions=error.positions,
            path=error.path,
            extensions=original.extensions,
        )
    # Request errors (parse, validation, variable coercion) have no path; graphql-core 3.3 sets
    # ``original_error`` on variable coercion errors, and they are the client's, not ours.
    if original is None or (isinstance(original, GraphQLError) and error.path is None):
        if error.message.startswith("Syntax Error"):
            code = "GRAPHQL_PARSE_FAILED"
        elif error.message.startswith("Variable '$"):
            message = _QUOTED_VALUE.sub(lambda m: m.group(1) or "", error.message.rstrip("."))
            message += "."
            return _copy(
                error,
                message=message,
                extensions={**(error.extensions or {}), "code": "BAD_USER_INPUT"},
            )
        else:
            code = "GRAPHQL_VALIDATION_FAILED"
        return _copy(error, extensions={**(error.extensions or {}), "code": code})
    log.error(
        "unhandled error in resolver",
        exc_info=(type(original), original, original.__traceback__),
        extra={"path": error.path},
    )
    return GraphQLError(
        "Internal server error",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions={"code": "INTERNAL_SERVER_ERROR"},
    )


def _copy(error: GraphQLError, *, message: str | None = None, **changes: Any) -> GraphQLError:
    """A new error: validation errors come from a cache shared by every request, so one
    request's id or wording must never be written into them."""
    return GraphQLError(
        message if message is not None else error.message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=changes.get("extensions", error.extensions),
    )


def with_trace_id(extensions: dict[str, Any]) -> dict[str, Any]:
    """``extensions`` with ``traceId`` beside ``requestId`` while a span records: the trace to
    look up for this error (``coregraph.telemetry``)."""
    trace_id = telemetry.current_trace_id()
    return extensions if trace_id is None else {**extensions, "traceId": trace_id}


def present(
    errors: list[GraphQLError], request_id: str | None, suggestions: bool
) -> list[GraphQLError]:
    """Classify, mask and label errors for a client. Idempotent, and never mutates its input."""
    presented = []
    for error in errors:
        error = classify(error)
        message = error.message
        if not suggestions and (error.original_error is None or error.path is None):
            message = _SUGGESTION.sub("", message)
        extensions = with_trace_id({**(error.extensions or {}), "requestId": request_id})
        presented.append(_copy(error, message=message, extensions=extensions))
    return presented


class CoregraphErrors(SchemaExtension):
    """Applies ``present`` inside the schema, so every transport (HTTP, WebSocket) gets it.

    Strawberry does not resume ``on_operation`` after a parse failure, so the HTTP transport
    calls ``present`` once more on what it sends (a no-op for errors already presented).
    """

    suggestions = True

    def on_validate(self) -> Iterator[None]:
        # Parsed: the operation the document names and its type, for the request log and the
        # metrics (a subscription counts as running from here; one cancelled never returns to
        # on_operation).
        execution_context = self.execution_context
        resolved = getattr(execution_context.context, "operation_resolved", None)
        if resolved is not None:
            try:
                resolved(execution_context.operation_type.value, execution_context.operation_name)
            except RuntimeError:
                pass  # no operation by the name the request gave
        yield

    def on_operation(self) -> Iterator[None]:
        yield
        context = self.execution_context.context
        if context is not None and hasattr(context, "operation_name"):
            # For the request log: the name the document gives, even when the request did not.
            context.operation_name = self.execution_context.operation_name
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        request_id = getattr(context, "request_id", None)
        result.errors = present(result.errors, request_id, self.suggestions)


def error_extension(suggestions: bool) -> type[CoregraphErrors]:
    return type("CoregraphErrorsConfigured", (CoregraphErrors,), {"suggestions": suggestions})
