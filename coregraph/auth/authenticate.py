"""Credentials in, ``Principal`` out: the only place a request's identity is decided.

``Authorization: Bearer <token>`` carries either an API key (``cg_live_…``/``cg_test_…``) or an
access JWT (coregraph's own or the configured external issuer's). The tenant is the API key's, or
the ``X-Tenant-Id`` header checked against the user's memberships; the environment is the key's,
or ``X-Environment`` (``live`` by default).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, column, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from coregraph import db, ids
from coregraph.auth import secrets
from coregraph.auth.permissions import (
    PERMISSION_KEYS,
    SUPPORT_ACT_SCOPES,
    SUPPORT_READ_SCOPES,
    effective_scopes,
    with_implied,
)
from coregraph.auth.principal import (
    ANONYMOUS,
    PlatformRole,
    Principal,
    PrincipalKind,
    SupportMode,
)
from coregraph.auth.tokens import AGENT_KIND, SUPPORT_KIND, TokenService, VerifiedToken
from coregraph.errors import BadUserInput, Forbidden, Unauthenticated
from coregraph.group_commit import GroupCommit
from coregraph.models import (
    Agent,
    ApiKey,
    ExternalIdentity,
    Membership,
    Role,
    Session,
    SupportSession,
    User,
)
from coregraph.models.base import Environment
from coregraph.request import RequestMeta
from coregraph.settings import Settings

# lastUsedAt is a hint, not a log: writing it at most once a minute keeps reads read-only.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# At most this many requests share one read of their API key.
_API_KEY_READ_SHARED_BY = 256

# An agent key's agent's sponsor and their role (the key's creator may be someone else).
_SPONSOR = aliased(Membership)
_SPONSOR_ROLE = aliased(Role)
# The key and its creator's current role in the key's tenant (no creator, or a creator no
# longer a member: no permissions, so the key can do nothing).
_API_KEY_AND_PERMISSIONS = (
    select(
        ApiKey.id,
        ApiKey.tenant_id,
        ApiKey.environment,
        ApiKey.scopes,
        ApiKey.expires_at,
        ApiKey.revoked_at,
        ApiKey.last_used_at,
        ApiKey.created_by_user_id,
        ApiKey.rate_limits,
        ApiKey.agent_id,
        Role.permissions.label("creator_permissions"),
        Agent.scopes.label("agent_scopes"),
        Agent.disabled_at.label("agent_disabled_at"),
        Agent.deleted_at.label("agent_deleted_at"),
        _SPONSOR_ROLE.permissions.label("sponsor_permissions"),
    )
    .outerjoin(
        Membership,
        and_(
            Membership.tenant_id == ApiKey.tenant_id,
            Membership.user_id == ApiKey.created_by_user_id,
        ),
    )
    .outerjoin(Role, Role.id == Membership.role_id)
    .outerjoin(Agent, and_(Agent.id == ApiKey.agent_id, Agent.tenant_id == ApiKey.tenant_id))
    .outerjoin(
        _SPONSOR,
        and_(_SPONSOR.tenant_id == Agent.tenant_id, _SPONSOR.user_id == Agent.sponsor_user_id),
    )
    .outerjoin(_SPONSOR_ROLE, _SPONSOR_ROLE.id == _SPONSOR.role_id)
)
_API_KEY_WITH_PERMISSIONS = _API_KEY_AND_PERMISSIONS.where(
    ApiKey.secret_hash == bindparam("digest")
)
# The same columns, with the same types, from migration 0022's function (PostgreSQL).
_API_KEY_PRINCIPAL = text("SELECT * FROM api_key_principal(:digest)").columns(
    *(column(c.name, c.type) for c in _API_KEY_AND_PERMISSIONS.selected_columns)
)
# A row of _API_KEY_PRINCIPAL as the driver returns it, with its columns as attributes.
_ApiKeyRow = namedtuple(  # type: ignore[misc]
    "_ApiKeyRow", [c.name for c in _API_KEY_AND_PERMISSIONS.selected_columns]
)
# The same by id and tenant: an approval request's key, when the request runs.
_API_KEY_BY_ID = _API_KEY_AND_PERMISSIONS.where(
    ApiKey.id == bindparam("key_id"), ApiKey.tenant_id == bindparam("tenant_id")
)
# An agent of a tenant and its sponsor's current role there: an agent never exceeds the rights
# of the person answerable for it.
_AGENT = (
    select(
        Agent.id,
        Agent.scopes,
        Agent.disabled_at,
        Agent.deleted_at,
        Role.permissions.label("sponsor_permissions"),
    )
    .outerjoin(
        Membership,
        and_(Membership.tenant_id == Agent.tenant_id, Membership.user_id == Agent.sponsor_user_id),
    )
    .outerjoin(Role, Role.id == Membership.role_id)
    .where(Agent.id == bindparam("agent_id"), Agent.tenant_id == bindparam("tenant_id"))
)

# A support token's session, its staff member's platform role and their login session, in one
# round trip.
_SUPPORT_SESSION = (
    select(
        SupportSession.status,
        SupportSession.mode,
        SupportSession.ends_at,
        SupportSession.revoked_at,
        User.platform_role,
        Session.revoked_at.label("login_revoked_at"),
    )
    .join(User, User.id == SupportSession.staff_user_id)
    .join(Session, and_(Session.user_id == User.id, Session.id == bindparam("session_id")))
    .where(
        SupportSession.id == bindparam("support_session_id"),
        SupportSession.tenant_id == bindparam("tenant_id"),
        SupportSession.staff_user_id == bindparam("staff_user_id"),
    )
)


ProvisionExternalUser = Callable[[VerifiedToken, RequestMeta], Awaitable[str]]


class Authenticator:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        tokens: TokenService,
        provision_external_user: ProvisionExternalUser,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.tokens = tokens
        self.provision_external_user = provision_external_user
        # Requests presenting one key at the same moment share its read (_api_key_row).
        self._api_key_reads: GroupCommit[str, Any] = GroupCommit(
            self._read_api_key_for,
            lambda _digest: 1,
            _API_KEY_READ_SHARED_BY,
            lambda _error: False,
        )

    async def authenticate(
        self,
        authorization: str | None,
        tenant_header: str | None,
        environment_header: str | None,
        meta: RequestMeta,
    ) -> Principal:
        environment = _environment(environment_header)
        tenant_id = _tenant(tenant_header)
        if not authorization:
            if tenant_id is not None:
                raise Unauthenticated("X-Tenant-Id needs a credential")
            return ANONYMOUS
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("Authorization must be 'Bearer <token or API key>'")
        if secrets.is_api_key(credential):
            return await self._api_key(credential, tenant_id, environment_header)
        token = await self.tokens.verify(credential)
        if "act" in token.claims and token.actor is None:
            # Someone else acts for the subject, but not in a form we can check: never take
            # such a token as the subject's own.
            raise Unauthenticated("the token's act claim names no actor")
        if token.kind == AGENT_KIND:
            return await self._agent(token, tenant_id, environment_header)
        if token.kind == SUPPORT_KIND:
            return await self._support(token, tenant_id, environment)
        if token.actor is not None:
            return await self._delegated(token, tenant_id, environment, meta)
        return await self._user(token, tenant_id, environment, meta)

    async def _agent(
        self, token: VerifiedToken, tenant_header: str | None, environment_header: str | None
    ) -> Principal:
        """An agent's own token (``issueAgentToken``): its tenant and environment are the
        token's; its rights the agent's scopes within its sponsor's current ones."""
        tenant_id, environment = _token_tenant(token, tenant_header, environment_header)
        agent = await self.active_agent(token.subject, tenant_id)
        scopes = agent_rights(agent.sponsor_permissions, frozenset(agent.scopes))
        narrowed = token.scopes & PERMISSION_KEYS if token.scopes is not None else None
        if narrowed is not None:
            scopes &= with_implied(narrowed)
        return Principal(
            kind=PrincipalKind.AGENT,
            agent_id=agent.id,
            tenant_id=tenant_id,
            environment=environment,
            tenant_scopes={tenant_id: scopes},
        )

    async def _delegated(
        self,
        token: VerifiedToken,
        tenant_header: str | None,
        environment: Environment,
        meta: RequestMeta,
    ) -> Principal:
        """An agent acting for a user (RFC 8693): coregraph's exchanged token, or an external
        issuer's token whose ``act`` claim names a known agent of the addressed tenant. What it
        may do is, on every request, the user's current rights there, the agent's current
        scopes and the token's own scope, intersected."""
        agent_id = token.actor
        assert agent_id is not None
        if token.external:
            if tenant_header is None:
                raise Unauthenticated("a token with an act claim needs X-Tenant-Id")
            tenant_id = tenant_header
            user_id, session_id = await self.external_user(token, meta), None
        else:
            tenant_id, environment = _token_tenant(token, tenant_header, None)
            user_id, session_id = token.subject, token.claims.get("sid")
        if not ids.is_valid(agent_id, "agt"):
            raise Unauthenticated("the token's act claim names no agent")
        agent = await self.active_agent(agent_id, tenant_id)
        user = await self.user_principal(
            user_id, None if session_id is None else str(session_id), tenant_id=tenant_id
        )
        narrowed = token.scopes & PERMISSION_KEYS if token.scopes is not None else None
        scopes = user.scopes_in(tenant_id) & agent_rights(
            agent.sponsor_permissions, frozenset(agent.scopes)
        )
        if narrowed is not None:
            scopes &= with_implied(narrowed)
        return Principal(
            kind=PrincipalKind.AGENT,
            agent_id=agent.id,
            acting_for_user_id=user_id,
            tenant_id=tenant_id,
            environment=environment,
            tenant_scopes={tenant_id: scopes},
            scope_limit=scopes,
        )

    async def active_agent(self, agent_id: str, tenant_id: str) -> Any:
        """The agent with its sponsor's current permissions, if it may act; else refused."""
        async with self.engine.connect() as conn:
            await db.scope_transaction(conn, tenant_ids=(tenant_id,))
            row = (
                await conn.execute(_AGENT, {"agent_id": agent_id, "tenant_id": tenant_id})
            ).first()
        if row is None or row.deleted_at is not None:
            raise Unauthenticated("the agent does not exist")
        if row.disabled_at is not None:
            raise Unauthenticated("the agent is disabled")
        return row

    async def _user(
        self,
        token: VerifiedToken,
        tenant_id: str | None,
        environment: Environment,
        meta: RequestMeta,
    ) -> Principal:
        # Only coregraph permissions in a token's scope claim narrow it: an identity provider's
        # "openid profile email" says nothing about tenants and must not strip every right.
        narrowed = token.scopes & PERMISSION_KEYS if token.scopes is not None else None
        if token.external:
            user_id, session_id = await self.external_user(token, meta), None
        else:
            user_id, session_id = token.subject, str(token.claims["sid"])
        return await self.user_principal(
            user_id,
            session_id,
            tenant_id=tenant_id,
            environment=environment,
            scope_limit=narrowed or None,
        )

    async def user_principal(
        self,
        user_id: str,
        session_id: str | None,
        *,
        tenant_id: str | None = None,
        environment: Environment = Environment.LIVE,
        scope_limit: frozenset[str] | None = None,
    ) -> Principal:
        """The user's principal with their tenant scopes as the database has them now. With a
        ``session_id`` (coregraph's own tokens) the session must still be live; an external
        issuer's token has none. Also what a just-issued session acts as (``login``)."""
        stmt: Any
        if session_id is None:
            stmt = (
                select(User.platform_role, Membership.tenant_id, Role.permissions)
                .select_from(User)
                .outerjoin(Membership, Membership.user_id == User.id)
                .outerjoin(Role, Role.id == Membership.role_id)
                .where(User.id == user_id)
            )
        else:
            # One round trip: the session must still be live, and it brings the memberships.
            stmt = (
                select(
                    Session.revoked_at, User.platform_role, Membership.tenant_id, Role.permissions
                )
                .join(User, User.id == Session.user_id)
                .outerjoin(Membership, Membership.user_id == Session.user_id)
                .outerjoin(Role, Role.id == Membership.role_id)
                .where(Session.id == session_id, Session.user_id == user_id)
            )
        async with self.engine.connect() as conn:
            # Row-level security: this step sees the user's own memberships and their roles.
            await db.scope_transaction(conn, tenant_ids=(), user_id=user_id)
            rows = (await conn.execute(stmt)).all()
        if session_id is not None and (not rows or rows[0].revoked_at is not None):
            raise Unauthenticated("session has ended")
        platform_role = _platform_role(rows[0].platform_role) if rows else None
        # Platform staff hold nothing in any tenant as themselves, even should a membership
        # row exist: they read a tenant only through a support session (``_support``).
        tenant_scopes = {
            row.tenant_id: effective_scopes(frozenset(row.permissions), scope_limit)
            for row in rows
            if row.tenant_id is not None and platform_role is None
        }
        if tenant_id is not None and tenant_id not in tenant_scopes:
            raise Forbidden("X-Tenant-Id: not a member of this tenant", field="X-Tenant-Id")
        return Principal(
            kind=PrincipalKind.USER,
            user_id=user_id,
            session_id=session_id,
            tenant_id=tenant_id,
            environment=environment,
            tenant_scopes=tenant_scopes,
            scope_limit=scope_limit,
            platform_role=platform_role,
        )

    async def _support(
        self, token: VerifiedToken, tenant_header: str | None, environment: Environment
    ) -> Principal:
        """A staff member's impersonation token: checked against the database on every request
        (the support session still approved, not revoked, not over; the staff member still
        staff and their login session live), so revoking it stops the very next request."""
        tenant_id = str(token.claims["tid"])
        if tenant_header is not None and tenant_header != tenant_id:
            raise Forbidden(
                "X-Tenant-Id: this support token is for another tenant", field="X-Tenant-Id"
            )
        staff_user_id, support_session_id = token.subject, str(token.claims["sup"])
        async with self.engine.connect() as conn:
            await db.scope_transaction(conn, tenant_ids=(tenant_id,), user_id=staff_user_id)
            row = (
                await conn.execute(
                    _SUPPORT_SESSION,
                    {
                        "support_session_id": support_session_id,
                        "tenant_id": tenant_id,
                        "staff_user_id": staff_user_id,
                        "session_id": str(token.claims["sid"]),
                    },
                )
            ).first()
        now = datetime.now(UTC)
        if row is None or row.login_revoked_at is not None:
            raise Unauthenticated("the support session or your own session has ended")
        platform_role = _platform_role(row.platform_role)
        if platform_role is None:
            raise Unauthenticated("no longer platform staff")
        if row.status != "approved" or row.revoked_at is not None:
            raise Unauthenticated(f"the support session is {row.status}")
        ends_at = _aware(row.ends_at)
        if ends_at is None or ends_at <= now:
            raise Unauthenticated("the support session is over")
        mode = SupportMode(row.mode)
        scopes = SUPPORT_ACT_SCOPES if mode is SupportMode.ACT else SUPPORT_READ_SCOPES
        return Principal(
            kind=PrincipalKind.SUPPORT,
            staff_user_id=staff_user_id,
            support_session_id=support_session_id,
            support_mode=mode,
            platform_role=platform_role,
            tenant_id=tenant_id,
            environment=environment,
            tenant_scopes={tenant_id: scopes},
            scope_limit=scopes,
        )

    async def external_user(self, token: VerifiedToken, meta: RequestMeta) -> str:
        # First sight of an identity writes a user (a service's job, handed in by the runtime:
        # authentication reads, it does not own the write path).
        async with self.engine.connect() as conn:
            known = await conn.scalar(
                select(ExternalIdentity.user_id).where(
                    ExternalIdentity.issuer == token.issuer,
                    ExternalIdentity.subject == token.subject,
                )
            )
        if known is not None:  # the common case: a read, not a write transaction
            return str(known)
        return await self.provision_external_user(token, meta)

    async def _api_key(
        self, secret: str, tenant_id: str | None, environment_header: str | None
    ) -> Principal:
        digest = secrets.digest(secret)
        row = await self._api_key_row(digest)
        now = datetime.now(UTC)
        _usable_key(row, now)
        if tenant_id is not None and tenant_id != row.tenant_id:
            raise Forbidden(
                "X-Tenant-Id: this API key belongs to another tenant", field="X-Tenant-Id"
            )
        environment = Environment(row.environment)
        if environment_header and _environment(environment_header) != environment:
            raise Forbidden(
                f"X-Environment: this API key is for the {environment} environment",
                field="X-Environment",
            )
        last_used = _aware(row.last_used_at)
        if last_used is None or now - last_used > LAST_USED_RESOLUTION:
            async with self.engine.begin() as conn:
                await db.scope_transaction(conn, tenant_ids=(row.tenant_id,))
                await conn.execute(
                    update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now)
                )
        return _key_principal(row)

    async def requester_principal(self, tenant_id: str, requester: Mapping[str, Any]) -> Principal:
        """The principal that asked for an approval (``services.approvals.requester_of``), as
        it is now: its credential still valid, its rights re-read — and never more than it
        held when it asked. Refused (UNAUTHENTICATED, FORBIDDEN) as a request would be."""
        environment = Environment(str(requester["environment"]))
        then = frozenset(requester.get("scopes") or ())
        key_id = requester.get("apiKeyId")
        principal: Principal
        if key_id is not None:
            async with self.engine.connect() as conn:
                await db.scope_transaction(conn, tenant_ids=(tenant_id,))
                row = (
                    await conn.execute(_API_KEY_BY_ID, {"key_id": key_id, "tenant_id": tenant_id})
                ).first()
            _usable_key(row, datetime.now(UTC))
            principal = _key_principal(row)
        elif requester["kind"] == PrincipalKind.AGENT.value:
            agent = await self.active_agent(str(requester["agentId"]), tenant_id)
            scopes = agent_rights(agent.sponsor_permissions, frozenset(agent.scopes))
            user_id = requester.get("actingForUserId")
            if user_id is not None:
                user = await self.user_principal(str(user_id), None, tenant_id=tenant_id)
                scopes &= user.scopes_in(tenant_id)
            principal = Principal(
                kind=PrincipalKind.AGENT,
                agent_id=agent.id,
                acting_for_user_id=user_id,
                tenant_id=tenant_id,
                tenant_scopes={tenant_id: scopes},
            )
        else:
            principal = await self.user_principal(
                str(requester["userId"]), None, tenant_id=tenant_id
            )
        now = principal.scopes_in(tenant_id) & then
        return replace(
            principal,
            tenant_id=tenant_id,
            environment=environment,
            tenant_scopes={tenant_id: now},
            scope_limit=now,
        )

    async def _api_key_row(self, digest: str) -> Any:
        """The key whose secret hashes to ``digest``, with its creator's current role
        permissions (``creator_permissions``) and its agent's and sponsor's rights, as the
        database has them now; None if there is no such key.

        Nothing about a key is remembered: every request is answered by a read sent after it
        arrived, so a revocation, expiry, demotion or removal committed before a request
        (through any process) binds that request. Requests of this process presenting the
        same key at the same moment share a read (``group_commit``): one that arrives while a
        read of its key is under way waits for the next read, never joins the one already
        sent, which may predate it."""
        return await self._api_key_reads.submit(digest, digest)

    async def _read_api_key_for(self, digests: list[str]) -> list[Any]:
        # One key (the grouping key is the digest), read once for every request waiting.
        row = await self._read_api_key(digests[0])
        return [row] * len(digests)

    async def _read_api_key(self, digest: str) -> Any:
        """PostgreSQL: one autocommitted call to ``api_key_principal()`` (migration 0022),
        which scopes its own transaction for row-level security in the two steps the
        policies need (the key by its hash, then its tenant for the creator's role), as the
        API role. SQLite has no row-level security: the same row in one statement."""
        if self.engine.dialect.name != "postgresql":
            async with self.engine.connect() as conn:
                return (await conn.execute(_API_KEY_WITH_PERMISSIONS, {"digest": digest})).first()
        row = await db.fetch_autocommitted(self.engine, _API_KEY_PRINCIPAL, {"digest": digest})
        return None if row is None else _ApiKeyRow(**row)


def _usable_key(row: Any, now: datetime) -> None:
    """Refuse a key that is unknown, revoked or expired."""
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("API key is invalid or revoked")
    expires_at = _aware(row.expires_at)
    if expires_at is not None and expires_at <= now:
        raise Unauthenticated("API key has expired")


def _key_principal(row: Any) -> Principal:
    """An API key's principal, from its row with its creator's (and agent's) current rights."""
    environment = Environment(row.environment)
    # A key never exceeds its creator's current rights: demoting or removing the creator
    # narrows or disables the key at once.
    if row.agent_id is not None:
        # An agent's key acts as the agent: within the key's and the agent's scopes.
        if row.agent_deleted_at is not None or row.agent_scopes is None:
            raise Unauthenticated("API key is invalid or revoked")
        if row.agent_disabled_at is not None:
            raise Unauthenticated("the agent is disabled")
        # Within the key's and the agent's scopes, and within both its creator's and the
        # agent's sponsor's current rights: a sponsor who left stops the agent.
        granted = agent_rights(row.sponsor_permissions, frozenset(row.agent_scopes))
        limit = with_implied(frozenset(row.scopes)) & granted
        return Principal(
            kind=PrincipalKind.AGENT,
            agent_id=row.agent_id,
            api_key_id=row.id,
            tenant_id=row.tenant_id,
            environment=environment,
            tenant_scopes={
                row.tenant_id: effective_scopes(frozenset(row.creator_permissions or ()), limit)
            },
            rate_limits=row.rate_limits or None,
        )
    return Principal(
        kind=PrincipalKind.API_KEY,
        api_key_id=row.id,
        acting_for_user_id=row.created_by_user_id,
        tenant_id=row.tenant_id,
        environment=environment,
        tenant_scopes={
            row.tenant_id: effective_scopes(
                frozenset(row.creator_permissions or ()), frozenset(row.scopes)
            )
        },
        rate_limits=row.rate_limits or None,
    )


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _environment(header: str | None) -> Environment:
    if not header:
        return Environment.LIVE
    try:
        return Environment(header.strip().lower())
    except ValueError:
        raise BadUserInput(
            "X-Environment: must be 'live' or 'test'", field="X-Environment"
        ) from None


def _platform_role(value: str | None) -> PlatformRole | None:
    try:
        return None if value is None else PlatformRole(value)
    except ValueError:
        return None


def _tenant(header: str | None) -> str | None:
    if not header:
        return None
    value = header.strip()
    if not ids.is_valid(value, "ten"):
        raise BadUserInput("X-Tenant-Id: not a valid tenant id", field="X-Tenant-Id")
    return value


def agent_rights(sponsor_permissions: Any, agent_scopes: frozenset[str]) -> frozenset[str]:
    """What an agent may do at most: its own scopes (with what they include) within its
    sponsor's current role. A sponsor who is no longer a member stops the agent."""
    if sponsor_permissions is None:
        raise Unauthenticated("the agent's sponsor is no longer a member of its tenant")
    return with_implied(frozenset(sponsor_permissions)) & with_implied(agent_scopes)


def _token_tenant(
    token: VerifiedToken, tenant_header: str | None, environment_header: str | None
) -> tuple[str, Environment]:
    """The tenant and environment an agent's or exchanged token is bound to; a header naming
    another is refused, as for API keys."""
    tenant_id = str(token.claims["tid"])
    if tenant_header is not None and tenant_header != tenant_id:
        raise Forbidden("X-Tenant-Id: this token belongs to another tenant", field="X-Tenant-Id")
    try:
        environment = Environment(str(token.claims.get("env", Environment.LIVE.value)))
    except ValueError:
        raise Unauthenticated("invalid token") from None
    if environment_header and _environment(environment_header) != environment:
        raise Forbidden(
            f"X-Environment: this token is for the {environment} environment",
            field="X-Environment",
        )
    return tenant_id, environment
