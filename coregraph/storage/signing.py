"""Signed tokens for the URLs coregraph serves itself (local storage: uploads and downloads).

A token is ``base64url(claims) . base64url(HMAC-SHA256(key, "cgs1." + base64url(claims)))``
where the claims are canonical JSON (sorted keys, no spaces) carrying ``exp`` (Unix seconds). The
key is derived from ``COREGRAPH_JWT_SECRET`` with HKDF-SHA256 under a label of its own, so these
tokens and coregraph's JWTs can never stand for one another, and a token is not a JWT any JWT
library would accept. What a token is for (``get`` or ``put``, which file of which tenant) is
in its claims, checked by its reader (``services/file_urls.py``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import time
from typing import Any

import orjson

from coregraph.settings import Settings

VERSION = b"cgs1."
HKDF_LABEL = b"coregraph storage signed url v1"
# A URL path segment: claims of a file URL are ~120 bytes; anything much longer is not ours.
MAX_TOKEN_LENGTH = 2048


@functools.lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the secret, no salt, ``HKDF_LABEL`` as info, 32 bytes: one
    block of the expand step. With ``hmac`` rather than cryptography's HKDF, which gives the same
    key (tests/test_storage_signing.py) but would load cryptography (~9 MiB, coregraph.auth.pyjwt)
    into a server that has no other use for it."""
    pseudorandom = hmac.digest(bytes(hashlib.sha256().digest_size), secret.encode(), "sha256")
    return hmac.digest(pseudorandom, HKDF_LABEL + b"\x01", "sha256")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict: one encoding per value (no padding, no stray or non-canonical characters), so no
    second spelling of a token verifies."""
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _mac(secret: str, body: str) -> bytes:
    return hmac.new(_key(secret), VERSION + body.encode("ascii"), hashlib.sha256).digest()


def sign(
    settings: Settings, claims: dict[str, Any], *, expires_in: int, now: float | None = None
) -> str:
    """A token carrying ``claims`` that ``verify`` accepts for ``expires_in`` seconds."""
    if "exp" in claims:
        raise ValueError("exp is set by sign")
    if expires_in <= 0:
        raise ValueError("expires_in must be positive")
    issued = time.time() if now is None else now
    payload = {**claims, "exp": int(issued) + expires_in}
    body = _b64encode(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
    return f"{body}.{_b64encode(_mac(settings.jwt_secret, body))}"


def verify(settings: Settings, token: str, *, now: float | None = None) -> dict[str, Any] | None:
    """The claims (with ``exp``) of a token this deployment signed and that has not lapsed, or
    None: malformed, tampered, signed with another secret, or expired."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    body, signature = token.split(".")
    try:
        if not body.isascii():
            return None
        given = _b64decode(signature)
        expected = _mac(settings.jwt_secret, body)
        if not hmac.compare_digest(given, expected):
            return None
        claims = orjson.loads(_b64decode(body))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    expires = claims.get("exp")
    current = time.time() if now is None else now
    if not isinstance(expires, int) or isinstance(expires, bool) or current >= expires:
        return None
    return claims
