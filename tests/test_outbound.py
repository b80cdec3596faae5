"""Outbound requests (coregraph/outbound.py) against real sockets: a receiver on 127.0.0.1 that
the development mode reaches and the production policy refuses, SSRF spellings refused before
any socket opens, DNS rebinding refused at connect time, redirects not followed, capped and
deadline-bound answers. Only the resolver is replaced, where a test needs a name to resolve to
an address of its choosing (there is no DNS under our control here)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coregraph import outbound
from coregraph.outbound import (
    OutboundClient,
    UnsafeDestination,
    check_destination,
    check_url,
    refusal_reason,
    resolve_checked,
)
from tests.receiver_support import ReceivedRequest, Receiver, Reply
from tests.support import free_port

WAIT_SECONDS = 30
PUBLIC_V4 = "93.184.215.14"  # an address on the public internet (never dialled by these tests)


async def answer_by_path(request: ReceivedRequest) -> Reply:
    if request.path == "/redirect":
        return Reply(302, b"moved", {"Location": "/ok"})
    if request.path == "/metadata-redirect":
        return Reply(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
    if request.path == "/fail":
        return Reply(500, b"x" * 5000)
    if request.path == "/medium":
        return Reply(200, bytes(range(256)) * 40)  # 10 KiB: under the cap
    if request.path == "/endless":
        return Reply(200, endless(), length=10**12)
    if request.path == "/hang":
        await asyncio.Event().wait()
    if request.path == "/dribble":
        return Reply(200, dribble(), length=1000)
    if request.path == "/close":
        return Reply(200, b"ok", {"Connection": "close"})
    return Reply(200, b"ok")


async def endless() -> AsyncIterator[bytes]:
    chunk = b"z" * 65536
    while True:
        yield chunk


async def dribble() -> AsyncIterator[bytes]:
    # Each byte well within any per-read timeout; all of them well past the request's deadline.
    for _ in range(1000):
        yield b"."
        await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(answer_by_path) as rcv:
        yield rcv


class FakeNames:
    """Names this test decides the answers for; any other lookup goes to the real resolver
    (anyio looks up the literal address it is given, for one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.lookups: dict[str, int] = {}
        real = outbound._lookup

        def lookup(host: str, port: int) -> Any:
            if host not in self.answers:
                return real(host, port)
            seen = self.lookups.get(host, 0)
            self.lookups[host] = seen + 1
            rounds = self.answers[host]
            addresses = rounds[min(seen, len(rounds) - 1)]
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (a, int(port)),
                )
                for a in addresses
            ]

        monkeypatch.setattr(outbound, "_lookup", lookup)


# -- check_url: syntax, and literal addresses, before any socket ------------------------------

REFUSED = [
    ("http://127.0.0.1/hook", "loopback address"),
    ("http://10.0.0.1/hook", "private address"),
    ("http://172.16.5.4/", "private address"),
    ("http://192.168.1.1/", "private address"),
    ("http://169.254.169.254/latest/meta-data/", "link-local (cloud metadata) address"),
    ("http://100.64.0.1/", "shared (carrier-grade NAT) address"),
    ("http://224.0.0.251/", "multicast address"),
    ("http://0.0.0.0:8080/", "unspecified address"),
    ("http://255.255.255.255/", "reserved address"),
    ("http://[::1]/", "loopback address"),
    ("http://[::]/", "unspecified address"),
    ("http://[::ffff:127.0.0.1]/", "loopback address"),
    ("http://[::ffff:169.254.169.254]/", "link-local (cloud metadata) address"),
    ("http://[::127.0.0.1]/", "loopback address"),  # IPv4-compatible
    ("http://[2002:a00:1::]/", "private address"),  # 6to4 of 10.0.0.1
    ("http://[64:ff9b::7f00:1]/", "loopback address"),  # NAT64 of 127.0.0.1
    ("http://[fd12:3456::1]/", "unique local"),
    ("http://[fe80::1]/", "link-local address"),
    ("http://[fec0::1]/", "site-local address"),
    ("http://[ff02::1]/", "multicast address"),
    ("http://2130706433/", "non-canonical form"),
    ("http://0x7f000001/", "non-canonical form"),
    ("http://0x7f.1/", "non-canonical form"),
    ("http://127.1/", "non-canonical form"),
    ("http://0177.0.0.1/", "not a valid URL"),  # httpx refuses the octal form itself
    ("http://127.0.0.1./", "non-canonical form"),
    ("http://[fe80::1%25eth0]/", "zone identifier"),
    ("http://localhost:8000/", "loopback host name"),
    ("http://api.localhost/", "loopback host name"),
    ("ftp://example.com/hook", "must use https or http"),
    ("file:///etc/passwd", "must use https or http"),
    ("gopher://example.com:70/", "must use https or http"),
    ("http://user:secret@example.com/", "user name or password"),
    ("http://user@example.com/", "user name or password"),
    ("https://example.com/hook#frag", "fragment"),
    ("http:///path-only", "no host"),
    ("http://exa mple.com/", "whitespace or control"),
    ("http://example.com/\r\nX-Injected: 1", "whitespace or control"),
    ("http://example.com:0/", "invalid port"),
    ("http://example.com:70000/", "invalid port"),
    ("http://ex%41mple.com/", "invalid host"),
    ("http://a..b/", "invalid host"),
    ("https://example.com/" + "a" * 2048, "longer than 2048"),
    ("", "empty"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_check_url_refuses_unsafe_urls_with_a_typed_error_naming_the_reason(
    url: str, reason: str
) -> None:
    with pytest.raises(UnsafeDestination) as refused:
        check_url(url, allow_private=False, require_https=False)
    assert refused.value.code == "BAD_USER_INPUT"
    assert refused.value.extensions == {"code": "BAD_USER_INPUT", "field": "url"}
    assert reason in refused.value.message


def test_check_url_accepts_public_urls_and_returns_them_normalised() -> None:
    assert (
        check_url("https://Hooks.Example.COM:443/in?a=1", allow_private=False, require_https=True)
        == "https://hooks.example.com/in?a=1"
    )
    assert (
        check_url("http://bücher.example/h", allow_private=False, require_https=False)
        == "http://xn--bcher-kva.example/h"
    )
    assert check_url(f"http://{PUBLIC_V4}:8080/", allow_private=False, require_https=False) == (
        f"http://{PUBLIC_V4}:8080/"
    )
    assert check_url("https://[2606:4700:4700::1111]/", allow_private=False, require_https=True)
    assert check_url("http://[::ffff:8.8.8.8]/", allow_private=False, require_https=False)


def test_https_is_required_when_asked() -> None:
    with pytest.raises(UnsafeDestination, match="must use https"):
        check_url("http://hooks.example.com/", allow_private=False, require_https=True)


def test_the_development_mode_allows_private_addresses_but_not_bad_syntax() -> None:
    for url in (
        "http://127.0.0.1:9000/",
        "http://localhost:9000/",
        "http://[::1]/",
        "http://10.1.2.3/",
    ):
        assert check_url(url, allow_private=True, require_https=False)
    for url in ("ftp://127.0.0.1/", "http://u:p@127.0.0.1/", "http://2130706433/", "http://127.1/"):
        with pytest.raises(UnsafeDestination):
            check_url(url, allow_private=True, require_https=False)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
        ("2002:808:808::", False),  # 6to4 of a public address
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", False),  # Teredo, public server and client
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo whose client is 127.0.0.1
        ("198.18.0.1", True),
        ("192.0.2.10", True),
        ("2001:db8::1", True),
        ("64:ff9b:1::a", True),
        ("::ffff:0:7f00:1", True),  # RFC 2765 IPv4-translated, of 127.0.0.1
        ("::ffff:0:808:808", True),  # and of a public address: no public host has one
    ],
)
def test_the_address_policy(address: str, refused: bool) -> None:
    assert (refusal_reason(ipaddress.ip_address(address)) is not None) is refused


# -- resolution: every address checked ------------------------------------------------------


async def test_a_name_resolving_to_loopback_is_refused_unless_private_is_allowed() -> None:
    with pytest.raises(UnsafeDestination, match=r"resolves to a loopback address$"):
        await resolve_checked("localhost", 80, allow_private=False)
    assert "127.0.0.1" in await resolve_checked("localhost", 80, allow_private=True)


async def test_a_name_with_any_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    FakeNames(
        monkeypatch,
        {
            "intranet.example": [["10.0.0.7"]],
            "mixed.example": [[PUBLIC_V4, "192.168.0.10"]],
            "metadata.example": [["169.254.169.254"]],
            "v6.example": [["2606:4700:4700::1111", "fd00::5"]],
            "public.example": [[PUBLIC_V4, "2606:4700:4700::1111"]],
        },
    )
    caplog.set_level("INFO", logger="coregraph.outbound")
    for name, reason, address in [
        ("intranet.example", r"resolves to a private address$", "10.0.0.7"),
        ("mixed.example", r"resolves to a private address$", "192.168.0.10"),
        ("metadata.example", r"link-local \(cloud metadata\) address$", "169.254.169.254"),
        ("v6.example", r"unique local\) address$", "fd00::5"),
    ]:
        with pytest.raises(UnsafeDestination, match=reason) as refused:
            await check_destination(f"https://{name}/hook", allow_private=False, require_https=True)
        assert refused.value.code == "BAD_USER_INPUT"
        # The tenant is told the category; the address inside our network is only logged.
        assert address not in refused.value.message
        assert any(getattr(r, "address", None) == address for r in caplog.records)
    assert await resolve_checked("public.example", 443, allow_private=False) == [
        PUBLIC_V4,
        "2606:4700:4700::1111",
    ]
    assert (
        await check_destination("https://public.example/h", allow_private=False, require_https=True)
        == "https://public.example/h"
    )


async def test_a_name_that_does_not_resolve_yet_is_accepted_and_fails_at_send_time() -> None:
    url = "https://no-such-host.invalid/h"
    assert await check_destination(url, allow_private=False, require_https=True) == url
    with pytest.raises(UnsafeDestination, match="does not resolve"):
        await resolve_checked("no-such-host.invalid", 443, allow_private=False)


# -- sending through real sockets -----------------------------------------------------------


async def test_the_development_mode_delivers_to_a_loopback_receiver(receiver: Receiver) -> None:
    async with OutboundClient(allow_private=True, timeout=5) as client:
        result = await client.post(
            receiver.url("/ok"),
            content=b'{"type":"member.added"}',
            # The request's framing is ours: a caller cannot redirect it by Host or resize it.
            headers={
                "Content-Type": "application/json",
                "webhook-id": "msg_1",
                "Host": "internal.example",
                "Content-Length": "1",
            },
        )
    assert result.ok, result
    assert (result.status_code, result.body, result.error) == (200, b"ok", None)
    assert 0 < result.duration_ms < 5000
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == (
        "POST",
        "/ok",
        b'{"type":"member.added"}',
    )
    assert request.headers["user-agent"] == "coregraph-webhooks/1"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"


async def test_the_production_policy_refuses_the_same_receiver_without_connecting(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeNames(monkeypatch, {"hooks.example": [["127.0.0.1"]]})
    async with OutboundClient(allow_private=False, timeout=5) as client:
        literal = await client.post(receiver.url("/ok"), content=b"{}", headers={})
        named = await client.post(
            receiver.url("/ok", host="hooks.example"), content=b"{}", headers={}
        )
        local = await client.post(receiver.url("/ok", host="localhost"), content=b"{}", headers={})
    assert literal.error == ("destination refused: webhook URL points to a loopback address")
    assert named.error == ("destination refused: webhook URL resolves to a loopback address")
    assert local.error == "destination refused: webhook URL points to a loopback host name"
    for result in (literal, named, local):
        assert (result.ok, result.status_code, result.body) == (False, None, b"")
    assert receiver.connections == 0 and receiver.requests == []


async def test_lookups_that_never_answer_do_not_starve_the_default_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A black-holed DNS zone: more stuck lookups than the default executor has threads. They
    tie up the resolver's own threads only; work in the default executor (argon2 hashing,
    local storage) still runs at once."""
    answered = threading.Event()

    def black_hole(host: str, port: int) -> Any:
        answered.wait(WAIT_SECONDS)
        raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")

    monkeypatch.setattr(outbound, "_lookup", black_hole)
    stuck = 64  # more than the default executor's min(32, CPUs + 4) threads

    async def lookup(n: int) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await resolve_checked(f"h{n}.black-hole.example", 443, allow_private=False)

    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(lookup(n) for n in range(stuck)))
        started = time.monotonic()
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "ran"), 5) == "ran"
        assert time.monotonic() - started < 2
    finally:
        answered.set()


async def test_dns_rebinding_is_refused_at_connect_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Public when the endpoint is saved, loopback when the delivery connects.
    names = FakeNames(monkeypatch, {"rebind.example": [[PUBLIC_V4], ["127.0.0.1"]]})
    url = receiver.url("/ok", host="rebind.example")
    assert await check_destination(url, allow_private=False, require_https=False) == url
    async with OutboundClient(allow_private=False, timeout=5) as client:
        result = await client.post(url, content=b"{}", headers={})
    assert result.error == ("destination refused: webhook URL resolves to a loopback address")
    assert names.lookups["rebind.example"] == 2
    assert receiver.connections == 0


async def test_the_connection_goes_to_the_checked_address_with_one_lookup_per_connection(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operating system cannot resolve hooks.example: the requests arriving prove that the
    # connection was made to the address our resolver returned, with no lookup of its own.
    names = FakeNames(monkeypatch, {"hooks.example": [["127.0.0.1"]]})
    async with OutboundClient(allow_private=True, timeout=5) as client:
        results = [
            await client.post(receiver.url("/ok", host="hooks.example"), content=b"{}", headers={})
            for _ in range(20)
        ]
        assert all(r.ok for r in results), results
        # Kept alive: one connection, so one lookup and one check, for twenty requests.
        assert (receiver.connections, names.lookups["hooks.example"]) == (1, 1)
        assert receiver.requests[0].headers["host"] == f"hooks.example:{receiver.port}"

        # A receiver that closes after each answer: every new connection is looked up again.
        for _ in range(3):
            closing = await client.post(
                receiver.url("/close", host="hooks.example"), content=b"{}", headers={}
            )
            assert closing.ok, closing
    assert receiver.connections == 3  # the first /close still used the kept-alive one
    assert names.lookups["hooks.example"] == receiver.connections


async def test_a_kept_alive_connection_the_receiver_closed_is_not_reused(
    receiver: Receiver,
) -> None:
    async with OutboundClient(allow_private=True, timeout=5) as client:
        first = await client.post(receiver.url("/ok"), content=b"{}", headers={})
        assert client.idle_connections == 1
        await receiver.drop_connections()
        second = await client.post(receiver.url("/ok"), content=b"{}", headers={})
    assert first.ok and second.ok, (first, second)
    assert receiver.connections == 2


async def test_concurrent_requests_share_a_bounded_set_of_kept_alive_connections(
    receiver: Receiver,
) -> None:
    async with OutboundClient(allow_private=True, timeout=10, max_connections=8) as client:
        results = await asyncio.gather(
            *(client.post(receiver.url("/ok"), content=b"{}", headers={}) for _ in range(200))
        )
    assert all(r.ok for r in results)
    assert len(receiver.requests) == 200
    assert receiver.connections <= 8


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    async with OutboundClient(allow_private=True, timeout=5) as client:
        local = await client.post(receiver.url("/redirect"), content=b"{}", headers={})
        metadata = await client.post(receiver.url("/metadata-redirect"), content=b"{}", headers={})
    for result in (local, metadata):
        assert (result.ok, result.status_code) == (False, 302)
        assert result.error == "redirect not followed (302)"
    assert local.body == b"moved"
    assert [r.path for r in receiver.requests] == ["/redirect", "/metadata-redirect"]


async def test_a_failure_answer_keeps_the_first_kibibyte(receiver: Receiver) -> None:
    async with OutboundClient(allow_private=True, timeout=5) as client:
        failed = await client.post(receiver.url("/fail"), content=b"{}", headers={})
        medium = await client.post(receiver.url("/medium"), content=b"{}", headers={})
    assert (failed.ok, failed.status_code, failed.error) == (False, 500, None)
    assert failed.body == b"x" * 1024
    assert (medium.ok, medium.body) == (True, (bytes(range(256)) * 4))
    # Both bodies were under the read cap: read to the end, so the connection was reused.
    assert receiver.connections == 1


async def test_an_endless_answer_is_cut_at_the_cap_and_its_connection_dropped(
    receiver: Receiver,
) -> None:
    started = time.monotonic()
    async with OutboundClient(allow_private=True, timeout=10, max_body=256 * 1024) as client:
        result = await client.post(receiver.url("/endless"), content=b"{}", headers={})
        assert time.monotonic() - started < 5
        assert (result.ok, result.status_code, result.body) == (True, 200, b"z" * 1024)
        # The receiver's endless write ends because the client closed the connection.
        await receiver.wait_for(lambda: receiver.open_connections == 0)
        again = await client.post(receiver.url("/ok"), content=b"{}", headers={})
    assert again.ok and receiver.connections == 2


async def test_an_answer_that_never_comes_is_a_timeout_within_the_deadline(
    receiver: Receiver,
) -> None:
    async with OutboundClient(allow_private=True, timeout=0.5) as client:
        started = time.monotonic()
        result = await client.post(receiver.url("/hang"), content=b"{}", headers={})
        elapsed = time.monotonic() - started
    assert (result.ok, result.status_code, result.error) == (False, None, "timeout")
    assert 0.45 <= elapsed < 3, elapsed
    assert 450 <= result.duration_ms < 3000


async def test_the_deadline_covers_the_whole_answer_not_each_read(receiver: Receiver) -> None:
    # One byte every 50 ms never trips a per-read timeout; the request's deadline still holds.
    async with OutboundClient(allow_private=True, timeout=0.6) as client:
        started = time.monotonic()
        result = await client.post(receiver.url("/dribble"), content=b"{}", headers={})
        elapsed = time.monotonic() - started
    assert (result.ok, result.status_code, result.error) == (False, 200, "timeout")
    assert 0.55 <= elapsed < 3, elapsed


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose accept queue is full: new connections' SYNs are dropped, so
    connecting hangs, as to a host that has gone away."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_a_connection_that_never_completes_is_a_timeout_within_the_deadline(
    unaccepting_port: int,
) -> None:
    async with OutboundClient(allow_private=True, timeout=0.5) as client:
        started = time.monotonic()
        result = await client.post(
            f"http://127.0.0.1:{unaccepting_port}/", content=b"{}", headers={}
        )
        elapsed = time.monotonic() - started
    assert (result.ok, result.status_code, result.error) == (False, None, "timeout")
    assert 0.45 <= elapsed < 3, elapsed


async def test_a_closed_port_is_reported_as_connection_refused() -> None:
    port = free_port()  # bound and released: nothing listens there
    async with OutboundClient(allow_private=True, timeout=5) as client:
        result = await client.post(f"http://127.0.0.1:{port}/", content=b"{}", headers={})
    assert (result.ok, result.status_code, result.error) == (False, None, "connection refused")


async def test_an_unresolvable_name_is_reported_briefly() -> None:
    async with OutboundClient(allow_private=False, timeout=5) as client:
        result = await client.post("https://no-such-host.invalid/h", content=b"{}", headers={})
    assert result.error == "name not resolved (no-such-host.invalid)"


# -- TLS: the certificate is checked against the name, the socket goes to the checked address


def self_signed(tmp: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str]]:
    """A server context with a certificate for ``name``, a client context trusting only that
    certificate, and the list the server records each ClientHello's SNI name in."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    sni: list[str] = []

    def record_sni(_sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(str(server_name))

    server.sni_callback = record_sni  # type: ignore[assignment]
    client = ssl.create_default_context(cadata=cert_pem.decode("ascii"))
    return server, client, sni


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext, list[str]]]:
    yield self_signed(tmp_path, "hooks.example")


async def test_tls_verifies_the_hostname_while_connecting_to_the_checked_address(
    tls: tuple[ssl.SSLContext, ssl.SSLContext, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_ctx, client_ctx, sni = tls
    FakeNames(monkeypatch, {"hooks.example": [["127.0.0.1"]], "other.example": [["127.0.0.1"]]})
    async with Receiver(answer_by_path, ssl_context=server_ctx) as receiver:
        port = receiver.port
        async with OutboundClient(allow_private=True, timeout=5, ssl_context=client_ctx) as client:
            good = await client.post(
                receiver.url("/ok", host="hooks.example"), content=b"{}", headers={}
            )
            # Same address, another name: the certificate does not match, nothing is sent.
            wrong = await client.post(
                receiver.url("/ok", host="other.example"), content=b"{}", headers={}
            )
            # The server closes the kept-alive TLS connection: noticed, a new one is made.
            await receiver.drop_connections()
            again = await client.post(
                receiver.url("/ok", host="hooks.example"), content=b"{}", headers={}
            )
    assert good.ok and again.ok, (good, again)
    assert receiver.connections == 2  # good, again (wrong's handshake failed: no connection)
    assert sni[0] == "hooks.example"
    assert (wrong.ok, wrong.status_code, wrong.error) == (
        False,
        None,
        "TLS certificate verification failed",
    )
    assert [r.headers["host"] for r in receiver.requests] == [f"hooks.example:{port}"] * 2
