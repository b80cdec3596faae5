"""GraphQL types of approval gates (``coregraph.services.approvals``), and the interface every
mutation payload implements so that any mutation can answer "waiting for approval" the same
way: ``MutationPayload.approvalRequired``."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import strawberry
from strawberry.federation import field, type as ftype
from strawberry.scalars import JSON

from coregraph import models
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.services import approvals


@strawberry.enum(description="Where an approval request stands.")
class ApprovalStatus(enum.Enum):
    PENDING = approvals.PENDING
    EXECUTING = approvals.EXECUTING
    APPROVED = approvals.APPROVED
    FAILED = approvals.FAILED
    REJECTED = approvals.REJECTED
    EXPIRED = approvals.EXPIRED


@strawberry.enum(description="The kinds of principal a policy can single out.")
class ActorKind(enum.Enum):
    USER = "user"
    API_KEY = "api_key"
    AGENT = "agent"


@entity(models.ApprovalPolicy)
@ftype(
    keys=["id"],
    requires_scopes=[["approvals:manage"]],
    description="Which actions of the tenant (in one environment) wait for approval, by whom.",
)
class ApprovalPolicy(Node):
    id: strawberry.ID
    name: str
    actions: list[str] = strawberry.field(
        description="Action names ('api_key.create'), prefixes ('role.*') or '*' (every one);"
        " custom event types for emitEvent. The catalog: approvalActions."
    )
    principal_kinds: list[ActorKind] = strawberry.field(
        description="Only for these kinds of principal (empty: all)."
    )
    argument_path: str | None = strawberry.field(
        description="Only when a value at this path of the arguments ('input.scopes')..."
    )
    argument_matches: str | None = strawberry.field(
        description="...matches this glob ('*:manage')."
    )
    approvals_required: int = strawberry.field(description="Distinct approvers needed.")
    reviewer_permission: str
    reviewer_role: str | None
    expires_in_seconds: int
    created_at: datetime
    tenant_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Any) -> ApprovalPolicy:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            actions=list(row.actions),
            principal_kinds=[ActorKind(k) for k in row.principal_kinds],
            argument_path=row.argument_path,
            argument_matches=row.argument_matches,
            approvals_required=row.approvals_required,
            reviewer_permission=row.reviewer_permission,
            reviewer_role=row.reviewer_role,
            expires_in_seconds=row.expires_in_seconds,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
        )


@strawberry.type(description="One reviewer's decision on a request.")
class ApprovalDecision:
    reviewer_user_id: strawberry.ID
    approved: bool
    comment: str
    decided_at: datetime


@strawberry.type(description="Who asked for an approval.")
class ApprovalRequester:
    kind: ActorKind
    user_id: strawberry.ID | None = strawberry.field(
        description="The user (a person's request, or the user an agent acted for)."
    )
    api_key_id: strawberry.ID | None
    agent_id: strawberry.ID | None
    acting_for_user_id: strawberry.ID | None = strawberry.field(
        description="The person an API key or an agent acted for."
    )


@entity(models.ApprovalRequest)
@ftype(
    keys=["id"],
    authenticated=True,
    policy=[["approval_party"]],
    description="A gated mutation waiting for (or decided by) other people: stored with its"
    " input, who asked and why; it runs once, as the requester, when the last approval"
    " arrives. Visible to reviewers, approval managers and the requester.",
)
class ApprovalRequest(Node):
    id: strawberry.ID
    action: str
    operation: str = strawberry.field(description="The Mutation field it runs.")
    input: JSON = strawberry.field(description="The field's arguments, as validated.")
    reason: str
    status: ApprovalStatus
    approvals_required: int
    requested_by: ApprovalRequester
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    error_code: str | None = strawberry.field(
        description="Why the approved run was refused (e.g. FORBIDDEN: the requester lost"
        " the right meanwhile)."
    )
    error_message: str | None
    tenant_id: strawberry.Private[str]
    requester: strawberry.Private[dict[str, Any]]
    stored_result: strawberry.Private[dict[str, Any] | None]

    @field(
        description="What the approved run answered (the payload's fields; credentials it"
        " issued are shown to the requester only)."
    )
    def result(self, info: strawberry.Info) -> JSON | None:
        ctx = info.context
        return approvals.visible_result(
            ctx.principal, self.requester, self.stored_result, ctx.settings
        )

    @field(description="The decisions so far, oldest first.")
    async def decisions(self, info: strawberry.Info) -> list[ApprovalDecision]:
        row = models.ApprovalDecision
        rows = await info.context.read(
            row.__table__.select()
            .where(row.request_id == self.id, row.tenant_id == self.tenant_id)
            .order_by(row.created_at, row.id)
        )
        return [
            ApprovalDecision(
                reviewer_user_id=strawberry.ID(r.reviewer_user_id),
                approved=r.decision == approvals.APPROVE,
                comment=r.comment,
                decided_at=r.created_at,
            )
            for r in rows
        ]

    @classmethod
    def from_row(cls, row: Any) -> ApprovalRequest:
        requester = dict(row.requester)
        return cls(
            id=strawberry.ID(row.id),
            action=row.action,
            operation=row.operation,
            input=row.variables,
            reason=row.reason,
            status=ApprovalStatus(row.status),
            approvals_required=row.approvals_required,
            requested_by=ApprovalRequester(
                kind=ActorKind(requester["kind"]),
                user_id=requester.get("userId"),
                api_key_id=requester.get("apiKeyId"),
                agent_id=requester.get("agentId"),
                acting_for_user_id=requester.get("actingForUserId"),
            ),
            created_at=row.created_at,
            expires_at=row.expires_at,
            decided_at=row.decided_at,
            error_code=row.error_code,
            error_message=row.error_message,
            tenant_id=row.tenant_id,
            requester=requester,
            stored_result=row.result,
        )


@strawberry.type(
    description="The mutation did not run: a policy of the tenant holds it back until other"
    " people approve. Follow the request (approvalRequest, or the approvalRequests"
    " subscription); it runs once, as you, when the last approval arrives."
)
class ApprovalRequired:
    request: ApprovalRequest


@strawberry.interface(
    description="Every mutation's payload: when a policy holds the mutation back, its other"
    " fields are null and approvalRequired says which request waits."
)
class MutationPayload:
    approval_required: ApprovalRequired | None = strawberry.field(
        default=None, description="Set when the mutation waits for approval instead of running."
    )
