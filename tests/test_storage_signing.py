"""Signed URL tokens (coregraph/storage/signing.py): they carry their claims until they lapse,
and a changed byte, another deployment's secret or a JWT is refused."""

from __future__ import annotations

import base64

import jwt
import orjson
import pytest

from coregraph.settings import Settings
from coregraph.storage import signing

SECRET = "storage-signing-test-secret-0123456789-abcdef"
SETTINGS = Settings(jwt_secret=SECRET)  # type: ignore[call-arg]
CLAIMS = {"p": "get", "t": "ten_aaaa", "f": "fil_bbbb"}


def encode(claims: dict[str, object]) -> str:
    canonical = orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)
    return base64.urlsafe_b64encode(canonical).rstrip(b"=").decode()


def test_a_token_carries_its_claims_until_it_lapses() -> None:
    token = signing.sign(SETTINGS, CLAIMS, expires_in=300, now=1000.0)
    assert signing.verify(SETTINGS, token, now=1000.0) == {**CLAIMS, "exp": 1300}
    assert signing.verify(SETTINGS, token, now=1299.9) == {**CLAIMS, "exp": 1300}
    assert signing.verify(SETTINGS, token, now=1300.0) is None
    assert signing.verify(SETTINGS, token, now=5000.0) is None
    # Without a clock given, the real one: a fresh token verifies now.
    assert signing.verify(SETTINGS, signing.sign(SETTINGS, CLAIMS, expires_in=60)) is not None


def test_a_changed_claim_or_signature_is_refused() -> None:
    token = signing.sign(SETTINGS, CLAIMS, expires_in=300, now=1000.0)
    body, signature = token.split(".")
    for changed in [{**CLAIMS, "t": "ten_cccc", "exp": 1300}, {**CLAIMS, "exp": 99999}]:
        forged = encode(changed) + "." + signature
        assert signing.verify(SETTINGS, forged, now=1000.0) is None
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert signing.verify(SETTINGS, f"{body}.{flipped}", now=1000.0) is None
    for spelling in [f"{body}.{signature}=", f"{body}.{signature}!", f" {token}", f"{token}."]:
        assert signing.verify(SETTINGS, spelling, now=1000.0) is None, spelling
    for garbage in ["", ".", "a.b", "é.é", "x" * 5000, f"{body}.{signature}.{signature}"]:
        assert signing.verify(SETTINGS, garbage, now=1000.0) is None


def test_another_secret_refuses_the_token() -> None:
    token = signing.sign(SETTINGS, CLAIMS, expires_in=300)
    other = Settings(jwt_secret=SECRET + "-rotated")  # type: ignore[call-arg]
    assert signing.verify(other, token) is None


def test_tokens_and_jwts_never_stand_for_one_another() -> None:
    token = signing.sign(SETTINGS, CLAIMS, expires_in=300)
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_aud": False})
    access = jwt.encode({**CLAIMS, "exp": 2**40}, SECRET, algorithm="HS256")
    assert signing.verify(SETTINGS, access) is None


def test_sign_owns_the_expiry() -> None:
    with pytest.raises(ValueError):
        signing.sign(SETTINGS, {**CLAIMS, "exp": 2**40}, expires_in=300)
    with pytest.raises(ValueError):
        signing.sign(SETTINGS, CLAIMS, expires_in=0)


@pytest.mark.parametrize("secret", [SECRET, "x", "ünïcode-secret", "s" * 500])
def test_the_signing_key_is_hkdf_sha256_of_the_secret(secret: str) -> None:
    # Derived with hmac (no cryptography at startup); cryptography's HKDF is the reference, so
    # URLs signed before and after the change verify alike.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    reference = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=signing.HKDF_LABEL)
    assert signing._key(secret) == reference.derive(secret.encode())
