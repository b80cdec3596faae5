"""Access tokens: coregraph's own (HMAC) and a configured external issuer's (RSA/EC).

RFC 8725 rules: the accepted algorithm comes from configuration, never from the token's header;
one key, one algorithm; ``iss``, ``aud`` and ``exp`` are always required and checked; ``kid`` only
selects among the configured issuer's JWKS keys, and ``jku``/``x5u`` are never followed. Access
tokens carry ``typ: at+jwt`` (RFC 9068); refresh tokens are opaque random strings, so neither can
pass as the other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from coregraph.auth.jwks import JwksKeys
from coregraph.auth.pyjwt import pyjwt
from coregraph.errors import Unauthenticated
from coregraph.settings import Settings

ACCESS_TOKEN_TYPE = "at+jwt"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
# coregraph's own tokens other than a user's session token say what they are: an agent's own
# (``sub`` the agent) or one an agent got by exchanging a user's (``sub`` the user, ``act`` the
# agent).
KIND_CLAIM = "cg_kind"
AGENT_KIND = "agent"
DELEGATED_KIND = "delegated"
# A platform staff member's impersonation token inside one tenant (``sub`` the staff member,
# ``sup`` the approved support session, ``sid`` their own login session, ``tid`` the tenant).
SUPPORT_KIND = "support"


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    issuer: str
    subject: str
    claims: dict[str, Any]
    external: bool

    @property
    def kind(self) -> str | None:
        return None if self.external else self.claims.get(KIND_CLAIM)

    @property
    def actor(self) -> str | None:
        """The ``act`` claim's subject (RFC 8693): who acts for ``subject``."""
        act = self.claims.get("act")
        if isinstance(act, dict) and isinstance(act.get("sub"), str):
            return str(act["sub"])
        return None

    @property
    def scopes(self) -> frozenset[str] | None:
        """The token's own scope restriction (``scope`` or ``scp``), or None for none."""
        raw = self.claims.get("scope", self.claims.get("scp"))
        if raw is None:
            return None
        if isinstance(raw, str):
            return frozenset(raw.split())
        if isinstance(raw, list):
            return frozenset(str(s) for s in raw)
        return frozenset()


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # cryptography only for an external issuer's keys (coregraph.auth.pyjwt).
        self._jwt = pyjwt(asymmetric=bool(settings.external_jwt_issuer))
        self._jwks: JwksKeys | None = None
        if settings.external_jwt_jwks_url:
            self._jwks = JwksKeys(settings.external_jwt_jwks_url)

    def issue_access_token(self, user_id: str, session_id: str) -> tuple[str, datetime]:
        return self._encode(
            {"sub": user_id, "sid": session_id}, self.settings.access_token_ttl_seconds
        )

    def _encode(self, claims: dict[str, Any], ttl_seconds: int) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=ttl_seconds)
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
            **claims,
        }
        token = self._jwt.encode(
            claims,
            self.settings.jwt_secret,
            algorithm=self.settings.jwt_algorithm,
            headers={"typ": ACCESS_TOKEN_TYPE},
        )
        return token, expires

    def issue_agent_token(
        self, agent_id: str, tenant_id: str, environment: str, ttl_seconds: int
    ) -> tuple[str, datetime]:
        """An agent's own short-lived token (``issueAgentToken``): ``sub`` is the agent."""
        claims = {"sub": agent_id, KIND_CLAIM: AGENT_KIND, "tid": tenant_id, "env": environment}
        return self._encode(claims, ttl_seconds)

    def issue_delegated_token(
        self,
        *,
        user_id: str,
        session_id: str | None,
        agent_id: str,
        tenant_id: str,
        environment: str,
        scopes: frozenset[str],
        ttl_seconds: int,
    ) -> tuple[str, datetime]:
        """RFC 8693's answer: ``sub`` is the user, ``act`` names the agent acting for them,
        ``scope`` the most the exchange granted (the user's and the agent's current rights
        narrow it further on every request). ``sid``: the user's session, when the subject
        token was coregraph's own: ending it ends this token too."""
        claims: dict[str, Any] = {
            "sub": user_id,
            KIND_CLAIM: DELEGATED_KIND,
            "act": {"sub": agent_id},
            "tid": tenant_id,
            "env": environment,
            "scope": " ".join(sorted(scopes)),
        }
        if session_id is not None:
            claims["sid"] = session_id
        return self._encode(claims, ttl_seconds)

    def issue_support_token(
        self,
        *,
        staff_user_id: str,
        staff_session_id: str,
        support_session_id: str,
        tenant_id: str,
        ttl_seconds: int,
    ) -> tuple[str, datetime]:
        """An impersonation token: the staff member in ``tenant_id`` under one approved support
        session. Its rights, the session's state and the staff member's login session are read
        again on every request; the expiry only bounds a token nobody revokes."""
        claims = {
            "sub": staff_user_id,
            KIND_CLAIM: SUPPORT_KIND,
            "sid": staff_session_id,
            "sup": support_session_id,
            "tid": tenant_id,
        }
        return self._encode(claims, ttl_seconds)

    async def verify(self, token: str) -> VerifiedToken:
        """Verify an access token from coregraph or the configured external issuer."""
        try:
            header = self._jwt.get_unverified_header(token)
            unverified = self._jwt.decode(token, options={"verify_signature": False})
        except self._jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token") from exc
        issuer = unverified.get("iss")
        try:
            if issuer == self.settings.jwt_issuer:
                if header.get("typ") != ACCESS_TOKEN_TYPE:
                    raise Unauthenticated("not an access token")
                claims = self._jwt.decode(
                    token,
                    self.settings.jwt_secret,
                    algorithms=[self.settings.jwt_algorithm],
                    audience=self.settings.jwt_audience,
                    issuer=self.settings.jwt_issuer,
                    options={"require": _REQUIRED_CLAIMS},
                )
                kind = claims.get(KIND_CLAIM)
                # A user's session token names its session; an agent's and a delegated token
                # name their tenant (and, delegated, the agent).
                if kind is None and "sid" not in claims:
                    raise Unauthenticated("invalid token")
                if kind is not None and (
                    kind not in (AGENT_KIND, DELEGATED_KIND, SUPPORT_KIND) or "tid" not in claims
                ):
                    raise Unauthenticated("invalid token")
                if kind == SUPPORT_KIND and not ("sup" in claims and "sid" in claims):
                    raise Unauthenticated("invalid token")
                return VerifiedToken(issuer, str(claims["sub"]), claims, external=False)
            if self.settings.external_jwt_issuer and issuer == self.settings.external_jwt_issuer:
                key = await self._external_key(header.get("kid"))
                claims = self._jwt.decode(
                    token,
                    key,
                    algorithms=[self.settings.external_jwt_algorithm],
                    audience=self.settings.external_jwt_audience,
                    issuer=self.settings.external_jwt_issuer,
                    options={"require": _REQUIRED_CLAIMS},
                )
                return VerifiedToken(issuer, str(claims["sub"]), claims, external=True)
        except self._jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except self._jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token") from exc
        raise Unauthenticated("token issuer not accepted")

    async def _external_key(self, kid: str | None) -> Any:
        if self._jwks is not None:
            return await self._jwks.key(kid)
        return self.settings.external_jwt_public_key
