"""Login, refresh and invitation acceptance are rate-limited per account and per address,
counting operations: repeating `login` under aliases in one request does not get around it.
Runs against the in-process limiter, or Redis when COREGRAPH_REDIS_URL is set; the sliding
window is checked on both with a controllable clock."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from coregraph.errors import RateLimited
from coregraph.services.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    enforce,
)
from tests.conftest import make_settings
from tests.support import PASSWORD, FakeClock, GraphQLClient, running_server, unique

LOGIN = """mutation($i: LoginInput!) { login(input: $i) { accessToken } }"""
# An hour-long window keeps a burst of attempts well inside one window.
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


@pytest.fixture(params=["memory", "redis"])
async def limiter_and_clock(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[RateLimiter, FakeClock]]:
    clock = FakeClock(600 * 1000 + 59.0)  # one second before a 60 s window ends
    if request.param == "memory":
        yield MemoryRateLimiter(clock), clock
        return
    url = os.environ.get("COREGRAPH_REDIS_URL")
    if not url:
        pytest.skip("the Redis limiter runs with COREGRAPH_REDIS_URL set")
    redis = Redis.from_url(url)
    try:
        yield RedisRateLimiter(redis, unique("ratelimit-test-"), clock), clock
    finally:
        await redis.aclose()


async def attempts(limiter: RateLimiter, n: int) -> list[str]:
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
                window_seconds=60,
            )
            outcomes.append("ok")
        except RateLimited:
            outcomes.append("limited")
    return outcomes


async def test_a_burst_cannot_straddle_a_window_boundary(
    limiter_and_clock: tuple[RateLimiter, FakeClock],
) -> None:
    """Five attempts in the last second of a window, five more in the first second of the
    next: a fixed window allowed all ten; the sliding window allows the first five."""
    limiter, clock = limiter_and_clock
    assert await attempts(limiter, 5) == ["ok"] * 5
    clock.now += 1.5
    assert await attempts(limiter, 5) == ["limited"] * 5
    # 46 s into the new window, a quarter of the old window's 5 still counts, with the new 5
    # refused attempts (refused attempts count too: a guesser is not let off by failing).
    clock.now += 44
    assert await attempts(limiter, 1) == ["limited"]
    clock.now += 120  # after a whole window without attempts, the full allowance is back
    assert await attempts(limiter, 5) == ["ok"] * 5
