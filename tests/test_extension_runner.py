"""The cheaper extension runner (coregraph.schema.extension_runner) behaves as strawberry's
exit stack of generator context managers: the same hooks entered and left in the same order,
and the same exception (or none) coming out, whatever each hook does with it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import OperationContextManager

from coregraph.schema.extension_runner import _Phase

BEHAVIOURS = ("pass", "swallow", "replace", "yield_twice", "fail_on_enter")


class Boom(Exception):
    pass


def extension(name: str, behaviour: str, log: list[str], is_async: bool) -> SchemaExtension:
    def body() -> Iterator[None]:
        log.append(f"enter {name}")
        if behaviour == "fail_on_enter":
            raise Boom(f"enter {name}")
        try:
            yield
        except Boom as exc:
            log.append(f"{name} saw {exc}")
            if behaviour == "replace":
                raise Boom(f"from {name}") from None
            if behaviour != "swallow":
                raise
        if behaviour == "yield_twice":
            yield
        log.append(f"exit {name}")

    if is_async:

        async def on_operation(self: Any) -> AsyncIterator[None]:
            for _ in body():
                yield

        cls = type(f"A{name}", (SchemaExtension,), {"on_operation": on_operation})
    else:

        def on_operation_sync(self: Any) -> Iterator[None]:
            yield from body()

        cls = type(f"S{name}", (SchemaExtension,), {"on_operation": on_operation_sync})
    return cls()  # type: ignore[no-any-return]


async def run(manager_for: Any, specs: tuple[tuple[str, bool], ...], raise_inside: bool) -> Any:
    log: list[str] = []
    extensions = [extension(str(i), b, log, a) for i, (b, a) in enumerate(specs)]
    outcome: str
    try:
        async with manager_for(extensions):
            log.append("body")
            if raise_inside:
                raise Boom("body")
        outcome = "no exception"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    return log, outcome


CASES = [
    (specs, raise_inside)
    for size in (1, 2, 3)
    for specs in itertools.product(itertools.product(BEHAVIOURS, (False, True)), repeat=size)
    for raise_inside in (False, True)
    if size < 3 or len({b for b, _ in specs}) == 3
]


@pytest.mark.parametrize(("specs", "raise_inside"), CASES[:: max(1, len(CASES) // 400)])
async def test_the_same_hooks_run_and_the_same_exception_comes_out(
    specs: tuple[tuple[str, bool], ...], raise_inside: bool
) -> None:
    ours = await run(lambda e: _Phase(e, "on_operation"), specs, raise_inside)
    strawberrys = await run(OperationContextManager, specs, raise_inside)
    assert ours == strawberrys
