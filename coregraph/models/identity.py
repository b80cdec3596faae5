"""Users, the sessions their refresh tokens stand for, and links to external identity providers."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import Base, Timestamped, UTCDateTime, id_column


class User(Timestamped, Base):
    __tablename__ = "users"
    __id_prefix__ = "usr"

    id: Mapped[str] = id_column()
    email: Mapped[str] = mapped_column(String(254), unique=True, nullable=False)
    display_name: Mapped[str] = mapped_column(String(120), nullable=False, default="")
    # None for users who only ever sign in through an external identity provider.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # Platform staff (``coregraph create-staff``): platform:support or platform:admin. Staff
    # belong to no tenant; they read one only through an approved support session.
    platform_role: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Session(Timestamped, Base):
    """One login. Its refresh token rotates on every use; only the current token's hash is kept.

    Presenting any already-rotated token means it leaked: the whole session is revoked.
    """

    __tablename__ = "sessions"
    __id_prefix__ = "ses"

    id: Mapped[str] = id_column()
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
    refresh_token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    user_agent: Mapped[str | None] = mapped_column(String(400))
    ip: Mapped[str | None] = mapped_column(String(64))


class RetiredRefreshToken(Base):
    """Every refresh token a session has rotated away from. Any of them coming back means a
    copy leaked (OAuth 2.0 Security BCP, refresh token rotation): the session ends."""

    __tablename__ = "retired_refresh_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True, nullable=False)
    retired_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class ExternalIdentity(Timestamped, Base):
    """Maps an external issuer's subject to a coregraph user (no second password)."""

    __tablename__ = "external_identities"
    __id_prefix__ = "ext"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[str] = id_column()
    issuer: Mapped[str] = mapped_column(String(400), nullable=False)
    subject: Mapped[str] = mapped_column(String(400), nullable=False)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True, nullable=False)
