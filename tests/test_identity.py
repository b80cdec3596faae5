"""Identity: sign-up, login, refresh-token rotation with reuse detection, logout, viewer."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt

from coregraph.auth import secrets
from tests.auth_support import assert_unauthenticated, db_rows
from tests.support import PASSWORD, Actor, GraphQLClient, Server, unique

SIGN_UP = """mutation($input: SignUpInput!) { signUp(input: $input) {
    accessToken accessTokenExpiresAt refreshToken user { id email displayName } } }"""
LOGIN = """mutation($input: LoginInput!) { login(input: $input) {
    accessToken refreshToken user { id email } } }"""
REFRESH = """mutation($t: String!) { refreshSession(refreshToken: $t) {
    accessToken refreshToken user { id } } }"""
LOGOUT = "mutation($t: String) { logout(refreshToken: $t) { ended } }"
VIEWER = "{ viewer { id email } }"


async def login(client: GraphQLClient, email: str, password: str = PASSWORD) -> Any:
    return await client.execute(LOGIN, {"input": {"email": email, "password": password}})


async def logged_in(client: GraphQLClient, user: Actor) -> Actor:
    """A second, independent session of ``user``."""
    payload = (await login(client, str(user.email))).ok()["login"]
    return Actor(
        token=payload["accessToken"],
        user_id=payload["user"]["id"],
        email=user.email,
        refresh_token=payload["refreshToken"],
    )


async def refresh(client: GraphQLClient, refresh_token: str) -> Any:
    return await client.execute(REFRESH, {"t": refresh_token})


async def test_sign_up_returns_tokens_and_the_user(client: GraphQLClient) -> None:
    email = f"{unique('Signup')}@Example.com"
    r = await client.execute(
        SIGN_UP, {"input": {"email": email, "password": PASSWORD, "displayName": "Ada"}}
    )
    payload = r.ok()["signUp"]
    assert payload["user"]["email"] == email.lower()
    assert payload["user"]["displayName"] == "Ada"
    assert payload["user"]["id"].startswith("usr_")
    assert payload["accessToken"].count(".") == 2  # a JWT
    assert payload["refreshToken"].startswith(secrets.REFRESH_TOKEN_PREFIX)
    assert payload["accessTokenExpiresAt"]

    r = await client.execute(VIEWER, actor=Actor(token=payload["accessToken"]))
    assert r.ok()["viewer"] == {"id": payload["user"]["id"], "email": email.lower()}

    # The same address (in any case) cannot sign up twice.
    r = await client.execute(
        SIGN_UP, {"input": {"email": email.upper(), "password": PASSWORD, "displayName": "B"}}
    )
    assert r.codes == ["CONFLICT"]
    assert r.data == {"signUp": None}


async def test_login_right_password_works_wrong_or_unknown_same_answer(
    client: GraphQLClient,
) -> None:
    user = await client.sign_up()
    r = await login(client, str(user.email).upper())
    payload = r.ok()["login"]
    assert payload["user"] == {"id": user.user_id, "email": user.email}
    r = await client.execute(VIEWER, actor=Actor(token=payload["accessToken"]))
    assert r.ok()["viewer"]["id"] == user.user_id

    wrong = await login(client, str(user.email), "not-the-password-at-all")
    unknown = await login(client, f"{unique('nobody')}@example.com")
    malformed = await login(client, "not an email")
    for r in (wrong, unknown, malformed):
        assert r.codes == ["UNAUTHENTICATED"], r.body
        assert r.data == {"login": None}
    messages = {r.errors[0]["message"] for r in (wrong, unknown, malformed)}
    assert len(messages) == 1, messages
    # Nothing in the error says which part was wrong.
    assert set(wrong.errors[0]["extensions"]) == set(unknown.errors[0]["extensions"])


async def test_password_is_stored_as_argon2id(client: GraphQLClient, server: Server) -> None:
    user = await client.sign_up()
    rows = await db_rows(server, "SELECT password_hash FROM users WHERE id = :id", id=user.user_id)
    assert len(rows) == 1
    stored = rows[0]["password_hash"]
    assert stored.startswith("$argon2id$"), stored
    assert PASSWORD not in stored


async def test_refresh_rotates_and_reuse_revokes_the_session(client: GraphQLClient) -> None:
    user = await client.sign_up()
    first_refresh = str(user.refresh_token)

    r = await refresh(client, first_refresh)
    second = r.ok()["refreshSession"]
    assert second["user"]["id"] == user.user_id
    assert second["refreshToken"] != first_refresh
    assert second["accessToken"] != user.token
    r = await client.execute(VIEWER, actor=Actor(token=second["accessToken"]))
    assert r.ok()["viewer"]["id"] == user.user_id

    # The new refresh token works (and rotates again) ...
    r = await refresh(client, second["refreshToken"])
    third = r.ok()["refreshSession"]
    assert third["refreshToken"] not in (first_refresh, second["refreshToken"])

    # ... the old ones fail ...
    r = await refresh(client, first_refresh)
    assert_unauthenticated(r)
    # ... and presenting the just-rotated one is a replay: the whole session ends.
    r = await refresh(client, second["refreshToken"])
    assert_unauthenticated(r)

    r = await refresh(client, third["refreshToken"])
    assert_unauthenticated(r)
    for access in (third["accessToken"], second["accessToken"], user.token):
        r = await client.execute(VIEWER, actor=Actor(token=access))
        assert r.status == 401
        assert_unauthenticated(r)


async def test_replaying_the_previous_refresh_token_revokes_immediately(
    client: GraphQLClient, server: Server
) -> None:
    """A thief who uses a token before its owner does: the owner's replay ends the session."""
    user = await client.sign_up()
    stolen = str(user.refresh_token)
    thief = (await refresh(client, stolen)).ok()["refreshSession"]

    r = await refresh(client, stolen)  # the owner, too late
    assert_unauthenticated(r)
    r = await refresh(client, thief["refreshToken"])
    assert_unauthenticated(r)
    r = await client.execute(VIEWER, actor=Actor(token=thief["accessToken"]))
    assert_unauthenticated(r)

    rows = await db_rows(
        server,
        "SELECT action, actor_id FROM audit_entries WHERE actor_id = :u AND action = :a",
        u=user.user_id,
        a="session.revoked_on_reuse",
    )
    assert len(rows) == 1


async def test_other_sessions_survive_a_revoked_one(client: GraphQLClient) -> None:
    user = await client.sign_up()
    other = await logged_in(client, user)
    first = (await refresh(client, str(user.refresh_token))).ok()["refreshSession"]
    assert_unauthenticated(await refresh(client, str(user.refresh_token)))  # replay
    assert_unauthenticated(await client.execute(VIEWER, actor=Actor(token=first["accessToken"])))
    r = await client.execute(VIEWER, actor=other)
    assert r.ok()["viewer"]["id"] == user.user_id
    assert (await refresh(client, str(other.refresh_token))).ok()["refreshSession"]


async def test_concurrent_refresh_with_one_token_succeeds_once(client: GraphQLClient) -> None:
    """Rotation is atomic: one token raced from several places mints one successor, and the
    losers are replays of a rotated token, so the session ends."""
    user = await client.sign_up()
    results = await asyncio.gather(*(refresh(client, str(user.refresh_token)) for _ in range(6)))
    winners = [r for r in results if not r.errors]
    assert len(winners) == 1, [r.body for r in results]
    for r in results:
        if r.errors:
            assert_unauthenticated(r)
    successor = winners[0].data["refreshSession"]
    assert_unauthenticated(await refresh(client, successor["refreshToken"]))
    assert_unauthenticated(
        await client.execute(VIEWER, actor=Actor(token=successor["accessToken"]))
    )


async def test_logout_ends_the_session(client: GraphQLClient) -> None:
    user = await client.sign_up()
    other = await logged_in(client, user)

    r = await client.execute(LOGOUT, actor=user)
    assert r.ok()["logout"] == {"ended": True}

    r = await client.execute(VIEWER, actor=user)
    assert r.status == 401
    assert_unauthenticated(r)
    assert_unauthenticated(await refresh(client, str(user.refresh_token)))

    # Only that session: the user's other session lives on.
    r = await client.execute(VIEWER, actor=other)
    assert r.ok()["viewer"]["id"] == user.user_id


async def test_logout_with_a_refresh_token(client: GraphQLClient) -> None:
    user = await client.sign_up()
    r = await client.execute(LOGOUT, {"t": user.refresh_token})
    assert r.ok()["logout"] == {"ended": True}
    assert_unauthenticated(await client.execute(VIEWER, actor=user))
    assert_unauthenticated(await refresh(client, str(user.refresh_token)))
    # Ending it again is not an error, just nothing to end.
    r = await client.execute(LOGOUT, {"t": user.refresh_token})
    assert r.ok()["logout"] == {"ended": False}


async def test_logout_with_an_empty_refresh_token_is_bad_input_and_ends_nothing(
    client: GraphQLClient,
) -> None:
    """An empty refreshToken is a client bug, not a request to end the caller's own session."""
    user = await client.sign_up()
    for empty in ("", "   "):
        r = await client.execute(LOGOUT, {"t": empty}, actor=user)
        assert r.codes == ["BAD_USER_INPUT"], r.body
        assert r.errors[0]["extensions"]["field"] == "refreshToken"
        assert r.data == {"logout": None}
        assert (await client.execute(VIEWER, actor=user)).ok()["viewer"]["id"] == user.user_id
    assert (await refresh(client, str(user.refresh_token))).ok()["refreshSession"]["accessToken"]


async def test_the_payload_of_a_new_session_lists_the_users_memberships(
    client: GraphQLClient,
) -> None:
    user = await client.sign_up()
    tenant_id = await client.create_tenant(user)
    membership_id = await client.membership_id(user, tenant_id, str(user.user_id))
    expected = [{"id": membership_id, "tenant": {"id": tenant_id}}]
    selection = "user { id memberships { id tenant { id } } }"

    r = await client.execute(
        f"mutation($input: LoginInput!) {{ login(input: $input) {{ refreshToken {selection} }} }}",
        {"input": {"email": user.email, "password": PASSWORD}},
    )
    payload = r.ok()["login"]
    assert payload["user"]["memberships"] == expected
    r = await client.execute(
        f"mutation($t: String!) {{ refreshSession(refreshToken: $t) {{ {selection} }} }}",
        {"t": payload["refreshToken"]},
    )
    assert r.ok()["refreshSession"]["user"]["memberships"] == expected
    # A brand-new account belongs to no tenant yet: an empty list that is the truth.
    r = await client.execute(
        f"mutation($input: SignUpInput!) {{ signUp(input: $input) {{ {selection} }} }}",
        {"input": {"email": f"{unique('new')}@example.com", "password": PASSWORD}},
    )
    assert r.ok()["signUp"]["user"]["memberships"] == []


async def test_logout_cannot_end_someone_elses_session(client: GraphQLClient) -> None:
    victim = await client.sign_up()
    attacker = await client.sign_up()
    r = await client.execute(LOGOUT, {"t": victim.refresh_token}, actor=attacker)
    assert r.ok()["logout"] == {"ended": False}
    assert (await client.execute(VIEWER, actor=victim)).ok()["viewer"]["id"] == victim.user_id
    assert (await client.execute(VIEWER, actor=attacker)).ok()["viewer"]["id"]


async def test_refresh_token_is_not_an_access_token_and_vice_versa(
    client: GraphQLClient,
) -> None:
    user = await client.sign_up()
    r = await client.execute(VIEWER, actor=Actor(token=str(user.refresh_token)))
    assert r.status == 401
    assert_unauthenticated(r)

    r = await refresh(client, user.token)
    assert_unauthenticated(r)
    r = await client.execute(LOGOUT, {"t": user.token})
    assert r.ok()["logout"] == {"ended": False}

    # Neither misuse harmed the real session.
    assert (await client.execute(VIEWER, actor=user)).ok()["viewer"]["id"] == user.user_id
    assert (await refresh(client, str(user.refresh_token))).ok()["refreshSession"]


async def test_viewer_is_the_user_for_a_token_and_null_for_an_api_key(
    client: GraphQLClient,
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(VIEWER, actor=owner)
    assert r.ok()["viewer"] == {"id": owner.user_id, "email": owner.email}

    key = await client.api_key(owner, tenant_id, ["tenant:read"])
    r = await client.execute("{ viewer { id } tenant { id } }", actor=key)
    assert r.ok() == {"viewer": None, "tenant": {"id": tenant_id}}

    r = await client.execute(VIEWER)
    assert r.codes == ["UNAUTHENTICATED"]


async def test_audit_trail_records_sign_up_and_sessions(
    client: GraphQLClient, server: Server
) -> None:
    user = await client.sign_up()
    session = await logged_in(client, user)
    session_id = jwt.decode(session.token, options={"verify_signature": False})["sid"]
    (await client.execute(LOGOUT, actor=session)).ok()

    rows = await db_rows(
        server,
        "SELECT action, actor_id, actor_kind, target_type, target_id, tenant_id, changes "
        "FROM audit_entries WHERE actor_id = :u ORDER BY id",
        u=user.user_id,
    )
    signed_up = [row for row in rows if row["action"] == "user.signed_up"]
    assert len(signed_up) == 1, rows
    # Sign-up opens a session too, and records it like a login.
    assert [row["action"] for row in rows[:2]] == ["user.signed_up", "session.created"]
    assert signed_up[0]["target_type"] == "User"
    assert signed_up[0]["target_id"] == user.user_id
    assert signed_up[0]["tenant_id"] is None
    assert rows[0]["action"] == "user.signed_up"

    of_session = [row for row in rows if row["target_id"] == session_id]
    assert [row["action"] for row in of_session] == ["session.created", "session.revoked"]
    assert {row["target_type"] for row in of_session} == {"Session"}
    assert {row["tenant_id"] for row in of_session} == {None}
    # No password, hash or token in any entry.
    for row in rows:
        blob = str(row["changes"])
        assert PASSWORD not in blob
        assert "$argon2" not in blob
        assert str(user.refresh_token) not in blob
        assert str(session.refresh_token) not in blob


async def test_any_rotated_refresh_token_coming_back_revokes_the_session(
    client: GraphQLClient,
) -> None:
    user = await client.sign_up()
    oldest = str(user.refresh_token)
    middle = (await refresh(client, oldest)).ok()["refreshSession"]
    newest = (await refresh(client, middle["refreshToken"])).ok()["refreshSession"]

    # A token two rotations old is still recognised as this session's: the session ends.
    assert_unauthenticated(await refresh(client, oldest))
    assert_unauthenticated(await refresh(client, newest["refreshToken"]))
    r = await client.execute(VIEWER, actor=Actor(token=newest["accessToken"]))
    assert_unauthenticated(r)


async def test_refresh_is_audited(client: GraphQLClient, server: Server) -> None:
    user = await client.sign_up()
    (await refresh(client, str(user.refresh_token))).ok()
    rows = await db_rows(
        server,
        "SELECT actor_kind, actor_id, target_type FROM audit_entries "
        "WHERE actor_id = :u AND action = 'session.refreshed'",
        u=user.user_id,
    )
    assert rows == [{"actor_kind": "user", "actor_id": user.user_id, "target_type": "Session"}]
