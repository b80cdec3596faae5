"""agents, createAgent, disableAgent, enableAgent, deleteAgent, createAgentKey,
issueAgentToken and exchangeToken (RFC 8693)."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.federation import field

from coregraph.context import Context
from coregraph.models import Agent as AgentRow
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.resolvers.access import CreateApiKeyPayload
from coregraph.schema.access import ApiKey, Environment
from coregraph.schema.agents import Agent, IssuedToken
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.readable import readable
from coregraph.services import agents
from coregraph.services.uow import UnitOfWork

Info = strawberry.Info[Context, None]


@strawberry.input
class CreateAgentInput:
    name: str
    description: str = ""
    scopes: list[str] = strawberry.field(
        description="Permissions of the catalog; never more than you hold yourself."
    )


@strawberry.input
class CreateAgentKeyInput:
    agent_id: strawberry.ID
    name: str
    scopes: list[str] | None = strawberry.field(
        default=None, description="Within the agent's scopes (default: all of them)."
    )
    environment: Environment = EnvironmentValue.LIVE  # type: ignore[valid-type]
    expires_at: datetime | None = None


@strawberry.type
class AgentPayload(MutationPayload):
    agent: Agent | None


def _token(issued: agents.IssuedToken) -> IssuedToken:
    return IssuedToken(
        access_token=issued.access_token,
        token_type="Bearer",
        issued_token_type=agents.TOKEN_TYPE_ACCESS,
        expires_at=issued.expires_at,
        scopes=sorted(issued.scopes),
    )


@strawberry.type
class AgentsQuery:
    @field(requires_scopes=[["agents:manage"]], description="The tenant's agents (not deleted).")
    async def agents(self, info: Info) -> list[Agent] | None:
        ctx = info.context
        statement = (
            readable(ctx.principal, AgentRow, tenant_id=ctx.require_tenant())
            .where(AgentRow.deleted_at.is_(None))
            .order_by(AgentRow.created_at, AgentRow.id)
        )
        return [Agent.from_row(row) for row in await ctx.read(statement)]


@strawberry.type
class AgentsMutation:
    @field(requires_scopes=[["agents:manage"]], description="Create an agent; you sponsor it.")
    async def create_agent(self, info: Info, input: CreateAgentInput) -> AgentPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await agents.create_agent(
                uow,
                ctx.require_tenant(),
                name=input.name,
                description=input.description,
                scopes=input.scopes,
            )
        return AgentPayload(agent=Agent.from_row(row))

    @field(
        requires_scopes=[["agents:manage"]],
        description="Disable an agent: none of its keys or tokens authenticates until enabled.",
    )
    async def disable_agent(self, info: Info, id: strawberry.ID) -> AgentPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await agents.set_disabled(uow, ctx.require_tenant(), str(id), True)
        return AgentPayload(agent=Agent.from_row(row))

    @field(requires_scopes=[["agents:manage"]], description="Enable a disabled agent again.")
    async def enable_agent(self, info: Info, id: strawberry.ID) -> AgentPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await agents.set_disabled(uow, ctx.require_tenant(), str(id), False)
        return AgentPayload(agent=Agent.from_row(row))

    @field(
        requires_scopes=[["agents:manage"]],
        description="Delete an agent and revoke its keys (audit entries keep naming it).",
    )
    async def delete_agent(self, info: Info, id: strawberry.ID) -> AgentPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row = await agents.delete_agent(uow, ctx.require_tenant(), str(id))
        return AgentPayload(agent=Agent.from_row(row))

    @field(
        requires_scopes=[["agents:manage"]],
        description="Issue an API key that authenticates as the agent.",
    )
    async def create_agent_key(
        self, info: Info, input: CreateAgentKeyInput
    ) -> CreateApiKeyPayload | None:
        ctx = info.context
        async with ctx.unit_of_work() as uow:
            row, secret = await agents.create_agent_key(
                uow,
                ctx.require_tenant(),
                str(input.agent_id),
                name=input.name,
                scopes=input.scopes,
                environment=EnvironmentValue(input.environment),
                expires_at=input.expires_at,
            )
        return CreateApiKeyPayload(api_key=ApiKey.from_row(row), secret=secret)

    @field(
        authenticated=True,
        description="A short-lived token of the agent's own (60-3600 s, default 900): for the"
        " agent itself (signed in with its key) or for a person holding agents:manage and"
        " every scope of the agent.",
    )
    async def issue_agent_token(
        self, info: Info, agent_id: strawberry.ID, expires_in: int | None = None
    ) -> IssuedToken | None:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        async with ctx.unit_of_work() as uow:
            issued = await agents.issue_token(
                uow, ctx.runtime.tokens, tenant_id, str(agent_id), expires_in
            )
        return _token(issued)

    @field(
        description="OAuth 2.0 Token Exchange (RFC 8693): a user's access token (subjectToken)"
        " and an agent's key or token (actorToken) for a short-lived token with which the agent"
        " acts for the user in the agent's tenant. Its rights: the user's current permissions,"
        " the agent's current scopes and the scopes asked for here, intersected on every"
        " request. Audited in the tenant as the agent acting for the user."
    )
    async def exchange_token(
        self,
        info: Info,
        subject_token: str,
        actor_token: str,
        scopes: list[str] | None = None,
        expires_in: int | None = None,
    ) -> IssuedToken | None:
        ctx = info.context
        issued, principal = await agents.exchange_token(
            ctx.runtime.authenticator,
            ctx.runtime.tokens,
            ctx.meta,
            subject_token=subject_token,
            actor_token=actor_token,
            scopes=scopes,
            expires_in=expires_in,
        )
        assert principal.tenant_id is not None and principal.agent_id is not None
        async with UnitOfWork(ctx.runtime.engine, principal, ctx.meta) as uow:
            uow.record(
                "agent.token_exchanged",
                tenant_id=principal.tenant_id,
                target_type="Agent",
                target_id=principal.agent_id,
                after={"scopes": sorted(issued.scopes), "expiresAt": issued.expires_at},
            )
        return _token(issued)
