"""JWT rules (RFC 8725) and the external identity provider option.

Every forged token differs from a valid one in exactly one way, and a valid one is shown to be
accepted first, so each refusal is due to that one defect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from coregraph.settings import DEV_JWT_SECRET, Settings
from tests.auth_support import LoopbackHTTP, assert_unauthenticated, db_rows, loopback_http
from tests.conftest import TEST_WEBHOOK_KEY, make_settings
from tests.support import PASSWORD, Actor, GraphQLClient, Server, running_server, unique

VIEWER = "{ viewer { id email } }"
EXTERNAL_ISSUER = "https://idp.example.test/"
EXTERNAL_AUDIENCE = "coregraph-api"


# --- building tokens by hand ---


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def hmac_token(
    header: dict[str, Any], claims: dict[str, Any], secret: bytes, digest: Any = hashlib.sha256
) -> str:
    """An HMAC-signed JWT built without PyJWT (which refuses PEM keys as HMAC secrets)."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def unsigned_token(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{segment(header)}.{segment(claims)}."


def now() -> int:
    return int(time.time())


# --- coregraph's own tokens ---


@dataclass
class OwnTokens:
    """Forge tokens that claim to be coregraph's, for a real user with a live session."""

    server: Server
    user: Actor
    sid: str

    @property
    def secret(self) -> str:
        return self.server.settings.jwt_secret

    def claims(self, **overrides: Any) -> dict[str, Any]:
        settings = self.server.settings
        claims: dict[str, Any] = {
            "iss": settings.jwt_issuer,
            "aud": settings.jwt_audience,
            "sub": self.user.user_id,
            "sid": self.sid,
            "iat": now(),
            "exp": now() + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self,
        *,
        algorithm: str = "HS256",
        key: Any = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        return jwt.encode(
            self.claims(**claims),
            key if key is not None else self.secret,
            algorithm=algorithm,
            headers={"typ": "at+jwt", **(headers or {})},
        )


@pytest.fixture
async def own(client: GraphQLClient, server: Server) -> OwnTokens:
    user = await client.sign_up()
    sid = jwt.decode(user.token, options={"verify_signature": False})["sid"]
    return OwnTokens(server, user, sid)


async def viewer(client: GraphQLClient, token: str, **kwargs: Any) -> Any:
    return await client.execute(VIEWER, actor=Actor(token=token), **kwargs)


async def refused(client: GraphQLClient, token: str) -> None:
    r = await viewer(client, token)
    assert r.status == 401, r.body
    assert_unauthenticated(r)
    assert r.headers.get("www-authenticate") == "Bearer"


async def test_a_well_formed_own_token_is_accepted(client: GraphQLClient, own: OwnTokens) -> None:
    """The control for the forgeries below: same claims, correct everything."""
    r = await viewer(client, own.token())
    assert r.ok()["viewer"]["id"] == own.user.user_id


async def test_alg_none_is_refused(client: GraphQLClient, own: OwnTokens) -> None:
    for alg in ("none", "None", "NONE", "nOnE"):
        await refused(client, unsigned_token({"alg": alg, "typ": "at+jwt"}, own.claims()))
    # An unsigned token that keeps a (valid) signature from another token is refused too.
    valid_signature = own.token().rsplit(".", 1)[1]
    forged = unsigned_token({"alg": "none", "typ": "at+jwt"}, own.claims()) + valid_signature
    await refused(client, forged)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_a_different_hmac_algorithm_with_the_right_secret_is_refused(
    client: GraphQLClient, own: OwnTokens
) -> None:
    assert own.server.settings.jwt_algorithm == "HS256"
    await refused(client, own.token(algorithm="HS512"))
    await refused(client, own.token(algorithm="HS384"))


async def test_a_wrong_secret_is_refused(client: GraphQLClient, own: OwnTokens) -> None:
    await refused(client, own.token(key="some-other-secret-0123456789-0123456789"))
    await refused(client, own.token(key=DEV_JWT_SECRET))


async def test_an_asymmetric_token_claiming_coregraphs_issuer_is_refused(
    client: GraphQLClient, own: OwnTokens
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(client, own.token(algorithm="RS256", key=key))


async def test_expired_wrong_issuer_and_wrong_audience_are_refused(
    client: GraphQLClient, own: OwnTokens
) -> None:
    await refused(client, own.token(exp=now() - 120, iat=now() - 600))
    await refused(client, own.token(iss="https://someone-else.example"))
    await refused(client, own.token(aud="another-service"))
    await refused(client, own.token(aud=["another-service", "yet-another"]))
    # Each of exp, iss, aud, sub and sid is required, not merely checked when present.
    for claim in ("exp", "aud", "sub", "sid", "iat"):
        claims = own.claims(**{claim: None})
        assert claim not in claims
        headers = {"typ": "at+jwt"}
        await refused(client, jwt.encode(claims, own.secret, algorithm="HS256", headers=headers))
    await refused(client, own.token(iss=None))


async def test_an_own_token_without_the_access_token_type_is_refused(
    client: GraphQLClient, own: OwnTokens
) -> None:
    claims = own.claims()
    no_typ = jwt.encode(claims, own.secret, algorithm="HS256")
    assert "typ" not in jwt.get_unverified_header(no_typ) or (
        jwt.get_unverified_header(no_typ)["typ"] != "at+jwt"
    )
    await refused(client, no_typ)
    await refused(client, jwt.encode(claims, own.secret, algorithm="HS256", headers={"typ": "JWT"}))
    await refused(
        client, jwt.encode(claims, own.secret, algorithm="HS256", headers={"typ": "rt+jwt"})
    )


async def test_a_token_for_an_unknown_session_or_another_user_is_refused(
    client: GraphQLClient, own: OwnTokens
) -> None:
    other = await client.sign_up()
    await refused(client, own.token(sid="ses_00000000000000000000000000"))
    # The session exists but belongs to someone else.
    await refused(client, own.token(sub=other.user_id))


async def test_jku_and_x5u_are_never_followed_for_own_tokens(
    client: GraphQLClient, own: OwnTokens
) -> None:
    attacker_secret = "attacker-secret-0123456789-0123456789-0123"
    with loopback_http({"/jwks.json": {"keys": [{"kty": "oct", "k": b64url(b"x" * 32)}]}}) as bait:
        for header in (
            {"jku": bait.url("/jwks.json")},
            {"x5u": bait.url("/cert.pem")},
            {"jku": bait.url("/jwks.json"), "kid": "attacker"},
        ):
            await refused(client, own.token(key=attacker_secret, headers=header))
        # With the right secret the header is just ignored: still no fetch.
        r = await viewer(client, own.token(headers={"jku": bait.url("/jwks.json")}))
        assert r.ok()["viewer"]["id"] == own.user.user_id
        assert bait.requests == []


# --- an external identity provider ---


@dataclass
class IdP:
    """A fake company identity provider: a signing key, a JWKS on loopback, and a coregraph
    server configured to trust it."""

    private_key: Any
    algorithm: str
    kid: str
    jwks: LoopbackHTTP | None
    server: Server
    client: GraphQLClient

    def token(
        self,
        sub: str | None = None,
        *,
        key: Any = None,
        algorithm: str | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        payload: dict[str, Any] = {
            "iss": EXTERNAL_ISSUER,
            "aud": EXTERNAL_AUDIENCE,
            "sub": sub or unique("idp-subject-"),
            "iat": now(),
            "exp": now() + 300,
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            payload,
            key if key is not None else self.private_key,
            algorithm=algorithm or self.algorithm,
            headers={"kid": self.kid, **(headers or {})},
        )

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def jwk_of(private_key: Any, algorithm: str, kid: str) -> dict[str, Any]:
    converter = RSAAlgorithm if algorithm.startswith(("RS", "PS")) else ECAlgorithm
    jwk = converter.to_jwk(private_key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": algorithm}


@contextmanager
def external_idp(
    database_url: str,
    http: httpx.AsyncClient,
    algorithm: str,
    *,
    jwks: bool = True,
    **settings: object,
) -> Iterator[IdP]:
    if algorithm.startswith("ES"):
        private_key: Any = ec.generate_private_key(ec.SECP256R1())
    else:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = unique("kid-")
    document = {"keys": [jwk_of(private_key, algorithm, kid)]}
    with loopback_http({"/.well-known/jwks.json": document}) as jwks_server:
        overrides: dict[str, object] = {
            "external_jwt_issuer": EXTERNAL_ISSUER,
            "external_jwt_audience": EXTERNAL_AUDIENCE,
            "external_jwt_algorithm": algorithm,
            **settings,
        }
        if jwks:
            overrides["external_jwt_jwks_url"] = jwks_server.url("/.well-known/jwks.json")
        else:
            overrides["external_jwt_public_key"] = (
                private_key.public_key()
                .public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                .decode()
            )
        with running_server(make_settings(database_url, **overrides)) as srv:
            yield IdP(
                private_key,
                algorithm,
                kid,
                jwks_server if jwks else None,
                srv,
                GraphQLClient(http, srv.url),
            )


@pytest.fixture(scope="module")
def rs_idp(database_url: str, http: httpx.AsyncClient) -> Iterator[IdP]:
    with external_idp(database_url, http, "RS256") as idp:
        yield idp


@pytest.fixture(scope="module")
def es_idp(database_url: str, http: httpx.AsyncClient) -> Iterator[IdP]:
    with external_idp(database_url, http, "ES256") as idp:
        yield idp


@pytest.fixture(scope="module")
def pem_idp(database_url: str, http: httpx.AsyncClient) -> Iterator[IdP]:
    with external_idp(database_url, http, "RS256", jwks=False) as idp:
        yield idp


@pytest.fixture(params=["rs_idp", "es_idp", "pem_idp"])
def idp(request: pytest.FixtureRequest) -> IdP:
    return request.getfixturevalue(request.param)


async def idp_viewer(idp: IdP, token: str, **kwargs: Any) -> Any:
    return await idp.client.execute(
        "{ viewer { id email displayName } }", actor=Actor(token=token), **kwargs
    )


async def idp_refused(idp: IdP, token: str) -> None:
    r = await idp_viewer(idp, token)
    assert r.status == 401, r.body
    assert_unauthenticated(r)


async def test_a_valid_external_token_maps_to_one_user(idp: IdP) -> None:
    subject = unique("sub-")
    email = f"{unique('ext')}@corp.example"
    first = await idp_viewer(idp, idp.token(subject, email=email, email_verified=True, name="Ext"))
    user = first.ok()["viewer"]
    assert user["id"].startswith("usr_")
    assert user["email"] == email
    assert user["displayName"] == "Ext"

    # A second, fresh token for the same subject is the same user: no duplicate.
    second = await idp_viewer(idp, idp.token(subject, email=email, email_verified=True))
    assert second.ok()["viewer"]["id"] == user["id"]

    links = await db_rows(
        idp.server,
        "SELECT user_id FROM external_identities WHERE issuer = :i AND subject = :s",
        i=EXTERNAL_ISSUER,
        s=subject,
    )
    assert [row["user_id"] for row in links] == [user["id"]]
    users = await db_rows(idp.server, "SELECT id FROM users WHERE email = :e", e=email)
    assert len(users) == 1


async def test_external_user_without_email_is_stable(rs_idp: IdP) -> None:
    subject = unique("sub-")
    ids = {(await idp_viewer(rs_idp, rs_idp.token(subject))).ok()["viewer"]["id"] for _ in "ab"}
    assert len(ids) == 1


async def test_a_burst_of_first_requests_creates_one_user(rs_idp: IdP) -> None:
    """A client's first screen fires several queries at once with a brand-new identity."""

    subject = unique("sub-")
    email = f"{unique('burst')}@corp.example"
    results = await asyncio.gather(
        *(
            idp_viewer(rs_idp, rs_idp.token(subject, email=email, email_verified=True))
            for _ in range(6)
        )
    )
    ids = {r.ok()["viewer"]["id"] for r in results}
    assert len(ids) == 1, [r.body for r in results]


async def test_an_external_user_cannot_log_in_with_a_password(rs_idp: IdP) -> None:
    email = f"{unique('ext')}@corp.example"
    r = await idp_viewer(rs_idp, rs_idp.token(email=email, email_verified=True))
    user_id = r.ok()["viewer"]["id"]
    rows = await db_rows(rs_idp.server, "SELECT password_hash FROM users WHERE id = :u", u=user_id)
    assert rows == [{"password_hash": None}]
    for password in (PASSWORD, "", "coregraph-timing-equaliser", "x" * 20):
        r = await rs_idp.client.execute(
            "mutation($i: LoginInput!) { login(input: $i) { accessToken } }",
            {"i": {"email": email, "password": password}},
        )
        assert r.codes == ["UNAUTHENTICATED"], r.body
        assert r.data == {"login": None}


async def test_a_verified_email_links_to_the_existing_account(idp: IdP) -> None:
    existing = await idp.client.sign_up()
    token = idp.token(email=str(existing.email).upper(), email_verified=True)
    r = await idp_viewer(idp, token)
    assert r.ok()["viewer"]["id"] == existing.user_id
    # The account keeps its password sign-in, and no second user was created.
    r = await idp.client.execute(
        "mutation($i: LoginInput!) { login(input: $i) { user { id } } }",
        {"i": {"email": existing.email, "password": PASSWORD}},
    )
    assert r.ok()["login"]["user"]["id"] == existing.user_id
    users = await db_rows(idp.server, "SELECT id FROM users WHERE email = :e", e=existing.email)
    assert len(users) == 1


async def test_an_unverified_email_does_not_link(rs_idp: IdP) -> None:
    existing = await rs_idp.client.sign_up()
    for claims in (
        {"email": existing.email, "email_verified": False},
        {"email": existing.email},
        {"email": existing.email, "email_verified": "true"},
    ):
        r = await idp_viewer(rs_idp, rs_idp.token(**claims))
        viewer_row = r.ok()["viewer"]
        assert viewer_row["id"] != existing.user_id
        assert viewer_row["email"] != existing.email
    # The existing account is untouched.
    r = await rs_idp.client.execute(VIEWER, actor=existing)
    assert r.ok()["viewer"] == {"id": existing.user_id, "email": existing.email}


async def test_an_issuer_trusted_for_its_emails_links_without_email_verified(
    database_url: str, http: httpx.AsyncClient
) -> None:
    """COREGRAPH_EXTERNAL_JWT_EMAILS_VERIFIED: for an issuer that never sends
    ``email_verified``, its email claim counts as verified, unless a token says otherwise."""
    with external_idp(database_url, http, "RS256", external_jwt_emails_verified=True) as idp:
        existing = await idp.client.sign_up()
        r = await idp_viewer(idp, idp.token(email=existing.email))
        assert r.ok()["viewer"]["id"] == existing.user_id

        address = f"{unique('directory')}@corp.example"
        r = await idp_viewer(idp, idp.token(email=address))
        assert r.ok()["viewer"]["email"] == address

        other = await idp.client.sign_up()
        r = await idp_viewer(idp, idp.token(email=other.email, email_verified=False))
        viewer_row = r.ok()["viewer"]
        assert viewer_row["id"] != other.user_id and viewer_row["email"] != other.email


async def test_an_unverified_email_does_not_claim_the_address(rs_idp: IdP) -> None:
    """Nobody proved they own the address: it must stay free for its owner, and invitations
    sent to it must not be accepted by whoever merely claimed it."""
    address = f"{unique('victim')}@corp.example"
    claimer = Actor(token=rs_idp.token(unique("sub-"), email=address, email_verified=False))
    r = await rs_idp.client.execute(VIEWER, actor=claimer)
    assert r.ok()["viewer"]["email"] != address

    owner = await rs_idp.client.sign_up()
    tenant_id = await rs_idp.client.create_tenant(owner)
    r = await rs_idp.client.execute(
        """mutation($input: InviteMemberInput!) { inviteMember(input: $input) { token } }""",
        {"input": {"email": address, "role": "admin"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    invitation = r.ok()["inviteMember"]["token"]
    r = await rs_idp.client.execute(
        "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
        {"t": invitation},
        actor=claimer,
    )
    assert r.codes == ["FORBIDDEN"], r.body

    # The real owner of the address can still sign up with it and take the invitation.
    real = await rs_idp.client.sign_up(address)
    r = await rs_idp.client.execute(
        "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
        {"t": invitation},
        actor=real,
    )
    assert r.ok()["acceptInvitation"]["membership"]["id"]


async def test_an_external_user_creates_a_tenant_and_acts_in_it(idp: IdP) -> None:
    email = f"{unique('ext')}@corp.example"
    actor = Actor(token=idp.token(unique("sub-"), email=email, email_verified=True))
    tenant_id = await idp.client.create_tenant(actor)
    r = await idp.client.execute(
        """{ viewer { email memberships { role { key } tenant { id } } }
             tenant { id members { totalCount nodes { user { email } } } } }""",
        actor=actor,
        tenant_id=tenant_id,
    )
    data = r.ok()
    assert data["viewer"]["memberships"] == [
        {"role": {"key": "owner"}, "tenant": {"id": tenant_id}}
    ]
    assert data["tenant"]["members"]["totalCount"] == 1
    assert data["tenant"]["members"]["nodes"] == [{"user": {"email": email}}]

    member = await idp.client.add_member(actor, tenant_id, role="viewer")
    key = await idp.client.api_key(actor, tenant_id, ["tenant:read", "members:read"])
    r = await idp.client.execute("{ tenant { id members { totalCount } } }", actor=key)
    assert r.ok()["tenant"] == {"id": tenant_id, "members": {"totalCount": 2}}
    r = await idp.client.execute("{ tenant { id } }", actor=member)
    assert r.ok()["tenant"]["id"] == tenant_id


async def test_external_tokens_are_checked_like_own_ones(idp: IdP) -> None:
    subject = unique("sub-")
    assert (await idp_viewer(idp, idp.token(subject))).ok()["viewer"]
    await idp_refused(idp, idp.token(subject, exp=now() - 120, iat=now() - 600))
    await idp_refused(idp, idp.token(subject, iss="https://other-idp.example/"))
    await idp_refused(idp, idp.token(subject, aud="someone-else"))
    for claim in ("exp", "aud", "iat"):
        await idp_refused(idp, idp.token(subject, **{claim: None}))
    claims = jwt.decode(idp.token(subject), options={"verify_signature": False})
    await idp_refused(idp, unsigned_token({"alg": "none", "kid": idp.kid}, claims))
    # Signed by someone else's key (with the IdP's kid).
    if idp.algorithm.startswith("ES"):
        stranger: Any = ec.generate_private_key(ec.SECP256R1())
    else:
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await idp_refused(idp, idp.token(subject, key=stranger))


async def test_hs256_signed_with_the_public_key_is_refused(idp: IdP) -> None:
    """The classic RS/HS confusion: the public key, which anyone has, as an HMAC secret."""
    subject = unique("sub-")
    claims = jwt.decode(idp.token(subject), options={"verify_signature": False})
    pem = idp.public_pem()
    for secret in (pem, pem.strip(), pem.replace(b"\n", b"\r\n")):
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            token = hmac_token({"alg": alg, "typ": "JWT", "kid": idp.kid}, claims, secret, digest)
            await idp_refused(idp, token)
    jwk_json = json.dumps(jwk_of(idp.private_key, idp.algorithm, idp.kid)).encode()
    await idp_refused(idp, hmac_token({"alg": "HS256", "kid": idp.kid}, claims, jwk_json))


async def test_one_key_one_algorithm_for_the_external_issuer(rs_idp: IdP, es_idp: IdP) -> None:
    subject = unique("sub-")
    # The right RSA key, but an algorithm the configuration does not name.
    await idp_refused(rs_idp, rs_idp.token(subject, algorithm="RS512"))
    await idp_refused(rs_idp, rs_idp.token(subject, algorithm="PS256"))
    # An RSA-signed token presented to the ES256 issuer, naming its EC key.
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await idp_refused(es_idp, es_idp.token(subject, key=rsa_key, algorithm="RS256"))
    # ES384 with a P-384 key is not ES256.
    await idp_refused(
        es_idp,
        es_idp.token(subject, key=ec.generate_private_key(ec.SECP384R1()), algorithm="ES384"),
    )


async def test_a_kid_not_in_the_jwks_is_refused_without_hammering_the_idp(rs_idp: IdP) -> None:
    assert rs_idp.jwks is not None
    subject = unique("sub-")
    assert (await idp_viewer(rs_idp, rs_idp.token(subject))).ok()["viewer"]
    fetches = len(rs_idp.jwks.requests)
    assert fetches >= 1
    for _ in range(5):
        await idp_refused(rs_idp, rs_idp.token(subject, headers={"kid": unique("unknown-")}))
    # Unknown kids may trigger at most one refresh of the JWKS, not one per request.
    assert len(rs_idp.jwks.requests) - fetches <= 1
    # A token without any kid does not match the (kid-bearing) key either.
    claims = jwt.decode(rs_idp.token(subject), options={"verify_signature": False})
    no_kid = jwt.encode(claims, rs_idp.private_key, algorithm="RS256")
    await idp_refused(rs_idp, no_kid)
    assert set(rs_idp.jwks.requests) == {"/.well-known/jwks.json"}


async def test_jku_and_x5u_are_never_followed_for_external_tokens(rs_idp: IdP) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_kid = unique("attacker-")
    with loopback_http({"/jwks.json": {"keys": [jwk_of(attacker, "RS256", attacker_kid)]}}) as bait:
        subject = unique("sub-")
        for headers in (
            {"kid": attacker_kid, "jku": bait.url("/jwks.json")},
            {"kid": rs_idp.kid, "jku": bait.url("/jwks.json")},
            {"kid": attacker_kid, "x5u": bait.url("/cert.pem")},
        ):
            await idp_refused(rs_idp, rs_idp.token(subject, key=attacker, headers=headers))
        # A genuine token carrying a jku is accepted on its own merits, jku ignored.
        r = await idp_viewer(rs_idp, rs_idp.token(subject, headers={"jku": bait.url("/jwks.json")}))
        assert r.ok()["viewer"]
        assert bait.requests == []


# --- production settings ---


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "COREGRAPH_JWT_SECRET",
        "COREGRAPH_ALLOW_INSECURE",
        "COREGRAPH_ENV",
        "COREGRAPH_INTROSPECTION",
        "COREGRAPH_FIELD_SUGGESTIONS",
        "COREGRAPH_GRAPHIQL",
        "COREGRAPH_EXTERNAL_JWT_ISSUER",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_production_refuses_the_default_jwt_secret() -> None:
    with pytest.raises(ValidationError) as excinfo:
        Settings(env="production")  # type: ignore[call-arg]
    assert "COREGRAPH_JWT_SECRET" in str(excinfo.value)
    with pytest.raises(ValidationError) as excinfo:
        Settings(env="production", jwt_secret="short-but-not-default")  # type: ignore[call-arg]
    assert "COREGRAPH_JWT_SECRET" in str(excinfo.value)


@pytest.mark.usefixtures("clean_env")
def test_production_builds_when_overridden_or_secure() -> None:
    insecure = Settings(env="production", allow_insecure=True)  # type: ignore[call-arg]
    assert insecure.is_production
    assert insecure.jwt_secret == DEV_JWT_SECRET
    secure = Settings(  # type: ignore[call-arg]
        env="production",
        jwt_secret="p" * 16 + uuid.uuid4().hex,
        webhook_secret_keys=TEST_WEBHOOK_KEY,
    )
    assert secure.is_production
    assert not secure.introspection_enabled


async def test_a_token_scope_claim_narrows_only_with_coregraph_permissions(
    rs_idp: IdP,
) -> None:
    email = f"{unique('ext')}@corp.example"
    subject = unique("sub-")
    owner = Actor(token=rs_idp.token(subject, email=email, email_verified=True))
    tenant_id = await rs_idp.client.create_tenant(owner)
    query = "{ tenant { name members { totalCount } } }"

    # An identity provider's usual scopes say nothing about tenants: the role decides.
    oidc = Actor(token=rs_idp.token(subject, scope="openid profile email"))
    r = await rs_idp.client.execute(query, actor=oidc, tenant_id=tenant_id)
    assert r.ok()["tenant"]["members"]["totalCount"] == 1

    # A token limited to tenant:read reads the tenant but not its members, owner or not.
    narrow = Actor(token=rs_idp.token(subject, scope="openid tenant:read"))
    r = await rs_idp.client.execute(query, actor=narrow, tenant_id=tenant_id)
    assert r.data == {"tenant": {"name": r.data["tenant"]["name"], "members": None}}
    assert r.codes == ["FORBIDDEN"]

    # A tenant it creates is narrowed the same way, within the very request that creates it:
    # the creator is its owner, but this token still reads only what tenant:read allows.
    r = await rs_idp.client.execute(
        """mutation($input: CreateTenantInput!) { createTenant(input: $input) {
            tenant { id apiKeys { totalCount } } } }""",
        {"input": {"name": "Narrow", "slug": unique("narrow-")}},
        actor=narrow,
    )
    created = r.data["createTenant"]["tenant"]
    assert created["id"] and created["apiKeys"] is None
    assert r.codes == ["FORBIDDEN"], r.body
