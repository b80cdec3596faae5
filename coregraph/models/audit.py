"""The audit trail: one row per change, written in the change's own transaction.

Each entry sits in a hash chain: its tenant's, or for an entry outside any tenant (sign-up,
login, sessions) the user's own security log. ``position`` counts the chain gap-free in commit
order and ``hash`` covers the entry's content and the previous entry's hash
(``coregraph.services.audit``), so a changed, removed or inserted row breaks the chain where it
happened. ``StreamHead`` is the chain's head: the unit of work locks it to append, which is what
makes positions follow commit order.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    RowSecurity,
    TenantOwned,
    Timestamped,
    environment_column,
    id_column,
)


class AuditEntry(TenantOwned, Timestamped, Base):
    __tablename__ = "audit_entries"
    __id_prefix__ = "aud"
    # Entries outside any tenant (sign-up, login) are written by anyone, and read only by the
    # user whose security log they are.
    __row_security__ = RowSecurity(
        also_visible="tenant_id IS NULL AND chain_id = current_setting('app.user_id', true)",
        also_writable="tenant_id IS NULL",
    )
    __table_args__ = (
        Index("ix_audit_entries_tenant_env_id", "tenant_id", "environment", "id"),
        # supportTimeline: a tenant's entries newest first, keyset on (created_at, id).
        Index("ix_audit_entries_tenant_created", "tenant_id", "created_at", "id"),
        UniqueConstraint("chain_id", "position"),
    )

    id: Mapped[str] = id_column()
    # None for actions outside any tenant (sign-up, login).
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    environment: Mapped[Environment] = environment_column()
    actor_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(String(30))
    acting_for_user_id: Mapped[str | None] = mapped_column(String(30))
    action: Mapped[str] = mapped_column(String(80), nullable=False)
    target_type: Mapped[str | None] = mapped_column(String(40))
    target_id: Mapped[str | None] = mapped_column(String(30))
    changes: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    # The support session the change was made under (the actor is then the staff member,
    # ``actor_kind`` support). Hashed only when set, so entries made before it existed keep
    # their hashes.
    support_session_id: Mapped[str | None] = mapped_column(String(30))
    # The chain: the tenant, or the user for an entry outside any tenant.
    chain_id: Mapped[str] = mapped_column(String(30), nullable=False)
    position: Mapped[int] = mapped_column(BigInteger, nullable=False)
    previous_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class StreamHead(TenantOwned, Base):
    """Where a chain stands: its last audit position and hash, and (for a tenant) its last
    event sequence number. One row per tenant or per user with a security log."""

    __tablename__ = "stream_heads"
    __row_security__ = RowSecurity(
        tenant_column="chain_id",
        also_visible="chain_id = current_setting('app.user_id', true)",
        also_writable="chain_id = current_setting('app.user_id', true)",
    )

    chain_id: Mapped[str] = mapped_column(String(30), primary_key=True)
    audit_position: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    audit_hash: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    event_sequence: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Where the chain now starts: the position and hash of the last entry retention pruned
    # (0 and "" while nothing was). Verification anchors the first retained entry here.
    audit_pruned_position: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    audit_pruned_hash: Mapped[str] = mapped_column(
        String(64), nullable=False, default="", server_default=""
    )
