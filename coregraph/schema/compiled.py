"""Compiled plans: a query document executed without graphql-core's generic walk.

graphql-core completes every field of every object through the same generic machinery: field
lookup, a resolve-info object and a response path per field, argument coercion, and a
``complete_value`` dispatch on the field's type. For a validated document all of that is the
same at every request; only the objects differ. A **plan** decides it once per document (its
text, the operation, and the values of the variables that ``@skip``/``@include`` read):

- per object type and selection, the fields to produce, in response order, each as a *step*:
  an attribute read with its scalar's coercion (most fields), an attribute read of an object,
  ``__typename``, or a resolver call (fields with arguments or resolvers of their own);
- per field, a *completer* for its type: non-null, list, leaf, object (the type's
  ``IsTypeOf`` first: type declarations are enforced there), abstract (runtime type resolved,
  the concrete type's selection planned the first time it is met);
- the field-level checks that depend on the row (a declared field's rules run per object, as
  the guard would run them).

Each selection's steps are written out as one generated Python function (``_generate``: the
names, keys and coercions are constants of its code; nothing a client sends becomes code), so
executing a plan is a walk over the objects with those decisions taken. It produces the
response only for an execution without errors; anything else — an error raised or returned
anywhere, a denial, a null in a non-null position, an async iterable, a value the plan was not
built for — abandons the attempt (``Fallback``) and the operation runs again on graphql-core's
own executor (``CoregraphExecutor``), which produces the errors, their paths and the null
propagation exactly as it always has. Queries and subscription events only: they have no side
effects, and request-scoped dataloaders answer the second attempt from what the first loaded.
Mutations, ``@defer``/``@stream``, introspection and resolver middleware are never planned.

So the plan never has to reproduce graphql-core's error behaviour, only its successful
results, and a document it cannot plan costs one dictionary lookup per request.
"""

from __future__ import annotations

import asyncio
import copy
import keyword
from collections.abc import Callable
from types import CoroutineType, SimpleNamespace
from typing import TYPE_CHECKING, Any

from graphql import (
    GraphQLID,
    GraphQLInterfaceType,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLString,
    GraphQLUnionType,
    OperationType,
    Undefined,
)
from graphql.execution.values import get_argument_values
from graphql.language import VariableNode
from graphql.pyutils import Path
from strawberry.types.cast import TYPE_CAST_ATTRIBUTE

from coregraph.schema.authorization import request_verdict
from coregraph.schema.prefetch import NOT_LOADED

if TYPE_CHECKING:
    from graphql import GraphQLField, GraphQLOutputType


class Unplannable(Exception):
    """The document uses something plans do not cover: it runs on graphql-core's executor."""


class Fallback(Exception):
    """This execution met what a plan does not produce (an error, a denial, a null where
    the type forbids one...): the operation runs again on graphql-core's executor."""


# What happened to executions that asked for a plan (tests and the bench read these).
STATS = {"planned": 0, "fallback": 0, "stock": 0}

_PLAN_CACHE_SIZE = 1024  # per schema
_skip_variables: dict[tuple[str, str | None], tuple[str, ...]] = {}

Completer = Callable[[Any, Any, "_Run", Any], Any]

_CAST = TYPE_CAST_ATTRIBUTE  # set on an instance by strawberry.cast

# Output coercions that answer a str unchanged, before any other check.
_STR_AS_IS = (GraphQLString.coerce_output_value, GraphQLID.coerce_output_value)

# Step kinds (ints compare fastest in the object loop).
_LEAF, _LEAF_LIST, _TYPENAME, _OBJECT_ATTRIBUTE, _RESOLVER, _PREFETCHED = range(6)


class _Run:
    """What one execution of a plan shares: the executor, the principal, and the info
    handed to ``IsTypeOf`` of objects reached without a resolver call."""

    __slots__ = ("allowed", "completed", "executor", "principal", "type_info")

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        context = executor.context_value
        self.principal: Any = getattr(context, "principal", None)
        self.type_info = SimpleNamespace(context=context, schema=executor.schema)
        # What the rules decided by tenant (``_admit``, ``authorization.request_verdict``)
        self.allowed: dict[Any, bool] = {}
        # Objects handed to many items and completed once (``_completed_once``)
        self.completed: dict[tuple[Any, int], tuple[Any, Any]] = {}


class _Step:
    __slots__ = (
        "attribute",
        "coerce",
        "complete",
        "field",
        "field_nodes",
        "has_args",
        "key",
        "kind",
        "non_null",
        "parent_type",
        "resolve",
        "rules",
        "typename",
    )

    def __init__(self, key: str, kind: int) -> None:
        self.key = key
        self.kind = kind
        self.rules: tuple[Any, ...] = ()
        self.non_null = False
        self.attribute = ""
        self.coerce: Any = None
        self.complete: Any = None
        self.field: Any = None
        self.field_nodes: list[Any] = []
        self.has_args = False
        self.parent_type: Any = None
        self.resolve: Any = None
        self.typename = ""


class _Selection:
    """The steps of one selection set on one object type, and the type's ``IsTypeOf``: a
    type with declarations has it in two halves (``schema.authorization._type_guard``), the
    type check and the rules, and rules that judge a row by its tenant alone are decided
    once per tenant per request."""

    __slots__ = (
        "check",
        "complete",
        "matches",
        "needs_path",
        "origin",
        "rules",
        "steps",
        "type_name",
        "verdict",
    )

    def __init__(self, object_type: GraphQLObjectType, steps: tuple[_Step, ...]) -> None:
        self.type_name = object_type.name
        self.check = object_type.is_type_of
        self.steps = steps
        self.rules: tuple[Any, ...] = getattr(self.check, "rules", ())
        self.matches = getattr(self.check, "matches", None)
        origin = getattr(self.check, "origin", None)
        # Instances of exactly the type's class match without the call (unless cast).
        self.origin = origin if origin is not None and not hasattr(origin, "__slots__") else None
        self.verdict = request_verdict(self.rules) if self.rules else None
        # Whether anything below reads the response path: only a resolver's info does (a
        # plan answers no errors, whose paths graphql-core's walk makes).
        self.needs_path = any(
            step.kind is _RESOLVER
            or step.kind is _PREFETCHED
            or (step.kind is _OBJECT_ATTRIBUTE and _needs_path(step.complete))
            for step in steps
        )
        self.complete = _generate(self)


class Plan:
    __slots__ = ("root",)

    def __init__(self, root: _Selection) -> None:
        self.root = root

    def run(self, executor: Any) -> Any:
        """The data of the operation, or a coroutine resolving to it; raises on anything the
        plan does not produce (the caller falls back, after ``restore_variables``)."""
        run = _Run(executor)
        return self.root.complete(executor.root_value, None, run, run.type_info)


def snapshot_variables(executor: Any) -> dict[str, Any] | None:
    """A copy of the variables that hold lists or objects, taken before a plan runs: a
    resolver may change what it is given (federation's ``_entities`` pops ``__typename``
    off each representation), and the fallback must start from what the client sent."""
    coerced = executor.variable_values.coerced
    for value in coerced.values():
        if isinstance(value, list | dict):
            return copy.deepcopy(coerced)
    return None


def restore_variables(executor: Any, snapshot: dict[str, Any] | None) -> None:
    if snapshot is not None:
        coerced = executor.variable_values.coerced
        coerced.clear()
        coerced.update(snapshot)


def plan_for(executor: Any) -> Plan | None:
    """The plan for this execution's document, operation and ``@skip``/``@include``
    variables, built at the first request that needs it; None when it cannot be planned."""
    operation = executor.operation
    if operation.operation is OperationType.MUTATION or executor.abort_signal is not None:
        return None
    middleware = executor.middleware_manager
    if middleware is not None and middleware.middlewares:
        return None
    location = operation.loc
    if location is None:
        return None
    body = location.source.body
    name = operation.name.value if operation.name else None
    switches = _skip_variables.get((body, name))
    if switches is None:
        switches = _skip_include_variables((body, name), executor)
    coerced = executor.variable_values.coerced
    key = (body, name, tuple(coerced.get(v) for v in switches))
    plans = plans_of(executor.schema)
    try:
        return plans[key]
    except KeyError:
        pass
    plan: Plan | None
    try:
        plan = _Planner(executor).plan()
    except Unplannable:
        plan = None
    if len(plans) >= _PLAN_CACHE_SIZE:
        del plans[next(iter(plans))]
    plans[key] = plan
    return plan


def plans_of(schema: Any) -> dict[tuple[Any, ...], Plan | None]:
    """The plans made for ``schema`` (a GraphQLSchema), kept on it: they hold its types and
    resolvers, and end with it (a cache keyed by ``id(schema)`` could hand a later schema,
    given the same id, plans of one that is gone)."""
    plans = schema.__dict__.get("_coregraph_plans")
    if plans is None:
        plans = schema.__dict__["_coregraph_plans"] = {}
    return plans  # type: ignore[no-any-return]


def _skip_include_variables(document: tuple[str, str | None], executor: Any) -> tuple[str, ...]:
    """The variables an ``@skip``/``@include`` of the document reads: the selection, hence
    the plan, depends on their values."""
    from graphql.language import DirectiveNode, Visitor, visit

    names: list[str] = []

    class _Collect(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
            if node.name.value in ("skip", "include"):
                for argument in node.arguments or ():
                    if isinstance(argument.value, VariableNode):
                        names.append(argument.value.name.value)

    for definition in executor.fragment_definitions.values():
        visit(definition, _Collect())
    visit(executor.operation, _Collect())
    found = tuple(sorted(set(names)))
    if len(_skip_variables) >= _PLAN_CACHE_SIZE:
        del _skip_variables[next(iter(_skip_variables))]
    _skip_variables[document] = found
    return found


class _Planner:
    """Builds a plan with the executor of its first request (for collecting fields)."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.schema = executor.schema

    def plan(self) -> Plan:
        executor = self.executor
        operation = executor.operation
        root_type = self.schema.get_root_type(operation.operation)
        if root_type is None:
            raise Unplannable("no root type")
        from graphql.execution.collect_fields import collect_fields

        collected = collect_fields(
            self.schema,
            executor.fragments,
            executor.variable_values,
            root_type,
            operation,
            executor.hide_suggestions,
        )
        root = self._selection(root_type, collected)
        return Plan(root)

    def selection(self, object_type: GraphQLObjectType, field_details: Any) -> _Selection:
        collected = self.executor.collect_subfields(object_type, field_details)
        return self._selection(object_type, collected)

    def _selection(self, object_type: GraphQLObjectType, collected: Any) -> _Selection:
        grouped, new_defer_usages, forbidden = collected
        if new_defer_usages or forbidden:
            raise Unplannable("@defer, @stream or a forbidden directive")
        steps = tuple(self._step(object_type, key, details) for key, details in grouped.items())
        return _Selection(object_type, steps)

    def _step(self, parent: GraphQLObjectType, key: str, details: Any) -> _Step:
        for detail in details:
            if detail.fragment_variable_values is not None or detail.defer_usage is not None:
                raise Unplannable("fragment variables or @defer")
        node = details[0].node
        name = node.name.value
        if name == "__typename":
            typename = _Step(key, _TYPENAME)
            typename.typename = parent.name
            return typename
        if name.startswith("__"):
            raise Unplannable("introspection")
        field = self.schema.get_field(parent, name)
        if field is None:
            raise Unplannable(f"unknown field {parent.name}.{name}")
        resolve = field.resolve or self.executor.field_resolver
        if not field.args and not node.arguments:
            read = self._attribute_step(parent, key, details, field, resolve)
            if read is not None:
                return read
        step = _Step(key, _RESOLVER)
        step.field = field
        step.field_nodes = [detail.node for detail in details]
        step.has_args = bool(field.args or node.arguments)
        step.parent_type = parent
        step.resolve = resolve
        step.complete = self.completer(field.type, details)
        rules = getattr(resolve, "rules", ())
        plain = getattr(resolve, "__wrapped__", None) if rules else resolve
        attribute = getattr(plain, "prefetched", None)
        if attribute is not None and not step.has_args:
            # Read off the object when a list handed it over (``execution.prefetched``);
            # the resolver runs only for an object whose value was not.
            step.kind = _PREFETCHED
            step.attribute = attribute
            step.rules = rules
            selection = getattr(step.complete, "selection", None)
            if selection is not None and all(s.kind in _READS_ONLY for s in selection.steps):
                step.complete = _completed_once(step.complete)
        return step

    def _attribute_step(
        self, parent: GraphQLObjectType, key: str, details: Any, field: Any, resolve: Any
    ) -> _Step | None:
        """A field whose resolver reads an attribute (``attribute_resolver``), or a declared
        field's guard around one: read without a resolver call or a resolve info. Leaves,
        lists of non-null leaves and object types; anything else takes a resolver step."""
        rules = getattr(resolve, "rules", ())
        plain = getattr(resolve, "__wrapped__", None) if rules else resolve
        attribute = getattr(plain, "attribute", None)
        if attribute is None:
            return None
        type_: Any = field.type
        non_null = isinstance(type_, GraphQLNonNull)
        named = type_.of_type if non_null else type_
        if isinstance(named, GraphQLLeafType):
            step = _Step(key, _LEAF)
            step.coerce = named.coerce_output_value
        elif (
            isinstance(named, GraphQLList)
            and isinstance(named.of_type, GraphQLNonNull)
            and isinstance(named.of_type.of_type, GraphQLLeafType)
        ):
            step = _Step(key, _LEAF_LIST)
            step.coerce = named.of_type.of_type.coerce_output_value
        elif isinstance(named, GraphQLObjectType):
            step = _Step(key, _OBJECT_ATTRIBUTE)
            step.complete = self.completer(type_, details)
            step.parent_type = parent
        else:
            return None
        step.attribute = attribute
        step.rules = rules
        step.non_null = non_null
        return step

    def completer(self, type_: GraphQLOutputType, details: Any) -> Completer:
        """How a value of ``type_`` is completed (a value of the field that ``details``
        selects): the same decisions as graphql-core's ``complete_value``, taken once."""
        if isinstance(type_, GraphQLNonNull):
            inner = self.completer(type_.of_type, details)

            def complete_non_null(value: Any, path: Any, run: _Run, info: Any) -> Any:
                if value is None or value is Undefined:
                    raise Fallback
                return inner(value, path, run, info)

            complete_non_null.needs_path = _needs_path(inner)  # type: ignore[attr-defined]
            return complete_non_null
        if isinstance(type_, GraphQLList):
            return self._list_completer(self.completer(type_.of_type, details), type_.of_type)
        if isinstance(type_, GraphQLLeafType):
            coerce = type_.coerce_output_value

            def complete_leaf(value: Any, path: Any, run: _Run, info: Any) -> Any:
                if value is None or value is Undefined:
                    return None
                if isinstance(value, Exception):
                    raise Fallback
                completed = coerce(value)
                if completed is None or completed is Undefined:
                    raise Fallback
                return completed

            complete_leaf.needs_path = False  # type: ignore[attr-defined]
            return complete_leaf
        if isinstance(type_, GraphQLObjectType):
            selection = self.selection(type_, details)

            def complete_object(value: Any, path: Any, run: _Run, info: Any) -> Any:
                if value is None or value is Undefined:
                    return None
                if isinstance(value, Exception):
                    raise Fallback
                return selection.complete(value, path, run, info)

            complete_object.needs_path = selection.needs_path  # type: ignore[attr-defined]
            complete_object.selection = selection  # type: ignore[attr-defined]
            return complete_object
        if isinstance(type_, GraphQLInterfaceType | GraphQLUnionType):
            return self._abstract_completer(type_, details)
        raise Unplannable(f"cannot complete {type_}")

    def _list_completer(self, complete_item: Completer, item_type: Any) -> Completer:
        item_needs_path = _needs_path(complete_item)
        item_is_leaf = isinstance(
            item_type.of_type if isinstance(item_type, GraphQLNonNull) else item_type,
            GraphQLLeafType,
        )

        def complete_list(value: Any, path: Any, run: _Run, info: Any) -> Any:
            if value is None or value is Undefined:
                return None
            if value.__class__ is not list and not isinstance(value, list | tuple):
                raise Fallback  # other iterables, async iterables, errors: graphql-core's path
            if item_is_leaf:
                return [complete_item(item, None, run, info) for item in value]
            if not item_needs_path:
                return _complete_items(complete_item, value, run, info)
            completed: list[Any] = []
            is_awaitable = run.executor.is_awaitable
            try:
                for index, item in enumerate(value):
                    item_path = Path(path, index, None)
                    if is_awaitable(item):  # federation's _entities returns such items
                        completed.append(
                            _await_and_complete(complete_item, item, item_path, run, info)
                        )
                    else:
                        completed.append(complete_item(item, item_path, run, info))
            except BaseException:
                _close(completed)
                _close(value)
                raise
            pending = [index for index, item in enumerate(completed) if type(item) is CoroutineType]
            if pending:
                return _gather_list(completed, pending)
            return completed

        complete_list.needs_path = item_needs_path  # type: ignore[attr-defined]
        return complete_list

    def _abstract_completer(self, abstract: Any, details: Any) -> Completer:
        schema = self.schema
        executor = self.executor
        selections: dict[str, _Selection] = {}

        def complete_abstract(value: Any, path: Any, run: _Run, info: Any) -> Any:
            if value is None or value is Undefined:
                return None
            if isinstance(value, Exception):
                raise Fallback
            resolve_type = abstract.resolve_type or run.executor.type_resolver
            name = resolve_type(value, info, abstract)
            if not isinstance(name, str):
                raise Fallback  # an awaitable or an invalid answer: graphql-core's path
            selection = selections.get(name)
            if selection is None:
                runtime = schema.get_type(name)
                if not isinstance(runtime, GraphQLObjectType) or not schema.is_sub_type(
                    abstract, runtime
                ):
                    raise Fallback
                # Planned with the first executor's collection (the document and the
                # skip/include variables are those of the plan).
                selection = _Planner(executor).selection(runtime, details)
                selections[name] = selection
            return selection.complete(value, path, run, info)

        # Its types' selections are planned when met: they may need the path.
        complete_abstract.needs_path = True  # type: ignore[attr-defined]
        return complete_abstract


_READS_ONLY = frozenset({_LEAF, _LEAF_LIST, _TYPENAME})


def _completed_once(complete: Completer) -> Completer:
    """``complete`` for a prefetched object whose selection reads only its leaves, done once
    per object and request: a list hands many items the same object (a page of members shares
    a few roles, ``Tenant.members``), and the same object, checked by the same rules and read
    by the same steps, completes to the same value. The object is kept with its value, so a
    freed object's reused ``id`` cannot match."""

    def complete_shared(value: Any, path: Any, run: _Run, info: Any) -> Any:
        key = (complete_shared, id(value))
        known = run.completed.get(key)
        if known is not None and known[0] is value:
            return known[1]
        completed = complete(value, path, run, info)
        run.completed[key] = (value, completed)
        return completed

    complete_shared.needs_path = False  # type: ignore[attr-defined]
    return complete_shared


def _needs_path(complete: Completer) -> bool:
    return getattr(complete, "needs_path", True)


def _complete_items(complete_item: Completer, value: Any, run: _Run, info: Any) -> Any:
    """A list's items when none of them reads its path: no ``Path`` per item."""
    completed: list[Any] = []
    is_awaitable = run.executor.is_awaitable
    pending = None
    try:
        for item in value:
            if is_awaitable(item):
                item = _await_and_complete(complete_item, item, None, run, info)
            else:
                item = complete_item(item, None, run, info)
            if type(item) is CoroutineType:
                pending = [len(completed)] if pending is None else [*pending, len(completed)]
            completed.append(item)
    except BaseException:
        _close(completed)
        _close(value)
        raise
    if pending is not None:
        return _gather_list(completed, pending)
    return completed


def _admit(selection: _Selection, source: Any, run: _Run, info: Any) -> None:
    """The type's ``IsTypeOf`` for ``source``: raises ``Fallback`` where graphql-core's would
    refuse the object (not of the type, or denied to the principal)."""
    rules = selection.rules
    if rules:
        if (
            source.__class__ is not selection.origin or _CAST in source.__dict__
        ) and not selection.matches(source, info):  # type: ignore[misc]
            raise Fallback
        if not selection.verdict(run.principal, source, run.allowed):  # type: ignore[misc]
            raise Fallback
    elif selection.check is not None and not selection.check(source, info):
        raise Fallback


def _generate(selection: _Selection) -> Callable[[Any, Any, _Run, Any], Any]:
    """The selection's steps as one Python function, written once per plan: each field's
    attribute name, response key, coercion and nullability are constants of its code (no
    dispatch on the step's kind, no lookups on step objects per object). What it does per
    step is what graphql-core's walk does for a field that succeeds; anything else raises
    ``Fallback``."""
    names: dict[str, Any] = {
        "Undefined": Undefined,
        "Fallback": Fallback,
        "CoroutineType": CoroutineType,
        "Path": Path,
        "_resolve": _resolve,
        "_gather_fields": _gather_fields,
        "_close": _close,
        "_admit": _admit,
        "NOT_LOADED": NOT_LOADED,
        "SELECTION": selection,
        "TYPE_NAME": selection.type_name,
    }
    lines = ["def complete(source, path, run, info):"]
    if selection.rules or selection.check is not None:
        lines.append("    _admit(SELECTION, source, run, info)")
    lines += ["    principal = run.principal", "    result = {}", "    pending = None", "    try:"]
    body: list[str] = []
    for index, step in enumerate(selection.steps):
        key = f"KEY{index}"
        names[key] = step.key
        names[f"STEP{index}"] = step
        if step.kind is _TYPENAME:
            body.append(f"result[{key}] = TYPE_NAME")
            continue
        if step.kind is _RESOLVER:
            body += [
                f"value = _resolve(STEP{index}, source, Path(path, {key}, TYPE_NAME), run)",
                f"result[{key}] = value",
                "if value.__class__ is CoroutineType:",
                f"    pending = [{key}] if pending is None else pending + [{key}]",
            ]
            continue
        if step.kind is _PREFETCHED:
            names[f"COMPLETE{index}"] = step.complete
            names[f"ATTRIBUTE{index}"] = step.attribute
            if step.rules:
                names[f"VERDICT{index}"] = request_verdict(step.rules)
                body += [
                    f"if not VERDICT{index}(principal, source, run.allowed):",
                    "    raise Fallback",
                ]
            child_path = f"Path(path, {key}, TYPE_NAME)" if _needs_path(step.complete) else "None"
            body += [
                f"value = getattr(source, ATTRIBUTE{index}, NOT_LOADED)",
                "if value is NOT_LOADED:",
                f"    value = _resolve(STEP{index}, source, Path(path, {key}, TYPE_NAME), run)",
                "else:",
                f"    value = COMPLETE{index}(value, {child_path}, run, run.type_info)",
                f"result[{key}] = value",
                "if value.__class__ is CoroutineType:",
                f"    pending = [{key}] if pending is None else pending + [{key}]",
            ]
            continue
        if step.rules:
            names[f"VERDICT{index}"] = request_verdict(step.rules)
            body += [
                f"if not VERDICT{index}(principal, source, run.allowed):",
                "    raise Fallback",
            ]
        attribute = step.attribute
        if attribute.isidentifier() and not keyword.iskeyword(attribute):
            body.append(f"value = source.{attribute}")
        else:
            names[f"ATTRIBUTE{index}"] = attribute
            body.append(f"value = getattr(source, ATTRIBUTE{index})")
        # String and ID answer a str as it is (their coercion's first case): no call.
        as_is = step.coerce in _STR_AS_IS
        if as_is and step.kind is _LEAF:
            body += [
                "if value.__class__ is str:",
                f"    result[{key}] = value",
                "elif value is None or value is Undefined:",
            ]
        else:
            body.append("if value is None or value is Undefined:")
        body += [
            "    raise Fallback" if step.non_null else f"    result[{key}] = None",
            "else:",
        ]
        names[f"COERCE{index}"] = step.coerce
        names[f"COMPLETE{index}"] = step.complete
        if step.kind is _LEAF:
            body += [
                "    if isinstance(value, Exception):",
                "        raise Fallback",
                f"    value = COERCE{index}(value)",
                "    if value is None or value is Undefined:",
                "        raise Fallback",
                f"    result[{key}] = value",
            ]
        elif step.kind is _LEAF_LIST:
            body += [
                "    if value.__class__ is not list and not isinstance(value, (list, tuple)):",
                "        raise Fallback",
                (
                    f"    value = [item if item.__class__ is str else COERCE{index}(item) "
                    "for item in value]"
                    if as_is
                    else f"    value = [COERCE{index}(item) for item in value]"
                ),
                "    for item in value:",
                "        if item is None or item is Undefined:",
                "            raise Fallback",
                f"    result[{key}] = value",
            ]
        else:  # an object read off the attribute
            child_path = f"Path(path, {key}, TYPE_NAME)" if _needs_path(step.complete) else "None"
            body += [
                f"    value = COMPLETE{index}(value, {child_path}, run, run.type_info)",
                f"    result[{key}] = value",
                "    if value.__class__ is CoroutineType:",
                f"        pending = [{key}] if pending is None else pending + [{key}]",
            ]
    lines += ["        " + line for line in body]
    lines += [
        "        if pending is not None:",
        "            return _gather_fields(result, pending)",
        "        return result",
        "    except BaseException:",
        "        _close(result.values())",
        "        raise",
    ]
    code = compile("\n".join(lines), f"<plan of {selection.type_name}>", "exec")
    # Nothing a client sends is part of the code: keys, names and functions are constants.
    exec(code, names)
    return names["complete"]  # type: ignore[no-any-return]


def _resolve(step: _Step, source: Any, path: Path, run: _Run) -> Any:
    """A field with a resolver of its own: graphql-core's ``execute_field`` for the
    successful case."""
    executor = run.executor
    field: GraphQLField = step.field
    # Coerced at each call, as graphql-core does: a resolver may change what it is given
    # (federation's ``_entities`` pops ``__typename`` off each representation).
    args = (
        get_argument_values(
            field, step.field_nodes[0], executor.variable_values, None, executor.hide_suggestions
        )
        if step.has_args
        else {}
    )
    info = _LazyInfo(executor, step, path)
    result = step.resolve(source, info, **args)
    if executor.is_awaitable(result):
        return _await_and_complete(step.complete, result, path, run, info)
    return step.complete(result, path, run, info)


class _LazyInfo:
    """The resolve info of a resolver step, built when a resolver reads more of it than its
    ``context`` (most read only that: loaders, the principal). Reads the same attributes as
    the executor's ``build_resolve_info`` result, which it builds on first need."""

    __slots__ = ("_built", "_executor", "_path", "_step", "context")

    def __init__(self, executor: Any, step: _Step, path: Path) -> None:
        self.context = executor.context_value
        self._executor = executor
        self._step = step
        self._path = path
        self._built: Any = None

    def __getattr__(self, name: str) -> Any:
        built = self._built
        if built is None:
            step = self._step
            built = self._built = self._executor.build_resolve_info(
                step.field, step.field_nodes, step.parent_type, self._path
            )
        return getattr(built, name)


def _close(values: Any) -> None:
    """Close the coroutines of an abandoned attempt: never started, so nothing to undo, but
    each may hold others among its arguments (a resolver's, the fields or items it was to
    gather) that would be reported as never awaited."""
    for value in values:
        if type(value) is CoroutineType:
            frame = value.cr_frame
            if frame is not None and value.cr_await is None:
                # An unstarted coroutine's locals are its arguments.
                for held in frame.f_locals.values():
                    if type(held) is CoroutineType:
                        _close((held,))
                    elif isinstance(held, dict):
                        _close(held.values())
                    elif isinstance(held, list):
                        _close(held)
            value.close()


async def _await_and_complete(
    complete: Completer, awaitable: Any, path: Path | None, run: _Run, info: Any
) -> Any:
    completed = complete(await awaitable, path, run, info)
    if type(completed) is CoroutineType:
        return await completed
    return completed


async def _settle(awaitables: list[Any]) -> list[Any]:
    """Every awaitable to its end (a failure of one does not cancel the others: they may be
    waiting on a dataloader's shared future, which the fallback run reuses), then the first
    failure is raised."""
    if len(awaitables) == 1:
        return [await awaitables[0]]
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def _gather_fields(result: dict[str, Any], pending: list[str]) -> dict[str, Any]:
    values = await _settle([result[key] for key in pending])
    for key, value in zip(pending, values, strict=True):
        result[key] = value
    return result


async def _gather_list(completed: list[Any], pending: list[int]) -> list[Any]:
    values = await _settle([completed[index] for index in pending])
    for index, value in zip(pending, values, strict=True):
        completed[index] = value
    return completed
