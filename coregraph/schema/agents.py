"""GraphQL types of agents: a tenant's non-human principals (``coregraph.services.agents``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.federation import field, type as ftype

from coregraph import models
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node

if TYPE_CHECKING:
    from coregraph.schema.identity import User


@entity(models.Agent)
@ftype(
    keys=["id"],
    requires_scopes=[["agents:manage"]],
    description="An agent: a principal of the tenant with scopes of its own, answerable to"
    " its sponsor, authenticating with its own key or token and acting for users only"
    " through a token exchange.",
)
class Agent(Node):
    id: strawberry.ID
    name: str
    description: str
    scopes: list[str] = strawberry.field(
        description="Its own scopes; it never exceeds its sponsor's current rights either."
    )
    disabled: bool
    disabled_at: datetime | None
    created_at: datetime
    tenant_id: strawberry.Private[str]
    sponsor_user_id: strawberry.Private[str | None]

    @field(description="The user who created the agent and answers for it.")
    async def sponsor(
        self, info: strawberry.Info
    ) -> Annotated[User, strawberry.lazy("coregraph.schema.identity")] | None:
        from coregraph.schema.identity import User

        if self.sponsor_user_id is None:
            return None
        row = await info.context.loaders.user.load(self.sponsor_user_id)
        return User.from_row(row, via_tenant_id=self.tenant_id) if row else None

    @classmethod
    def from_row(cls, row: Any) -> Agent:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            description=row.description,
            scopes=list(row.scopes),
            disabled=row.disabled_at is not None,
            disabled_at=row.disabled_at,
            created_at=row.created_at,
            tenant_id=row.tenant_id,
            sponsor_user_id=row.sponsor_user_id,
        )


@strawberry.type(description="A token issued to an agent, or to an agent acting for a user.")
class IssuedToken(MutationPayload):
    access_token: str
    token_type: str = strawberry.field(description="Always 'Bearer'.")
    issued_token_type: str = strawberry.field(
        description="RFC 8693: urn:ietf:params:oauth:token-type:access_token."
    )
    expires_at: datetime
    scopes: list[str] = strawberry.field(
        description="The most it may do; the current rights behind it narrow it further on"
        " every request."
    )
