"""Where a request came from: copied onto every audit entry its changes write.

Beside the context (``coregraph.context``) and below the unit of work, so both can use it
without either importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestMeta:
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


SYSTEM_REQUEST = RequestMeta(request_id=None, ip=None, user_agent="coregraph-cli")
