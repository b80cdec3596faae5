"""Support sessions: platform staff in a tenant only with its owners' consent, for a while.

Platform staff (``coregraph create-staff``) are members of no tenant: as themselves they read
nothing of one. A staff member asks (``request_access``: tenant, reason, duration, READ or
ACT); a person holding ``support:manage`` in the tenant (its owners) approves or denies it,
and may revoke it at any moment. While approved and not over, the staff member takes
short-lived impersonation tokens (``start``) for that one tenant, checked against this row on
every request (``coregraph.auth.authenticate``): READ reads and writes nothing, ACT works on
the tenant's data within ``SUPPORT_ACT_SCOPES``. Every transition is audited in the tenant's
chain and evented (``support.requested`` … ``support.started``), and every change made under a
session names it (``support_session_id``) and the staff member (the actor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from coregraph import ids
from coregraph.auth.principal import PlatformRole, Principal, PrincipalKind, SupportMode
from coregraph.auth.tokens import TokenService
from coregraph.errors import BadUserInput, Conflict, Forbidden
from coregraph.models import Membership, SupportSession, Tenant, User
from coregraph.models.base import utcnow
from coregraph.services import emails, identity, validation
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings

MIN_DURATION_SECONDS = 5 * 60
MAX_DURATION_SECONDS = 24 * 3600
# A request nobody decided lapses: consent is given to a current need, not a stale one.
REQUEST_VALID_FOR = timedelta(hours=24)
# An impersonation token lives at most this long (and never past the session's end): the
# session is checked on every request anyway, this only bounds a token that leaks.
TOKEN_SECONDS = 15 * 60

PENDING, APPROVED, DENIED, REVOKED, EXPIRED = "pending", "approved", "denied", "revoked", "expired"


def status_of(row: SupportSession, now: datetime | None = None) -> str:
    """The session's status now: a pending request past its validity and an approved session
    past its end are expired."""
    now = now or utcnow()
    if row.status == PENDING and row.request_expires_at <= now:
        return EXPIRED
    if row.status == APPROVED and (row.ends_at is None or row.ends_at <= now):
        return EXPIRED
    return row.status


def staff_of(principal: Principal, action: str) -> str:
    """The staff member acting as themselves (not through a support token)."""
    if (
        principal.kind is not PrincipalKind.USER
        or principal.platform_role is None
        or principal.user_id is None
    ):
        raise Forbidden(f"{action}: platform staff only")
    return principal.user_id


def _tenant_person(principal: Principal, action: str) -> str:
    """Letting platform staff in is a person's decision: not an API key's, an agent's or a
    support session's own."""
    if principal.kind is not PrincipalKind.USER or principal.user_id is None:
        raise Forbidden(f"{action}: a person holding support:manage decides this")
    return principal.user_id


def _data(row: SupportSession) -> dict[str, object]:
    return {
        "supportSessionId": row.id,
        "staffUserId": row.staff_user_id,
        "reason": row.reason,
        "mode": row.mode.upper(),
        "durationSeconds": row.duration_seconds,
    }


def _snapshot(row: SupportSession) -> dict[str, object]:
    return {
        "staffUserId": row.staff_user_id,
        "reason": row.reason,
        "mode": row.mode,
        "durationSeconds": row.duration_seconds,
        "status": row.status,
        "endsAt": row.ends_at,
        "decidedByUserId": row.decided_by_user_id,
        "revokedByUserId": row.revoked_by_user_id,
    }


def _state(
    uow: UnitOfWork, row: SupportSession, change: str, before: dict[str, object] | None
) -> None:
    uow.record(
        f"support.{change}",
        tenant_id=row.tenant_id,
        target_type="SupportSession",
        target_id=row.id,
        before=before,
        after=_snapshot(row),
    )
    uow.emit(f"support.{change}", tenant_id=row.tenant_id, data=_data(row))


async def request_access(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    reason: str,
    duration_seconds: int,
    mode: SupportMode,
) -> SupportSession:
    staff_user_id = staff_of(uow.principal, "requestSupportAccess")
    validation.object_id(tenant_id, "ten", "tenantId")
    reason = validation.text(reason, "reason", max_length=500)
    if not MIN_DURATION_SECONDS <= duration_seconds <= MAX_DURATION_SECONDS:
        raise BadUserInput(
            f"duration: {MIN_DURATION_SECONDS} to {MAX_DURATION_SECONDS} seconds",
            field="duration",
        )
    # The request is the tenant's row (its owners decide it): this transaction may write it.
    await uow.allow_tenant(tenant_id)
    if await uow.session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is None:
        raise validation.not_found("tenant", "tenantId")
    now = utcnow()
    row = SupportSession(
        id=ids.new_id("sup"),
        tenant_id=tenant_id,
        staff_user_id=staff_user_id,
        reason=reason,
        mode=mode.value,
        duration_seconds=duration_seconds,
        status=PENDING,
        request_expires_at=now + REQUEST_VALID_FOR,
        created_at=now,
    )
    uow.session.add(row)
    await uow.session.flush()
    _state(uow, row, "requested", None)
    return row


async def get_session(
    uow: UnitOfWork, tenant_id: str, support_session_id: str, field: str = "id"
) -> SupportSession:
    validation.object_id(support_session_id, "sup", field)
    row = await uow.session.scalar(
        select(SupportSession)
        .where(SupportSession.tenant_id == tenant_id, SupportSession.id == support_session_id)
        .with_for_update()
    )
    if row is None:
        raise validation.not_found("support session", field)
    return row


async def decide(
    uow: UnitOfWork, tenant_id: str, support_session_id: str, *, approve: bool
) -> SupportSession:
    """Approve (the session runs from now for its duration) or deny a pending request."""
    action = "approveSupportAccess" if approve else "denySupportAccess"
    decider = _tenant_person(uow.principal, action)
    row = await get_session(uow, tenant_id, support_session_id)
    status = status_of(row)
    if status != PENDING:
        raise Conflict(f"id: the request is {status}, not pending", field="id")
    before = _snapshot(row)
    now = utcnow()
    row.status = APPROVED if approve else DENIED
    row.decided_at = now
    row.decided_by_user_id = decider
    if approve:
        row.ends_at = now + timedelta(seconds=row.duration_seconds)
    _state(uow, row, "approved" if approve else "denied", before)
    return row


async def revoke(uow: UnitOfWork, tenant_id: str, support_session_id: str) -> SupportSession:
    """End a session (or withdraw a pending request) now: its tokens fail at their next
    request."""
    revoker = _tenant_person(uow.principal, "revokeSupportAccess")
    row = await get_session(uow, tenant_id, support_session_id)
    status = status_of(row)
    if status not in (PENDING, APPROVED):
        raise Conflict(f"id: the session is {status} already", field="id")
    before = _snapshot(row)
    row.status = REVOKED
    row.revoked_at = utcnow()
    row.revoked_by_user_id = revoker
    _state(uow, row, "revoked", before)
    return row


async def make_staff(
    uow: UnitOfWork,
    settings: Settings,
    *,
    email: str,
    role: PlatformRole | None,
    password: Callable[[], str] | None,
) -> User:
    """Give a user a platform role (``None``: take it away), creating the user when
    ``password`` is given and nobody has the email yet. Staff belong to no tenant, so a user
    who is a member of one is refused: remove their memberships first."""
    address = emails.lookup_key(email)
    user = await uow.session.scalar(select(User).where(User.email == address))
    if user is None:
        if password is None or role is None:
            raise validation.not_found("user", "email")
        user = await identity.create_user(
            uow, settings, email=email, password=password(), display_name=""
        )
    elif role is not None:
        await uow.reveal_user(user.id)
        member_of = await uow.session.scalar(
            select(func.count()).select_from(Membership).where(Membership.user_id == user.id)
        )
        if member_of:
            raise Conflict(
                f"email: {email} is a member of {member_of} tenant(s); platform staff belong to"
                " none",
                field="email",
            )
    before = {"platformRole": user.platform_role}
    user.platform_role = None if role is None else role.value
    uow.record(
        "user.platform_role_changed",
        tenant_id=None,
        target_type="User",
        target_id=user.id,
        before=before,
        after={"platformRole": user.platform_role},
    )
    return user


@dataclass(frozen=True, slots=True)
class SupportToken:
    access_token: str
    expires_at: datetime
    session: SupportSession


async def start(uow: UnitOfWork, tokens: TokenService, support_session_id: str) -> SupportToken:
    """An impersonation token for the staff member who asked, under their approved session:
    at most ``TOKEN_SECONDS``, never past the session's end, and bound to their own login
    session (logging out ends it too)."""
    staff_user_id = staff_of(uow.principal, "startSupportSession")
    login_session_id = uow.principal.session_id
    if login_session_id is None:
        raise Forbidden("startSupportSession: sign in with coregraph's own login first")
    validation.object_id(support_session_id, "sup", "id")
    # Row-level security shows a staff member their own requests, in whichever tenant.
    tenant_id = await uow.session.scalar(
        select(SupportSession.tenant_id).where(
            SupportSession.id == support_session_id,
            SupportSession.staff_user_id == staff_user_id,
        )
    )
    if tenant_id is None:
        # Another staff member's session: the same answer as one that does not exist.
        raise validation.not_found("support session", "id")
    await uow.allow_tenant(tenant_id)
    row = await get_session(uow, tenant_id, support_session_id)
    status = status_of(row)
    if status != APPROVED or row.ends_at is None:
        raise Forbidden(f"id: the support session is {status}, not approved", field="id")
    seconds = min(TOKEN_SECONDS, int((row.ends_at - utcnow()).total_seconds()))
    if seconds < 1:
        raise Forbidden("id: the support session is over", field="id")
    token, expires = tokens.issue_support_token(
        staff_user_id=staff_user_id,
        staff_session_id=login_session_id,
        support_session_id=row.id,
        tenant_id=tenant_id,
        ttl_seconds=seconds,
    )
    uow.record(
        "support.started",
        tenant_id=tenant_id,
        target_type="SupportSession",
        target_id=row.id,
        after={"tokenExpiresAt": expires, "mode": row.mode},
    )
    uow.emit("support.started", tenant_id=tenant_id, data=_data(row))
    return SupportToken(token, expires, row)
