"""A READ support session changes nothing: every mutation is refused before it runs.

Platform staff in a READ session hold only read scopes, so most mutations are refused by their
declarations already; this check also covers the ones declared ``@authenticated`` alone
(``logout``, ``createTenant``, ...), by the operation's type, once per operation. The unit of
work refuses to open under such a principal too (``coregraph.services.uow``): the second wall,
for the REST routes and any path that writes without a mutation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from coregraph.errors import Forbidden


def refuse_in_read_session(principal: Any, operation_type: OperationType) -> None:
    """Raises ``Forbidden`` for a mutation under a READ support session."""
    if principal is not None and principal.read_only and operation_type is OperationType.MUTATION:
        raise Forbidden("this support session is read-only: no mutation runs under it")


class ReadOnlySupportExtension(SchemaExtension):
    def on_execute(self) -> Iterator[None]:
        execution = self.execution_context
        refuse_in_read_session(
            getattr(execution.context, "principal", None), execution.operation_type
        )
        yield
