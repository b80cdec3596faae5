"""Where a request came from: copied onto every audit entry its changes write.

Beside the context (``coregraph.context``) and below the unit of work, so both can use it
without either importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.datastructures import URL


@dataclass(frozen=True, slots=True)
class RequestMeta:
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    # The address this request reached (scheme and host, no trailing slash): the base of links
    # handed back to the caller when COREGRAPH_PUBLIC_URL is unset.
    base_url: str | None = None


def served_base_url(connection_base_url: URL) -> str:
    """``http(s)://host[:port][/root]`` from Starlette's ``base_url`` of an HTTP request or a
    WebSocket (whose ``ws``/``wss`` scheme maps to the page's ``http``/``https``)."""
    url = str(connection_base_url).rstrip("/")
    if url.startswith("ws://"):
        return "http://" + url.removeprefix("ws://")
    if url.startswith("wss://"):
        return "https://" + url.removeprefix("wss://")
    return url


def system_request(os_user: str) -> RequestMeta:
    """A CLI command's request: the OS user who ran it goes where a client names itself."""
    return RequestMeta(user_agent=f"coregraph-cli (os user {os_user})"[:400])
