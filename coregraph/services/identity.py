"""Users and sessions: sign-up, login, refresh-token rotation, logout, external identities."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import ids
from coregraph.auth import passwords, secrets
from coregraph.auth.principal import ANONYMOUS
from coregraph.auth.tokens import TokenService, VerifiedToken
from coregraph.errors import BadUserInput, Conflict, Unauthenticated
from coregraph.models import ExternalIdentity, RetiredRefreshToken, Session, User
from coregraph.request import RequestMeta
from coregraph.services import emails, validation
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings


@dataclass(frozen=True, slots=True)
class IssuedSession:
    user: User
    session: Session
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str


def user_snapshot(user: User) -> dict[str, object]:
    return {"email": user.email, "displayName": user.display_name}


async def create_user(
    uow: UnitOfWork,
    settings: Settings,
    *,
    email: str,
    password: str,
    display_name: str | None,
) -> User:
    email = emails.canonical(email)
    validation.password(password, settings.password_min_length)
    name = validation.text(display_name or "", "displayName", max_length=120, min_length=0)
    taken = Conflict("email: an account with this email already exists", field="email")
    if await uow.session.scalar(select(User.id).where(User.email == email)):
        raise taken
    user = User(
        id=ids.new_id("usr"),
        email=email,
        display_name=name,
        password_hash=await passwords.hash_password(password),
    )
    uow.session.add(user)
    await uow.flush_unique(taken)
    uow.record(
        "user.signed_up",
        tenant_id=None,
        target_type="User",
        target_id=user.id,
        after=user_snapshot(user),
        actor_id=uow.principal.actor_id or user.id,
    )
    return user


_INVALID_REFRESH = "refresh token is invalid, expired or revoked"


def _record_session(uow: UnitOfWork, action: str, session: Session) -> None:
    """A session's audit entry: the user's own, in no tenant."""
    uow.record(
        action,
        tenant_id=None,
        target_type="Session",
        target_id=session.id,
        actor_id=session.user_id,
    )


async def _open_session(
    uow: UnitOfWork, settings: Settings, tokens: TokenService, user: User
) -> IssuedSession:
    """A new session for ``user`` (sign-up, login), recorded as ``session.created``."""
    refresh = secrets.generate(secrets.REFRESH_TOKEN_PREFIX)
    session = Session(
        id=ids.new_id("ses"),
        user_id=user.id,
        refresh_token_hash=secrets.digest(refresh),
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.refresh_token_ttl_seconds),
        user_agent=(uow.meta.user_agent or "")[:400] or None,
        ip=uow.meta.ip,
    )
    uow.session.add(session)
    await uow.session.flush()
    _record_session(uow, "session.created", session)
    access, expires = tokens.issue_access_token(user.id, session.id)
    return IssuedSession(user, session, access, expires, refresh)


async def sign_up(
    uow: UnitOfWork,
    settings: Settings,
    tokens: TokenService,
    *,
    email: str,
    password: str,
    display_name: str | None,
) -> IssuedSession:
    user = await create_user(
        uow, settings, email=email, password=password, display_name=display_name
    )
    return await _open_session(uow, settings, tokens, user)


async def login(
    uow: UnitOfWork, settings: Settings, tokens: TokenService, *, email: str, password: str
) -> IssuedSession:
    user = None
    try:
        address = emails.canonical(email)
    except BadUserInput:
        address = None  # no account has it: every stored address is canonical
    if address is not None:
        user = await uow.session.scalar(select(User).where(User.email == address))
    # Verify even for an unknown email, so the answer's timing does not reveal accounts.
    ok = await passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        raise Unauthenticated("email or password is wrong")
    return await _open_session(uow, settings, tokens, user)


async def refresh_token_owner(uow: UnitOfWork, refresh_token: str) -> str | None:
    """The user whose session ``refresh_token`` is (or was, before it rotated), if any: what
    refresh attempts are counted against. Every refresh presents a new token, so counting per
    token would never fill."""
    digest = secrets.digest(refresh_token)
    current = select(Session.user_id).where(Session.refresh_token_hash == digest)
    retired = (
        select(Session.user_id)
        .join(RetiredRefreshToken, RetiredRefreshToken.session_id == Session.id)
        .where(RetiredRefreshToken.token_hash == digest)
    )
    return await uow.session.scalar(current) or await uow.session.scalar(retired)


async def refresh_session(
    uow: UnitOfWork, settings: Settings, tokens: TokenService, *, refresh_token: str
) -> IssuedSession:
    digest = secrets.digest(refresh_token)
    now = datetime.now(UTC)
    session = await uow.session.scalar(select(Session).where(Session.refresh_token_hash == digest))
    if session is None:
        reused = await uow.session.scalar(
            select(Session)
            .join(RetiredRefreshToken, RetiredRefreshToken.session_id == Session.id)
            .where(RetiredRefreshToken.token_hash == digest)
        )
        if reused is not None:
            # A rotated token came back: someone else holds a copy. End the whole session.
            await _revoke_on_reuse(uow, reused, now)
        raise Unauthenticated(_INVALID_REFRESH)
    if session.revoked_at is not None or session.expires_at <= now:
        raise Unauthenticated(_INVALID_REFRESH)
    user = await uow.session.get(User, session.user_id)
    assert user is not None
    refresh = secrets.generate(secrets.REFRESH_TOKEN_PREFIX)
    # Compare-and-swap: only the request that still sees this token as current rotates it, so
    # one token raced from two places cannot mint two live successors.
    rotated = await uow.session.execute(
        update(Session)
        .where(
            Session.id == session.id,
            Session.refresh_token_hash == digest,
            Session.revoked_at.is_(None),
        )
        .values(refresh_token_hash=secrets.digest(refresh), last_refreshed_at=now)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], rotated).rowcount != 1:
        # Another request rotated it first: the same token was presented twice.
        await _revoke_on_reuse(uow, session, now)
        raise Unauthenticated(_INVALID_REFRESH)
    uow.session.add(RetiredRefreshToken(token_hash=digest, session_id=session.id, retired_at=now))
    _record_session(uow, "session.refreshed", session)
    await uow.session.refresh(session)
    access, expires = tokens.issue_access_token(user.id, session.id)
    return IssuedSession(user, session, access, expires, refresh)


async def _revoke_on_reuse(uow: UnitOfWork, session: Session, now: datetime) -> None:
    revoked = await uow.session.execute(
        update(Session)
        .where(Session.id == session.id, Session.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], revoked).rowcount != 1:
        return  # already ended
    _record_session(uow, "session.revoked_on_reuse", session)
    await uow.session.flush()
    uow.keep_on_failure()


async def logout(uow: UnitOfWork, *, session_id: str | None, refresh_token: str | None) -> bool:
    """End a session: the caller's own (no refresh token given) or the one a refresh token
    names."""
    stmt = select(Session)
    if refresh_token is not None:
        if not refresh_token.strip():
            # A client bug (an unset variable sent as ""), never "end my own session".
            raise BadUserInput("refreshToken: must not be empty", field="refreshToken")
        stmt = stmt.where(Session.refresh_token_hash == secrets.digest(refresh_token))
    elif session_id:
        stmt = stmt.where(Session.id == session_id)
    else:
        raise Unauthenticated("no session to end")
    session = await uow.session.scalar(stmt)
    if session is None or session.revoked_at is not None:
        return False
    if uow.principal.user_id and session.user_id != uow.principal.user_id:
        return False
    session.revoked_at = datetime.now(UTC)
    _record_session(uow, "session.revoked", session)
    return True


async def user_for_external_token(
    uow: UnitOfWork, settings: Settings, token: VerifiedToken
) -> User:
    """Map an external issuer's subject to a user, creating (or linking) one on first sight.

    An existing account is linked by email only when the issuer says the email is verified (or
    is configured as one whose emails always are); otherwise a new, password-less user is
    created, which takes the email only if verified.
    """
    link = await uow.session.scalar(
        select(ExternalIdentity).where(
            ExternalIdentity.issuer == token.issuer, ExternalIdentity.subject == token.subject
        )
    )
    if link is not None:
        user = await uow.session.get(User, link.user_id)
        assert user is not None
        return user
    raw_email = token.claims.get(settings.external_jwt_email_claim)
    email: str | None = None
    if isinstance(raw_email, str):
        try:
            email = emails.canonical(raw_email)
        except BadUserInput:
            email = None
    stated = token.claims.get("email_verified")
    verified = stated is True or (settings.external_jwt_emails_verified and stated is None)
    user = None
    if email and verified:
        user = await uow.session.scalar(select(User).where(User.email == email))
    if user is None:
        # An unverified address is not the user's: taking it would let whoever merely claims
        # it block its owner's sign-up and accept invitations sent to it.
        # (A verified address was looked up just above and is free.)
        if email is None or not verified:
            email = f"{token.subject[:60]}@{ids.new_id('ext')}.external.invalid".lower()
        user = User(
            id=ids.new_id("usr"),
            email=email,
            display_name=str(token.claims.get("name") or "")[:120],
            password_hash=None,
        )
        uow.session.add(user)
        await uow.session.flush()
        uow.record(
            "user.provisioned_external",
            tenant_id=None,
            target_type="User",
            target_id=user.id,
            after={**user_snapshot(user), "issuer": token.issuer},
            actor_id=user.id,
        )
    uow.session.add(
        ExternalIdentity(
            id=ids.new_id("ext"), issuer=token.issuer, subject=token.subject, user_id=user.id
        )
    )
    uow.record(
        "user.external_identity_linked",
        tenant_id=None,
        target_type="User",
        target_id=user.id,
        after={"issuer": token.issuer, "subject": token.subject},
        actor_id=user.id,
    )
    await uow.session.flush()
    return user


async def provision_external_user(
    engine: AsyncEngine, settings: Settings, token: VerifiedToken, meta: RequestMeta
) -> str:
    """The user id for an external identity seen for the first time, in a unit of work of its
    own (``user_for_external_token``).

    A client's first screen may send several requests at once with a brand-new identity: they
    race to create it, and the losers hit a unique constraint. By then the winner's link is
    committed, so looking again finds it.
    """
    for attempt in range(3):
        try:
            async with UnitOfWork(engine, ANONYMOUS, meta) as uow:
                user = await user_for_external_token(uow, settings, token)
            return user.id
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
