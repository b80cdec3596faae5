"""GraphiQL served from coregraph itself (``GET /graphql`` from a browser, outside production).

The page loads React, GraphiQL and GraphiQL's explorer plugin from files vendored in
``coregraph/static/graphiql/`` (``VERSIONS`` names each file's npm package, version and sha256,
and the command that refreshes them), and coregraph's own boot script and stylesheet beside
them: no CDN, so ``make run`` gives a working IDE offline and the page runs no third-party code.
The versions are the ones strawberry's own template loads from its CDN (GraphiQL 3.8.3, whose
bundle runs without a bundler, on React 18.2.0). Each asset is served at
``/graphiql/<digest>/<name>``, ``digest`` being the start of the file's sha256, so it is cached
for a year as immutable: new bytes are a new URL, and a stale URL is a 404, never other bytes.

The page's Content-Security-Policy allows this origin and nothing else:

- ``script-src 'self'``: the boot script is a file too, so no inline script runs.
- ``style-src 'self'`` and one hash: no inline style but the ``<style>`` element GraphiQL's
  dialogs (Radix, through react-remove-scroll-bar) insert to lock the body's scroll while one is
  open. Its text depends only on the scrollbar gap, which is 0 here because the page's body
  never scrolls (coregraph-graphiql.css), so it is the same on every open and its hash,
  ``SCROLL_LOCK_STYLE``, allows exactly it (the bundle offers no way to give it a nonce; the
  browser test opens a dialog and fails on a violation). React sets ``style`` properties
  through the CSSOM, which the policy does not govern.
- ``img-src 'self' data:`` and ``font-src 'self' data:``: graphiql.min.css carries its fonts
  (Roboto, Fira Code) and a few images inline as ``data:`` URLs, and the icon is one.
- ``connect-src 'self'``: requests to ``/graphql``, and subscriptions to the same address over
  ``ws:``/``wss:``, which ``'self'`` covers (CSP Level 3).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
from fastapi import Request
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).resolve().parent / "static" / "graphiql"
# Relative to the page (/graphql), so coregraph mounted under a path prefix still finds them.
ASSET_PATH = "graphiql"
STYLES = ("graphiql.min.css", "plugin-explorer.css", "coregraph-graphiql.css")
# In load order: the explorer plugin reads GraphiQL's globals, the boot script all of them.
SCRIPTS = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
    "plugin-explorer.umd.js",
    "coregraph-graphiql.js",
)
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_ICON = (
    "data:image/svg+xml,<svg xmlns=%22http://www.w3.org/2000/svg%22 viewBox=%220 0 100 100%22>"
    "<text y=%22.9em%22 font-size=%2290%22>%E2%97%86</text></svg>"
)

# sha256 of the scroll-lock <style> GraphiQL 3.8.3 inserts while a dialog is open (above).
SCROLL_LOCK_STYLE = "'sha256-Y/huXlwoYkVyQlxwSVcCi1RCDGDCSVBzDt0hYP9qlTc='"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        f"style-src 'self' {SCROLL_LOCK_STYLE}",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The asset URLs in it change with the files: revalidate the page, cache the assets.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # The page's URL carries the query being edited.
    "Referrer-Policy": "no-referrer",
}
ASSET_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Vary": "Accept-Encoding",
}


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    gzipped: bytes
    media_type: str
    digest: str
    integrity: str

    @property
    def url(self) -> str:
        return f"{ASSET_PATH}/{self.digest}/{self.name}"


@dataclass(frozen=True)
class Ide:
    assets: dict[str, Asset]
    page: str


def _asset(name: str) -> Asset:
    body = (STATIC / name).read_bytes()
    return Asset(
        name=name,
        body=body,
        gzipped=gzip.compress(body, compresslevel=6, mtime=0),
        media_type=MEDIA_TYPES[Path(name).suffix],
        digest=hashlib.sha256(body).hexdigest()[:16],
        integrity="sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode(),
    )


def _build() -> Ide:
    assets = {name: _asset(name) for name in (*STYLES, *SCRIPTS)}
    styles = "\n".join(
        f'<link rel="stylesheet" href="{assets[n].url}" integrity="{assets[n].integrity}">'
        for n in STYLES
    )
    scripts = "\n".join(
        f'<script src="{assets[n].url}" integrity="{assets[n].integrity}"></script>'
        for n in SCRIPTS
    )
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>coregraph · GraphiQL</title>
<link rel="icon" href="{_ICON}">
{styles}
</head>
<body>
<div id="graphiql">Loading…</div>
{scripts}
</body>
</html>
"""
    return Ide(assets=assets, page=page)


_ide: Ide | None = None


async def ide() -> Ide:
    """The page and its assets, read (and compressed) once per process on first use, off the
    event loop; a server with GraphiQL off never reads them."""
    global _ide
    if _ide is None:
        _ide = await anyio.to_thread.run_sync(_build)
    return _ide


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


async def graphiql_page() -> HTMLResponse:
    return HTMLResponse((await ide()).page, headers=PAGE_HEADERS)


async def graphiql_asset(request: Request) -> Response:
    """``GET /graphiql/<digest>/<name>``: one of the page's files, if the digest is current."""
    # From the path, not parameters: FastAPI would build pydantic fields for them, and import
    # pydantic.v1 to check their types (coregraph.files_http does the same).
    digest, name = str(request.path_params["digest"]), str(request.path_params["name"])
    asset = (await ide()).assets.get(name)
    if asset is None or asset.digest != digest:
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    if _accepts_gzip(request):
        headers = {**ASSET_HEADERS, "Content-Encoding": "gzip"}
        return Response(asset.gzipped, media_type=asset.media_type, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=ASSET_HEADERS)
