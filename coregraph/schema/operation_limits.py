"""Abuse limits on an operation's shape: its depth, its aliases and its fields, counted after
fragments are expanded (a spread counts its fragment's fields again each time it is spread).

One validation rule instead of strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter``:
those walk a fragment again at every spread, so a document of 200 tokens whose fragments each
spread the next one ten times costs them ten to the power of its levels, and one request pins
a core. Here each fragment is measured once and its measure reused at every spread, so the cost
is linear in the document, whatever number of fields it expands to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from graphql.language import SKIP, VisitorAction

# Counts saturate here: a document may describe more fields than are worth computing exactly.
_SATURATED = 1 << 62


@dataclass(frozen=True, slots=True)
class Shape:
    """What a selection set expands to. ``depth``: nested fields with selections (introspection
    fields do not count, as in strawberry's limiter); ``aliases`` and ``fields``: how many."""

    depth: int = 0
    aliases: int = 0
    fields: int = 0


_EMPTY = Shape()


class _Measure:
    """Measures selection sets of one document; each fragment once."""

    def __init__(self, fragments: dict[str, FragmentDefinitionNode]) -> None:
        self.fragments = fragments
        self.measured: dict[str, Shape] = {}
        self.on_path: set[str] = set()

    def selection_set(self, node: SelectionSetNode) -> Shape:
        depth = aliases = fields = 0
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                inner = _EMPTY
                if selection.selection_set is not None:
                    inner = self.selection_set(selection.selection_set)
                    if not selection.name.value.startswith("__"):
                        depth = max(depth, 1 + inner.depth)
                aliases += inner.aliases + (selection.alias is not None)
                fields += inner.fields + 1
            else:
                if isinstance(selection, InlineFragmentNode):
                    inner = self.selection_set(selection.selection_set)
                else:
                    assert isinstance(selection, FragmentSpreadNode)
                    inner = self.fragment(selection.name.value)
                depth = max(depth, inner.depth)
                aliases += inner.aliases
                fields += inner.fields
        return Shape(depth, min(aliases, _SATURATED), min(fields, _SATURATED))

    def fragment(self, name: str) -> Shape:
        shape = self.measured.get(name)
        if shape is not None:
            return shape
        definition = self.fragments.get(name)
        # An unknown fragment or a cycle: other rules report those; they add nothing here.
        if definition is None or name in self.on_path:
            return _EMPTY
        self.on_path.add(name)
        try:
            shape = self.selection_set(definition.selection_set)
        finally:
            self.on_path.discard(name)
        self.measured[name] = shape
        return shape


def create_rule(max_depth: int, max_aliases: int, max_fields: int) -> type[ValidationRule]:
    """Build the rule once: the validation cache is keyed by the rule classes."""

    class OperationLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.measure = _Measure(
                {
                    definition.name.value: definition
                    for definition in context.document.definitions
                    if isinstance(definition, FragmentDefinitionNode)
                }
            )

        def enter_operation_definition(
            self, node: OperationDefinitionNode, *_args: Any
        ) -> VisitorAction:
            shape = self.measure.selection_set(node.selection_set)
            name = f"'{node.name.value}'" if node.name else "The operation"
            if shape.depth > max_depth:
                self.report(f"{name} exceeds maximum operation depth of {max_depth}", node)
            if shape.aliases > max_aliases:
                self.report(f"{name} uses {shape.aliases} aliases; at most {max_aliases}", node)
            if shape.fields > max_fields:
                self.report(
                    f"{name} selects {_count(shape.fields)} fields, counting each fragment "
                    f"spread; at most {max_fields}",
                    node,
                )
            return SKIP

        def report(self, message: str, node: OperationDefinitionNode) -> None:
            self.report_error(GraphQLError(message, node))

    return OperationLimits


def _count(fields: int) -> str:
    return f"more than {_SATURATED}" if fields >= _SATURATED else str(fields)


def _root_fields(measure: _Measure, node: SelectionSetNode, seen: frozenset[str]) -> int:
    count = 0
    for selection in node.selections:
        if isinstance(selection, FieldNode):
            count += 1
        elif isinstance(selection, InlineFragmentNode):
            count += _root_fields(measure, selection.selection_set, seen)
        else:
            assert isinstance(selection, FragmentSpreadNode)
            definition = measure.fragments.get(selection.name.value)
            if definition is not None and definition.name.value not in seen:
                count += _root_fields(
                    measure, definition.selection_set, seen | {definition.name.value}
                )
    return count


def measure_operation(document: DocumentNode, operation_name: str | None) -> tuple[int, int]:
    """The operation to run's root fields (each alias, and each root field a fragment spreads,
    counts) and all its fields counted as the limits above count them: what the plans' rate
    limits take per operation (``schema.rate_limiting``). (0, 0) when there is no such
    operation (execution reports that)."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name and o.name.value == operation_name]
    if len(operations) != 1:
        return 0, 0
    operation = operations[0]
    measure = _Measure(
        {
            definition.name.value: definition
            for definition in document.definitions
            if isinstance(definition, FragmentDefinitionNode)
        }
    )
    shape = measure.selection_set(operation.selection_set)
    return _root_fields(measure, operation.selection_set, frozenset()), shape.fields
