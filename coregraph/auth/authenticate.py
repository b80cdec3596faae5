"""Credentials in, ``Principal`` out: the only place a request's identity is decided.

``Authorization: Bearer <token>`` carries either an API key (``cg_live_…``/``cg_test_…``) or an
access JWT (coregraph's own or the configured external issuer's). The tenant is the API key's, or
the ``X-Tenant-Id`` header checked against the user's memberships; the environment is the key's,
or ``X-Environment`` (``live`` by default).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph import db, ids
from coregraph.auth import secrets
from coregraph.auth.permissions import PERMISSION_KEYS, effective_scopes
from coregraph.auth.principal import ANONYMOUS, Principal, PrincipalKind
from coregraph.auth.tokens import TokenService, VerifiedToken
from coregraph.errors import BadUserInput, Forbidden, Unauthenticated
from coregraph.models import ApiKey, ExternalIdentity, Membership, Role, Session
from coregraph.models.base import Environment
from coregraph.request import RequestMeta
from coregraph.settings import Settings

# lastUsedAt is a hint, not a log: writing it at most once a minute keeps reads read-only.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_API_KEY_TENANTS_KEPT = 10_000

_API_KEY = select(ApiKey.tenant_id).where(ApiKey.secret_hash == bindparam("digest"))
# The key and its creator's current role in the key's tenant (no creator, or a creator no
# longer a member: no permissions, so the key can do nothing).
_API_KEY_WITH_PERMISSIONS = (
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
        Role.permissions.label("creator_permissions"),
    )
    .outerjoin(
        Membership,
        and_(
            Membership.tenant_id == ApiKey.tenant_id,
            Membership.user_id == ApiKey.created_by_user_id,
        ),
    )
    .outerjoin(Role, Role.id == Membership.role_id)
    .where(ApiKey.secret_hash == bindparam("digest"))
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
        # API key (secret hash) -> its tenant, for the keys this process has read (see
        # _api_key_row). Bounded: a forgotten key only costs its next request a round trip.
        self._api_key_tenants: OrderedDict[str, str] = OrderedDict()

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
        return await self._user(token, tenant_id, environment, meta)

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
            user_id, session_id = await self._external_user(token, meta), None
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
                select(Membership.tenant_id, Role.permissions)
                .join(Role, Role.id == Membership.role_id)
                .where(Membership.user_id == user_id)
            )
        else:
            # One round trip: the session must still be live, and it brings the memberships.
            stmt = (
                select(Session.revoked_at, Membership.tenant_id, Role.permissions)
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
        tenant_scopes = {
            row.tenant_id: effective_scopes(frozenset(row.permissions), scope_limit)
            for row in rows
            if row.tenant_id is not None
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
        )

    async def _external_user(self, token: VerifiedToken, meta: RequestMeta) -> str:
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
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("API key is invalid or revoked")
        expires_at = _aware(row.expires_at)
        if expires_at is not None and expires_at <= now:
            raise Unauthenticated("API key has expired")
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
        # A key never exceeds its creator's current rights: demoting or removing the creator
        # narrows or disables the key at once.
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

    async def _api_key_row(self, digest: str) -> Any:
        """The key whose secret hashes to ``digest``, with its creator's current role
        permissions (``creator_permissions``), as the database has them now; None if there is
        no such key.

        Row-level security shows a transaction the key by its hash, but its creator's role only
        within the key's tenant, which the key row tells: two steps in one transaction. The
        tenant a key belongs to never changes, so once a key has been read this process
        remembers its tenant and reads the key and the role in one statement; revocation,
        expiry and the creator's rights are still read afresh for every request."""
        tenant_hint = self._api_key_tenants.get(digest)
        if tenant_hint is not None:
            self._api_key_tenants.move_to_end(digest)
        async with self.engine.connect() as conn:
            if tenant_hint is not None:
                await db.scope_transaction(conn, tenant_ids=(tenant_hint,), api_key_hash=digest)
                row = (await conn.execute(_API_KEY_WITH_PERMISSIONS, {"digest": digest})).first()
                if row is not None and row.tenant_id == tenant_hint:
                    return row
            # Row-level security shows this step only the key whose secret it holds...
            await db.scope_transaction(conn, tenant_ids=(), api_key_hash=digest)
            key = (await conn.execute(_API_KEY, {"digest": digest})).first()
            if key is None:
                return None
            # ...then the key's own tenant, for its creator's current role.
            await db.scope_transaction(conn, tenant_ids=(key.tenant_id,), api_key_hash=digest)
            row = (await conn.execute(_API_KEY_WITH_PERMISSIONS, {"digest": digest})).first()
        if row is not None:
            self._api_key_tenants[digest] = row.tenant_id
            if len(self._api_key_tenants) > _API_KEY_TENANTS_KEPT:
                self._api_key_tenants.popitem(last=False)
        return row


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


def _tenant(header: str | None) -> str | None:
    if not header:
        return None
    value = header.strip()
    if not ids.is_valid(value, "ten"):
        raise BadUserInput("X-Tenant-Id: not a valid tenant id", field="X-Tenant-Id")
    return value
