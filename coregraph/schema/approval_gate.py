"""The approval gate on every Mutation field: before the field runs, do the tenant's policies
hold it back (``coregraph.services.approvals``)? If so it does not run; its payload answers
``approvalRequired`` with the request that now waits.

Installed on the graphql-core resolvers before the authorization guards wrap them
(``coregraph.api.build_schema``), so a principal is first checked for the field's scopes —
a request is never stored for someone who could not run it anyway — and gated after.

The stored operation is the field alone, as a one-field document with one variable per
argument, and the arguments as the client sent them (the request's raw variables, substituted
into the field's argument literals): it runs later through the same schema, checks and unit
of work as any request, and its policies are matched against the same JSON a client sees in
``ApprovalRequest.input``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from graphql import (
    GraphQLField,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    Undefined,
    get_named_type,
    is_leaf_type,
    value_from_ast_untyped,
)

from coregraph import models
from coregraph.auth.principal import PrincipalKind
from coregraph.errors import BadUserInput, Forbidden
from coregraph.schema.approvals import ApprovalRequest, ApprovalRequired, MutationPayload
from coregraph.services import approvals

Resolve = Callable[..., Any]


def install_approval_gates(schema: GraphQLSchema, payloads: Mapping[str, type]) -> None:
    """Wrap every Mutation field that has an action (``approvals.ACTIONS``) in the gate.
    ``payloads``: each field's payload class (strawberry), answered when it is held back."""
    mutation = schema.mutation_type
    assert mutation is not None
    for name, field in mutation.fields.items():
        if name in approvals.UNGATED:
            continue
        if name not in approvals.ACTIONS and name not in approvals.EVENT_ACTIONS:
            raise ValueError(f"Mutation.{name} has no approval action (services.approvals)")
        payload = payloads[name]
        if not issubclass(payload, MutationPayload):
            raise ValueError(f"Mutation.{name}: its payload must implement MutationPayload")
        field.resolve = _gate(name, field, field.resolve, payload)


def _gate(name: str, field: GraphQLField, resolve: Resolve | None, payload: type) -> Resolve:
    assert resolve is not None
    uploads = any(get_named_type(arg.type).name == "Upload" for arg in field.args.values())

    async def gated(source: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        ctx = info.context
        principal = ctx.principal
        if (
            ctx.approved_request_id is None
            and principal.tenant_id is not None
            and principal.is_authenticated
        ):
            held = await _held_back(name, field, info, payload, uploads)
            if held is not None:
                return held
        result = resolve(source, info, **kwargs)
        return await result if inspect.isawaitable(result) else result

    return gated


async def _held_back(
    name: str, field: GraphQLField, info: GraphQLResolveInfo, payload: type, uploads: bool
) -> Any:
    ctx = info.context
    principal = ctx.principal
    arguments = raw_arguments(info)
    actions = approvals.actions_of(name, arguments)
    if not actions:
        return None
    policies = await ctx.approval_policies()
    if not policies:
        return None
    policy = approvals.strictest(
        p for p in policies if approvals.policy_applies(p, actions, principal.kind.value, arguments)
    )
    if policy is None:
        return None
    if principal.kind is PrincipalKind.SUPPORT:
        raise Forbidden(
            f"{name} needs approval in this tenant, and a support session cannot ask for it:"
            " the tenant's own people can"
        )
    if uploads:
        raise BadUserInput(
            f"{name} needs approval here, and an upload cannot wait for one: upload with"
            " createUploadUrl, then completeUpload (which can)",
            field="file",
        )
    document = stored_document(name, field, info.schema)
    async with ctx.unit_of_work() as uow:
        row = await approvals.request_approval(
            uow,
            ctx.require_tenant(),
            policy=policy,
            action=", ".join(actions),
            operation=name,
            document=document,
            variables=arguments,
            reason=ctx.approval_reason,
        )
    return answer(payload, row)


def answer(payload: type, row: models.ApprovalRequest) -> Any:
    """``payload`` with every field null but ``approvalRequired``."""
    nulls = {
        f.name: None
        for f in dataclasses.fields(payload)  # type: ignore[arg-type]
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    required = ApprovalRequired(request=ApprovalRequest.from_row(row))
    return payload(**nulls, approval_required=required)


def raw_arguments(info: GraphQLResolveInfo) -> dict[str, Any]:
    """The field's arguments as the client sent them: its argument literals with the request's
    raw variables (``Context.request_variables``) put in."""
    variables = info.context.request_variables or {}
    node = info.field_nodes[0]
    return {
        arg.name.value: value_from_ast_untyped(arg.value, variables) for arg in node.arguments or ()
    }


def stored_document(name: str, field: GraphQLField, schema: GraphQLSchema) -> str:
    """``mutation Approved($a: T!, ...) { name(a: $a, ...) { <payload's fields> } }``."""
    args = field.args
    declared = ", ".join(f"${arg}: {definition.type}" for arg, definition in args.items())
    passed = ", ".join(f"{arg}: ${arg}" for arg in args)
    head = f"mutation Approved({declared})" if args else "mutation Approved"
    call = f"{name}({passed})" if args else name
    return f"{head} {{ {call} {_selection(get_named_type(field.type))} }}"


def _selection(type_: GraphQLNamedType) -> str:
    """The payload's leaf fields, and the id (or typename) of each object it holds: what the
    requester reads back in ``ApprovalRequest.result``."""
    assert isinstance(type_, GraphQLObjectType)
    parts = ["__typename"]
    for name, field in type_.fields.items():
        if name == "approvalRequired" or any(
            str(arg.type).endswith("!") and arg.default_value is Undefined
            for arg in field.args.values()
        ):
            continue
        inner = get_named_type(field.type)
        if is_leaf_type(inner):
            parts.append(name)
        elif isinstance(inner, GraphQLObjectType) and "id" in inner.fields:
            parts.append(f"{name} {{ id }}")
        else:
            parts.append(f"{name} {{ __typename }}")
    return "{ " + " ".join(parts) + " }"
