"""Agents: principals of their own kind inside a tenant (``coregraph.services.agents``).

An agent holds scopes of its own (never more than its creator could grant), authenticates with
its own credential (an agent-marked API key, ``ApiKey.agent_id``, or a short-lived token from
``issueAgentToken``) and may act for a user through a token exchange. Its sponsor is the user
who created it: the person answerable for it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    JSONDocument,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    id_column,
)


class Agent(TenantOwned, Timestamped, Base):
    __tablename__ = "agents"
    __id_prefix__ = "agt"
    __table_args__ = (Index("ix_agents_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(120), nullable=False)
    description: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    scopes: Mapped[list[str]] = mapped_column(JSONDocument, nullable=False)
    sponsor_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Deleted agents keep their row (audit entries name them) but never authenticate again.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
