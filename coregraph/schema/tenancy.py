"""GraphQL types of the tenancy domain: tenants, memberships, invitations."""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any

import strawberry
from strawberry.federation import field, type as ftype

from coregraph import models
from coregraph.errors import BadUserInput
from coregraph.loaders import load_now_or_later
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.rows import Columns
from coregraph.schema.access import ApiKey, Environment, Role
from coregraph.schema.audit import AuditEntry, AuditFilter, chain_page, tenant_chain
from coregraph.schema.identity import User
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.pagination import Connection, node_selects, paginate
from coregraph.schema.prefetch import NOT_LOADED, prefetched
from coregraph.schema.readable import readable


@entity(models.Tenant)
@ftype(
    keys=["id"],
    requires_scopes=[["tenant:read"]],
    description="A workspace: members, roles, keys and data, split into live and test.",
)
class Tenant(Node):
    id: strawberry.ID
    slug: str
    name: str
    created_at: datetime
    audit_retention_days: int | None = strawberry.field(
        default=None,
        description="Days audit entries are kept before the worker prunes them; null: forever.",
    )

    @property
    def tenant_id(self) -> str:
        return str(self.id)

    @strawberry.field
    def environments(self) -> list[Environment]:  # type: ignore[valid-type]
        return list(EnvironmentValue)

    @field(requires_scopes=[["members:read"]])
    async def members(
        self, info: strawberry.Info, first: int | None = None, after: str | None = None
    ) -> Connection[Membership] | None:
        stmt = readable(info.context.principal, models.Membership, tenant_id=self.tenant_id)
        page = await paginate(
            info.context, stmt, models.Membership.id, first, after, Membership.from_row
        )
        # The page's users and roles in one batch each, converted once per row and handed to
        # the memberships before they resolve: Membership.user and .role then answer
        # synchronously, and graphql-core completes the page without a task per item (about
        # half this query's server CPU under load; see bench/RESULTS.md).
        loaders = info.context.loaders
        memberships = [edge.node for edge in page.edges]
        wants_user, wants_role = node_selects(info, "user"), node_selects(info, "role")
        user_ids = [m.user_id for m in memberships] if wants_user else []
        role_ids = list(dict.fromkeys(m.role_id for m in memberships)) if wants_role else []
        # One after the other: both queries run on the request's one read connection.
        users = await loaders.user.fetch_many(user_ids)
        roles = await loaders.role.fetch_many(role_ids)
        if wants_user:
            for membership, row in zip(memberships, users, strict=True):
                membership.loaded_user = (
                    None if row is None else User.from_row(row, via_tenant_id=self.tenant_id)
                )
        if wants_role:
            converted = {
                key: Role.from_row(row)
                for key, row in zip(role_ids, roles, strict=True)
                if row is not None
            }
            for membership in memberships:
                membership.loaded_role = converted.get(membership.role_id)
        return page

    @field(requires_scopes=[["members:read"], ["roles:manage"]])
    async def roles(self, info: strawberry.Info) -> list[Role] | None:
        roles = readable(info.context.principal, models.Role, tenant_id=self.tenant_id)
        rows = await info.context.read(roles.order_by(models.Role.builtin.desc(), models.Role.key))
        return [Role.from_row(row) for row in rows]

    @field(requires_scopes=[["members:manage"]])
    async def invitations(
        self,
        info: strawberry.Info,
        first: int | None = None,
        after: str | None = None,
        pending_only: bool = True,
    ) -> Connection[Invitation] | None:
        stmt = readable(info.context.principal, models.Invitation, tenant_id=self.tenant_id)
        if pending_only:
            stmt = stmt.where(
                models.Invitation.accepted_at.is_(None),
                models.Invitation.revoked_at.is_(None),
                models.Invitation.expires_at > datetime.now(UTC),
            )
        return await paginate(
            info.context, stmt, models.Invitation.id, first, after, Invitation.from_row
        )

    @field(requires_scopes=[["apikeys:manage"]])
    async def api_keys(
        self,
        info: strawberry.Info,
        environment: Environment | None = None,  # type: ignore[valid-type]
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[ApiKey] | None:
        stmt = readable(info.context.principal, models.ApiKey, tenant_id=self.tenant_id)
        if environment is not None:
            stmt = stmt.where(models.ApiKey.environment == EnvironmentValue(environment).value)
        return await paginate(info.context, stmt, models.ApiKey.id, first, after, ApiKey.from_row)

    @field(
        requires_scopes=[["audit:read"]],
        description="Changes to this tenant, newest first. Filters: the actor, whom it acted"
        " for, an action prefix ('member.'), the target, the environment, and createdAt in"
        " [from, to). "
        "Cursors are chain positions: the auditLog subscription resumes after any of them.",
    )
    async def audit_log(
        self,
        info: strawberry.Info,
        first: int | None = None,
        after: str | None = None,
        environment: Environment | None = None,  # type: ignore[valid-type]
        action: str | None = None,
        target_id: strawberry.ID | None = None,
        actor_id: str | None = None,
        acting_for_user_id: strawberry.ID | None = None,
        support_session_id: strawberry.ID | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None,
        to: datetime | None = None,
    ) -> Connection[AuditEntry] | None:
        entry = models.AuditEntry
        stmt = tenant_chain(info.context.principal, self.tenant_id)
        if environment is not None:
            stmt = stmt.where(entry.environment == EnvironmentValue(environment).value)
        stmt = AuditFilter.checked(
            action=action,
            target_id=target_id,
            actor_id=actor_id,
            acting_for_user_id=None if acting_for_user_id is None else str(acting_for_user_id),
            support_session_id=None if support_session_id is None else str(support_session_id),
        ).where(stmt)
        if from_ is not None:
            stmt = stmt.where(entry.created_at >= _aware(from_, "from"))
        if to is not None:
            stmt = stmt.where(entry.created_at < _aware(to, "to"))
            if from_ is not None and to < from_:
                raise BadUserInput("to: must not be before from", field="to")
        return await chain_page(info.context, stmt, first, after, AuditEntry.from_row)

    @classmethod
    def from_row(cls, row: Any) -> Tenant:
        return cls(
            id=strawberry.ID(row.id),
            slug=row.slug,
            name=row.name,
            created_at=row.created_at,
            audit_retention_days=row.audit_retention_days,
        )


def _aware(value: datetime, field: str) -> datetime:
    if value.tzinfo is None:
        raise BadUserInput(
            f"{field}: give a time with its offset, e.g. 2026-12-02T08:00:00Z", field=field
        )
    return value


@entity(models.Membership)
@ftype(
    keys=["id"],
    authenticated=True,
    policy=[["self"], ["member_directory"]],
    description="A user's place in a tenant, with one role. Yours, or any in a tenant where "
    "you hold members:read.",
)
class Membership(Node):
    id: strawberry.ID
    created_at: datetime
    tenant_id: strawberry.Private[str]
    user_id: strawberry.Private[str]
    role_id: strawberry.Private[str]
    # Set by a list that loaded its page's users and roles up front (Tenant.members).
    loaded_user: strawberry.Private[Any] = NOT_LOADED
    loaded_role: strawberry.Private[Any] = NOT_LOADED

    @strawberry.field(graphql_type=User | None)
    @prefetched("loaded_user")
    def user(self, info: strawberry.Info) -> User | Awaitable[User | None] | None:
        if self.loaded_user is not NOT_LOADED:
            return self.loaded_user  # type: ignore[no-any-return]
        return load_now_or_later(
            info.context.loaders.user,
            self.user_id,
            lambda row: User.from_row(row, via_tenant_id=self.tenant_id),
        )

    @strawberry.field(graphql_type=Role | None)
    @prefetched("loaded_role")
    def role(self, info: strawberry.Info) -> Role | Awaitable[Role | None] | None:
        if self.loaded_role is not NOT_LOADED:
            return self.loaded_role  # type: ignore[no-any-return]
        return load_now_or_later(info.context.loaders.role, self.role_id, Role.from_row)

    @strawberry.field
    async def tenant(self, info: strawberry.Info) -> Tenant | None:
        return Tenant.from_row(await info.context.loaders.tenant.load(self.tenant_id))

    @classmethod
    def from_row(cls, row: Any) -> Membership:
        id_, created_at, tenant_id, user_id, role_id = _MEMBERSHIP_COLUMNS(row)
        return cls(
            id=strawberry.ID(id_),
            created_at=created_at,
            tenant_id=tenant_id,
            user_id=user_id,
            role_id=role_id,
        )


# A page's rows are read by position (coregraph.rows).
_MEMBERSHIP_COLUMNS = Columns("id", "created_at", "tenant_id", "user_id", "role_id")


@strawberry.enum
class InvitationStatus(enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REVOKED = "revoked"
    EXPIRED = "expired"


@entity(models.Invitation)
@ftype(
    keys=["id"],
    requires_scopes=[["members:manage"]],
    description="A single-use, expiring offer to join a tenant.",
)
class Invitation(Node):
    id: strawberry.ID
    email: str
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    tenant_id: strawberry.Private[str]
    role_id: strawberry.Private[str]

    @strawberry.field
    def status(self) -> InvitationStatus:
        if self.accepted_at is not None:
            return InvitationStatus.ACCEPTED
        if self.revoked_at is not None:
            return InvitationStatus.REVOKED
        if self.expires_at <= datetime.now(UTC):
            return InvitationStatus.EXPIRED
        return InvitationStatus.PENDING

    @strawberry.field
    async def role(self, info: strawberry.Info) -> Role | None:
        return Role.from_row(await info.context.loaders.role.load(self.role_id))

    @classmethod
    def from_row(cls, row: Any) -> Invitation:
        return cls(
            id=strawberry.ID(row.id),
            email=row.email,
            expires_at=row.expires_at,
            accepted_at=row.accepted_at,
            revoked_at=row.revoked_at,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
            role_id=row.role_id,
        )
