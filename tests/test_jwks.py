"""The external issuer's key set (``coregraph.auth.jwks``) against a real JWKS server on
loopback, with a controllable clock instead of waiting: keys are refreshed, withdrawn keys stop
working, an outage is ridden out on the last good set without waiting on the provider for every
request, and unknown key ids cannot make coregraph hammer the provider."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from coregraph.auth.jwks import JwksKeys
from coregraph.errors import Unauthenticated
from tests.auth_support import LoopbackHTTP, loopback_http
from tests.support import FakeClock

PATH = "/.well-known/jwks.json"


def jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return private.public_key(), {**public, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def idp() -> Iterator[LoopbackHTTP]:
    with loopback_http() as server:
        yield server


def keys_for(server: LoopbackHTTP, clock: FakeClock) -> JwksKeys:
    return JwksKeys(server.url(PATH), timeout_seconds=5, clock=clock)


def public_numbers(key: Any) -> Any:
    return key.public_numbers()


async def test_keys_are_refreshed_and_a_withdrawn_key_stops_working(idp: LoopbackHTTP) -> None:
    clock = FakeClock()
    old_public, old = jwk("k-old")
    new_public, new = jwk("k-new")
    idp.serve(PATH, {"keys": [old]})
    keys = keys_for(idp, clock)

    assert public_numbers(await keys.key("k-old")) == public_numbers(old_public)
    assert len(idp.requests) == 1
    clock.now += 299  # still fresh: no refetch
    await keys.key("k-old")
    assert len(idp.requests) == 1

    idp.serve(PATH, {"keys": [new]})  # the provider rotates and withdraws the old key
    clock.now += 2
    assert public_numbers(await keys.key("k-new")) == public_numbers(new_public)
    with pytest.raises(Unauthenticated, match="no matching signing key"):
        await keys.key("k-old")
    assert len(idp.requests) == 2


async def test_an_outage_is_ridden_out_on_the_last_good_keys_without_waiting_per_request(
    idp: LoopbackHTTP,
) -> None:
    clock = FakeClock()
    public, key = jwk("k1")
    idp.serve(PATH, {"keys": [key]})
    keys = keys_for(idp, clock)
    await keys.key("k1")

    idp.serve(PATH, None)  # the provider answers 404 from now on
    clock.now += 301  # the set is due for a refresh, which fails
    assert public_numbers(await keys.key("k1")) == public_numbers(public)
    assert len(idp.requests) == 2
    for _ in range(5):  # within the retry pause: no new attempt
        await keys.key("k1")
    assert len(idp.requests) == 2
    clock.now += 11  # after it: one more attempt, still serving the last good set
    await keys.key("k1")
    assert len(idp.requests) == 3

    clock.now += 3600  # past refresh + max staleness: the old set is no longer trusted
    with pytest.raises(Unauthenticated, match="unavailable"):
        await keys.key("k1")

    idp.serve(PATH, {"keys": [key]})  # the provider is back
    clock.now += 11
    assert public_numbers(await keys.key("k1")) == public_numbers(public)


async def test_a_provider_down_from_the_start_fails_fast_after_one_attempt(
    idp: LoopbackHTTP,
) -> None:
    clock = FakeClock()
    keys = keys_for(idp, clock)  # nothing served: 404
    for _ in range(5):
        with pytest.raises(Unauthenticated, match="unavailable"):
            await keys.key("k1")
    assert len(idp.requests) == 1


async def test_unknown_kids_force_at_most_one_refresh_per_cooldown(idp: LoopbackHTTP) -> None:
    clock = FakeClock()
    _, key = jwk("k1")
    idp.serve(PATH, {"keys": [key]})
    keys = keys_for(idp, clock)
    await keys.key("k1")

    clock.now += 1
    for i in range(5):
        with pytest.raises(Unauthenticated, match="no matching signing key"):
            await keys.key(f"forged-{i}")
    assert len(idp.requests) == 2  # the first unknown kid refreshed once; the rest did not

    rotated_public, rotated = jwk("k2")  # a real rotation is picked up after the cooldown
    idp.serve(PATH, {"keys": [key, rotated]})
    clock.now += 30
    assert public_numbers(await keys.key("k2")) == public_numbers(rotated_public)
    assert len(idp.requests) == 3
    with pytest.raises(Unauthenticated, match="names no signing key"):
        await keys.key(None)


async def test_concurrent_requests_share_one_fetch(idp: LoopbackHTTP) -> None:
    clock = FakeClock()
    _, key = jwk("k1")
    idp.serve(PATH, {"keys": [key]})
    keys = keys_for(idp, clock)
    await asyncio.gather(*(keys.key("k1") for _ in range(20)))
    assert len(idp.requests) == 1
