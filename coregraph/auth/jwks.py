"""The external identity provider's signing keys, from its JWKS URL.

PyJWT's ``PyJWKClient`` fetches (an http(s) URL only, redirects not followed, a timeout); the
caching policy is ours, because the one we had (``cache_keys=True``) trusted a key forever once
seen, even after the provider withdrew it, and refetched with a blocking timeout on every
request while the provider was down. Here:

- The key set is refreshed once it is ``refresh_seconds`` old. A key the provider has withdrawn
  stops being accepted at the next successful refresh.
- While the provider is unreachable, the last good key set keeps serving for up to
  ``max_stale_seconds`` past its refresh time (logins keep working through an outage), and after
  a failed fetch no new attempt is made for ``retry_seconds``: requests fail or succeed at once
  instead of each waiting for the timeout.
- A token naming a key id the set does not hold forces a refresh at most once per
  ``unknown_kid_cooldown_seconds``: a rotated key is picked up; forged ids cannot make coregraph
  hammer the provider.
- One fetch at a time per process (the others wait for it), in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from coregraph.auth.pyjwt import pyjwt
from coregraph.errors import Unauthenticated

log = logging.getLogger("coregraph.auth")


class JwksKeys:
    def __init__(
        self,
        url: str,
        *,
        timeout_seconds: float = 5.0,
        refresh_seconds: float = 300.0,
        max_stale_seconds: float = 3600.0,
        retry_seconds: float = 10.0,
        unknown_kid_cooldown_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._jwt = pyjwt(asymmetric=True)
        self._client = self._jwt.PyJWKClient(
            url, cache_jwk_set=False, cache_keys=False, timeout=timeout_seconds
        )
        self._refresh = refresh_seconds
        self._max_stale = max_stale_seconds
        self._retry = retry_seconds
        self._cooldown = unknown_kid_cooldown_seconds
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # of the key set in use
        self._failed_at: float | None = None  # of the last failed attempt, until one succeeds
        self._forced_at: float | None = None  # of the last refresh an unknown kid asked for
        self._lock: asyncio.Lock | None = None

    async def key(self, kid: str | None) -> Any:
        """The verification key for ``kid``; ``Unauthenticated`` when there is none."""
        if not kid:
            raise Unauthenticated("the token names no signing key (kid)")
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._refresh:
            await self._fetch(now)
        elif kid not in self._keys and (
            self._forced_at is None or now - self._forced_at >= self._cooldown
        ):
            self._forced_at = now
            await self._fetch(now)
        fetched_at = self._fetched_at
        if fetched_at is None or self._clock() - fetched_at >= self._refresh + self._max_stale:
            raise Unauthenticated(
                "the identity provider's signing keys are unavailable; try again shortly"
            )
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("no matching signing key")
        return key

    async def _fetch(self, wanted_at: float) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._fetched_at is not None and self._fetched_at >= wanted_at:
                return  # another request fetched it while this one waited
            if self._failed_at is not None and self._clock() - self._failed_at < self._retry:
                return  # the provider failed moments ago: use what we have, or fail fast
            try:
                data = await asyncio.to_thread(self._client.fetch_data)
                keys = {
                    key.key_id: key.key
                    for key in self._jwt.PyJWKSet.from_dict(data).keys
                    if key.key_id and key.public_key_use in (None, "sig")
                }
            except (
                self._jwt.PyJWKClientError,
                self._jwt.PyJWKSetError,
                self._jwt.InvalidKeyError,
            ) as exc:
                self._failed_at = self._clock()
                log.warning(
                    "jwks fetch failed", extra={"error": type(exc).__name__, "detail": str(exc)}
                )
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self._failed_at = None
