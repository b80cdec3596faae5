"""Approval gates: policies, requests, decisions, and the run of an approved request.

The gate itself sits on every Mutation field (``coregraph.schema.approval_gate``); here are the
fields to define policies, read and decide requests, and follow them live.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.federation import field

from coregraph import models
from coregraph.context import Context
from coregraph.errors import BadUserInput, CoregraphError
from coregraph.resolvers.streams import event_positions
from coregraph.schema.approvals import (
    ActorKind,
    ApprovalPolicy,
    ApprovalRequest,
    ApprovalStatus,
    MutationPayload,
)
from coregraph.schema.events import Event, decode_sequence_cursor, encode_sequence_cursor
from coregraph.schema.pagination import Connection, paginate
from coregraph.schema.readable import readable
from coregraph.services import approvals
from coregraph.streams.broker import events_topic
from coregraph.streams.subscription import Stream, event_row, replay_then_live

Info = strawberry.Info[Context, None]

# The events a request's steps emit (services.approvals._state).
STEP_EVENTS = frozenset(
    f"approval.{step}"
    for step in ("requested", "approved", "rejected", "executed", "failed", "expired")
)


@strawberry.input
class CreateApprovalPolicyInput:
    name: str
    actions: list[str] = strawberry.field(
        description="Action names ('api_key.create'), prefixes ('role.*') or '*'; custom"
        " event types for emitEvent. The catalog: approvalActions."
    )
    principal_kinds: list[ActorKind] | None = strawberry.field(
        default=None, description="Only for these kinds of principal (default: all)."
    )
    argument_path: str | None = strawberry.field(
        default=None, description="Only when a value at this argument path ('input.scopes')..."
    )
    argument_matches: str | None = strawberry.field(
        default=None, description="...matches this glob ('*:manage')."
    )
    approvals_required: int = 1
    reviewer_permission: str = "approvals:review"
    reviewer_role: str | None = strawberry.field(
        default=None, description="Reviewers must also have this role (its key)."
    )
    expires_in_seconds: int = approvals.DEFAULT_EXPIRY_SECONDS


@strawberry.type
class ApprovalPolicyPayload(MutationPayload):
    policy: ApprovalPolicy | None


@strawberry.type
class DeleteApprovalPolicyPayload(MutationPayload):
    deleted_policy_id: strawberry.ID | None


@strawberry.type
class ApprovalDecisionPayload(MutationPayload):
    request: ApprovalRequest | None


@strawberry.type(description="A step of an approval request, as it happened.")
class ApprovalRequestStep:
    event: Event
    request_id: strawberry.Private[str]

    @strawberry.field(description="The event's position, opaque: resume after it.")
    def cursor(self) -> str:
        return encode_sequence_cursor(self.event.sequence)

    @strawberry.field(description="The request as it is now.")
    async def request(self, info: Info) -> ApprovalRequest | None:
        return await _request(info.context, self.request_id)


async def _request(ctx: Context, request_id: str) -> ApprovalRequest | None:
    row = models.ApprovalRequest
    rows = await ctx.read(
        readable(ctx.principal, row, tenant_id=ctx.require_tenant()).where(
            row.id == request_id, row.environment == ctx.principal.environment
        )
    )
    return ApprovalRequest.from_row(rows[0]) if rows else None


@strawberry.type
class ApprovalsQuery:
    @field(
        requires_scopes=[["approvals:manage"]],
        description="The tenant's approval policies in this environment.",
    )
    async def approval_policies(self, info: Info) -> list[ApprovalPolicy] | None:
        ctx = info.context
        row = models.ApprovalPolicy
        statement = (
            readable(ctx.principal, row, tenant_id=ctx.require_tenant())
            .where(row.environment == ctx.principal.environment)
            .order_by(row.created_at, row.id)
        )
        return [ApprovalPolicy.from_row(r) for r in await ctx.read(statement)]

    @field(
        authenticated=True,
        description="Every action a policy can name: the Mutation fields' actions (emitEvent"
        " and emitEvents are named by the event types they emit).",
    )
    def approval_actions(self) -> list[str]:
        return sorted(approvals.ACTIONS.values())

    @field(
        authenticated=True,
        description="Approval requests in this environment, newest first: all of them for"
        " reviewers and approval managers, your own for anyone else.",
    )
    async def approval_requests(
        self,
        info: Info,
        status: list[ApprovalStatus] | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[ApprovalRequest] | None:
        ctx = info.context
        principal = ctx.principal
        tenant_id = ctx.require_tenant()
        row = models.ApprovalRequest
        statement = readable(principal, row, tenant_id=tenant_id).where(
            row.environment == principal.environment
        )
        if status:
            statement = statement.where(row.status.in_([s.value for s in status]))
        scopes = principal.scopes_in(tenant_id)
        if not {"approvals:review", "approvals:manage"} & scopes:
            own = approvals.requester_of(principal)
            mine = {"user": "userId", "api_key": "apiKeyId", "agent": "agentId"}[own["kind"]]
            statement = statement.where(
                row.requester[mine].as_string() == principal.actor_id,
                row.requester["kind"].as_string() == own["kind"],
            )
        return await paginate(
            ctx, statement, row.id, first, after, ApprovalRequest.from_row, newest_first=True
        )


@strawberry.type
class ApprovalsMutation:
    @field(
        requires_scopes=[["approvals:manage"]],
        description="Hold actions back for approval in this environment.",
    )
    async def create_approval_policy(
        self, info: Info, input: CreateApprovalPolicyInput
    ) -> ApprovalPolicyPayload | None:
        ctx = info.context
        draft = approvals.PolicyDraft(
            name=input.name,
            actions=input.actions,
            principal_kinds=[k.value for k in input.principal_kinds or ()],
            argument_path=input.argument_path,
            argument_matches=input.argument_matches,
            approvals_required=input.approvals_required,
            reviewer_permission=input.reviewer_permission,
            reviewer_role=input.reviewer_role,
            expires_in_seconds=input.expires_in_seconds,
        )
        async with ctx.unit_of_work() as uow:
            row = await approvals.create_policy(
                uow, ctx.require_tenant(), ctx.principal.environment, draft
            )
        ctx.runtime.approval_policies.forget(row.tenant_id, ctx.principal.environment)
        return ApprovalPolicyPayload(policy=ApprovalPolicy.from_row(row))

    @field(requires_scopes=[["approvals:manage"]], description="Stop gating by this policy.")
    async def delete_approval_policy(
        self, info: Info, id: strawberry.ID
    ) -> DeleteApprovalPolicyPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            deleted = await approvals.delete_policy(
                uow, ctx.require_tenant(), ctx.principal.environment, str(id)
            )
        ctx.runtime.approval_policies.forget(ctx.require_tenant(), ctx.principal.environment)
        return DeleteApprovalPolicyPayload(deleted_policy_id=strawberry.ID(deleted))

    @field(
        authenticated=True,
        description="Approve a request (a person holding the policy's permission, never its"
        " requester nor the requesting agent's sponsor). The last approval runs it, once, as"
        " the requester with the requester's rights as they are now; the request then says"
        " APPROVED with the result, or FAILED with why.",
    )
    async def approve_request(
        self, info: Info, id: strawberry.ID, comment: str | None = None
    ) -> ApprovalDecisionPayload | None:
        return await _decide(info.context, str(id), approvals.APPROVE, comment)

    @field(authenticated=True, description="Reject a request: it never runs.")
    async def reject_request(
        self, info: Info, id: strawberry.ID, comment: str | None = None
    ) -> ApprovalDecisionPayload | None:
        return await _decide(info.context, str(id), approvals.REJECT, comment)


async def _decide(
    ctx: Context, request_id: str, decision: str, comment: str | None
) -> ApprovalDecisionPayload:
    async with ctx.unit_of_work() as uow:
        decided = await approvals.decide(uow, ctx.require_tenant(), request_id, decision, comment)
    row = decided.request
    if decided.run:
        result, code, message = await run_approved(ctx, row)
        async with ctx.unit_of_work() as uow:
            row = await approvals.finish(
                uow, row, result=result, error_code=code, error_message=message
            )
    return ApprovalDecisionPayload(request=ApprovalRequest.from_row(row))


async def run_approved(
    ctx: Context, request: models.ApprovalRequest
) -> tuple[Any, str | None, str | None]:
    """Run the stored mutation as its requester (rights re-read now): its payload's data, or
    the code and message of the error that refused it."""
    runtime = ctx.runtime
    try:
        principal = await runtime.authenticator.requester_principal(
            request.tenant_id, request.requester
        )
    except CoregraphError as exc:
        return None, exc.code, exc.message
    # Its audit entries and events carry the approval request's id as their request id: what
    # the approved run changed is found from the request (auditLog, supportTimeline).
    run = Context(runtime, principal, dataclasses.replace(ctx.meta, request_id=request.id))
    run.approved_request_id = request.id
    run.request_variables = dict(request.variables)
    try:
        result = await runtime.schema.execute(
            request.document, variable_values=dict(request.variables), context_value=run
        )
    finally:
        await run.close()
    failure = _root_error(result.errors or ())
    data = (result.data or {}).get(request.operation)
    if failure is not None or data is None:
        code, message = failure or ("INTERNAL_SERVER_ERROR", "the mutation answered nothing")
        return None, code, message
    return approvals.seal_result(data, runtime.settings), None, None


def _root_error(errors: Sequence[GraphQLError]) -> tuple[str, str] | None:
    """The error that refused the mutation itself (at its root field, or before it ran)."""
    for error in errors:
        if error.path is None or len(error.path) <= 1:
            code = (error.extensions or {}).get("code") or "INTERNAL_SERVER_ERROR"
            return str(code), error.message
    return None


@strawberry.type
class ApprovalsSubscription:
    @field(
        is_subscription=True,
        requires_scopes=[["approvals:review"]],
        description="Approval requests of this environment as they step on (requested,"
        " approved, rejected, executed, failed, expired), oldest first, for reviewers. With"
        " after (a cursor from this subscription or the events query), first what was missed.",
    )
    async def approval_requests(
        self, info: Info, after: str | None = None
    ) -> AsyncGenerator[ApprovalRequestStep, None]:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        start = decode_sequence_cursor(after) if after is not None else None
        if start is not None and start < 0:
            raise BadUserInput("after: not a cursor", field="after")

        read, head = event_positions(ctx, tenant_id, sorted(STEP_EVENTS))

        def item(row: Any) -> ApprovalRequestStep:
            event = Event.from_row(row)
            return ApprovalRequestStep(event=event, request_id=str(row.data["requestId"]))

        stream = Stream(
            topic=events_topic(tenant_id, ctx.principal.environment),
            position="sequence",
            read=read,
            head=head,
            row_of=event_row,
            matches=lambda row: row.type in STEP_EVENTS,
            item_of=item,
            tenant_id=tenant_id,
            scope="approvals:review",
            where="Subscription.approvalRequests",
        )
        async for edge in replay_then_live(ctx, stream, start):
            yield edge
