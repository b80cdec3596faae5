"""The audit trail: one row per change, written in the change's own transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ForeignKey, Index, String
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
    # Entries outside any tenant (sign-up, login) are written by anyone and read by no one
    # through the tenant wall.
    __row_security__ = RowSecurity(also_writable="tenant_id IS NULL")
    __table_args__ = (Index("ix_audit_entries_tenant_env_id", "tenant_id", "environment", "id"),)

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
