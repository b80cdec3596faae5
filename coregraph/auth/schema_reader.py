"""Who may read the federation SDL (``_service { sdl }``) when introspection is off.

A gateway fetches the SDL and nobody else needs it: with introspection off (production) it is
served only to requests that carry the shared secret ``COREGRAPH_SCHEMA_READER_SECRET`` in the
``X-Coregraph-Schema-Secret`` header (or the same key in a WebSocket's ``connection_init``). No
secret configured: nobody reads it, and the gateway composes from ``coregraph export-schema``.
"""

from __future__ import annotations

import hmac

from coregraph.settings import Settings

SCHEMA_SECRET_HEADER = "X-Coregraph-Schema-Secret"


def carries_schema_secret(settings: Settings, presented: str | None) -> bool:
    """Whether ``presented`` is the configured secret, compared in constant time."""
    expected = settings.schema_reader_secret
    if not expected or not presented:
        return False
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def may_read_schema(settings: Settings, carried_secret: bool) -> bool:
    return settings.introspection_enabled or carried_secret
