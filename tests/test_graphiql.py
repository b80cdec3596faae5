"""GraphiQL comes from coregraph itself: the page a browser gets on /graphql references no other
origin, every script and stylesheet it names is served by coregraph with the bytes recorded in
coregraph/static/graphiql/VERSIONS (as the npm packages hold them), and its
Content-Security-Policy allows nothing but coregraph. Where Chromium is installed, a headless one
boots the page under that policy and runs a query over HTTP and a subscription over WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import websockets

from coregraph import graphiql
from coregraph.schema.audit import encode_position_cursor
from tests.conftest import make_settings
from tests.support import GraphQLClient, Server, running_server

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css"}
# Source expressions a policy of coregraph's may hold: this origin, and data: where a vendored
# stylesheet embeds its fonts and images. Any host, any other scheme, any 'unsafe-*' fails.
ALLOWED_SOURCES = {"'self'", "'none'", "data:"}


def recorded_hashes() -> dict[str, str]:
    """VERSIONS: file name -> the sha256 recorded when it was taken from its npm package."""
    hashes = {}
    for line in (graphiql.STATIC / "VERSIONS").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _package, _version, _path, sha256 = line.split()
            hashes[name] = sha256
    return hashes


class PageReferences(HTMLParser):
    """Every URL the page names (any tag's src or href), and what it runs or styles inline."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.references += [(tag, values) for name, value in attrs if name in ("src", "href")]
        if "style" in values or any(name.startswith("on") for name in values):
            self.inline.append(f"<{tag}> attribute")
        self._open = tag if tag in ("script", "style") else None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(f"<{self._open}> {data[:40]!r}")

    def handle_endtag(self, tag: str) -> None:
        self._open = None


async def ide_page(
    http: httpx.AsyncClient, server: Server
) -> tuple[httpx.Response, PageReferences]:
    response = await http.get(server.url, headers={"Accept": BROWSER_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "text/html"
    parsed = PageReferences()
    parsed.feed(response.text)
    return response, parsed


def asset_urls(server: Server, parsed: PageReferences) -> dict[str, str]:
    """The page's scripts and stylesheets: file name -> absolute URL."""
    urls = {}
    for tag, attrs in parsed.references:
        if tag == "link" and attrs.get("rel") == "icon":
            continue
        url = urljoin(server.url, attrs.get("src") or attrs.get("href") or "")
        urls[url.rsplit("/", 1)[1]] = url
    return urls


async def test_the_page_references_no_other_origin(http: httpx.AsyncClient, server: Server) -> None:
    _, parsed = await ide_page(http, server)
    assert parsed.references, "the page names its scripts and stylesheets"
    for tag, attrs in parsed.references:
        value = attrs.get("src") or attrs.get("href") or ""
        if tag == "link" and attrs.get("rel") == "icon":
            assert value.startswith("data:image/svg+xml,"), value
            continue
        url = urlsplit(urljoin(server.url, value))
        assert (url.scheme, url.netloc) == ("http", f"127.0.0.1:{server.port}"), value
        assert not urlsplit(value).netloc, f"{value}: relative, so a path prefix keeps working"
    assert parsed.inline == [], "no inline script or style: the policy allows none"
    scripts = [a["src"] for tag, a in parsed.references if tag == "script"]
    assert [s.rsplit("/", 1)[1] for s in scripts if s] == list(graphiql.SCRIPTS)


async def test_every_asset_is_served_with_the_recorded_bytes(
    http: httpx.AsyncClient, server: Server
) -> None:
    _, parsed = await ide_page(http, server)
    urls = asset_urls(server, parsed)
    recorded = recorded_hashes()
    vendored = {name for name in urls if name in recorded}
    # Everything but coregraph's own boot script and stylesheet is a vendored file.
    assert set(urls) - vendored == {"coregraph-graphiql.js", "coregraph-graphiql.css"}
    integrity = {
        (a.get("src") or a.get("href") or "").rsplit("/", 1)[1]: a.get("integrity")
        for _, a in parsed.references
    }
    for name, url in urls.items():
        response = await http.get(url, headers={"Accept-Encoding": "identity"})
        assert response.status_code == 200, url
        assert "content-encoding" not in response.headers
        media_type, _, charset = response.headers["content-type"].partition(";")
        assert media_type == MEDIA_TYPES[Path(name).suffix], (name, media_type)
        assert charset.strip() == "charset=utf-8"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        digest = hashlib.sha256(response.content).hexdigest()
        assert digest == hashlib.sha256((graphiql.STATIC / name).read_bytes()).hexdigest()
        if name in vendored:
            assert digest == recorded[name], f"{name} differs from its recorded npm bytes"
        assert f"/{digest[:16]}/" in url, "the URL changes when the bytes do"
        sri = base64.b64encode(hashlib.sha384(response.content).digest()).decode()
        assert integrity[name] == f"sha384-{sri}"
        zipped = await http.get(url, headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["vary"] == "Accept-Encoding"
        assert zipped.content == response.content  # (httpx decoded it)


def test_the_vendored_files_are_the_recorded_ones() -> None:
    """Every file VERSIONS names (the licences too) has the bytes recorded for it."""
    recorded = recorded_hashes()
    assert {"graphiql.min.js", "react.production.min.js", "LICENSE.graphiql"} <= set(recorded)
    for name, sha256 in recorded.items():
        assert hashlib.sha256((graphiql.STATIC / name).read_bytes()).hexdigest() == sha256, name


async def test_a_stale_or_unknown_asset_url_is_not_found(
    http: httpx.AsyncClient, server: Server
) -> None:
    _, parsed = await ide_page(http, server)
    url = asset_urls(server, parsed)["graphiql.min.js"]
    digest = url.split("/")[-2]
    stale = url.replace(f"/{digest}/", "/0000000000000000/")
    assert stale != url
    assert (await http.get(stale)).status_code == 404
    assert (await http.get(url.replace("graphiql.min.js", "VERSIONS"))).status_code == 404
    assert (await http.get(url.replace("graphiql.min.js", "refresh.py"))).status_code == 404


async def test_the_policy_allows_nothing_but_coregraph(
    http: httpx.AsyncClient, server: Server
) -> None:
    response, _ = await ide_page(http, server)
    policy = response.headers["content-security-policy"]
    directives = {
        name: sources
        for name, *sources in (part.split() for part in policy.split(";") if part.strip())
    }
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    # The one inline style: GraphiQL's scroll lock, by its hash (the browser test opens a dialog).
    assert directives["style-src"] == ["'self'", graphiql.SCROLL_LOCK_STYLE]
    assert directives["connect-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    for name, sources in directives.items():
        assert set(sources) - {graphiql.SCROLL_LOCK_STYLE} <= ALLOWED_SOURCES, (name, sources)
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_neither_page_nor_assets_without_graphiql(
    http: httpx.AsyncClient, server: Server, database_url: str
) -> None:
    """Production's default (GraphiQL off): no page, and no asset URL answers."""
    _, parsed = await ide_page(http, server)
    urls = asset_urls(server, parsed)
    with running_server(make_settings(database_url, graphiql=False)) as quiet:
        page = await http.get(quiet.url, headers={"Accept": BROWSER_ACCEPT})
        assert "graphiql" not in page.text.lower()
        for url in urls.values():
            moved = url.replace(server.base_url, quiet.base_url)
            assert (await http.get(moved)).status_code == 404, moved


# --- the page boots in a browser ---------------------------------------------------------

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


class DevTools:
    """One page of a headless Chromium, driven over the DevTools protocol; records the console,
    exceptions, policy violations and every URL the page requested."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requested: list[str] = []
        self.problems: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                self.pending.pop(message["id"]).set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requested.append(params["request"]["url"])
            elif method == "Network.webSocketCreated":
                self.requested.append(params["url"])
            elif method == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                self.problems.append(params["entry"]["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                text = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                if not text.startswith(NOT_A_PROBLEM):
                    self.problems.append(text[:500])
            elif method == "Audits.issueAdded" and params["issue"]["code"] != "GenericIssue":
                # (Generic issues are GraphiQL's markup: inputs without a name or a label.)
                self.problems.append(json.dumps(params["issue"])[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        message = await asyncio.wait_for(future, 30)
        assert "error" not in message, message
        return dict(message["result"])

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float = 30, show: str = "") -> Any:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        shown = await self.evaluate(show) if show else ""
        raise AssertionError(f"not true within {within} s: {expression} ({shown}); {self.problems}")


@contextlib.contextmanager
def chromium() -> Iterator[int]:
    """A headless Chromium on a loopback DevTools port of its own; yields the port."""
    assert CHROMIUM is not None
    # (Its helper processes may still be leaving the profile as it is removed.)
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        args = [
            CHROMIUM,
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text().strip():
                assert process.poll() is None, "chromium exited"
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                time.sleep(0.05)
            yield int(port_file.read_text().split()[0])
        finally:
            # The browser and the helpers it started: their own process group.
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@contextlib.asynccontextmanager
async def devtools_page(http: httpx.AsyncClient) -> AsyncIterator[DevTools]:
    with chromium() as port:
        targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        page = next(t for t in targets if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
            tools = DevTools(ws)
            for domain in ("Runtime", "Log", "Network", "Page", "Audits"):
                await tools.call(f"{domain}.enable")
            try:
                yield tools
            finally:
                tools.reader.cancel()


SETTINGS = '.graphiql-sidebar button[aria-label="Open settings dialog"]'
DOCS = '.graphiql-sidebar button[aria-label="Show Documentation Explorer"]'
# react-remove-scroll-bar's note that the body does not scroll (so it locks nothing, gap 0).
NOT_A_PROBLEM = "react-remove-scroll-bar: cannot calculate scrollbar size"


def editor(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector + ' .CodeMirror')}).CodeMirror"


RESULT = f"({editor('.result-window')}.getValue())"


async def run_in_graphiql(tools: DevTools, query: str, headers: str = "") -> None:
    await tools.evaluate(f"{editor('.graphiql-query-editor')}.setValue({json.dumps(query)})")
    if headers:
        await tools.evaluate("document.querySelector('button[data-name=\"headers\"]').click()")
        headers_editor = editor(".graphiql-editor-tool .graphiql-editor:not(.hidden)")
        await tools.evaluate(f"{headers_editor}.setValue({json.dumps(headers)})")
    await tools.evaluate("document.querySelector('.graphiql-execute-button').click()")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")
async def test_the_page_boots_and_runs_a_query_and_a_subscription_under_its_policy(
    http: httpx.AsyncClient, server: Server, client: GraphQLClient
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    async with devtools_page(http) as tools:
        await tools.call("Page.navigate", url=server.url)
        await tools.wait_for("!!document.querySelector('.graphiql-query-editor .CodeMirror')")
        # The schema arrived over HTTP (introspection): the docs button turns on with it.
        await tools.wait_for(f"!!document.querySelector({json.dumps(DOCS)})")
        await run_in_graphiql(tools, "{ __typename }")
        await tools.wait_for(f'{RESULT}.includes(\'"__typename": "Query"\')', show=RESULT)

        # A subscription goes over WebSocket, its credential from the Headers tab.
        headers = json.dumps({"Authorization": f"Bearer {owner.token}", "X-Tenant-Id": tenant_id})
        after = encode_position_cursor(0)
        await run_in_graphiql(
            tools,
            f'subscription {{ auditLog(after: "{after}") {{ node {{ action }} }} }}',
            headers,
        )
        # The replay from the chain's start: GraphiQL shows the latest entry it received.
        await tools.wait_for(f'{RESULT}.includes(\'"action": "member.added"\')', show=RESULT)
        ws_url = server.url.replace("http://", "ws://")
        assert ws_url in tools.requested, tools.requested
        await tools.evaluate("document.querySelector('.graphiql-execute-button').click()")

        # A dialog inserts GraphiQL's scroll-lock style: the policy allows it by its hash.
        await tools.evaluate(f"document.querySelector({json.dumps(SETTINGS)}).click()")
        await tools.wait_for("!!document.querySelector('[role=dialog]')")
        await tools.wait_for("document.querySelectorAll('head style').length === 1")

    own = (f"{server.base_url}/", f"ws://127.0.0.1:{server.port}/")
    outside = [u for u in tools.requested if not u.startswith((*own, "data:"))]
    assert outside == [], outside
    assert tools.problems == [], tools.problems
