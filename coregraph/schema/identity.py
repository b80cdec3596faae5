"""GraphQL types of the identity domain: users and the tokens a session hands out."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.federation import field, type as ftype

from coregraph import ids, models
from coregraph.rows import Columns
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.audit import SecurityLogEntry, chain_page, security_log
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.pagination import Connection

if TYPE_CHECKING:
    from coregraph.context import Context
    from coregraph.schema.tenancy import Membership


async def find_user(ctx: Context, id_: str) -> User | None:
    """Yourself, or a member of the tenant this request addresses (users belong to no tenant,
    so the default tenant-row lookup does not apply)."""
    if not ids.is_valid(id_, "usr"):
        return None
    principal = ctx.principal
    loader = ctx.loaders.user if id_ == principal.user_id else ctx.loaders.addressed_tenant_user
    row = await loader.load(id_)
    return User.from_row(row, via_tenant_id=principal.tenant_id) if row else None


@entity(models.User, find=find_user)
@ftype(keys=["id"], authenticated=True, description="A person who can sign in.")
class User(Node):
    id: strawberry.ID
    display_name: str
    created_at: datetime
    # A plain attribute: the policy guard wraps it like any declared field.
    email: str | None = field(policy=[["self"], ["colleague"]])
    # The tenant through which this user was reached; ``colleague`` checks rights there.
    via_tenant_id: strawberry.Private[str | None]

    @property
    def user_id(self) -> str:
        return str(self.id)

    @field(policy=[["self"]], description="Your memberships: which tenants you belong to.")
    async def memberships(
        self, info: strawberry.Info
    ) -> list[Annotated[Membership, strawberry.lazy("coregraph.schema.tenancy")]] | None:
        from coregraph.schema.tenancy import Membership

        rows = await info.context.loaders.memberships_of_user.load(str(self.id))
        return [Membership.from_row(row) for row in rows]

    @field(
        policy=[["self"]],
        description="Your own security log, newest first: what was done with your account "
        "outside any tenant (sign-up, logins, sessions, external sign-in). Only yours: an API "
        "key has no viewer, and anyone else's is FORBIDDEN.",
    )
    async def security_log(
        self, info: strawberry.Info, first: int | None = None, after: str | None = None
    ) -> Connection[SecurityLogEntry] | None:
        stmt = security_log(info.context.principal)
        return await chain_page(info.context, stmt, first, after, SecurityLogEntry.from_row)

    @classmethod
    def from_row(cls, row: Any, via_tenant_id: str | None) -> User:
        id_, display_name, created_at, email = _USER_COLUMNS(row)
        return cls(
            id=strawberry.ID(id_),
            display_name=display_name,
            created_at=created_at,
            email=email,
            via_tenant_id=via_tenant_id,
        )


# A page's rows are read by position (coregraph.rows).
_USER_COLUMNS = Columns("id", "display_name", "created_at", "email")


@strawberry.type(
    description="A signed-in session: a short-lived access token and its refresh token."
)
class AuthPayload(MutationPayload):
    access_token: str = strawberry.field(description="Send as 'Authorization: Bearer <token>'.")
    access_token_expires_at: datetime
    refresh_token: str = strawberry.field(
        description="Single use: each refreshSession returns a new one. Store it securely."
    )
    user: User


@strawberry.type
class LogoutPayload(MutationPayload):
    ended: bool = strawberry.field(description="Whether a live session was ended.")
