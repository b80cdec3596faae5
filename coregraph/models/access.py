"""Roles (sets of permissions) and API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    RowSecurity,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    environment_column,
    id_column,
)


class Role(TenantOwned, Timestamped, Base):
    """Built-in roles are copied into every tenant at creation (``builtin``), so a membership
    always points at a row of its own tenant; custom roles are created per tenant."""

    __tablename__ = "roles"
    __id_prefix__ = "rol"
    # A user reads the roles of their own memberships before a tenant is addressed.
    __row_security__ = RowSecurity(
        also_visible="id IN (SELECT role_id FROM memberships"
        " WHERE user_id = current_setting('app.user_id', true))"
    )
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    key: Mapped[str] = mapped_column(String(63), nullable=False)
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    permissions: Mapped[list[str]] = mapped_column(JSONDocument, nullable=False)
    builtin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiKey(TenantOwned, Timestamped, Base):
    __tablename__ = "api_keys"
    __id_prefix__ = "key"
    # Authentication finds a key by the hash of the secret it was shown, before any tenant.
    __row_security__ = RowSecurity(
        also_visible="secret_hash = current_setting('app.api_key_hash', true)",
        also_writable="secret_hash = current_setting('app.api_key_hash', true)",
    )
    __table_args__ = (Index("ix_api_keys_tenant_env_id", "tenant_id", "environment", "id"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    # The first characters of the secret, shown in lists so a person can recognise a key.
    display_prefix: Mapped[str] = mapped_column(String(32), nullable=False)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSONDocument, nullable=False)
    created_by_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Overrides of the tenant plan's operation rate limits for this key (issue 10):
    # {"perSecond": ..., "perMinute": ..., "costPerMinute": ...}, each optional; None = the plan's.
    rate_limits: Mapped[dict[str, int] | None] = mapped_column(JSONDocument)
    # An agent's key (coregraph.services.agents): it authenticates as that agent.
    agent_id: Mapped[str | None] = mapped_column(ForeignKey("agents.id"))
