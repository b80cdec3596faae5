"""Agents: a tenant's non-human principals, their credentials, and acting for a user.

An agent has scopes of its own, never more than its creator holds (``ensure_grantable``), and a
sponsor (its creator): it never exceeds its sponsor's current rights either, so demoting or
removing the sponsor narrows or stops the agent at once. It authenticates with an agent-marked
API key or a short-lived token from ``issue_token``, never a password.

Acting for a user is OAuth 2.0 Token Exchange (RFC 8693): the user's access token (the subject)
and the agent's credential (the actor) buy a short-lived token whose ``sub`` is the user and
whose ``act`` names the agent. Its rights are decided on every request
(``coregraph.auth.authenticate``): the user's current permissions in the agent's tenant, the
agent's current scopes and the scopes asked for in the exchange, intersected — so each of them
shrinking shrinks the token at once. Every audit entry and event of such a request names the
agent as actor and the user as the one it acted for (``acting_for_user_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from coregraph import ids
from coregraph.auth import secrets
from coregraph.auth.authenticate import Authenticator, agent_rights
from coregraph.auth.permissions import PERMISSION_KEYS, with_implied
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.auth.tokens import AGENT_KIND, TokenService
from coregraph.errors import BadUserInput, Forbidden, Unauthenticated
from coregraph.models import Agent, ApiKey
from coregraph.models.base import Environment, utcnow
from coregraph.request import RequestMeta
from coregraph.services import access, validation
from coregraph.services.uow import UnitOfWork

MIN_TOKEN_SECONDS = 60
MAX_TOKEN_SECONDS = 3600
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"


def snapshot(agent: Agent) -> dict[str, object]:
    return {
        "name": agent.name,
        "description": agent.description,
        "scopes": list(agent.scopes),
        "sponsorUserId": agent.sponsor_user_id,
        "disabledAt": agent.disabled_at,
        "deletedAt": agent.deleted_at,
    }


def refuse_agents(principal: Principal, action: str) -> None:
    """Credentials that outlive the request (API keys, agents, agent keys) are made by people:
    an agent — alone, or acting for a user — could otherwise mint one that survives its
    deletion, its disabling and the user's session."""
    if principal.kind is PrincipalKind.AGENT:
        raise Forbidden(f"{action}: agents cannot create credentials; a person does")


def _sponsor(principal: Principal) -> str:
    """The person answerable for an agent: whoever creates it. An API key cannot create one
    (nobody would answer for it), nor can an agent (``refuse_agents``)."""
    refuse_agents(principal, "createAgent")
    if principal.user_id is None:
        raise Forbidden("createAgent: only a person creates agents")
    return principal.user_id


async def create_agent(
    uow: UnitOfWork, tenant_id: str, *, name: str, description: str, scopes: Sequence[str]
) -> Agent:
    sponsor = _sponsor(uow.principal)
    name = validation.text(name, "name", max_length=120)
    description = validation.text(description, "description", max_length=500, min_length=0)
    wanted = access.check_permissions(list(scopes), "scopes")
    if not wanted:
        raise BadUserInput("scopes: name at least one permission", field="scopes")
    access.ensure_grantable(uow, tenant_id, wanted, "scopes", "creating an agent with these scopes")
    agent = Agent(
        id=ids.new_id("agt"),
        tenant_id=tenant_id,
        name=name,
        description=description,
        scopes=wanted,
        sponsor_user_id=sponsor,
        created_at=utcnow(),
    )
    uow.session.add(agent)
    await uow.session.flush()
    uow.record(
        "agent.created",
        tenant_id=tenant_id,
        target_type="Agent",
        target_id=agent.id,
        after=snapshot(agent),
    )
    uow.emit(
        "agent.created",
        tenant_id=tenant_id,
        data={"agentId": agent.id, "name": name, "scopes": wanted, "sponsorUserId": sponsor},
    )
    return agent


async def get_agent(uow: UnitOfWork, tenant_id: str, agent_id: str, field: str = "id") -> Agent:
    validation.object_id(agent_id, "agt", field)
    agent = await uow.session.scalar(
        select(Agent).where(Agent.tenant_id == tenant_id, Agent.id == agent_id)
    )
    if agent is None or agent.deleted_at is not None:
        raise validation.not_found("agent", field)
    return agent


def _changed(uow: UnitOfWork, agent: Agent, before: dict[str, object], change: str) -> None:
    uow.record(
        f"agent.{change}",
        tenant_id=agent.tenant_id,
        target_type="Agent",
        target_id=agent.id,
        before=before,
        after=snapshot(agent),
    )
    uow.emit(
        f"agent.{change}", tenant_id=agent.tenant_id, data={"agentId": agent.id, "name": agent.name}
    )


async def set_disabled(uow: UnitOfWork, tenant_id: str, agent_id: str, disabled: bool) -> Agent:
    """Disable (every credential of the agent stops authenticating, its exchanged tokens too)
    or enable it again. Only who could have granted its scopes may do either."""
    agent = await get_agent(uow, tenant_id, agent_id)
    access.ensure_grantable(uow, tenant_id, agent.scopes, "id", "changing this agent")
    if (agent.disabled_at is not None) == disabled:
        return agent
    before = snapshot(agent)
    agent.disabled_at = utcnow() if disabled else None
    _changed(uow, agent, before, "disabled" if disabled else "enabled")
    return agent


async def delete_agent(uow: UnitOfWork, tenant_id: str, agent_id: str) -> Agent:
    """Delete the agent (its row stays for the audit trail) and revoke its keys."""
    agent = await get_agent(uow, tenant_id, agent_id)
    access.ensure_grantable(uow, tenant_id, agent.scopes, "id", "deleting this agent")
    before = snapshot(agent)
    now = utcnow()
    agent.deleted_at = now
    await uow.session.execute(
        update(ApiKey)
        .where(
            ApiKey.tenant_id == tenant_id, ApiKey.agent_id == agent.id, ApiKey.revoked_at.is_(None)
        )
        .values(revoked_at=now)
    )
    _changed(uow, agent, before, "deleted")
    return agent


async def create_agent_key(
    uow: UnitOfWork,
    tenant_id: str,
    agent_id: str,
    *,
    name: str,
    scopes: Sequence[str] | None,
    environment: Environment,
    expires_at: datetime | None,
) -> tuple[ApiKey, str]:
    """An API key that authenticates as the agent (within the key's and the agent's scopes;
    by default the agent's)."""
    refuse_agents(uow.principal, "createAgentKey")
    agent = await get_agent(uow, tenant_id, agent_id, "agentId")
    wanted = list(agent.scopes) if scopes is None else list(scopes)
    beyond = sorted(set(wanted) - with_implied(frozenset(agent.scopes)))
    if beyond:
        raise BadUserInput(
            f"scopes: beyond the agent's own scopes: {', '.join(beyond)}", field="scopes"
        )
    return await access.create_api_key(
        uow,
        tenant_id,
        name=name,
        scopes=wanted,
        environment=environment,
        expires_at=expires_at,
        agent_id=agent.id,
    )


@dataclass(frozen=True, slots=True)
class IssuedToken:
    access_token: str
    expires_at: datetime
    scopes: frozenset[str]


def _ttl(expires_in: int | None, default: int) -> int:
    seconds = default if expires_in is None else expires_in
    if not MIN_TOKEN_SECONDS <= seconds <= MAX_TOKEN_SECONDS:
        raise BadUserInput(
            f"expiresIn: {MIN_TOKEN_SECONDS} to {MAX_TOKEN_SECONDS} seconds", field="expiresIn"
        )
    return seconds


async def issue_token(
    uow: UnitOfWork, tokens: TokenService, tenant_id: str, agent_id: str, expires_in: int | None
) -> IssuedToken:
    """A short-lived token of the agent's own, for the agent itself (authenticated as it, by
    its key or token, not acting for anyone) or for a person holding ``agents:manage`` and
    every scope of the agent — a token must not lend its holder rights it lacks."""
    principal = uow.principal
    itself = principal.agent_id == agent_id and principal.acting_for_user_id is None
    if not itself:
        refuse_agents(principal, "issueAgentToken")
        if "agents:manage" not in principal.scopes_in(tenant_id):
            raise Forbidden("issueAgentToken: the agent itself, or agents:manage, is required")
    agent = await get_agent(uow, tenant_id, agent_id, "agentId")
    if not itself:
        access.ensure_grantable(
            uow, tenant_id, agent.scopes, "agentId", "issuing this agent's token"
        )
    if agent.disabled_at is not None:
        raise Forbidden("agentId: the agent is disabled", field="agentId")
    environment = uow.principal.environment
    token, expires = tokens.issue_agent_token(
        agent.id, tenant_id, environment.value, _ttl(expires_in, 900)
    )
    uow.record(
        "agent.token_issued",
        tenant_id=tenant_id,
        target_type="Agent",
        target_id=agent.id,
        after={"expiresAt": expires, "environment": environment.value},
    )
    return IssuedToken(token, expires, frozenset(agent.scopes))


async def exchange_token(
    authenticator: Authenticator,
    tokens: TokenService,
    meta: RequestMeta,
    *,
    subject_token: str,
    actor_token: str,
    scopes: Sequence[str] | None,
    expires_in: int | None,
) -> tuple[IssuedToken, Principal]:
    """RFC 8693: the user's token (subject) and the agent's credential (actor) for a token with
    which the agent acts for the user in the agent's tenant. Returns the token and the
    principal it stands for now (for the audit entry). Either credential failing is
    UNAUTHENTICATED; a user who is not a member of the agent's tenant is FORBIDDEN."""
    actor = await _actor(authenticator, actor_token)
    assert actor.agent_id is not None and actor.tenant_id is not None
    tenant_id = actor.tenant_id
    subject = await tokens.verify(subject_token)
    if subject.kind is not None or subject.actor is not None:
        raise Unauthenticated("subjectToken: a user's own access token is required")
    if subject.external:
        user_id = await authenticator.external_user(subject, meta)
        session_id = None
    else:
        user_id, session_id = subject.subject, str(subject.claims["sid"])
    user = await authenticator.user_principal(user_id, session_id, tenant_id=tenant_id)
    agent = await authenticator.active_agent(actor.agent_id, tenant_id)
    granted = user.scopes_in(tenant_id) & agent_rights(
        agent.sponsor_permissions, frozenset(agent.scopes)
    )
    if scopes is not None:
        wanted = set(access.check_permissions(list(scopes), "scopes"))
        beyond = sorted(wanted - granted)
        if beyond:
            raise Forbidden(
                f"scopes: neither the user and the agent together hold {', '.join(beyond)}",
                field="scopes",
                lacking=beyond,
            )
        granted = with_implied(frozenset(wanted)) & granted
    if not granted:
        raise Forbidden("scopes: the user and the agent share no permission in this tenant")
    token, expires = tokens.issue_delegated_token(
        user_id=user_id,
        session_id=session_id,
        agent_id=agent.id,
        tenant_id=tenant_id,
        environment=actor.environment.value,
        scopes=granted & PERMISSION_KEYS,
        ttl_seconds=_within(subject.claims.get("exp"), _ttl(expires_in, 900)),
    )
    principal = Principal(
        kind=PrincipalKind.AGENT,
        agent_id=agent.id,
        acting_for_user_id=user_id,
        tenant_id=tenant_id,
        environment=actor.environment,
        tenant_scopes={tenant_id: granted},
    )
    return IssuedToken(token, expires, granted), principal


def _within(subject_expires: Any, seconds: int) -> int:
    """A delegated token never outlives the user's token it was exchanged for."""
    if not isinstance(subject_expires, int | float):
        return seconds
    left = int(subject_expires - utcnow().timestamp())
    if left < 1:
        raise Unauthenticated("subjectToken: expired")
    return min(seconds, left)


async def _actor(authenticator: Authenticator, actor_token: str) -> Principal:
    """The agent behind an actor credential: its key or its own token, nothing else."""
    if not secrets.is_api_key(actor_token):
        token = await authenticator.tokens.verify(actor_token)
        if token.kind != AGENT_KIND:
            raise Unauthenticated("actorToken: an agent's key or token is required")
    principal = await authenticator.authenticate(f"Bearer {actor_token}", None, None, RequestMeta())
    if principal.kind is not PrincipalKind.AGENT or principal.acting_for_user_id is not None:
        raise Unauthenticated("actorToken: an agent's key or token is required")
    return principal
