"""The GraphQL multipart request specification
(https://github.com/jaydenseric/graphql-multipart-request-spec): ``uploadFile`` over POST
``multipart/form-data`` with an ``operations`` part, a ``map`` part, then the files.

A multipart POST is a "simple" request that a browser sends cross-site without a CORS
preflight, carrying the victim's cookies; coregraph reads credentials from headers only, but
the rule is Apollo Server's anyway (CSRF prevention): a multipart request is accepted only with a
header a simple request cannot carry: a non-empty ``Apollo-Require-Preflight`` or
``X-Apollo-Operation-Name`` (Apollo's and most upload clients send one).

Files are spooled as they arrive (memory up to 1 MiB each, then a temporary file), each cut
off at ``COREGRAPH_FILES_MULTIPART_MAX_FILE_BYTES``, at most ``..._MAX_FILES`` files and
``..._MAX_PARTS`` parts; the resolver streams the spooled file to storage in chunks, so no
upload is ever whole in memory. Temporary files are removed when the request ends. A body that
arrives too slowly is refused (``within_deadline``, also used by coregraph's upload URLs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from coregraph.settings import Settings

PREFLIGHT_HEADERS = ("apollo-require-preflight", "x-apollo-operation-name")
CHUNK = 1024 * 1024
MAX_FIELD_BYTES = 1024 * 1024


class UploadRefused(Exception):
    """A multipart request refused before execution: HTTP ``status``, a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class BodyTooSlow(Exception):
    """An upload body that did not arrive in time (``within_deadline``)."""


async def within_deadline(
    chunks: AsyncIterable[bytes], settings: Settings, expected_bytes: int
) -> AsyncGenerator[bytes]:
    """``chunks`` as they arrive, cut off with ``BodyTooSlow`` when one read waits longer than
    ``files_upload_idle_seconds`` or the whole body takes longer than that plus
    ``expected_bytes`` at ``files_upload_min_bytes_per_second``: a client trickling bytes
    (slowloris) holds a connection, a temporary file and a spent URL no longer than that."""
    loop = asyncio.get_running_loop()
    idle = settings.files_upload_idle_seconds
    deadline = loop.time() + idle + expected_bytes / settings.files_upload_min_bytes_per_second
    iterator = aiter(chunks)
    while True:
        wait = min(idle, deadline - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTooSlow(
                f"the body arrived too slowly (at least {idle:g} s for any read, and"
                f" {settings.files_upload_min_bytes_per_second} bytes/s overall)"
            ) from None
        yield chunk


def expected_multipart_bytes(request: Request, settings: Settings) -> int:
    """What a multipart body's deadline is measured for: its Content-Length, or without one
    (chunked) the most a multipart request may carry."""
    from coregraph.http import multipart_max_bytes  # http imports this module

    declared = request.headers.get("content-length", "")
    most = multipart_max_bytes(settings)
    return min(int(declared), most) if declared.isdigit() else most


@dataclass
class UploadedFile:
    """A file part, spooled: the value of an ``Upload`` variable."""

    filename: str
    content_type: str | None
    size: int
    _file: UploadFile

    async def chunks(self) -> AsyncIterator[bytes]:
        await self._file.seek(0)
        while chunk := await self._file.read(CHUNK):
            yield chunk


def is_multipart(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


def forces_preflight(request: Request) -> bool:
    headers = request.headers
    return any(headers.get(name, "").strip() for name in PREFLIGHT_HEADERS)


class _LimitedParser(MultiPartParser):
    """Starlette's streaming parser, plus a cap on parts and on each file's bytes."""

    def __init__(self, request: Request, settings: Settings) -> None:
        super().__init__(
            request.headers,
            within_deadline(
                request.stream(), settings, expected_multipart_bytes(request, settings)
            ),
            max_files=settings.files_multipart_max_files,
            max_fields=2,  # operations and map
            max_part_size=MAX_FIELD_BYTES,
        )
        self.max_parts = settings.files_multipart_max_parts
        self.max_file_bytes = settings.files_multipart_max_file_bytes
        self.parts = 0
        self.file_bytes = 0

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise UploadRefused(400, "BAD_REQUEST", f"at most {self.max_parts} parts")
        self.file_bytes = 0
        super().on_part_begin()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise UploadRefused(
                    413,
                    "PAYLOAD_TOO_LARGE",
                    f"a file is larger than the {self.max_file_bytes}-byte limit per file"
                    " through GraphQL; use createUploadUrl",
                )
        super().on_part_data(data, start, end)


class Uploads:
    """The files of one multipart request; ``close()`` removes their temporary files."""

    def __init__(self) -> None:
        self.files: list[UploadFile] = []

    async def close(self) -> None:
        for file in self.files:
            await file.close()
        self.files.clear()

    async def read(
        self, request: Request, settings: Settings
    ) -> tuple[str, dict[str, Any] | None, str | None, dict[str, Any] | None]:
        """(query, variables with files in place, operation name, extensions)."""
        if not forces_preflight(request):
            raise UploadRefused(
                400,
                "BAD_REQUEST",
                "a multipart request needs a non-empty Apollo-Require-Preflight or"
                " X-Apollo-Operation-Name header (CSRF prevention)",
            )
        parser = _LimitedParser(request, settings)
        try:
            form = await parser.parse()  # closes its temporary files when it fails
        except MultiPartException as exc:
            raise UploadRefused(400, "BAD_REQUEST", f"malformed multipart request: {exc}") from None
        except BodyTooSlow as exc:
            raise UploadRefused(408, "REQUEST_TIMEOUT", f"{exc}; nothing was kept") from None
        items = form.multi_items()
        self.files = [value for _, value in items if isinstance(value, UploadFile)]
        names = [name for name, value in items[:2] if isinstance(value, str)]
        if names != ["operations", "map"]:
            raise UploadRefused(
                400, "BAD_REQUEST", "the first parts must be 'operations', then 'map'"
            )
        operations = _json(str(items[0][1]), "operations")
        mapping = _json(str(items[1][1]), "map")
        if not isinstance(operations, dict):
            raise UploadRefused(400, "BAD_REQUEST", "operations must be one JSON object")
        if not isinstance(mapping, dict):
            raise UploadRefused(400, "BAD_REQUEST", "map must be a JSON object")
        by_name = {name: value for name, value in items if isinstance(value, UploadFile)}
        if len(by_name) != len(self.files) or set(by_name) != set(mapping):
            raise UploadRefused(
                400, "BAD_REQUEST", "map must name every file part exactly once, and no other"
            )
        for name, paths in mapping.items():
            if not isinstance(paths, list) or not paths:
                raise UploadRefused(400, "BAD_REQUEST", f"map.{name}: a list of paths")
            file = by_name[name]
            value = UploadedFile(
                filename=file.filename or "",
                content_type=file.content_type,
                size=file.size or 0,
                _file=file,
            )
            for path in paths:
                _place(operations, path, value)
        variables = operations.get("variables")
        query = operations.get("query")
        name = operations.get("operationName")
        extensions = operations.get("extensions")
        if not isinstance(query, str):
            raise UploadRefused(400, "BAD_REQUEST", "query must be a string")
        if variables is not None and not isinstance(variables, dict):
            raise UploadRefused(400, "BAD_REQUEST", "variables must be an object")
        if name is not None and not isinstance(name, str):
            raise UploadRefused(400, "BAD_REQUEST", "operationName must be a string")
        if extensions is not None and not isinstance(extensions, dict):
            raise UploadRefused(400, "BAD_REQUEST", "extensions must be an object")
        return query, variables, name, extensions


def _json(raw: str, name: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UploadRefused(400, "BAD_REQUEST", f"{name} is not valid JSON") from None


def _place(operations: dict[str, Any], path: Any, value: UploadedFile) -> None:
    """Put ``value`` where a map path (``variables.file``, ``variables.files.0``) points; the
    spot must exist and be null, as the client's operations left it."""
    if not isinstance(path, str) or not path.startswith("variables."):
        raise UploadRefused(400, "BAD_REQUEST", "map paths start with 'variables.'")
    steps = path.split(".")
    target: Any = operations
    for step in steps[:-1]:
        target = _step(target, step, path)
    last = steps[-1]
    if isinstance(target, dict) and last in target and target[last] is None:
        target[last] = value
    elif isinstance(target, list) and last.isdigit() and int(last) < len(target):
        if target[int(last)] is not None:
            raise UploadRefused(400, "BAD_REQUEST", f"map path {path[:80]} is not null")
        target[int(last)] = value
    else:
        raise UploadRefused(400, "BAD_REQUEST", f"map path {path[:80]} names no null variable")


def _step(target: Any, step: str, path: str) -> Any:
    if isinstance(target, dict) and step in target:
        return target[step]
    if isinstance(target, list) and step.isdigit() and int(step) < len(target):
        return target[int(step)]
    raise UploadRefused(400, "BAD_REQUEST", f"map path {path[:80]} names no variable")
