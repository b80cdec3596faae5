"""Outbound HTTP to addresses a tenant chose: webhook endpoints.

A webhook URL is untrusted input that makes *our* servers send requests, so it is a
server-side request forgery (SSRF) vector: pointed at ``127.0.0.1``, ``10.0.0.5`` or the cloud
metadata service at ``169.254.169.254``, it reaches what only our network can reach, and the
delivery log even hands back the first KiB of the answer. Three ways around a naive check:

- **Spellings of an address.** ``2130706433``, ``0x7f.1``, ``127.1``, ``[::ffff:127.0.0.1]``,
  6to4 or NAT64 forms all mean loopback to someone's parser. ``check_url`` accepts an IP
  literal only in canonical form and checks embedded IPv4 addresses inside IPv6 ones.
- **DNS rebinding.** A name can resolve to a public address when the URL is checked and to a
  private one a second later, when the connection is made. So the check is made *at connect
  time*, on every address the name resolves to, and the socket is opened to the very address
  that was checked: ``CheckedNetworkBackend`` replaces httpcore's connect step, so no second
  lookup happens in between. TLS still verifies the certificate against the hostname (httpcore
  passes the URL's host as ``server_hostname`` to ``start_tls``, whatever address was dialled).
- **Redirects.** A public endpoint answering ``302 Location: http://169.254.169.254/`` would
  lead a following client inside. Redirects are never followed; a 3xx is a failed delivery.

Answers are read with a size cap and the whole request (connect, send, read) has one deadline,
so a receiver that dribbles or never answers costs a bounded time. Proxies from the
environment are never used (a proxy would connect on our behalf, past the check).

``allow_private=True`` (``COREGRAPH_WEBHOOK_ALLOW_PRIVATE``, the embedded default for local
development; production refuses it) switches the address policy off; the URL syntax rules and
everything else still apply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import logging
import re
import select
import socket
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpcore

from coregraph import telemetry
from coregraph.errors import BadUserInput

# httpx is imported where a URL is parsed or a client made, not with this module: httpx's
# package imports its command-line client, and with it rich and Pygments (~7 MiB of every
# server's resident set, webhooks used or not). httpcore, which sends, is light.
if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2048
# What a delivery attempt keeps of an answer (the "first 1 KiB of the response body").
KEPT_BODY_BYTES = 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeDestination(BadUserInput):
    """A webhook URL that is malformed or leads somewhere outbound requests must not go."""

    def __init__(self, message: str, *, field: str | None = "url") -> None:
        super().__init__(message, field=field)


class UnresolvableHost(UnsafeDestination):
    """The URL's host name has no address (a failed send; accepted when an endpoint is saved)."""

    def __init__(self, host: str) -> None:
        super().__init__(f"webhook URL's host {host} does not resolve")
        self.host = host


# Networks refused whatever Python's version thinks of them (``ipaddress.is_global`` has moved
# between releases; this table does not). The first match names the reason.
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("0.0.0.0/8", "an unspecified"),
        ("10.0.0.0/8", "a private"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT)"),
        ("127.0.0.0/8", "a loopback"),
        ("169.254.0.0/16", "a link-local (cloud metadata)"),
        ("172.16.0.0/12", "a private"),
        ("192.0.0.0/24", "a reserved"),
        ("192.0.2.0/24", "a documentation"),
        ("192.88.99.0/24", "a reserved"),
        ("192.168.0.0/16", "a private"),
        ("198.18.0.0/15", "a benchmarking"),
        ("198.51.100.0/24", "a documentation"),
        ("203.0.113.0/24", "a documentation"),
        ("224.0.0.0/4", "a multicast"),
        ("240.0.0.0/4", "a reserved"),
    )
)
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "an unspecified"),
        ("::1/128", "a loopback"),
        # RFC 2765's IPv4-translated addresses (::ffff:0:a.b.c.d): SIIT translators carry
        # them to an IPv4 destination; no public host has one.
        ("::ffff:0:0:0/96", "an IPv4-translated"),
        ("64:ff9b:1::/48", "a private (local NAT64)"),
        ("100::/64", "a reserved (discard)"),
        ("2001:db8::/32", "a documentation"),
        ("3fff::/20", "a documentation"),
        ("fc00::/7", "a private (unique local)"),
        ("fe80::/10", "a link-local"),
        ("fec0::/10", "a site-local"),
        ("ff00::/8", "a multicast"),
    )
)
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refusal_reason(address: IPAddress) -> str | None:
    """Why an outbound connection to ``address`` is refused ("a loopback", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        for net6, reason in _REFUSED_V6:
            if address in net6:
                return reason
        # IPv6 spellings that carry an IPv4 destination: judged by that destination.
        embedded: list[ipaddress.IPv4Address] = []
        if address.ipv4_mapped is not None:
            embedded.append(address.ipv4_mapped)
        elif address in _V4_COMPATIBLE or address in _NAT64:
            embedded.append(ipaddress.IPv4Address(address.packed[-4:]))
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded.extend(address.teredo)
        if embedded:
            return next((r for r in map(refusal_reason, embedded) if r is not None), None)
    else:
        for net4, reason in _REFUSED_V4:
            if address in net4:
                return reason
    if not address.is_global:
        return "a non-global"
    return None


def _check_address(address: IPAddress, *, verb: str) -> None:
    reason = refusal_reason(address)
    if reason is not None:
        # The tenant learns the category, never the address: what a name resolves to inside
        # our network is ours to know (it is logged here for the operator).
        logger.info(
            "outbound destination refused",
            extra={"address": str(address), "reason": reason},
        )
        raise UnsafeDestination(f"webhook URL {verb} {reason} address")


_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?$")
_HEX_LABEL = re.compile(r"^0x[0-9a-f]*$")


def _numeric_host(host: str) -> bool:
    """True when the WHATWG URL standard (and so inet_aton and getaddrinfo) would read ``host``
    as an IPv4 number: its last label is decimal or 0x-hex (``2130706433``, ``0x7f.1``,
    ``127.1``)."""
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    last = labels[-1]
    return last.isdigit() or bool(_HEX_LABEL.match(last))


def _parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host names literally, or None for a name. Refuses any numeric spelling
    but the canonical one, and IPv6 zones."""
    if ":" in host:
        if "%" in host:
            raise UnsafeDestination("webhook URL has an IPv6 zone identifier")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeDestination("webhook URL has an invalid IPv6 address") from None
    if _numeric_host(host):
        try:
            v4 = ipaddress.IPv4Address(host)
        except ValueError:
            v4 = None
        if v4 is None or str(v4) != host:
            raise UnsafeDestination(
                f"webhook URL's host {host!r} is a numeric address in a non-canonical form"
            )
        return v4
    return None


def _is_local_name(host: str) -> bool:
    # RFC 6761: "localhost" and its subdomains are loopback wherever they are resolved.
    name = host.rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _parse(url: str, *, allow_private: bool, require_https: bool) -> httpx.URL:
    if not isinstance(url, str) or not url:
        raise UnsafeDestination("webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestination(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeDestination("webhook URL contains whitespace or control characters")
    if "#" in url:
        raise UnsafeDestination("webhook URL must not have a fragment")
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise UnsafeDestination("webhook URL is not a valid URL") from None
    scheme = parsed.scheme
    if scheme not in ("http", "https"):
        raise UnsafeDestination("webhook URL must use https or http")
    if require_https and scheme != "https":
        raise UnsafeDestination("webhook URL must use https")
    if parsed.userinfo:
        raise UnsafeDestination("webhook URL must not carry a user name or password")
    port = parsed.port
    if port is not None and not 0 < port < 65536:
        raise UnsafeDestination("webhook URL has an invalid port")
    try:
        host = parsed.raw_host.decode("ascii")
    except UnicodeDecodeError:
        raise UnsafeDestination("webhook URL has an invalid host") from None
    if not host:
        raise UnsafeDestination("webhook URL has no host")
    literal = _parse_ip_literal(host)
    if literal is None:
        if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
            raise UnsafeDestination("webhook URL has an invalid host")
        if not allow_private and _is_local_name(host):
            raise UnsafeDestination("webhook URL points to a loopback host name")
    elif not allow_private:
        _check_address(literal, verb="points to")
    return parsed


def check_url(url: str, *, allow_private: bool, require_https: bool) -> str:
    """The syntax check a webhook URL passes when it is created or changed, and again before
    each send: http(s) only (https when ``require_https``), a host, no credentials, no
    fragment, at most ``MAX_URL_LENGTH`` characters, and an IP literal only in canonical form
    and (unless ``allow_private``) to an allowed address. Names are not resolved here (see
    ``check_destination`` and ``resolve_checked``). Returns the normalised URL (lower-case
    scheme and host, IDNA host, default port dropped). Raises ``UnsafeDestination``."""
    return str(_parse(url, allow_private=allow_private, require_https=require_https))


# Name lookups of tenants' hosts run in threads of their own (getaddrinfo blocks). Not in the
# event loop's default executor: argon2 hashing and local file storage run there, and a tenant
# whose DNS zone never answers would tie its threads up for the resolver's whole timeout per
# lookup, starving sign-ins and downloads. Here such lookups only queue behind each other
# (each send's deadline still bounds its wait), at most RESOLVER_THREADS at a time.
RESOLVER_THREADS = 8
_resolver: concurrent.futures.ThreadPoolExecutor | None = None


def _resolver_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _resolver
    if _resolver is None:
        _resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=RESOLVER_THREADS, thread_name_prefix="coregraph-resolve"
        )
    return _resolver


def _lookup(host: str, port: int) -> list[Any]:
    """The blocking lookup, in a resolver thread (a seam for tests that pick the answers)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


async def resolve_checked(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return its addresses, refusing the destination if *any* of them
    is disallowed (a name with one public and one private address is refused: the connection
    could be steered to either). Connect only to the addresses returned."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.run_in_executor(_resolver_pool(), _lookup, host, port)
    except (socket.gaierror, UnicodeError):
        raise UnresolvableHost(host) from None
    addresses: list[str] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHost(host)
    if not allow_private:
        for address in addresses:
            _check_address(ipaddress.ip_address(address), verb="resolves to")
    return addresses


async def check_destination(
    url: str, *, allow_private: bool, require_https: bool, resolve_within: float = 5.0
) -> str:
    """``check_url`` and, for a host name, ``resolve_checked``: what creating or changing an
    endpoint calls, so a name resolving to a private address is refused up front. A name that
    does not resolve (yet), or not within ``resolve_within`` seconds, is accepted: DNS may go
    live after the endpoint is saved, and every send checks again at connect time anyway."""
    parsed = _parse(url, allow_private=allow_private, require_https=require_https)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(resolve_within):
            await resolve_checked(
                parsed.raw_host.decode("ascii"), port, allow_private=allow_private
            )
    except (UnresolvableHost, TimeoutError):
        pass
    return str(parsed)


class CheckedNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the connect step replaced: resolve the host once,
    check every address, then dial the checked addresses themselves, so nothing looks the name
    up again between the check and the connection. TLS (started later on the returned stream
    with the URL's host as ``server_hostname``) still verifies the certificate by name."""

    def __init__(self, *, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None):
        self.allow_private = allow_private
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_checked(host, port, allow_private=self.allow_private)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
                return _PooledStream(stream, stream.get_extra_info("socket"))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeDestination("outbound requests do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _PooledStream(httpcore.AsyncNetworkStream):
    """A connection as the pool sees it, answering "is_readable" straight from the socket.
    The pool asks that of every idle connection each time it places a request (a server that
    closed an idle connection makes it readable); through anyio each answer built a table of
    the socket's attributes and made a getpeername call, a tenth of a request's CPU at
    concurrency 16. TLS runs over the same socket, so the answer stays right after start_tls."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, sock: socket.socket | None) -> None:
        self._inner = inner
        self._sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _PooledStream(tls, self._sock)

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable" and self._sock is not None:
            if self._sock.fileno() < 0:
                return True  # closed: the next read would return b""
            poll = select.poll()
            poll.register(self._sock, select.POLLIN)
            return bool(poll.poll(0))
        return self._inner.get_extra_info(info)


@dataclass(frozen=True)
class OutboundResult:
    status_code: int | None  # None when no response came
    body: bytes  # the first KEPT_BODY_BYTES of the response body
    duration_ms: float
    error: str | None  # short, for people: "timeout", "connection refused", ...

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


@dataclass
class _Answer:
    """What came back so far: kept when the deadline strikes halfway through the body."""

    status: int | None = None
    kept: bytearray = field(default_factory=bytearray)


def _errnos(exc: BaseException) -> set[int]:
    """The errno values anywhere in an exception's causes (anyio wraps its attempts)."""
    found: set[int] = set()
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            found.add(current.errno)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
    return found


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, kind):
            return True
        current = current.__cause__ or current.__context__
    return False


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_failure(exc: BaseException) -> str:
    """A short, stack-free account of why a request got no usable answer."""
    if isinstance(exc, UnresolvableHost):
        return _short(f"name not resolved ({exc.host})")
    if isinstance(exc, UnsafeDestination):
        return _short(f"destination refused: {exc.message}")
    if isinstance(exc, TimeoutError | httpcore.TimeoutException):
        return "timeout"
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return "TLS certificate verification failed"
    if _caused_by(exc, ssl.SSLError):
        return "TLS handshake failed"
    codes = _errnos(exc)
    if errno.ECONNREFUSED in codes:
        return "connection refused"
    if codes & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return "network unreachable"
    if errno.ECONNRESET in codes:
        return "connection reset"
    if isinstance(exc, httpcore.RemoteProtocolError):
        return _short(f"protocol error: {exc}" if str(exc) else "protocol error")
    if isinstance(exc, httpcore.ConnectError):
        return "connection failed"
    if isinstance(exc, httpcore.ReadError | httpcore.WriteError):
        return "connection lost"
    # Not a network outcome we know: the delivery log gets a short line, the operator the stack.
    logger.warning("outbound request failed unexpectedly", exc_info=exc)
    return _short(f"request failed ({type(exc).__name__})")


Origin = tuple[bytes, bytes, int]  # scheme, host, port


def _describe_destination(span: Any, parsed: httpx.URL) -> None:
    """The origin only (as events and audit entries show a URL): a path or query may hold a
    partner's own secret."""
    span.set_attribute("url.scheme", parsed.scheme)
    span.set_attribute("server.address", parsed.host)
    span.set_attribute("server.port", parsed.port or (443 if parsed.scheme == "https" else 80))


def _describe_outcome(span: Any, status: int | None, error: str | None) -> None:
    from opentelemetry.trace import StatusCode

    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if error is not None or status is None or status >= 400:
        span.set_status(StatusCode.ERROR, error or f"HTTP {status}")


class OutboundClient:
    """Sends webhook requests: checked destinations, no redirects, capped answers, one deadline
    per request. Connections are kept alive and reused per origin; each *new* connection is
    resolved and checked again. One per process (or worker), closed with ``aclose``.

    At most ``max_connections`` requests are in flight (each on a connection of its own, HTTP/1.1).
    Idle connections wait by origin, so placing a request costs the same with one endpoint or
    thousands: httpcore's own pool rescans every connection it holds, several times per request
    (quadratically for idle ones), which a worker holding connections to many endpoints pays
    on every delivery."""

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout: float,
        max_body: int = 1024 * 1024,
        user_agent: str = "coregraph-webhooks/1",
        max_connections: int = 200,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.max_body = max_body
        self.user_agent = user_agent
        self.keepalive_expiry = keepalive_expiry
        # certifi's roots as httpx uses them; no proxy, whatever the environment says.
        if ssl_context is None:
            import httpx

            ssl_context = httpx.create_ssl_context()
        self._ssl_context = ssl_context
        self._backend = CheckedNetworkBackend(allow_private=allow_private)
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[Origin, list[httpcore.AsyncHTTPConnection]] = {}
        self._swept_at = time.monotonic()
        self._closed = False

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> OutboundResult:
        started = time.perf_counter()
        answer = _Answer()
        error: str | None = None
        with telemetry.client_span("POST") as span:
            try:
                async with asyncio.timeout(self.timeout):
                    parsed = _parse(url, allow_private=self.allow_private, require_https=False)
                    if span is not None:
                        _describe_destination(span, parsed)
                    await self._send(parsed, content, headers, answer)
            except Exception as exc:  # every failure becomes a value the delivery log records
                error = describe_failure(exc)
            if error is None and answer.status is not None and 300 <= answer.status < 400:
                error = f"redirect not followed ({answer.status})"
            if span is not None:
                _describe_outcome(span, answer.status, error)
        return OutboundResult(
            status_code=answer.status,
            body=bytes(answer.kept),
            duration_ms=(time.perf_counter() - started) * 1000.0,
            error=error,
        )

    async def _send(
        self, parsed: httpx.URL, content: bytes, headers: Mapping[str, str], answer: _Answer
    ) -> None:
        if self._closed:
            raise RuntimeError("OutboundClient is closed")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        origin: Origin = (parsed.raw_scheme, parsed.raw_host, port)
        request_headers = [
            (b"Host", parsed.netloc),  # brackets around an IPv6 host, no default port
            (b"User-Agent", self.user_agent.encode("latin-1")),
            (b"Content-Length", str(len(content)).encode("ascii")),
        ]
        request_headers += [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
            if name.lower() not in ("host", "user-agent", "content-length", "transfer-encoding")
        ]
        # The deadline that counts is post's, over the whole exchange; these only make sure
        # no single phase outlives it.
        phases = dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)
        request = httpcore.Request(
            b"POST",
            httpcore.URL(scheme=origin[0], host=origin[1], port=port, target=parsed.raw_path),
            headers=request_headers,
            content=content,
            extensions={"timeout": phases},
        )
        async with self._slots:
            await self._sweep()
            connection = await self._take_idle(origin)
            if connection is None:
                connection = httpcore.AsyncHTTPConnection(
                    httpcore.Origin(*origin),
                    ssl_context=self._ssl_context,
                    keepalive_expiry=self.keepalive_expiry,
                    network_backend=self._backend,
                )
            try:
                response = await connection.handle_async_request(request)
                try:
                    answer.status = response.status
                    read = 0
                    # Read on up to max_body so a normal answer leaves the connection
                    # reusable; past that, stop: closing a response with its body unread
                    # closes the connection too.
                    async for chunk in response.aiter_stream():
                        if len(answer.kept) < KEPT_BODY_BYTES:
                            answer.kept += chunk[: KEPT_BODY_BYTES - len(answer.kept)]
                        read += len(chunk)
                        if read >= self.max_body:
                            break
                finally:
                    await response.aclose()
            except BaseException:
                await connection.aclose()
                raise
            if connection.is_idle() and not self._closed:
                self._idle.setdefault(origin, []).append(connection)
            else:
                await connection.aclose()

    async def _take_idle(self, origin: Origin) -> httpcore.AsyncHTTPConnection | None:
        """The most recently used idle connection to ``origin`` that is still good."""
        waiting = self._idle.get(origin)
        while waiting:
            connection = waiting.pop()
            # has_expired: past keep-alive, or the server closed it (the socket reads b"").
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        return None

    async def _sweep(self) -> None:
        """Close idle connections that expired, once per keep-alive period, so endpoints no
        longer sent to do not keep sockets open."""
        now = time.monotonic()
        if now - self._swept_at < self.keepalive_expiry:
            return
        self._swept_at = now
        expired: list[httpcore.AsyncHTTPConnection] = []
        for origin, waiting in list(self._idle.items()):
            keep: list[httpcore.AsyncHTTPConnection] = []
            for connection in waiting:
                good = connection.is_idle() and not connection.has_expired()
                (keep if good else expired).append(connection)
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        for connection in expired:
            await connection.aclose()

    @property
    def idle_connections(self) -> int:
        return sum(len(waiting) for waiting in self._idle.values())

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for waiting in idle.values():
            for connection in waiting:
                await connection.aclose()

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
