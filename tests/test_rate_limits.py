"""Login, refresh and invitation acceptance are rate-limited per account and per address,
counting operations: repeating `login` under aliases in one request does not get around it.
Runs against the in-process limiter, or Redis when COREGRAPH_REDIS_URL is set."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import make_settings
from tests.support import PASSWORD, GraphQLClient, running_server, unique

LOGIN = """mutation($i: LoginInput!) { login(input: $i) { accessToken } }"""
# Fixed windows: an hour-long one keeps a burst of attempts inside a single window.
WINDOW = 3600


@pytest.fixture(scope="module")
def limited(database_url: str, http: httpx.AsyncClient) -> Iterator[GraphQLClient]:
    settings = make_settings(
        database_url,
        auth_rate_limit_window_seconds=WINDOW,
        redis_prefix=unique("ratelimit-test-"),
    )
    with running_server(settings) as srv:
        yield GraphQLClient(http, srv.url)


async def test_login_attempts_are_limited_per_account(limited: GraphQLClient) -> None:
    client = limited
    user = await client.sign_up()
    wrong = {"i": {"email": user.email, "password": "wrong password 123"}}
    codes = []
    for _ in range(10):
        r = await client.execute(LOGIN, wrong)
        codes += r.codes
    assert codes == ["UNAUTHENTICATED"] * 10
    r = await client.execute(LOGIN, {"i": {"email": user.email, "password": PASSWORD}})
    assert r.codes == ["RATE_LIMITED"], "even the right password waits out the window"
    assert r.errors[0]["extensions"]["retryAfterSeconds"] == WINDOW
    other = await client.sign_up()
    r = await client.execute(LOGIN, {"i": {"email": other.email, "password": PASSWORD}})
    assert r.ok()["login"]["accessToken"]


async def test_aliases_count_as_separate_attempts(limited: GraphQLClient) -> None:
    client = limited
    user = await client.sign_up()
    aliased = " ".join(
        f'a{i}: login(input: {{email: "{user.email}", password: "nope nope {i}"}}) '
        "{ accessToken }"
        for i in range(12)
    )
    r = await client.execute(f"mutation {{ {aliased} }}")
    assert r.codes.count("UNAUTHENTICATED") == 10
    assert r.codes.count("RATE_LIMITED") == 2


async def test_attempts_are_limited_per_address(http: httpx.AsyncClient, database_url: str) -> None:
    settings = make_settings(
        database_url,
        auth_rate_limit_per_ip=5,
        auth_rate_limit_window_seconds=WINDOW,
        redis_prefix=unique("ratelimit-test-"),
    )
    with running_server(settings) as srv:
        limited = GraphQLClient(http, srv.url)
        codes = []
        for i in range(7):
            r = await limited.execute(
                LOGIN, {"i": {"email": f"{unique()}@example.com", "password": f"guess {i}"}}
            )
            codes += r.codes
        assert codes == ["UNAUTHENTICATED"] * 5 + ["RATE_LIMITED"] * 2
