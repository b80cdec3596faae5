"""Approval gates (four eyes): which actions wait for a second person, and the requests they
hold back until someone else agrees.

Deciding and doing stay apart (DESIGN.md, Errors): every Mutation field has an action name
(``ACTIONS``); the gate (``coregraph.schema.approval_gate``) asks ``gate`` before the field
runs whether a policy of the tenant and environment holds it back. If one does, the field does
not run: ``request_approval`` stores it — a one-field GraphQL document and its variables, who
asked with which rights, and why — and the payload answers ``approvalRequired``. Reviewers
``decide``; when the last approval arrives the request is claimed once (``executing``) in the
same transaction as that approval, so two approvers racing on it run it exactly once, and the
resolver runs the stored document as the requester, with the requester's rights as they are
then (``coregraph.resolvers.approvals``); ``finish`` records what it answered. The worker
expires what nobody decided in time (``expire_due``).

Who may approve: a person (a signed-in user, not an API key or an agent) holding the policy's
permission (``approvals:review`` unless it names another) and role, if it names one — never
the person answerable for the request (its user, the creator of the key that asked, the user
an agent acted for) nor, for an agent's request, the agent's sponsor.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coregraph import db, ids
from coregraph.auth.permissions import PERMISSION_KEYS
from coregraph.auth.principal import Principal, PrincipalKind, system_principal
from coregraph.errors import BadUserInput, Conflict, Forbidden, NotFound
from coregraph.group_commit import GroupCommit
from coregraph.models import (
    Agent,
    ApprovalDecision,
    ApprovalPolicy,
    ApprovalRequest,
    Membership,
    Role,
)
from coregraph.models.base import Environment, utcnow
from coregraph.request import RequestMeta
from coregraph.services import validation, webhooks
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings

log = logging.getLogger("coregraph.approvals")

# Every Mutation field's action, as policies name it. ``emitEvent``/``emitEvents`` are named
# by the event types they emit (a tenant gates its own business events by type).
ACTIONS: dict[str, str] = {
    "updateTenant": "tenant.update",
    "inviteMember": "member.invite",
    "revokeInvitation": "invitation.revoke",
    "removeMember": "member.remove",
    "changeMemberRole": "member.change_role",
    "createRole": "role.create",
    "updateRole": "role.update",
    "deleteRole": "role.delete",
    "createApiKey": "api_key.create",
    "revokeApiKey": "api_key.revoke",
    "setApiKeyRateLimits": "api_key.set_rate_limits",
    "createAgent": "agent.create",
    "disableAgent": "agent.disable",
    "enableAgent": "agent.enable",
    "deleteAgent": "agent.delete",
    "createAgentKey": "agent.create_key",
    "registerEventType": "event_type.register",
    "uploadFile": "file.upload",
    "createUploadUrl": "file.create_upload_url",
    "completeUpload": "file.complete_upload",
    "deleteFile": "file.delete",
    "createWebhookEndpoint": "webhook_endpoint.create",
    "updateWebhookEndpoint": "webhook_endpoint.update",
    "disableWebhookEndpoint": "webhook_endpoint.disable",
    "enableWebhookEndpoint": "webhook_endpoint.enable",
    "deleteWebhookEndpoint": "webhook_endpoint.delete",
    "rotateWebhookSecret": "webhook_endpoint.rotate_secret",
    "retryWebhookDelivery": "webhook_delivery.retry",
    "replayWebhookEvents": "webhook_endpoint.replay_events",
    "sendTestWebhook": "webhook_endpoint.send_test",
    "createMeter": "meter.create",
    "recordUsage": "usage.record",
    "recordUsageBatch": "usage.record_batch",
    "definePlan": "plan.define",
    "archivePlan": "plan.archive",
    "assignPlan": "plan.assign",
    "approveSupportAccess": "support.approve",
    "denySupportAccess": "support.deny",
    "revokeSupportAccess": "support.revoke",
    "createApprovalPolicy": "approval_policy.create",
    "deleteApprovalPolicy": "approval_policy.delete",
}
# Fields named by the events they emit: the argument path to their types.
EVENT_ACTIONS: dict[str, str] = {"emitEvent": "input.type", "emitEvents": "inputs.type"}
# Never held back: no tenant to gate yet (sign-up, login, sessions, creating or joining a
# tenant), short-lived tokens (an agent's own, a token exchange: at most rights already held,
# minutes long; keys, which outlive a request, are gated), and the decisions themselves (a
# gate on approving would never end).
UNGATED = frozenset(
    {
        "signUp",
        "login",
        "refreshSession",
        "logout",
        "createTenant",
        "acceptInvitation",
        "exchangeToken",
        "issueAgentToken",
        "approveRequest",
        "rejectRequest",
        # Platform staff, outside every tenant: asking for a support session, and taking its
        # token once the tenant approved it.
        "requestSupportAccess",
        "startSupportSession",
    }
)

PENDING, EXECUTING, APPROVED, FAILED, REJECTED, EXPIRED = (
    "pending",
    "executing",
    "approved",
    "failed",
    "rejected",
    "expired",
)
APPROVE, REJECT = "approve", "reject"
# Result keys whose values are credentials: sealed at rest, shown to the requester only.
SECRET_RESULT_KEYS = frozenset({"secret", "token", "accessToken", "refreshToken"})

MAX_POLICIES = 100
MAX_APPROVERS = 10
MIN_EXPIRY_SECONDS = 1
MAX_EXPIRY_SECONDS = 30 * 24 * 3600
DEFAULT_EXPIRY_SECONDS = 24 * 3600
MAX_REASON = 1000
MAX_COMMENT = 1000
_ACTION_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z0-9_]+)*(\.\*)?)$")
_PATH_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,7}$")
_KINDS = {kind.value for kind in (PrincipalKind.USER, PrincipalKind.API_KEY, PrincipalKind.AGENT)}


# --- policies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyDraft:
    name: str
    actions: Sequence[str]
    principal_kinds: Sequence[str] = ()
    argument_path: str | None = None
    argument_matches: str | None = None
    approvals_required: int = 1
    reviewer_permission: str = "approvals:review"
    reviewer_role: str | None = None
    expires_in_seconds: int = DEFAULT_EXPIRY_SECONDS


def _checked(draft: PolicyDraft) -> PolicyDraft:
    name = validation.text(draft.name, "name", max_length=120)
    if not draft.actions or len(draft.actions) > 50:
        raise BadUserInput("actions: name 1 to 50 actions or patterns", field="actions")
    for action in draft.actions:
        if not _ACTION_PATTERN.match(action) or len(action) > 200:
            raise BadUserInput(
                f"actions: {action!r} is not an action name, a prefix pattern ('role.*') or '*'",
                field="actions",
            )
    kinds = sorted(set(draft.principal_kinds))
    if not set(kinds) <= _KINDS:
        raise BadUserInput(f"principalKinds: one of {sorted(_KINDS)}", field="principalKinds")
    if (draft.argument_path is None) != (draft.argument_matches is None):
        raise BadUserInput("argumentPath and argumentMatches go together", field="argumentMatches")
    if draft.argument_path is not None and not _PATH_PATTERN.match(draft.argument_path):
        raise BadUserInput(
            "argumentPath: argument and field names joined by dots, e.g. 'input.scopes'",
            field="argumentPath",
        )
    if draft.argument_matches is not None and not 0 < len(draft.argument_matches) <= 200:
        raise BadUserInput("argumentMatches: 1 to 200 characters", field="argumentMatches")
    if not 1 <= draft.approvals_required <= MAX_APPROVERS:
        raise BadUserInput(f"approvalsRequired: 1 to {MAX_APPROVERS}", field="approvalsRequired")
    if draft.reviewer_permission not in PERMISSION_KEYS:
        raise BadUserInput(
            "reviewerPermission: not a permission of the catalog", field="reviewerPermission"
        )
    if not MIN_EXPIRY_SECONDS <= draft.expires_in_seconds <= MAX_EXPIRY_SECONDS:
        raise BadUserInput(
            f"expiresInSeconds: {MIN_EXPIRY_SECONDS} to {MAX_EXPIRY_SECONDS}",
            field="expiresInSeconds",
        )
    return PolicyDraft(
        name=name,
        actions=sorted(set(draft.actions)),
        principal_kinds=kinds,
        argument_path=draft.argument_path,
        argument_matches=draft.argument_matches,
        approvals_required=draft.approvals_required,
        reviewer_permission=draft.reviewer_permission,
        reviewer_role=draft.reviewer_role,
        expires_in_seconds=draft.expires_in_seconds,
    )


def policy_snapshot(policy: ApprovalPolicy) -> dict[str, Any]:
    return {
        "name": policy.name,
        "environment": policy.environment,
        "actions": list(policy.actions),
        "principalKinds": list(policy.principal_kinds),
        "argumentPath": policy.argument_path,
        "argumentMatches": policy.argument_matches,
        "approvalsRequired": policy.approvals_required,
        "reviewerPermission": policy.reviewer_permission,
        "reviewerRole": policy.reviewer_role,
        "expiresInSeconds": policy.expires_in_seconds,
    }


async def create_policy(
    uow: UnitOfWork, tenant_id: str, environment: Environment, draft: PolicyDraft
) -> ApprovalPolicy:
    draft = _checked(draft)
    if draft.reviewer_role is not None:
        role = await uow.session.scalar(
            select(Role.id).where(Role.tenant_id == tenant_id, Role.key == draft.reviewer_role)
        )
        if role is None:
            raise BadUserInput(
                "reviewerRole: no role of this tenant has this key", field="reviewerRole"
            )
    count = await uow.session.scalar(
        select(func.count())
        .select_from(ApprovalPolicy)
        .where(ApprovalPolicy.tenant_id == tenant_id, ApprovalPolicy.environment == environment)
    )
    if int(count or 0) >= MAX_POLICIES:
        raise BadUserInput(f"at most {MAX_POLICIES} policies per environment", field="input")
    policy = ApprovalPolicy(
        id=ids.new_id("apo"),
        tenant_id=tenant_id,
        environment=environment,
        name=draft.name,
        actions=list(draft.actions),
        principal_kinds=list(draft.principal_kinds),
        argument_path=draft.argument_path,
        argument_matches=draft.argument_matches,
        approvals_required=draft.approvals_required,
        reviewer_permission=draft.reviewer_permission,
        reviewer_role=draft.reviewer_role,
        expires_in_seconds=draft.expires_in_seconds,
        created_by=uow.principal.actor_id,
    )
    uow.session.add(policy)
    snapshot = policy_snapshot(policy)
    uow.record(
        "approval_policy.created",
        tenant_id=tenant_id,
        target_type="ApprovalPolicy",
        target_id=policy.id,
        after=snapshot,
        environment=environment,
    )
    uow.emit(
        "approval_policy.created",
        tenant_id=tenant_id,
        environment=environment,
        data={"policyId": policy.id, **snapshot},
    )
    return policy


async def delete_policy(
    uow: UnitOfWork, tenant_id: str, environment: Environment, policy_id: str
) -> str:
    policy = await uow.session.scalar(
        select(ApprovalPolicy).where(
            ApprovalPolicy.id == policy_id,
            ApprovalPolicy.tenant_id == tenant_id,
            ApprovalPolicy.environment == environment,
        )
    )
    if policy is None:
        raise NotFound("no approval policy with this id", field="id")
    snapshot = policy_snapshot(policy)
    await uow.session.delete(policy)
    uow.record(
        "approval_policy.deleted",
        tenant_id=tenant_id,
        target_type="ApprovalPolicy",
        target_id=policy_id,
        before=snapshot,
        environment=environment,
    )
    uow.emit(
        "approval_policy.deleted",
        tenant_id=tenant_id,
        environment=environment,
        data={"policyId": policy_id},
    )
    return policy_id


# --- the gate ------------------------------------------------------------------------------


def actions_of(field_name: str, arguments: Mapping[str, Any]) -> list[str] | None:
    """The action(s) a Mutation field performs with these arguments; None for a field that is
    never gated."""
    if field_name in UNGATED:
        return None
    path = EVENT_ACTIONS.get(field_name)
    if path is not None:
        return sorted({str(v) for v in _values_at(arguments, path.split(".")) if v is not None})
    return [ACTIONS[field_name]]


def _values_at(value: Any, path: Sequence[str]) -> list[Any]:
    """Every value at ``path`` (lists are walked through: ``inputs.type`` of a list)."""
    if isinstance(value, list):
        return [found for item in value for found in _values_at(item, path)]
    if not path:
        return [value]
    if not isinstance(value, Mapping) or path[0] not in value:
        return []
    return _values_at(value[path[0]], path[1:])


def _action_matches(pattern: str, action: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return action.startswith(pattern[:-1])
    return pattern == action


def policy_applies(
    policy: Any, actions: Iterable[str], kind: str, arguments: Mapping[str, Any]
) -> bool:
    if policy.principal_kinds and kind not in policy.principal_kinds:
        return False
    if not any(_action_matches(p, a) for p in policy.actions for a in actions):
        return False
    if policy.argument_path is None:
        return True
    pattern = policy.argument_matches or ""
    return any(
        isinstance(v, (str, int, float, bool)) and fnmatch.fnmatchcase(str(v), pattern)
        for v in _values_at(arguments, policy.argument_path.split("."))
    )


def strictest(policies: Iterable[Any]) -> Any | None:
    """Of the policies that hold an operation back, the one asking most (approvers, then the
    shortest expiry); its id breaks ties, so every process picks the same."""
    ranked = sorted(policies, key=lambda p: (-p.approvals_required, p.expires_in_seconds, p.id))
    return ranked[0] if ranked else None


_POLICY_COLUMNS = select(ApprovalPolicy.__table__)  # type: ignore[arg-type]


async def policies_for(
    conn: AsyncConnection, tenant_id: str, environment: Environment
) -> Sequence[Any]:
    """The tenant's policies in ``environment`` (one indexed read; usually none), as rows."""
    await db.scope_transaction(conn, tenant_ids=(tenant_id,))
    result = await conn.execute(
        _POLICY_COLUMNS.where(
            ApprovalPolicy.tenant_id == tenant_id, ApprovalPolicy.environment == environment
        )
    )
    return list(result.all())


@dataclass
class PolicyCache:
    """Each tenant's policies per environment, kept ``seconds`` in this process, so that the
    gate costs a mutation it does not hold back a dictionary lookup rather than a read
    (bench/approvals.py). A policy created or deleted takes effect at once in the process
    that wrote it (``forget``) and within ``seconds`` in every other one, as plans' limits do
    (docs/DECISIONS.md). ``seconds`` 0 reads on every mutation."""

    engine: AsyncEngine
    seconds: float
    _kept: dict[tuple[str, str], tuple[float, Sequence[Any]]] = field(default_factory=dict)
    # Mutations of one tenant that find its entry expired at the same moment share one read,
    # sent after each of them asked (coregraph.group_commit), rather than each reading.
    _reads: GroupCommit[tuple[str, str], Sequence[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self._reads = GroupCommit(self._read, lambda _key: 1, 10_000, lambda _error: False)

    async def get(self, tenant_id: str, environment: Environment) -> Sequence[Any]:
        key = (tenant_id, environment.value)
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            return kept[1]
        policies = await self._reads.submit(key, key)
        if self.seconds > 0:
            if len(self._kept) > 10_000:
                self._kept.clear()
            self._kept[key] = (now + self.seconds, policies)
        return policies

    def forget(self, tenant_id: str, environment: Environment) -> None:
        self._kept.pop((tenant_id, environment.value), None)

    async def _read(self, keys: list[tuple[str, str]]) -> list[Sequence[Any]]:
        tenant_id, environment = keys[0]
        async with self.engine.connect() as conn:
            policies = await policies_for(conn, tenant_id, Environment(environment))
        return [policies] * len(keys)


# --- requests ------------------------------------------------------------------------------


def requester_of(principal: Principal) -> dict[str, Any]:
    """Who asks, as stored: enough to rebuild the principal with its rights as they are when
    the request runs (``Authenticator.requester_principal``), and its rights now (the run gets
    at most these)."""
    tenant_id = principal.tenant_id
    return {
        "kind": principal.kind.value,
        "userId": principal.user_id,
        "apiKeyId": principal.api_key_id,
        "agentId": principal.agent_id,
        "actingForUserId": principal.acting_for_user_id,
        "sessionId": principal.session_id,
        "environment": principal.environment.value,
        "scopes": sorted(principal.scopes_in(tenant_id)),
    }


def answerable_user(principal: Principal) -> str | None:
    """The person answerable for what ``principal`` asks: the user, or the one a key or an
    agent acts for."""
    if principal.kind is PrincipalKind.USER:
        return principal.user_id
    return principal.acting_for_user_id


def request_snapshot(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "requestId": request.id,
        "action": request.action,
        "operation": request.operation,
        "status": request.status,
        "approvalsRequired": request.approvals_required,
        "requestedBy": {
            key: request.requester.get(key)
            for key in ("kind", "userId", "apiKeyId", "agentId", "actingForUserId")
        },
        "reason": request.reason,
        "expiresAt": request.expires_at.isoformat(),
    }


def _state(uow: UnitOfWork, kind: str, request: ApprovalRequest, **extra: Any) -> None:
    """The audit entry and the event of a request's step (``approval.<kind>``)."""
    data = {**request_snapshot(request), **extra}
    uow.record(
        f"approval.{kind}",
        tenant_id=request.tenant_id,
        target_type="ApprovalRequest",
        target_id=request.id,
        after=data,
        environment=request.environment,
    )
    uow.emit(
        f"approval.{kind}",
        tenant_id=request.tenant_id,
        environment=request.environment,
        data=data,
    )


async def request_approval(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    policy: Any,
    action: str,
    operation: str,
    document: str,
    variables: Mapping[str, Any],
    reason: str | None,
) -> ApprovalRequest:
    principal = uow.principal
    if reason is None or not reason.strip():
        raise BadUserInput(
            f"{operation} needs approval here: say why in the X-Approval-Reason header",
            field="X-Approval-Reason",
        )
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise BadUserInput(
            f"X-Approval-Reason: at most {MAX_REASON} characters", field="X-Approval-Reason"
        )
    now = utcnow()
    request = ApprovalRequest(
        id=ids.new_id("apr"),
        tenant_id=tenant_id,
        environment=principal.environment,
        policy_id=policy.id,
        action=action,
        operation=operation,
        document=document,
        variables=dict(variables),
        reason=reason,
        requester=requester_of(principal),
        requester_user_id=answerable_user(principal),
        approvals_required=policy.approvals_required,
        reviewer_permission=policy.reviewer_permission,
        reviewer_role=policy.reviewer_role,
        status=PENDING,
        expires_at=now + timedelta(seconds=policy.expires_in_seconds),
        created_at=now,
    )
    uow.session.add(request)
    _state(uow, "requested", request, policyId=policy.id)
    return request


async def _locked_request(uow: UnitOfWork, tenant_id: str, request_id: str) -> ApprovalRequest:
    """The request, locked for this transaction: a no-op update first takes the row lock on
    PostgreSQL (concurrent deciders wait, then read what the first committed) and the write
    lock on SQLite."""
    visible = (
        ApprovalRequest.id == request_id,
        ApprovalRequest.tenant_id == tenant_id,
        ApprovalRequest.environment == uow.principal.environment,
    )
    await uow.session.execute(
        update(ApprovalRequest).where(*visible).values(status=ApprovalRequest.status)
    )
    request = await uow.session.scalar(
        select(ApprovalRequest).where(*visible).execution_options(populate_existing=True)
    )
    if request is None:
        raise NotFound("no approval request with this id", field="id")
    return request


async def _check_reviewer(uow: UnitOfWork, request: ApprovalRequest) -> str:
    principal = uow.principal
    if principal.kind is not PrincipalKind.USER or principal.user_id is None:
        raise Forbidden("approvals are given by a person signed in, not an API key or an agent")
    reviewer = principal.user_id
    if reviewer == request.requester_user_id:
        raise Forbidden("you cannot decide your own request: someone else must")
    agent_id = request.requester.get("agentId")
    if agent_id is not None:
        sponsor = await uow.session.scalar(
            select(Agent.sponsor_user_id).where(
                Agent.id == agent_id, Agent.tenant_id == request.tenant_id
            )
        )
        if sponsor == reviewer:
            raise Forbidden("the agent's sponsor cannot decide the agent's request")
    if request.reviewer_permission not in principal.scopes_in(request.tenant_id):
        raise Forbidden(f"deciding this request needs {request.reviewer_permission}")
    if request.reviewer_role is not None:
        role = await uow.session.scalar(
            select(Role.key)
            .join(Membership, Membership.role_id == Role.id)
            .where(Membership.tenant_id == request.tenant_id, Membership.user_id == reviewer)
        )
        if role != request.reviewer_role:
            raise Forbidden(f"deciding this request needs the role {request.reviewer_role}")
    return reviewer


@dataclass(frozen=True, slots=True)
class Decided:
    request: ApprovalRequest
    # The last approval arrived: the request is claimed (``executing``) and must run now.
    run: bool


async def decide(
    uow: UnitOfWork, tenant_id: str, request_id: str, decision: str, comment: str | None
) -> Decided:
    comment = (comment or "").strip()
    if len(comment) > MAX_COMMENT:
        raise BadUserInput(f"comment: at most {MAX_COMMENT} characters", field="comment")
    request = await _locked_request(uow, tenant_id, request_id)
    reviewer = await _check_reviewer(uow, request)
    if request.status != PENDING:
        raise Conflict(f"this request is {request.status}: it can no longer be decided")
    now = utcnow()
    if request.expires_at <= now:
        raise Conflict("this request has expired: it can no longer be decided")
    uow.session.add(
        ApprovalDecision(
            id=ids.new_id("apd"),
            tenant_id=tenant_id,
            request_id=request.id,
            reviewer_user_id=reviewer,
            decision=decision,
            comment=comment,
            created_at=now,
        )
    )
    await uow.flush_unique(Conflict("you have already decided this request"))
    if decision == REJECT:
        request.status = REJECTED
        request.decided_at = now
        _state(uow, "rejected", request, reviewerUserId=reviewer, comment=comment)
        return Decided(request, run=False)
    approvals = int(
        await uow.session.scalar(
            select(func.count())
            .select_from(ApprovalDecision)
            .where(
                ApprovalDecision.request_id == request.id,
                ApprovalDecision.decision == APPROVE,
            )
        )
        or 0
    )
    _state(
        uow,
        "approved",
        request,
        reviewerUserId=reviewer,
        comment=comment,
        approvals=approvals,
    )
    if approvals < request.approvals_required:
        return Decided(request, run=False)
    request.status = EXECUTING
    request.decided_at = now
    return Decided(request, run=True)


async def finish(
    uow: UnitOfWork,
    request: ApprovalRequest,
    *,
    result: Mapping[str, Any] | None,
    error_code: str | None,
    error_message: str | None,
) -> ApprovalRequest:
    """Record what the approved run answered: ``approved`` with its result, or ``failed``
    with the error that refused it (a requester who lost the right meanwhile: FORBIDDEN)."""
    row = await uow.session.scalar(
        select(ApprovalRequest).where(
            ApprovalRequest.id == request.id, ApprovalRequest.tenant_id == request.tenant_id
        )
    )
    assert row is not None
    row.status = FAILED if error_code else APPROVED
    row.result = dict(result) if result is not None else None
    row.error_code = error_code
    row.error_message = (error_message or "")[:1000] or None
    if error_code:
        _state(uow, "failed", row, errorCode=error_code, errorMessage=row.error_message)
    else:
        _state(uow, "executed", row)
    return row


# --- results ------------------------------------------------------------------------------


def is_requester(principal: Principal, requester: Mapping[str, Any]) -> bool:
    same = {"user": "userId", "api_key": "apiKeyId", "agent": "agentId"}.get(
        str(requester.get("kind"))
    )
    return (
        same is not None
        and requester.get("kind") == principal.kind.value
        and requester.get(same) == principal.actor_id
    )


def seal_result(data: Any, settings: Settings) -> Any:
    """The run's answer as stored: credentials it issued (``SECRET_RESULT_KEYS``) sealed with
    the secret box's keys, as webhook secrets are."""
    box = webhooks.secret_box(settings)
    return _walk(data, lambda value: {SEALED: box.seal(value)})


def visible_result(
    principal: Principal, requester: Mapping[str, Any], stored: Any, settings: Settings
) -> Any:
    """The stored answer for ``principal``: credentials opened for the requester, redacted for
    everyone else."""
    if stored is None:
        return None
    if not is_requester(principal, requester):
        return _walk(stored, lambda _: REDACTED, sealed=True)
    box = webhooks.secret_box(settings)
    return _walk(stored, lambda value: box.open(value[SEALED]), sealed=True)


SEALED = "sealed"
REDACTED = "[redacted]"


def _walk(value: Any, change: Any, *, sealed: bool = False) -> Any:
    """``value`` with every credential (a string under a secret key; stored sealed, a
    ``{"sealed": ...}`` object) replaced by ``change(it)``."""
    if isinstance(value, list):
        return [_walk(item, change, sealed=sealed) for item in value]
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        is_secret = key in SECRET_RESULT_KEYS and item is not None
        if is_secret and sealed and isinstance(item, Mapping) and SEALED in item:
            out[key] = change(item)
        elif is_secret and not sealed and isinstance(item, str):
            out[key] = change(item)
        else:
            out[key] = _walk(item, change, sealed=sealed)
    return out


# --- expiry (the worker) -------------------------------------------------------------------

EXPIRY_ACTOR = "worker:approval-expiry"


async def expire_periodically(engine: AsyncEngine, interval_seconds: float) -> None:
    """Expire due requests now and then every ``interval_seconds``, until cancelled."""
    while True:
        try:
            expired = await expire_due(engine)
            if expired:
                log.info("approval requests expired", extra={"count": expired})
        except Exception:
            log.exception("approval expiry failed; retrying")
        await asyncio.sleep(interval_seconds)


async def expire_due(engine: AsyncEngine, *, batch: int = 200) -> int:
    """Expire the pending requests whose time ran out, across tenants: each one in its own
    unit of work (its audit entry and event with it). Safe to run from several workers: the
    update only moves a request that is still pending."""
    now = utcnow()
    async with engine.connect() as conn:
        due = (
            await conn.execute(
                select(ApprovalRequest.id, ApprovalRequest.tenant_id, ApprovalRequest.environment)
                .where(ApprovalRequest.status == PENDING, ApprovalRequest.expires_at <= now)
                .order_by(ApprovalRequest.expires_at)
                .limit(batch)
            )
        ).all()
    expired = 0
    meta = RequestMeta(user_agent="coregraph worker (approval expiry)")
    for row in due:
        principal = system_principal(EXPIRY_ACTOR)
        async with UnitOfWork(engine, principal, meta) as uow:
            await uow.allow_tenant(row.tenant_id)
            moved = await uow.session.execute(
                update(ApprovalRequest)
                .where(
                    ApprovalRequest.id == row.id,
                    ApprovalRequest.tenant_id == row.tenant_id,
                    ApprovalRequest.status == PENDING,
                )
                .values(status=EXPIRED, decided_at=now)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                continue
            request = await uow.session.scalar(
                select(ApprovalRequest)
                .where(ApprovalRequest.id == row.id)
                .execution_options(populate_existing=True)
            )
            assert request is not None
            _state(uow, "expired", request)
            expired += 1
    return expired
