"""How the schema executes: graphql-core's executor with shortcuts for the common fields.

Most fields of a large answer are scalars read straight off an object (``id``, ``name``,
``createdAt``...). graphql-core spends ~4 µs on each: a resolve-info object, a response path,
argument coercion, the resolver call chain and the value-completion dispatch. For a page of
200 members that is most of the request (``bench/RESULTS.md``).

``CoregraphExecutor.execute_fields`` reads such a field itself: ``getattr`` on the object and the
scalar's own ``coerce_output_value``, exactly what the normal path ends up doing. A field takes
the shortcut only when all of this holds, decided once per selection and execution:

- its resolver is an attribute read (``attribute_resolver``, installed by
  ``install_fast_resolvers`` in place of strawberry's equivalent default resolver), or the
  authorization guard around one: then the shortcut first runs the guard's own checks
  (``Declaration.denial``), and a denial sends the field down the normal path, where the
  guard raises it;
- it takes no arguments, and its type is a scalar or enum (or a list of them);
- no resolver middleware is installed (strawberry adds one for extensions with ``resolve``).

Argument-less fields of an object type skip the field lookup, argument coercion and two levels
of ``complete_value`` dispatch, and so do list items of object types: a plain object goes
straight to ``_complete_object``, which runs the type's ``IsTypeOf`` (where type declarations
are enforced) and then its fields; null, an error or an awaitable takes graphql-core's own path
for it.

Whenever the leaf shortcut meets anything but a plain value (a missing attribute, ``None`` in a
non-null position, a value the scalar refuses, an ``Exception`` object, any exception raised
while reading), that field goes down graphql-core's normal path, which produces the error
exactly as it always would (a property that raised is then read a second time). Type
declarations are unaffected: they run when the object is completed (``IsTypeOf``), before any
of its fields.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CoroutineType
from typing import Any

from graphql import (
    GraphQLField,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    Undefined,
)
from graphql.execution.executor import invalid_return_type_error, to_nodes
from graphql.pyutils import Path, gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from coregraph.schema import compiled
from coregraph.schema.authorization import first_denial

_MISSING = object()


def attribute_resolver(python_name: str) -> Callable[..., Any]:
    """The resolver of a field without one: the object's attribute of that (Python) name."""

    def resolve(source: Any, info: Any, **_: Any) -> Any:
        return getattr(source, python_name)

    resolve.attribute = python_name  # type: ignore[attr-defined]
    return resolve


def direct_resolver(definition: Any, info_class: type) -> Callable[..., Any] | None:
    """A resolver that calls a strawberry resolver without arguments straight, or None.

    For a field whose resolver takes no GraphQL arguments, strawberry's wrapper (an ``Info``,
    argument conversion, its extension chain, ``get_result``) reduces to calling the function
    with the object (as ``self``, ``root`` or ``parent``) and an ``Info``; this does only
    that. Fields with arguments, field extensions or permission classes keep strawberry's.
    """
    resolver = definition.base_resolver
    if resolver is None or definition.extensions or definition.arguments:
        return None
    func = resolver.wrapped_func
    by_self = resolver.self_parameter is not None
    source_names = [p.name for p in (resolver.parent_parameter, resolver.root_parameter) if p]
    info_name = resolver.info_parameter.name if resolver.info_parameter else None

    def resolve(source: Any, info: Any, **_: Any) -> Any:
        kwargs = {name: source for name in source_names}
        if info_name is not None:
            kwargs[info_name] = info_class(_raw_info=info, _field=definition)
        return func(source, **kwargs) if by_self else func(**kwargs)

    attribute = getattr(func, "prefetched", None)
    if attribute is not None:
        resolve.prefetched = attribute  # type: ignore[attr-defined]
    return resolve


def install_fast_resolvers(schema: GraphQLSchema, info_class: type) -> None:
    """Replace strawberry's resolver wrappers where they add nothing: a field without a
    resolver gets ``attribute_resolver`` (strawberry reaches the same ``getattr`` through
    three layers), a resolver without arguments ``direct_resolver``. Runs before the
    authorization guards are installed, so a declared field's guard wraps the new resolver
    (and such a field is no longer recognised as a plain attribute read)."""
    for type_ in schema.type_map.values():
        if not isinstance(type_, GraphQLObjectType) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            if hasattr(field.resolve, "rules"):
                # Replacing a guard would drop the authorization check it carries.
                raise RuntimeError(
                    f"{type_.name}.{name} is already guarded: install_fast_resolvers must run "
                    "before enforce_declarations"
                )
            definition = (field.extensions or {}).get("strawberry-definition")
            if definition is None:
                continue
            if (
                getattr(field.resolve, "_is_default", False)
                and definition.is_basic_field
                and definition.default_resolver is getattr
            ):
                field.resolve = attribute_resolver(definition.python_name)
            else:
                direct = direct_resolver(definition, info_class)
                if direct is not None:
                    field.resolve = direct


class _Leaf:
    """How the shortcut reads one field: attribute, coercion, nullability, list-ness."""

    __slots__ = ("attribute", "coerce", "list_of_non_null", "non_null", "rules")

    def __init__(self, attribute: str, field: GraphQLField, rules: tuple[Any, ...]) -> None:
        type_: Any = field.type
        self.attribute = attribute
        self.rules = rules
        self.non_null = isinstance(type_, GraphQLNonNull)
        if self.non_null:
            type_ = type_.of_type
        self.list_of_non_null = isinstance(type_, GraphQLList)
        if self.list_of_non_null:
            type_ = type_.of_type.of_type  # only [Leaf!] lists are planned, see _plan_field
        self.coerce = type_.coerce_output_value

    def read(self, source: Any, principal: Any) -> Any:
        """The completed value, or ``_MISSING`` to send the field down the normal path."""
        try:
            if self.rules and first_denial(self.rules, principal, source) is not None:
                return _MISSING  # the guard on the normal path raises the denial
            value: Any = getattr(source, self.attribute, _MISSING)
            if value is None:
                return _MISSING if self.non_null else None
            if value is _MISSING or isinstance(value, Exception):
                return _MISSING  # graphql-core raises an Exception value as the field's error
            coerce = self.coerce
            if self.list_of_non_null:
                if not isinstance(value, list | tuple):  # other iterables: the normal path
                    return _MISSING
                completed = [coerce(item) for item in value]
                for item in completed:
                    if item is None or item is Undefined:
                        return _MISSING
                return completed
            completed = coerce(value)
        except Exception:  # the normal path raises the same error, located at this field
            return _MISSING
        if completed is None or completed is Undefined:
            return _MISSING
        return completed


class _Object:
    """A field without arguments whose type is an object type (``T`` or ``T!``)."""

    __slots__ = ("field", "object_type")

    def __init__(self, field: GraphQLField, object_type: GraphQLObjectType) -> None:
        self.field = field
        self.object_type = object_type


def _plan_field(field: GraphQLField | None, field_details_list: Any) -> _Leaf | _Object | None:
    if field is None or field.args or field_details_list[0].node.arguments:
        return None
    named: Any = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
    if isinstance(named, GraphQLObjectType) and field.resolve is not None:
        return _Object(field, named)
    resolve = field.resolve
    # A declared field's resolver is its guard (``schema.authorization``) around the attribute
    # read: the shortcut runs the guard's very checks first.
    rules = getattr(resolve, "rules", ())
    if rules:
        resolve = getattr(resolve, "__wrapped__", None)
    attribute = getattr(resolve, "attribute", None)
    if attribute is None:
        return None
    type_: Any = field.type
    if isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    if isinstance(type_, GraphQLList):
        if not isinstance(type_.of_type, GraphQLNonNull):
            return None
        type_ = type_.of_type.of_type
    if not isinstance(type_, GraphQLLeafType):
        return None
    return _Leaf(attribute, field, rules)


class CoregraphExecutor(StrawberryGraphQLCoreExecutionContext):
    """strawberry's executor with the shortcuts: leaves and object fields in
    ``execute_fields``, object list items in ``complete_list_item_value``."""

    plans = True  # queries and subscription events run on compiled plans

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (parent type, id(grouped field set)) -> (the set, kept alive so that its id stays
        # unique while cached; its plan)
        self._plans: dict[tuple[str, int], tuple[Any, tuple[Any, ...] | None]] = {}

    def build_per_event_executor(self, payload: Any) -> Any:
        """A subscription's event runs on a shallow copy of the subscription's executor, which
        would share its caches: keyed by the identity of field sets made anew for every event,
        they would gain entries at each event and never hit them again (memory growing for as
        long as the subscription runs). Each event gets caches of its own."""
        executor = super().build_per_event_executor(payload)
        assert isinstance(executor, CoregraphExecutor)
        executor._plans = {}
        executor._relevant_sub_fields = {}
        return executor

    def execute_operation(self, serially: bool | None = None) -> Any:
        """A query or a subscription event runs on its document's compiled plan
        (``schema.compiled``) when it has one; whatever the plan does not produce (errors
        above all) runs again here on graphql-core's walk, which answers it."""
        plan = compiled.plan_for(self) if self.plans and not serially else None
        if plan is None:
            compiled.STATS["stock"] += 1
            return super().execute_operation(serially)
        snapshot = compiled.snapshot_variables(self)
        try:
            data = plan.run(self)
        except Exception:
            compiled.STATS["fallback"] += 1
            compiled.restore_variables(self, snapshot)
            return super().execute_operation(serially)
        if type(data) is CoroutineType:
            return self._await_planned(data, serially, snapshot)
        compiled.STATS["planned"] += 1
        return self.finish(self.build_response(data))

    async def _await_planned(
        self, data: Any, serially: bool | None, snapshot: dict[str, Any] | None
    ) -> Any:
        try:
            completed = await data
        except Exception:
            compiled.STATS["fallback"] += 1
            compiled.restore_variables(self, snapshot)
            result = super().execute_operation(serially)
            return await result if self.is_awaitable(result) else result
        compiled.STATS["planned"] += 1
        return self.finish(self.build_response(completed))

    def _plan(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> Any:
        key = (parent_type.name, id(grouped_field_set))
        cached = self._plans.get(key)
        if cached is not None:
            return cached[1]
        plan: tuple[_Leaf | _Object | None, ...] | None = None
        middleware = self.middleware_manager
        if middleware is None or not middleware.middlewares:
            get_field = self.schema.get_field
            plan = tuple(
                _plan_field(get_field(parent_type, details[0].node.name.value), details)
                for details in grouped_field_set.values()
            )
            if not any(plan):
                plan = None
        self._plans[key] = (grouped_field_set, plan)
        return plan

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: Any,
        position_context: Any,
    ) -> Any:
        plan = self._plan(parent_type, grouped_field_set)
        if plan is None:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        # graphql-core's loop (Executor.execute_fields), with the shortcut in front.
        results: dict[str, Any] = {}
        principal = getattr(self.context_value, "principal", None)
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for step, (response_name, field_details_list) in zip(
                plan, grouped_field_set.items(), strict=True
            ):
                if step.__class__ is _Leaf:
                    value = step.read(source_value, principal)  # type: ignore[union-attr]
                    if value is not _MISSING:
                        results[response_name] = value
                        continue
                field_path = Path(path, response_name, parent_type.name)
                if step.__class__ is _Object:
                    result = self._execute_object_field(
                        step,
                        parent_type,
                        source_value,
                        field_details_list,
                        field_path,
                        position_context,
                    )
                else:
                    result = self.execute_field(
                        parent_type, source_value, field_details_list, field_path, position_context
                    )
                if result is not Undefined:
                    results[response_name] = result
                    if is_awaitable(result):
                        awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:
                self.settle_in_background([results[name] for name in awaitable_fields])
            raise
        if not awaitable_fields:
            return results
        return self._gather_fields(results, awaitable_fields)

    def _execute_object_field(
        self,
        step: Any,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        """``Executor.execute_field`` for an argument-less field of an object type, without
        the field lookup, the argument coercion and two levels of ``complete_value``
        dispatch: a plain object goes straight to ``_complete_object`` (its ``IsTypeOf``,
        where type declarations are enforced, included); anything else (null, an error, an
        awaitable) takes ``complete_value`` or ``complete_awaitable_value`` as before."""
        field = step.field
        return_type = field.type
        info = self.build_resolve_info(field, to_nodes(field_details_list), parent_type, path)
        try:
            result = field.resolve(source, info)
            if self.is_awaitable(result):
                return self.complete_awaitable_value(
                    return_type, field_details_list, info, path, result, position_context
                )
            if result is None or isinstance(result, Exception):
                return self.complete_value(
                    return_type, field_details_list, info, path, result, position_context
                )
            completed = self._complete_object(
                step.object_type, field_details_list, info, path, result, position_context
            )
            if self.is_awaitable(completed):
                return self._await_completed(completed, return_type, field_details_list, path)
            return completed
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None

    def _complete_object(
        self,
        object_type: GraphQLObjectType,
        field_details_list: Any,
        info: Any,
        path: Path,
        result: Any,
        position_context: Any,
    ) -> Any:
        """``complete_object_value`` → ``collect_and_execute_subfields`` →
        ``execute_collected_subfields`` → ``execute_fields``, in one call: the type's
        ``IsTypeOf`` (type declarations are enforced there), then its fields. Anything but a
        plain synchronous case (an awaitable ``IsTypeOf``, deferred fragments) takes
        graphql-core's own path."""
        is_type_of = object_type.is_type_of
        if is_type_of is not None:
            matches = is_type_of(result, info)
            if self.is_awaitable(matches):
                close = getattr(matches, "close", None)
                if close is not None:
                    close()
                return self.complete_object_value(
                    object_type, field_details_list, info, path, result, position_context
                )
            if not matches:
                raise invalid_return_type_error(object_type, result, field_details_list)
        grouped_field_set, new_defer_usages, _ = self.collect_subfields(
            object_type, field_details_list
        )
        if new_defer_usages or position_context is not None:
            return self.execute_collected_subfields(
                object_type,
                result,
                path,
                grouped_field_set,
                new_defer_usages,
                position_context,
            )
        return self.execute_fields(object_type, result, path, grouped_field_set, None)

    def complete_list_item_value(
        self,
        item: Any,
        complete_results: list[Any],
        item_type: Any,
        field_details_list: Any,
        info: Any,
        item_path: Path,
        position_context: Any,
    ) -> bool:
        """A list item of an object type goes straight to ``_complete_object``; null, errors
        and every other item type take graphql-core's ``complete_list_item_value``."""
        object_type = item_type.of_type if isinstance(item_type, GraphQLNonNull) else item_type
        if (
            not isinstance(object_type, GraphQLObjectType)
            or item is None
            or isinstance(item, Exception)
        ):
            return super().complete_list_item_value(
                item,
                complete_results,
                item_type,
                field_details_list,
                info,
                item_path,
                position_context,
            )
        try:
            completed = self._complete_object(
                object_type, field_details_list, info, item_path, item, position_context
            )
            if self.is_awaitable(completed):
                complete_results.append(
                    self._await_completed(completed, item_type, field_details_list, item_path)
                )
                return True
            complete_results.append(completed)
        except Exception as raw_error:
            self.handle_field_error(raw_error, item_type, field_details_list, item_path)
            complete_results.append(None)
        return False

    async def _await_completed(
        self, completed: Any, return_type: Any, field_details_list: Any, path: Path
    ) -> Any:
        try:
            return await completed
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None

    async def _gather_fields(
        self, results: dict[str, Any], awaitable_fields: list[str]
    ) -> dict[str, Any]:
        if len(awaitable_fields) == 1:
            name = awaitable_fields[0]
            results[name] = await results[name]
        else:
            awaited = await gather_with_cancel(*(results[name] for name in awaitable_fields))
            results.update(zip(awaitable_fields, awaited, strict=True))
        return results


class WalkingExecutor(CoregraphExecutor):
    """The executor with compiled plans switched off (``COREGRAPH_COMPILED_PLANS=false``)."""

    plans = False
