"""GraphQL types of the identity domain: users and the tokens a session hands out."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.federation import field, type as ftype

from coregraph.schema.node import Node

if TYPE_CHECKING:
    from coregraph.schema.tenancy import Membership


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

    @classmethod
    def from_row(cls, row: Any, via_tenant_id: str | None) -> User:
        return cls(
            id=strawberry.ID(row.id),
            display_name=row.display_name,
            created_at=row.created_at,
            email=row.email,
            via_tenant_id=via_tenant_id,
        )

    @classmethod
    async def resolve_reference(cls, info: strawberry.Info, id: strawberry.ID) -> User | None:
        from coregraph.schema import lookup

        return await lookup.user(info.context, id)


@strawberry.type(
    description="A signed-in session: a short-lived access token and its refresh token."
)
class AuthPayload:
    access_token: str = strawberry.field(description="Send as 'Authorization: Bearer <token>'.")
    access_token_expires_at: datetime
    refresh_token: str = strawberry.field(
        description="Single use: each refreshSession returns a new one. Store it securely."
    )
    user: User


@strawberry.type
class LogoutPayload:
    ended: bool = strawberry.field(description="Whether a live session was ended.")
