"""coregraph's own signed file URLs, for the local storage backend (S3 serves its presigned
ones itself): ``PUT /files/upload/{token}`` and ``GET /files/download/{token}``.

The token (``services.file_urls``) is the credential: it names one file of one tenant, a
purpose and a lapse. An upload URL takes one request: it is marked used before the first byte
is read, so a second PUT, even a concurrent one, is refused; bytes that do not match the
declared size or SHA-256 are removed at once. A download is always an attachment with
``nosniff`` and a CSP that runs nothing, and active content (HTML, SVG...) is served as
``application/octet-stream`` (``storage.download_content_type``, as S3's presigned GETs do), so
an uploaded HTML or SVG file is never rendered as a page of this origin. A download request
that carries a credential as well is also judged as that credential: it must be a member of the
file's tenant allowed ``files:read``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from coregraph import db
from coregraph.errors import CoregraphError
from coregraph.http import authenticate, request_meta
from coregraph.models import File, FileStatus
from coregraph.services import file_urls, files
from coregraph.storage import (
    ObjectNotFound,
    ObjectTooLarge,
    attachment_disposition,
    download_content_type,
)
from coregraph.uploads import BodyTooSlow, within_deadline

if TYPE_CHECKING:
    from coregraph.app import Runtime

UPLOAD_PATH = "/files/upload/"

SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "private, no-store",
}


def _refuse(status: int, code: str, message: str) -> Response:
    body = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=SAFE_HEADERS
    )


def _not_found() -> Response:
    # One answer for a tampered, lapsed or foreign token and a file that is gone.
    return _refuse(404, "NOT_FOUND", "no file at this URL (it may have expired)")


def _token(request: Request) -> str:
    # Read from the path, not declared as a parameter: FastAPI builds a pydantic field for a
    # declared one, and imports pydantic.v1 to check its type (~1 MiB of every server).
    return str(request.path_params["token"])


async def _file_row(runtime: Runtime, grant: file_urls.FileGrant) -> File | None:
    async with AsyncSession(runtime.engine, expire_on_commit=False) as session, session.begin():
        await db.scope_transaction(await session.connection(), tenant_ids={grant.tenant_id})
        return await session.scalar(
            select(File).where(File.id == grant.file_id, File.tenant_id == grant.tenant_id)
        )


async def download(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    grant = file_urls.read_token(runtime.settings, _token(request), file_urls.GET)
    if grant is None:
        return _not_found()
    if request.headers.get("authorization"):
        try:
            principal = await authenticate(request, runtime, request_meta(request))
        except CoregraphError:
            return _not_found()
        if "files:read" not in principal.scopes_in(grant.tenant_id):
            return _not_found()
    row = await _file_row(runtime, grant)
    if row is None or row.status != FileStatus.READY.value:
        return _not_found()
    try:
        stream = await runtime.storage.read(row.storage_key)
    except ObjectNotFound:
        return _not_found()
    headers: dict[str, Any] = {
        **SAFE_HEADERS,
        "Content-Disposition": attachment_disposition(row.name),
        "Content-Length": str(stream.size),
    }
    # Active content (HTML, SVG...) as bytes to save, as S3's presigned GETs serve it.
    media_type = download_content_type(row.content_type)
    return StreamingResponse(stream, media_type=media_type, headers=headers)


async def upload(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    grant = file_urls.read_token(runtime.settings, _token(request), file_urls.PUT)
    if grant is None:
        return _not_found()
    # Checked before the URL is spent: a client that got the length wrong may try again.
    declared = request.headers.get("content-length")
    if declared is not None and grant.size is not None and declared != str(grant.size):
        return _refuse(
            400, "BAD_USER_INPUT", f"Content-Length must be the declared size, {grant.size}"
        )
    row = await files.claim_upload(runtime.engine, grant.tenant_id, grant.file_id)
    if row is None:
        return _refuse(
            409, "CONFLICT", "this upload URL was used already, has lapsed, or its file is gone"
        )
    body = within_deadline(request.stream(), runtime.settings, row.size)
    try:
        stored = await runtime.storage.put(files.upload_key(row), body, max_bytes=row.size)
    except ObjectTooLarge:
        return _refuse(413, "PAYLOAD_TOO_LARGE", f"more than the declared {row.size} bytes")
    except BodyTooSlow as exc:
        # put kept nothing; the rest of the body is not read, so the connection goes too.
        refused = _refuse(
            408, "REQUEST_TIMEOUT", f"{exc}; nothing was kept, ask for a new upload URL"
        )
        refused.headers["Connection"] = "close"
        return refused
    problem = None
    if stored.size != row.size:
        problem = f"{stored.size} bytes received, {row.size} declared"
    elif row.expected_sha256 is not None and stored.sha256 != row.expected_sha256:
        problem = "the bytes do not match the declared SHA-256"
    if problem is not None:
        await runtime.storage.delete(files.upload_key(row))
        return _refuse(400, "BAD_USER_INPUT", f"{problem}; nothing was kept")
    return Response(
        orjson.dumps({"size": stored.size, "sha256": stored.sha256}),
        media_type="application/json",
        headers=SAFE_HEADERS,
    )


class CORSWithUploads(CORSMiddleware):
    """The API's CORS (its arguments), except on upload URLs (``PUT /files/upload/{token}``),
    which browsers on the same allowed origins may PUT to with the ``Content-Type`` that
    ``createUploadUrl``'s ``uploadHeaders`` name, and nothing else. No other path allows PUT,
    and no origin outside ``allow_origins`` is allowed anywhere."""

    def __init__(self, app: ASGIApp, /, *, allow_origins: list[str], **api: Any) -> None:
        super().__init__(app, allow_origins=allow_origins, **api)
        self.uploads = CORSMiddleware(
            app,
            allow_origins=allow_origins,
            allow_methods=["PUT"],
            allow_headers=["Content-Type"],
            max_age=api.get("max_age", 600),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(UPLOAD_PATH):
            await self.uploads(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
