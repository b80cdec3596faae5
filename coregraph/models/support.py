"""Support sessions: platform staff reading (or acting in) one tenant with its owners' consent
(``coregraph.services.support``).

A session is requested by a staff member with a reason, a duration and a mode (READ or ACT);
the tenant's owners approve or deny it and may revoke it at any moment. While it is approved
and not over, the staff member can take short-lived impersonation tokens for that one tenant.
The row belongs to the tenant (it reads and decides it); the staff member who asked sees it
too, before any tenant is addressed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    RowSecurity,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    id_column,
)


class SupportSession(TenantOwned, Timestamped, Base):
    __tablename__ = "support_sessions"
    __id_prefix__ = "sup"
    # The staff member who asked reads their own requests (to start the approved one) without
    # being a member of the tenant.
    __row_security__ = RowSecurity(
        also_visible="staff_user_id = current_setting('app.user_id', true)"
    )
    __table_args__ = (
        Index("ix_support_sessions_tenant_id_created_at", "tenant_id", "created_at"),
        Index("ix_support_sessions_staff_user_id", "staff_user_id"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    staff_user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), nullable=False)
    reason: Mapped[str] = mapped_column(String(500), nullable=False)
    # read or act (coregraph.auth.principal.SupportMode)
    mode: Mapped[str] = mapped_column(String(8), nullable=False)
    duration_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    # pending, approved, denied or revoked; "expired" is read from the times.
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    # A pending request nobody decided lapses then.
    request_expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decided_by_user_id: Mapped[str | None] = mapped_column(String(30))
    # Set by the approval: approval time + duration. No token outlives it.
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by_user_id: Mapped[str | None] = mapped_column(String(30))
