"""How far the outbox relay got, per chain (``coregraph.streams.relay``).

One row per chain (a tenant, or a user's security log): the last event sequence and the last
audit position published to the broker. The relay compares them with the chain's
``StreamHead`` to find work, and resumes from them after a restart. Only the worker role reads
or writes this table; the API's role has no access to it at all (migration 0009), since it
would show every tenant's activity.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import Base


class RelayPosition(Base):
    __tablename__ = "relay_positions"

    chain_id: Mapped[str] = mapped_column(String(30), primary_key=True)
    events_published: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    audit_published: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
