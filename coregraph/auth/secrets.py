"""Random secrets that are shown once and stored only as a hash (refresh tokens, API keys,
invitation tokens). They carry 256 bits of entropy, so a fast hash (SHA-256) is the right one:
there is nothing to brute-force, and lookups by hash stay a single indexed read."""

from __future__ import annotations

import hashlib
import secrets

# Recognisable prefixes let secret scanners find leaked credentials (and say which kind).
API_KEY_PREFIX = {"live": "cg_live_", "test": "cg_test_"}
REFRESH_TOKEN_PREFIX = "cg_rt_"
INVITATION_TOKEN_PREFIX = "cg_inv_"


def generate(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_api_key(token: str) -> bool:
    return token.startswith(tuple(API_KEY_PREFIX.values()))
