"""strawberry's schema-extension hooks, entered without rebuilding them for every operation.

strawberry's runner makes, for every operation and each of its four phases (operation,
parsing, validation, execution), a context manager per extension: ``inspect`` checks of the
hook, a ``contextlib.contextmanager`` around a bound method (``functools.update_wrapper``
each time) and an ``ExitStack``. For ``{ __typename }`` that was most of strawberry's own cost
(``bench/RESULTS.md``). Here the kind of each hook is found once per extension class, and a
phase drives the hooks' generators itself with the semantics of ``contextlib``'s generator
context managers inside an exit stack: entered in order, exited in reverse, an exception thrown
into each hook in turn (a hook may replace it, or swallow it by returning), ``RuntimeError``
when a hook yields twice. As strawberry's does, a phase whose hook fails on entry leaves the
hooks already entered unexited. Hooks that are plain functions (no generator) and phases
strawberry adds later fall back to strawberry's own context managers.
"""

from __future__ import annotations

import inspect
from types import TracebackType
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import (
    ExecutingContextManager,
    OperationContextManager,
    ParsingContextManager,
    ValidationContextManager,
)
from strawberry.extensions.runner import SchemaExtensionsRunner

_NONE, _SYNC, _ASYNC, _OTHER = range(4)
_KINDS: dict[tuple[type, str], int] = {}


def _kind(cls: type, name: str) -> int:
    key = (cls, name)
    kind = _KINDS.get(key)
    if kind is None:
        hook = getattr(cls, name)
        if hook is getattr(SchemaExtension, name):
            kind = _NONE
        elif inspect.isgeneratorfunction(hook):
            kind = _SYNC
        elif inspect.isasyncgenfunction(hook):
            kind = _ASYNC
        else:
            kind = _OTHER
        _KINDS[key] = kind
    return kind


class _Phase:
    """One phase's hooks as one (async) context manager."""

    __slots__ = ("entered", "extensions", "name")

    def __init__(self, extensions: list[SchemaExtension], name: str) -> None:
        self.extensions = extensions
        self.name = name
        self.entered: list[tuple[Any, bool]] = []

    async def __aenter__(self) -> None:
        name = self.name
        for extension in self.extensions:
            kind = _kind(type(extension), name)
            if kind == _SYNC:
                self._enter_sync(extension)
            elif kind == _ASYNC:
                generator = getattr(extension, name)()
                await generator.__anext__()
                self.entered.append((generator, True))

    def __enter__(self) -> None:
        name = self.name
        for extension in self.extensions:
            kind = _kind(type(extension), name)
            if kind == _ASYNC:
                raise RuntimeError(
                    f"SchemaExtension hook {extension}.{name} failed to complete synchronously."
                )
            if kind == _SYNC:
                self._enter_sync(extension)

    def _enter_sync(self, extension: SchemaExtension) -> None:
        generator = getattr(extension, self.name)()
        next(generator)
        self.entered.append((generator, False))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        pending = exc
        for generator, _ in reversed(self.entered):
            try:
                self._resume(pending, generator.send, generator.throw)
                pending = None
            except BaseException as raised:
                pending = self._replace(pending, raised)
        return self._outcome(exc, pending)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        pending = exc
        for generator, is_async in reversed(self.entered):
            try:
                if not is_async:
                    self._resume(pending, generator.send, generator.throw)
                    pending = None
                    continue
                try:
                    if pending is None:
                        await generator.asend(None)
                    else:
                        await generator.athrow(pending)
                except StopAsyncIteration:
                    pending = None  # done; or, thrown into, the hook returned: swallowed
                    continue
                # contextlib's messages, word for word.
                raise RuntimeError(
                    "generator didn't stop"
                    if pending is None
                    else "generator didn't stop after athrow()"
                )
            except BaseException as raised:
                pending = self._replace(pending, raised)
        return self._outcome(exc, pending)

    def _resume(self, pending: BaseException | None, send: Any, throw: Any) -> None:
        """A sync hook's exit: returns when it ended (or swallowed ``pending``); raises what
        it raised (``pending`` itself when it let it through)."""
        try:
            if pending is None:
                send(None)
            else:
                throw(pending)
        except StopIteration as stopped:
            if stopped is pending:
                raise
            return
        raise RuntimeError(
            "generator didn't stop" if pending is None else "generator didn't stop after throw()"
        )

    @staticmethod
    def _replace(pending: BaseException | None, raised: BaseException) -> BaseException:
        if raised is not pending and raised.__context__ is None:
            raised.__context__ = pending
        return raised

    @staticmethod
    def _outcome(exc: BaseException | None, pending: BaseException | None) -> bool:
        if pending is None:
            return exc is not None  # swallowed by a hook
        if pending is exc:
            return False
        raise pending


class CachedHooksRunner(SchemaExtensionsRunner):
    def _phase(self, name: str, fallback: Any) -> Any:
        extensions = self.extensions
        if any(_kind(type(extension), name) == _OTHER for extension in extensions):
            return fallback(extensions)
        return _Phase(extensions, name)

    def operation(self) -> OperationContextManager:
        return self._phase("on_operation", OperationContextManager)  # type: ignore[no-any-return]

    def parsing(self) -> ParsingContextManager:
        return self._phase("on_parse", ParsingContextManager)  # type: ignore[no-any-return]

    def validation(self) -> ValidationContextManager:
        return self._phase("on_validate", ValidationContextManager)  # type: ignore[no-any-return]

    def executing(self) -> ExecutingContextManager:
        return self._phase("on_execute", ExecutingContextManager)  # type: ignore[no-any-return]
