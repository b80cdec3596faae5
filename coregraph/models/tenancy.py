"""Tenants (workspaces), their members and pending invitations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    RowSecurity,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    id_column,
)


class Tenant(TenantOwned, Timestamped, Base):
    __tablename__ = "tenants"
    __id_prefix__ = "ten"
    __row_security__ = RowSecurity(tenant_column="id")

    id: Mapped[str] = id_column()
    slug: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Audit entries older than this many days are pruned by the worker; None keeps them forever.
    audit_retention_days: Mapped[int | None] = mapped_column(Integer)

    @property
    def tenant_id(self) -> str:
        return self.id


class Membership(TenantOwned, Timestamped, Base):
    __tablename__ = "memberships"
    __id_prefix__ = "mem"
    # Your own memberships are visible before a tenant is addressed (which tenants am I in?).
    __row_security__ = RowSecurity(also_visible="user_id = current_setting('app.user_id', true)")
    # (tenant_id, id) serves keyset pagination of a tenant's members in creation order.
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id"),
        Index("ix_memberships_tenant_id_id", "tenant_id", "id"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    role_id: Mapped[str] = mapped_column(ForeignKey("roles.id"), index=True, nullable=False)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Invitation(TenantOwned, Timestamped, Base):
    """Single use and expiring; only the token's hash is stored."""

    __tablename__ = "invitations"
    __id_prefix__ = "inv"
    # The invitee finds (and accepts) the invitation by its token before joining the tenant.
    __row_security__ = RowSecurity(
        also_visible="token_hash = current_setting('app.invitation_token_hash', true)",
        also_writable="token_hash = current_setting('app.invitation_token_hash', true)",
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True, nullable=False)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    role_id: Mapped[str] = mapped_column(ForeignKey("roles.id"), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    invited_by_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    accepted_by_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
