"""Tenants, memberships and invitations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from coregraph import ids
from coregraph.auth import permissions, secrets
from coregraph.errors import BadUserInput, Conflict, Forbidden, NotFound
from coregraph.models import Invitation, Membership, Role, Tenant, User
from coregraph.services import access, audit_retention, emails, quotas, validation
from coregraph.services.uow import UnitOfWork, diff
from coregraph.settings import Settings


@dataclass(frozen=True, slots=True)
class IssuedInvitation:
    invitation: Invitation
    token: str
    url: str


def tenant_snapshot(tenant: Tenant) -> dict[str, object]:
    return {"slug": tenant.slug, "name": tenant.name}


def _settings_snapshot(tenant: Tenant) -> dict[str, object]:
    """What updateTenant changes, as its audit entry and event state it."""
    return {**tenant_snapshot(tenant), "auditRetentionDays": tenant.audit_retention_days}


# updateTenant's "leave it as it is", told apart from None (keep audit entries forever).
UNCHANGED: Any = object()


async def _refuse_staff(uow: UnitOfWork, user_id: str) -> None:
    """Platform staff belong to no tenant: they enter one only through a support session its
    owners approved (``coregraph.services.support``), never as a member."""
    role = await uow.session.scalar(select(User.platform_role).where(User.id == user_id))
    if role is not None:
        raise Forbidden("platform staff are members of no tenant; ask for a support session")


async def create_tenant(uow: UnitOfWork, *, name: str, slug: str, owner_id: str) -> Tenant:
    """Create a tenant with the built-in roles; ``owner_id`` becomes its owner."""
    name = validation.text(name, "name", max_length=120)
    slug = validation.slug(slug)
    await _refuse_staff(uow, owner_id)
    taken = Conflict(f"slug: '{slug}' is taken", field="slug")
    if await uow.session.scalar(select(Tenant.id).where(Tenant.slug == slug)):
        raise taken
    tenant = Tenant(id=ids.new_id("ten"), slug=slug, name=name)
    await uow.allow_tenant(tenant.id)
    uow.session.add(tenant)
    await uow.flush_unique(taken)
    roles = access.builtin_role_rows(tenant.id)
    uow.session.add_all(roles)
    await uow.session.flush()
    owner_role = next(r for r in roles if r.key == permissions.OWNER_ROLE_KEY)
    membership = Membership(
        id=ids.new_id("mem"), tenant_id=tenant.id, user_id=owner_id, role_id=owner_role.id
    )
    uow.session.add(membership)
    await uow.session.flush()
    # A new tenant has no plan of its own yet: its first seat is recorded, not judged.
    await quotas.seats_changed(uow, tenant.id, thresholds=False)
    uow.record(
        "tenant.created",
        tenant_id=tenant.id,
        target_type="Tenant",
        target_id=tenant.id,
        after=tenant_snapshot(tenant),
    )
    uow.record(
        "member.added",
        tenant_id=tenant.id,
        target_type="Membership",
        target_id=membership.id,
        after={"userId": owner_id, "role": owner_role.key},
    )
    uow.emit(
        "tenant.created",
        tenant_id=tenant.id,
        data={
            "tenantId": tenant.id,
            **tenant_snapshot(tenant),
            "ownerUserId": owner_id,
            "ownerMembershipId": membership.id,
        },
    )
    return tenant


async def update_tenant(
    uow: UnitOfWork,
    tenant_id: str,
    *,
    name: str | None,
    slug: str | None,
    audit_retention_days: int | None = UNCHANGED,
) -> Tenant:
    """Rename, re-slug, or set how long audit entries are kept (``audit_retention_days``:
    None keeps them forever; ``UNCHANGED`` leaves the setting alone)."""
    tenant = await uow.session.get(Tenant, tenant_id)
    if tenant is None:
        raise validation.not_found("tenant")
    before = _settings_snapshot(tenant)
    if name is not None:
        tenant.name = validation.text(name, "name", max_length=120)
    if slug is not None and slug != tenant.slug:
        slug = validation.slug(slug)
        taken = Conflict(f"slug: '{slug}' is taken", field="slug")
        if await uow.session.scalar(select(Tenant.id).where(Tenant.slug == slug)):
            raise taken
        tenant.slug = slug
        await uow.flush_unique(taken)
    if audit_retention_days is not UNCHANGED:
        tenant.audit_retention_days = _retention_days(audit_retention_days)
    tenant.updated_at = datetime.now(UTC)
    uow.record(
        "tenant.updated",
        tenant_id=tenant.id,
        target_type="Tenant",
        target_id=tenant.id,
        before=before,
        after=_settings_snapshot(tenant),
    )
    uow.emit(
        "tenant.updated",
        tenant_id=tenant.id,
        data={"tenantId": tenant.id, **diff(before, _settings_snapshot(tenant))},
    )
    return tenant


def _retention_days(days: int | None) -> int | None:
    low, high = audit_retention.MIN_RETENTION_DAYS, audit_retention.MAX_RETENTION_DAYS
    if days is not None and not low <= days <= high:
        raise BadUserInput(
            f"auditRetentionDays: between {low} and {high} days, or null to keep entries forever",
            field="auditRetentionDays",
        )
    return days


async def _membership(uow: UnitOfWork, tenant_id: str, membership_id: str) -> Membership:
    validation.object_id(membership_id, "mem", "membershipId")
    membership = await uow.session.scalar(
        select(Membership).where(Membership.tenant_id == tenant_id, Membership.id == membership_id)
    )
    if membership is None:
        raise validation.not_found("membership", "membershipId")
    return membership


async def _owner_count(uow: UnitOfWork, tenant_id: str) -> int:
    count = await uow.session.scalar(
        select(func.count())
        .select_from(Membership)
        .join(Role, Role.id == Membership.role_id)
        .where(Membership.tenant_id == tenant_id, Role.key == permissions.OWNER_ROLE_KEY)
    )
    return int(count or 0)


async def acting_user_is_owner(uow: UnitOfWork, tenant_id: str) -> bool:
    """Whether the person behind the request (a user, or an API key's creator) owns the tenant."""
    user_id = uow.principal.user_id or uow.principal.acting_for_user_id
    if user_id is None:
        return False
    key = await uow.session.scalar(
        select(Role.key)
        .join(Membership, Membership.role_id == Role.id)
        .where(Membership.tenant_id == tenant_id, Membership.user_id == user_id)
    )
    return key == permissions.OWNER_ROLE_KEY


async def _guard_owner_change(
    uow: UnitOfWork, tenant_id: str, membership: Membership, new_role: Role | None
) -> Role:
    role = await uow.session.get(Role, membership.role_id)
    assert role is not None
    touches_owner = role.key == permissions.OWNER_ROLE_KEY or (
        new_role is not None and new_role.key == permissions.OWNER_ROLE_KEY
    )
    # Only an owner may make or unmake owners (an admin cannot take over the tenant).
    if touches_owner and not await acting_user_is_owner(uow, tenant_id):
        raise Forbidden("only an owner can grant or remove the owner role", field="role")
    if role.key == permissions.OWNER_ROLE_KEY and (
        new_role is None or new_role.key != permissions.OWNER_ROLE_KEY
    ):
        if await _owner_count(uow, tenant_id) <= 1:
            raise Conflict(
                "the last owner cannot be removed or demoted; make someone else owner first",
                field="membershipId",
            )
    return role


async def remove_member(uow: UnitOfWork, tenant_id: str, membership_id: str) -> Membership:
    membership = await _membership(uow, tenant_id, membership_id)
    role = await _guard_owner_change(uow, tenant_id, membership, None)
    access.ensure_grantable(
        uow, tenant_id, role.permissions, "membershipId", "removing this member"
    )
    uow.record(
        "member.removed",
        tenant_id=tenant_id,
        target_type="Membership",
        target_id=membership.id,
        before={"userId": membership.user_id, "role": role.key},
    )
    uow.emit(
        "member.removed",
        tenant_id=tenant_id,
        data={"membershipId": membership.id, "userId": membership.user_id, "role": role.key},
    )
    await uow.session.delete(membership)
    # Fewer seats reach no threshold.
    await quotas.seats_changed(uow, tenant_id, thresholds=False)
    return membership


async def change_member_role(
    uow: UnitOfWork, tenant_id: str, membership_id: str, role_key: str
) -> Membership:
    membership = await _membership(uow, tenant_id, membership_id)
    new_role = await access.get_role_by_key(uow, tenant_id, role_key)
    old_role = await _guard_owner_change(uow, tenant_id, membership, new_role)
    access.ensure_not_own_membership(uow, membership)
    access.ensure_grantable(
        uow, tenant_id, old_role.permissions, "membershipId", "changing this member's role"
    )
    access.ensure_grantable(uow, tenant_id, new_role.permissions, "role", "assigning this role")
    if old_role.id != new_role.id:
        membership.role_id = new_role.id
        membership.updated_at = datetime.now(UTC)
        uow.record(
            "member.role_changed",
            tenant_id=tenant_id,
            target_type="Membership",
            target_id=membership.id,
            before={"role": old_role.key},
            after={"role": new_role.key},
        )
        uow.emit(
            "member.role_changed",
            tenant_id=tenant_id,
            data={
                "membershipId": membership.id,
                "userId": membership.user_id,
                "before": {"role": old_role.key},
                "after": {"role": new_role.key},
            },
        )
    return membership


def invitation_snapshot(inv: Invitation, role_key: str) -> dict[str, object]:
    return {"email": inv.email, "role": role_key, "expiresAt": inv.expires_at}


async def invite_member(
    uow: UnitOfWork, settings: Settings, tenant_id: str, *, email: str, role_key: str
) -> IssuedInvitation:
    """Create a single-use invitation. coregraph sends no email: the inviter gets the link."""
    email = validation.email(email)
    role = await access.get_role_by_key(uow, tenant_id, role_key)
    if role.key == permissions.OWNER_ROLE_KEY and not await acting_user_is_owner(uow, tenant_id):
        raise Forbidden("only an owner can invite an owner", field="role")
    access.ensure_grantable(uow, tenant_id, role.permissions, "role", "inviting into this role")
    already = await uow.session.scalar(
        select(Membership.id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == tenant_id, User.email == email)
    )
    if already:
        raise Conflict("email: this person is already a member", field="email")
    # Inviting again replaces what was sent before: one live link per person, the newest role.
    now = datetime.now(UTC)
    superseded = await uow.session.scalars(
        select(Invitation).where(
            Invitation.tenant_id == tenant_id,
            Invitation.email == email,
            Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None),
            Invitation.expires_at > now,
        )
    )
    for old in superseded:
        old.revoked_at = now
        uow.record(
            "invitation.revoked",
            tenant_id=tenant_id,
            target_type="Invitation",
            target_id=old.id,
            after={"reason": "superseded by a new invitation"},
        )
        uow.emit(
            "invitation.revoked",
            tenant_id=tenant_id,
            data={
                "invitationId": old.id,
                "email": old.email,
                "reason": "superseded by a new invitation",
            },
        )
    # The invitation reserves a seat until it is accepted, revoked or expires (the ones it
    # supersedes were revoked above).
    await quotas.enforce(
        uow, tenant_id, quotas.SEATS, 1, default_plan=settings.default_plan, count_invitations=True
    )
    token = secrets.generate(secrets.INVITATION_TOKEN_PREFIX)
    invitation = Invitation(
        id=ids.new_id("inv"),
        tenant_id=tenant_id,
        email=email,
        role_id=role.id,
        token_hash=secrets.digest(token),
        invited_by_user_id=uow.principal.user_id or uow.principal.acting_for_user_id,
        expires_at=datetime.now(UTC) + timedelta(seconds=settings.invitation_ttl_seconds),
    )
    uow.session.add(invitation)
    await uow.session.flush()
    uow.record(
        "invitation.created",
        tenant_id=tenant_id,
        target_type="Invitation",
        target_id=invitation.id,
        after=invitation_snapshot(invitation, role.key),
    )
    base = settings.public_url or uow.meta.base_url or f"http://{settings.host}:{settings.port}"
    url = settings.invitation_url_template.format(public_url=base.rstrip("/"), token=token)
    # The link is the one place the token travels: an edge app sends the email from this event.
    uow.emit(
        "member.invited",
        tenant_id=tenant_id,
        data={
            "invitationId": invitation.id,
            **diff(None, invitation_snapshot(invitation, role.key))["after"],
            "invitationUrl": url,
        },
    )
    return IssuedInvitation(invitation, token, url)


async def revoke_invitation(uow: UnitOfWork, tenant_id: str, invitation_id: str) -> Invitation:
    # ``id`` is the name of the GraphQL argument, so a client can point at it.
    validation.object_id(invitation_id, "inv", "id")
    invitation = await uow.session.scalar(
        select(Invitation).where(Invitation.tenant_id == tenant_id, Invitation.id == invitation_id)
    )
    if invitation is None:
        raise validation.not_found("invitation", "id")
    if invitation.accepted_at is None and invitation.revoked_at is None:
        invitation.revoked_at = datetime.now(UTC)
        uow.record(
            "invitation.revoked",
            tenant_id=tenant_id,
            target_type="Invitation",
            target_id=invitation.id,
        )
        uow.emit(
            "invitation.revoked",
            tenant_id=tenant_id,
            data={"invitationId": invitation.id, "email": invitation.email, "reason": None},
        )
    return invitation


async def accept_invitation(
    uow: UnitOfWork, *, token: str, user_id: str, default_plan: str | None = None
) -> Membership:
    """Join the inviting tenant as the signed-in user; the token works once. Its seat was
    reserved when it was sent: refused (QUOTA_EXCEEDED) only when the members alone fill the
    plan's seats (a smaller plan since)."""
    token_hash = secrets.digest(token)
    await uow.reveal_invitation(token_hash)
    invitation = await uow.session.scalar(
        select(Invitation).where(Invitation.token_hash == token_hash)
    )
    now = datetime.now(UTC)
    if invitation is None or invitation.revoked_at is not None:
        raise NotFound("invitation not found", field="token")
    if invitation.accepted_at is not None:
        raise Conflict("token: this invitation was already used", field="token")
    if invitation.expires_at <= now:
        raise BadUserInput("token: this invitation has expired", field="token")
    user = await uow.session.get(User, user_id)
    assert user is not None
    await _refuse_staff(uow, user_id)
    if emails.lookup_key(user.email) != emails.lookup_key(invitation.email):
        raise Forbidden("token: this invitation was sent to another email address", field="token")
    if await uow.session.scalar(
        select(Membership.id).where(
            Membership.tenant_id == invitation.tenant_id, Membership.user_id == user_id
        )
    ):
        raise Conflict("token: you are already a member of this tenant", field="token")
    await uow.allow_tenant(invitation.tenant_id)
    plan = await quotas.enforce(
        uow, invitation.tenant_id, quotas.SEATS, 1, default_plan=default_plan
    )
    invitation.accepted_at = now
    invitation.accepted_by_user_id = user_id
    membership = Membership(
        id=ids.new_id("mem"),
        tenant_id=invitation.tenant_id,
        user_id=user_id,
        role_id=invitation.role_id,
    )
    uow.session.add(membership)
    # A concurrent acceptance of the same token got there first.
    await uow.flush_unique(Conflict("token: this invitation was already used", field="token"))
    await quotas.seats_changed(uow, invitation.tenant_id, plan=plan)
    role = await uow.session.get(Role, invitation.role_id)
    uow.record(
        "invitation.accepted",
        tenant_id=invitation.tenant_id,
        target_type="Invitation",
        target_id=invitation.id,
    )
    uow.record(
        "member.added",
        tenant_id=invitation.tenant_id,
        target_type="Membership",
        target_id=membership.id,
        after={"userId": user_id, "role": role.key if role else None},
    )
    uow.emit(
        "member.joined",
        tenant_id=invitation.tenant_id,
        data={
            "membershipId": membership.id,
            "userId": user_id,
            "role": role.key if role else None,
            "invitationId": invitation.id,
        },
    )
    return membership
