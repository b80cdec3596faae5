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

import jwt

from coregraph.auth.jwks import JwksKeys
from coregraph.errors import Unauthenticated
from coregraph.settings import Settings

ACCESS_TOKEN_TYPE = "at+jwt"
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    issuer: str
    subject: str
    claims: dict[str, Any]
    external: bool

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
        self._jwks: JwksKeys | None = None
        if settings.external_jwt_jwks_url:
            self._jwks = JwksKeys(settings.external_jwt_jwks_url)

    def issue_access_token(self, user_id: str, session_id: str) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self.settings.access_token_ttl_seconds)
        claims = {
            "iss": self.settings.jwt_issuer,
            "aud": self.settings.jwt_audience,
            "sub": user_id,
            "sid": session_id,
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(
            claims,
            self.settings.jwt_secret,
            algorithm=self.settings.jwt_algorithm,
            headers={"typ": ACCESS_TOKEN_TYPE},
        )
        return token, expires

    async def verify(self, token: str) -> VerifiedToken:
        """Verify an access token from coregraph or the configured external issuer."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token") from exc
        issuer = unverified.get("iss")
        try:
            if issuer == self.settings.jwt_issuer:
                if header.get("typ") != ACCESS_TOKEN_TYPE:
                    raise Unauthenticated("not an access token")
                claims = jwt.decode(
                    token,
                    self.settings.jwt_secret,
                    algorithms=[self.settings.jwt_algorithm],
                    audience=self.settings.jwt_audience,
                    issuer=self.settings.jwt_issuer,
                    options={"require": [*_REQUIRED_CLAIMS, "sid"]},
                )
                return VerifiedToken(issuer, str(claims["sub"]), claims, external=False)
            if self.settings.external_jwt_issuer and issuer == self.settings.external_jwt_issuer:
                key = await self._external_key(header.get("kid"))
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[self.settings.external_jwt_algorithm],
                    audience=self.settings.external_jwt_audience,
                    issuer=self.settings.external_jwt_issuer,
                    options={"require": _REQUIRED_CLAIMS},
                )
                return VerifiedToken(issuer, str(claims["sub"]), claims, external=True)
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token") from exc
        raise Unauthenticated("token issuer not accepted")

    async def _external_key(self, kid: str | None) -> Any:
        if self._jwks is not None:
            return await self._jwks.key(kid)
        return self.settings.external_jwt_public_key
