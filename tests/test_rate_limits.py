"""Login, sign-up, refresh, logout by refresh token and invitation acceptance are rate-limited
per account and per address, counting operations: repeating `login` under aliases in one request
does not get around it, nor does another spelling of the address or a forged X-Forwarded-For.
Runs against the `limits` library's in-process storage, or Redis when COREGRAPH_REDIS_URL is
set; the sliding window is checked on both with a 2 s window."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from limits.aio.storage import MemoryStorage
from redis.asyncio import Redis

from coregraph.errors import RateLimited
from coregraph.services.ratelimit import Limiter, enforce
from tests.conftest import make_settings
from tests.support import PASSWORD, GraphQLClient, running_server, unique
from tests.test_emails import fullwidth

LOGIN = """mutation($i: LoginInput!) { login(input: $i) { accessToken } }"""
REFRESH = """mutation($t: String!) { refreshSession(refreshToken: $t) { refreshToken } }"""
# An hour-long window keeps a burst of attempts well inside one window.
WINDOW = 3600


@contextlib.contextmanager
def server_with_limits(
    database_url: str, http: httpx.AsyncClient, **limits: object
) -> Iterator[GraphQLClient]:
    """A server of its own (its own limiter, its own Redis keys), with these settings."""
    settings = make_settings(
        database_url,
        auth_rate_limit_window_seconds=WINDOW,
        redis_prefix=unique("ratelimit-test-"),
        **limits,
    )
    with running_server(settings) as srv:
        yield GraphQLClient(http, srv.url)


@pytest.fixture(scope="module")
def limited(database_url: str, http: httpx.AsyncClient) -> Iterator[GraphQLClient]:
    with server_with_limits(database_url, http) as client:
        yield client


@pytest.fixture(scope="module")
def three_per_address(database_url: str, http: httpx.AsyncClient) -> Iterator[GraphQLClient]:
    """Three attempts per address and operation (each operation counts on its own)."""
    with server_with_limits(database_url, http, auth_rate_limit_per_ip=3) as client:
        yield client


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
    assert 0 < r.errors[0]["extensions"]["retryAfterSeconds"] <= WINDOW
    assert r.errors[0]["extensions"]["retryAfter"] == r.errors[0]["extensions"]["retryAfterSeconds"]
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
    with server_with_limits(database_url, http, auth_rate_limit_per_ip=5) as limited:
        codes = []
        for i in range(7):
            r = await limited.execute(
                LOGIN, {"i": {"email": f"{unique()}@example.com", "password": f"guess {i}"}}
            )
            codes += r.codes
        assert codes == ["UNAUTHENTICATED"] * 5 + ["RATE_LIMITED"] * 2


async def test_every_spelling_of_an_address_counts_in_one_bucket(limited: GraphQLClient) -> None:
    """Ten wrong guesses spread over spellings of one address lock out all of them."""
    client = limited
    user = await client.sign_up()
    email = str(user.email)
    local, domain = email.split("@")
    spellings = [
        email.upper(),
        f"{local}@{fullwidth(domain.upper())}",
        fullwidth(email),
        f"{fullwidth(local.upper())}@{domain}",
    ]
    codes = []
    for i in range(10):
        wrong = {"email": spellings[i % len(spellings)], "password": f"wrong password {i}"}
        codes += (await client.execute(LOGIN, {"i": wrong})).codes
    assert codes == ["UNAUTHENTICATED"] * 10
    for spelling in [email, *spellings]:
        r = await client.execute(LOGIN, {"i": {"email": spelling, "password": PASSWORD}})
        assert r.codes == ["RATE_LIMITED"], (spelling, r.body)


async def test_forwarded_for_does_not_reset_the_per_address_limit(
    three_per_address: GraphQLClient,
) -> None:
    """No proxy is trusted by default: a client naming a new address in X-Forwarded-For on
    every attempt is still the one peer it connects from."""
    codes = []
    for i in range(5):
        r = await three_per_address.execute(
            LOGIN,
            {"i": {"email": f"{unique()}@example.com", "password": f"guess {i}"}},
            headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
        )
        codes += r.codes
    assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"] * 2


async def test_behind_a_trusted_proxy_the_forwarded_client_is_the_address(
    http: httpx.AsyncClient, database_url: str
) -> None:
    """With 127.0.0.1 configured as a proxy, the address it forwards is what the limit counts
    and what the audit trail records."""
    with server_with_limits(
        database_url, http, auth_rate_limit_per_ip=3, trusted_proxies=["127.0.0.1"]
    ) as client:

        async def attempt(client_ip: str) -> list[str | None]:
            wrong = {"email": f"{unique()}@example.com", "password": "a wrong guess"}
            r = await client.execute(LOGIN, {"i": wrong}, headers={"X-Forwarded-For": client_ip})
            return r.codes

        codes = [code for _ in range(4) for code in await attempt("203.0.113.7")]
        assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]
        assert await attempt("203.0.113.8") == ["UNAUTHENTICATED"], "another client, own count"

        owner = await client.sign_up()
        r = await client.execute(
            "mutation($i: CreateTenantInput!) { createTenant(input: $i) { tenant { id } } }",
            {"i": {"name": "Acme", "slug": unique("acme-")}},
            actor=owner,
            headers={"X-Forwarded-For": "198.51.100.20"},
        )
        tenant_id = r.ok()["createTenant"]["tenant"]["id"]
        r = await client.execute(
            "{ tenant { auditLog(first: 50) { nodes { action ip } } } }",
            actor=owner,
            tenant_id=tenant_id,
        )
        entries = r.ok()["tenant"]["auditLog"]["nodes"]
        assert entries
        assert {entry["ip"] for entry in entries} == {"198.51.100.20"}, entries


async def test_sign_up_is_limited_per_address_counting_aliases(
    http: httpx.AsyncClient, database_url: str
) -> None:
    with server_with_limits(database_url, http, auth_rate_limit_per_ip=20) as client:
        aliased = " ".join(
            f'a{i}: signUp(input: {{email: "{unique()}@example.com", password: "{PASSWORD}"}}) '
            "{ accessToken }"
            for i in range(25)
        )
        r = await client.execute(f"mutation {{ {aliased} }}")
        assert r.codes == ["RATE_LIMITED"] * 5, r.body
        assert sum(1 for value in r.data.values() if value is not None) == 20
        r = await client.execute(
            "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
            {"i": {"email": f"{unique()}@example.com", "password": PASSWORD}},
        )
        assert r.codes == ["RATE_LIMITED"]


@pytest.mark.parametrize(
    ("operation", "answer"),
    [
        (REFRESH, "UNAUTHENTICATED"),
        ("mutation($t: String!) { logout(refreshToken: $t) { ended } }", None),
        (
            "mutation($t: String!) { acceptInvitation(token: $t) { membership { id } } }",
            "NOT_FOUND",
        ),
    ],
    ids=["refreshSession", "logout", "acceptInvitation"],
)
async def test_token_taking_mutations_are_limited_per_address(
    three_per_address: GraphQLClient, operation: str, answer: str | None
) -> None:
    """Guessing refresh or invitation tokens from one address stops after the limit."""
    client = three_per_address
    # acceptInvitation needs someone signed in; the others are sent as that person too, which
    # does not change the count: it is the address's.
    guesser = await client.sign_up()
    codes = []
    for i in range(4):
        r = await client.execute(operation, {"t": f"guess-{unique()}-{i}"}, actor=guesser)
        codes.append(r.codes[0] if r.codes else None)
    assert codes == [answer] * 3 + ["RATE_LIMITED"]


async def test_refresh_is_limited_per_account_across_sessions(limited: GraphQLClient) -> None:
    """Each refresh presents a new token, so a limit keyed on the token never fills; the
    count is the session's user's, over all of their sessions."""
    client = limited
    user = await client.sign_up()
    login = """mutation($i: LoginInput!) { login(input: $i) { refreshToken } }"""
    r = await client.execute(login, {"i": {"email": user.email, "password": PASSWORD}})
    tokens = [str(user.refresh_token), r.ok()["login"]["refreshToken"]]
    for i in range(10):
        r = await client.execute(REFRESH, {"t": tokens[i % 2]})
        tokens[i % 2] = r.ok()["refreshSession"]["refreshToken"]
    r = await client.execute(REFRESH, {"t": tokens[0]})
    assert r.codes == ["RATE_LIMITED"], r.body
    other = await client.sign_up()
    r = await client.execute(REFRESH, {"t": other.refresh_token})
    assert r.ok()["refreshSession"]["refreshToken"]


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield Limiter(MemoryStorage())
        return
    url = os.environ.get("COREGRAPH_REDIS_URL")
    if not url:
        pytest.skip("the Redis limiter runs with COREGRAPH_REDIS_URL set")
    redis = Redis.from_url(url)
    try:
        yield Limiter.create(redis, url, unique("ratelimit-test-"))
    finally:
        await redis.aclose()


async def attempts(limiter: Limiter, n: int, window: int) -> list[str]:
    outcomes = []
    for _ in range(n):
        try:
            await enforce(
                limiter,
                "login",
                account="someone@example.com",
                ip=None,
                per_account=5,
                per_ip=5,
                window_seconds=window,
            )
            outcomes.append("ok")
        except RateLimited as refused:
            assert 1 <= refused.extra["retryAfter"] <= window
            outcomes.append("limited")
    return outcomes


async def test_a_burst_cannot_straddle_a_window_boundary(limiter: Limiter) -> None:
    """Five attempts at the end of a 2 s window, five more just after it ends: a fixed window
    allowed all ten; the sliding window counts the old five at nearly full weight and lets at
    most one more through. (In memory, windows start at multiples of their length; in Redis,
    at a key's first hit.)"""
    window = 2
    if isinstance(limiter.storage, MemoryStorage) and time.time() % window > window - 0.2:
        await asyncio.sleep(window - time.time() % window)  # the burst in one window
    first = time.time()
    assert await attempts(limiter, 5, window) == ["ok"] * 5
    assert await attempts(limiter, 1, window) == ["limited"]
    if isinstance(limiter.storage, MemoryStorage):
        boundary = (first // window + 1) * window
    else:
        boundary = first + window
    await asyncio.sleep(max(0.0, boundary + 0.05 - time.time()))
    after = await attempts(limiter, 5, window)
    assert after.count("ok") <= 1, after
    # Two whole windows later the old attempts weigh nothing: the full allowance is back.
    await asyncio.sleep(max(0.0, boundary + 2 * window + 0.05 - time.time()))
    assert await attempts(limiter, 5, window) == ["ok"] * 5
