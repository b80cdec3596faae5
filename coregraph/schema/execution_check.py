"""A test aid: every query (and subscription event) also runs on stock graphql-core, and the
two answers must be the same.

With ``COREGRAPH_EXECUTION_CHECK`` on (the test suite turns it on; off by default, and it
doubles every query's execution), ``build_schema`` wraps whatever executor class the schema
uses in ``checked``. Its ``execute_operation`` runs the operation as usual; for a query or a
subscription event it then runs the same operation once more on strawberry's plain
``StrawberryGraphQLCoreExecutionContext`` — the same ``GraphQLSchema``, context, root value and
coerced variables — and compares the two results (``difference``). A mismatch is reported to
``listeners`` (the test suite fails the test that issued the query) and logged; the client
always receives the first result, unchanged. Mutations are never run twice: they write.

What the second run shares with the first is what the request shares: the context, so the
dataloaders answer from their cache (the same rows), and nothing else that runs once per
operation (rate limits, the ``api.requests`` meter, error presentation) is inside
``execute_operation``. Reads that bypass the loaders can see a row change between the two runs
(a webhook delivery finishing, a clock's second turning in a signed URL's expiry): a mismatch
is therefore confirmed by a second pair of runs before it is reported, and a real divergence of
the executor, which is deterministic, shows in both pairs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from graphql import ExecutionResult, GraphQLError, OperationType, print_ast
from graphql.execution.values import VariableValues
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

log = logging.getLogger("coregraph.execution_check")

STOCK_EXECUTOR: type[Any] = StrawberryGraphQLCoreExecutionContext


@dataclass(frozen=True)
class Mismatch:
    """One operation whose answer differed from stock graphql-core's."""

    executor: str
    headline: str
    operation: str
    variables: dict[str, Any]
    diff: str

    def __str__(self) -> str:
        return (
            f"{self.executor} {self.headline}\n"
            f"operation: {self.operation}\nvariables: {self.variables!r}\n{self.diff}"
        )


ANSWERED_DIFFERENTLY = "answered differently from stock graphql-core"
CHANGED_VARIABLES = (
    "ran an operation that changed its own variables (a resolver changing its arguments in "
    "place): a second field or a second run reading them gets other input"
)


# Called with each confirmed mismatch, in the thread that executed the operation.
listeners: list[Callable[[Mismatch], None]] = []


def comparable_error(error: GraphQLError) -> dict[str, Any]:
    """What of an execution error reaches a client, or decides what does: its message, path,
    locations and extensions, and the kind of exception behind it (errors are presented from
    that, ``schema.errors.classify``: an unexpected one is masked)."""
    original = error.original_error
    return {
        "message": error.message,
        "path": error.path,
        "locations": [[loc.line, loc.column] for loc in error.locations or ()],
        "extensions": error.extensions or None,
        "original": None if original is None else type(original).__name__,
    }


def comparable(result: ExecutionResult) -> tuple[Any, list[dict[str, Any]]]:
    """Data with its key order (the response's order is part of the answer), and the errors
    sorted by path and message: the specification orders neither, and an executor that
    resolves siblings concurrently may report them in another order."""
    errors = [comparable_error(error) for error in result.errors or ()]
    errors.sort(key=lambda e: (json.dumps(e["path"], default=str), e["message"]))
    return _ordered(result.data), errors


def _ordered(value: Any) -> Any:
    if isinstance(value, dict):
        return [("{}", key, _ordered(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_ordered(item) for item in value]
    return value


def difference(expected: ExecutionResult, actual: ExecutionResult) -> str | None:
    """None when both results say the same, else a readable account of the first differences:
    ``expected`` is stock graphql-core's answer."""
    expected_data, expected_errors = comparable(expected)
    actual_data, actual_errors = comparable(actual)
    lines: list[str] = []
    if expected_data != actual_data:
        lines.append("data differs:")
        lines.extend(_data_differences(expected.data, actual.data, []))
    if expected_errors != actual_errors:
        lines.append("errors differ:")
        lines.extend(f"  only stock: {e}" for e in expected_errors if e not in actual_errors)
        lines.extend(
            f"  only this executor: {e}" for e in actual_errors if e not in expected_errors
        )
        if all(e in actual_errors for e in expected_errors) and len(expected_errors) == len(
            actual_errors
        ):
            lines.append("  (the same errors, a different number of times)")
    return "\n".join(lines) if lines else None


def _data_differences(
    expected: Any, actual: Any, path: list[Any], names: tuple[str, str] = ("stock", "this")
) -> list[str]:
    """Up to ten lines, each a path where the two trees part."""
    limit = 10
    where = ".".join(str(part) for part in path) or "data"
    if isinstance(expected, dict) and isinstance(actual, dict):
        if list(expected) != list(actual):
            return [f"  {where}: keys {list(expected)} ({names[0]}) != {list(actual)} ({names[1]})"]
        found: list[str] = []
        for key in expected:
            found += _data_differences(expected[key], actual[key], [*path, key], names)
            if len(found) >= limit:
                break
        return found[:limit]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        found = []
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found += _data_differences(left, right, [*path, index], names)
            if len(found) >= limit:
                break
        return found[:limit]
    if expected == actual and type(expected) is type(actual):
        return []
    return [f"  {where}: {_short(expected)} ({names[0]}) != {_short(actual)} ({names[1]})"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 300 else text[:300] + "..."


def stock_executor(executor: Any, variable_values: Any = None) -> Any:
    """A stock executor for the very operation ``executor`` runs: same schema, document, root
    value, context, resolvers and middleware (and coerced variables, unless given); errors and
    caches of its own."""
    return STOCK_EXECUTOR(
        executor.schema,
        executor.fragment_definitions,
        executor.fragments,
        executor.root_value,
        executor.context_value,
        executor.operation,
        executor.variable_values if variable_values is None else variable_values,
        executor.field_resolver,
        executor.type_resolver,
        executor.subscribe_field_resolver,
        executor.enable_early_execution,
        executor.middleware_manager,
        executor.is_awaitable,
        executor.is_async_iterable,
        hide_suggestions=executor.hide_suggestions,
        abort_signal=executor.abort_signal,
        hooks=executor.hooks,
        operation_extensions=getattr(executor, "operation_extensions", None),
    )


class _Check:
    """One operation's check. Each run gets its own copy of the coerced variables, taken
    before the first run: a resolver that changes its arguments in place (as strawberry's
    ``_entities`` did) would otherwise hand the next run other input, and every later run would
    agree with the others. Such a change is reported on its own: an executor that falls back
    to graphql-core's walk after starting, or an alias reading the same variable, meets it."""

    __slots__ = ("executor", "pristine", "serially")

    def __init__(self, executor: Any, serially: bool | None) -> None:
        self.executor = executor
        self.serially = serially
        try:
            self.pristine: dict[str, Any] | None = deepcopy(executor.variable_values.coerced)
        except Exception:  # a value that cannot be copied: the runs share it
            self.pristine = None

    def variables(self) -> Any:
        values = self.executor.variable_values
        if self.pristine is None:
            return values
        return VariableValues(values.sources, deepcopy(self.pristine))

    def changed_variables(self) -> str | None:
        coerced = self.executor.variable_values.coerced
        if self.pristine is None or coerced == self.pristine:
            return None
        return "\n".join(
            _data_differences(self.pristine, coerced, ["variables"], ("before", "after"))
        )

    def stock(self) -> Any:
        executor = stock_executor(self.executor, self.variables())
        return self._second_run(lambda: executor.execute_operation(self.serially))

    def again(self) -> Any:
        """The checked executor's operation once more, on a fresh copy of it (errors and caches
        of its own, as a subscription's per-event executor has), without checking it again."""
        executor = self.executor
        again = executor.build_per_event_executor(executor.root_value)
        again.variable_values = self.variables()
        run = type(executor).checked_executor.execute_operation
        return self._second_run(lambda: run(again, self.serially))

    def _second_run(self, start: Callable[[], Any]) -> Any:
        """``start()`` with ``in_second_run`` true while it runs, awaited or not."""
        token = _SECOND_RUN.set(True)
        try:
            result = start()
        finally:
            _SECOND_RUN.reset(token)
        if self.executor.is_awaitable(result):
            return _awaited_as_second_run(result)
        return result

    def compare(self, result: Any, stock: Any) -> Awaitable[None] | None:
        """Reports what differs; an awaitable when confirming a difference needs awaiting."""
        changed = self.changed_variables()
        if changed is not None:
            report(self.executor, CHANGED_VARIABLES, changed)
        diff = _difference(result, stock)
        if diff is None:
            return None
        stock = self.stock()
        if self.executor.is_awaitable(stock):
            return self._confirm_later(diff, stock)
        repeated = self.again()
        if self.executor.is_awaitable(repeated):
            return self._confirm_later(diff, stock, repeated)
        self._conclude(diff, repeated, stock)
        return None

    async def _confirm_later(self, diff: str, stock: Any, repeated: Any = None) -> None:
        if self.executor.is_awaitable(stock):
            stock = await stock
        if repeated is None:
            repeated = self.again()
        if self.executor.is_awaitable(repeated):
            repeated = await repeated
        self._conclude(diff, repeated, stock)

    def _conclude(self, diff: str, repeated: Any, stock: Any) -> None:
        """A second pair of runs, one after the other: if those two agree, the first pair read
        data that changed in between; if they differ too, the executor diverges."""
        if _difference(repeated, stock) is None:
            log.info("execution check: the data changed between two runs (%s)", diff)
            return
        report(self.executor, ANSWERED_DIFFERENTLY, diff)

    async def later(self, result: Any, stock: Any = None) -> Any:
        """The check of an operation that did not complete synchronously: the first run to its
        end, then the stock run (never both at once: they share the request's connection)."""
        is_awaitable = self.executor.is_awaitable
        if is_awaitable(result):
            result = await result
        if stock is None:
            stock = self.stock()
        if is_awaitable(stock):
            stock = await stock
        confirming = self.compare(result, stock)
        if confirming is not None:
            await confirming
        return result


_SECOND_RUN: ContextVar[bool] = ContextVar("execution_check_second_run", default=False)


def in_second_run() -> bool:
    """Whether the code running now is one of the check's own runs, not the request's: for a
    test that counts what a request costs (its SQL statements, say)."""
    return _SECOND_RUN.get()


async def _awaited_as_second_run(awaitable: Awaitable[Any]) -> Any:
    token = _SECOND_RUN.set(True)
    try:
        return await awaitable
    finally:
        _SECOND_RUN.reset(token)


def checked(executor_class: type[Any]) -> type[Any]:
    """``executor_class`` with every query and subscription event compared against stock
    graphql-core (module docstring). Stays synchronous where the operation is."""
    if getattr(executor_class, "checked_executor", None) is not None:
        return executor_class
    name = executor_class.__name__

    def execute_operation(self: Any, serially: bool | None = None) -> Any:
        if self.operation.operation is OperationType.MUTATION:
            return super(cls, self).execute_operation(serially)
        check = _Check(self, serially)
        result = super(cls, self).execute_operation(serially)
        if self.is_awaitable(result):
            return check.later(result)
        stock = check.stock()
        if self.is_awaitable(stock):
            return check.later(result, stock)
        confirming = check.compare(result, stock)
        if confirming is not None:
            return _after(confirming, result)
        return result

    cls: type[Any] = type(
        f"Checked{name}",
        (executor_class,),
        {
            "execute_operation": execute_operation,
            "checked_executor": executor_class,
            "__doc__": f"{name}, each query compared with stock graphql-core.",
            "__module__": __name__,
        },
    )
    return cls


def _difference(result: Any, stock: Any) -> str | None:
    if not isinstance(result, ExecutionResult) or not isinstance(stock, ExecutionResult):
        # The schema enables no @defer/@stream, so both must be plain results: anything else
        # (an answer serialised ahead, say) is reported rather than let through unchecked.
        return (
            f"cannot compare: this executor returned {type(result).__name__}, "
            f"stock graphql-core {type(stock).__name__}"
        )
    return difference(stock, result)


async def _after(confirming: Awaitable[None], result: Any) -> Any:
    await confirming
    return result


def report(executor: Any, headline: str, diff: str) -> None:
    checked_class = type(executor)
    mismatch = Mismatch(
        executor=getattr(checked_class, "checked_executor", checked_class).__name__,
        headline=headline,
        operation="\n".join(
            print_ast(node)
            for node in (executor.operation, *executor.fragment_definitions.values())
        ),
        variables=dict(executor.variable_values.coerced),
        diff=diff,
    )
    log.error("execution check: %s", mismatch)
    for listener in list(listeners):
        listener(mismatch)
