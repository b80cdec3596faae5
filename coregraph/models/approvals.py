"""Approval gates (four eyes): a tenant's policies, the requests they hold back, and each
reviewer's decision (``coregraph.services.approvals``).

A policy says, per tenant and environment, which actions need how many approvals from whom. A
request is one gated mutation, stored as a one-field GraphQL document with its variables, its
requester's identity and rights at the time, and why; it runs once, as the requester, when its
last approval arrives. A decision is one reviewer's approval or rejection: one per reviewer
and request (the unique key is what makes "distinct approvers" and "no replay" hold).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    environment_column,
    id_column,
)


class ApprovalPolicy(TenantOwned, Timestamped, Base):
    __tablename__ = "approval_policies"
    __id_prefix__ = "apo"
    __environment_scoped__ = True
    __table_args__ = (Index("ix_approval_policies_tenant_env", "tenant_id", "environment"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    # Action names or patterns: "api_key.create", "role.*", "*" (services.approvals.ACTIONS).
    actions: Mapped[list[str]] = mapped_column(JSONDocument, nullable=False)
    # Principal kinds it applies to ("user", "api_key", "agent"); empty: every kind.
    principal_kinds: Mapped[list[str]] = mapped_column(JSONDocument, nullable=False)
    # Only when an argument matches: a dotted path into the arguments ("input.scopes") and a
    # glob ("*:manage") one of its values must match.
    argument_path: Mapped[str | None] = mapped_column(String(200))
    argument_matches: Mapped[str | None] = mapped_column(String(200))
    approvals_required: Mapped[int] = mapped_column(Integer, nullable=False)
    # What a reviewer must hold in the tenant: a permission, and a role when one is named.
    reviewer_permission: Mapped[str] = mapped_column(String(64), nullable=False)
    reviewer_role: Mapped[str | None] = mapped_column(String(64))
    expires_in_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    created_by: Mapped[str | None] = mapped_column(String(30))


class ApprovalRequest(TenantOwned, Timestamped, Base):
    __tablename__ = "approval_requests"
    __id_prefix__ = "apr"
    __environment_scoped__ = True
    __table_args__ = (
        Index("ix_approval_requests_tenant_env_id", "tenant_id", "environment", "id"),
        Index("ix_approval_requests_status_expires", "status", "expires_at"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    policy_id: Mapped[str | None] = mapped_column(String(30))
    action: Mapped[str] = mapped_column(String(200), nullable=False)
    # The Mutation field, and the one-field document and variables that re-run it.
    operation: Mapped[str] = mapped_column(String(100), nullable=False)
    document: Mapped[str] = mapped_column(Text, nullable=False)
    variables: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    reason: Mapped[str] = mapped_column(String(1000), nullable=False)
    # Who asked: the principal's kind and ids, and its rights in the tenant at the time.
    requester: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    # The person answerable for the request (the user, a key's creator, an agent's user or
    # sponsor): never one of its approvers.
    requester_user_id: Mapped[str | None] = mapped_column(String(30))
    approvals_required: Mapped[int] = mapped_column(Integer, nullable=False)
    reviewer_permission: Mapped[str] = mapped_column(String(64), nullable=False)
    reviewer_role: Mapped[str | None] = mapped_column(String(64))
    # pending, executing, approved (ran), failed (approved, refused when it ran), rejected,
    # expired.
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What the run answered: the payload's data (secrets sealed) or the error's code/message.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(1000))


class ApprovalDecision(TenantOwned, Timestamped, Base):
    __tablename__ = "approval_decisions"
    __id_prefix__ = "apd"
    __table_args__ = (UniqueConstraint("request_id", "reviewer_user_id"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    request_id: Mapped[str] = mapped_column(ForeignKey("approval_requests.id"), nullable=False)
    reviewer_user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), nullable=False)
    # approve or reject
    decision: Mapped[str] = mapped_column(String(8), nullable=False)
    comment: Mapped[str] = mapped_column(String(1000), nullable=False)
