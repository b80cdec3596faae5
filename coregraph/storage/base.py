"""The storage interface every backend implements, and the key rules they all enforce.

Keys are built by the files service as ``{tenant_id}/{file_id}``; each backend checks them again
(defence in depth): segments of letters, digits, ``.``, ``_``, ``-``, none empty and none starting
with a dot (so no ``..``, no hidden or temporary names), no absolute path, no backslash, no
control character, at most 512 characters.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_KEY_LENGTH = 512
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]*"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
# A prefix for keys(): empty, or whole segments ending in "/", or a partial key.
_PREFIX = re.compile(rf"(?:{_SEGMENT}/)*(?:{_SEGMENT})?")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str  # lowercase hex


class StorageError(Exception):
    """A storage failure the caller may report (not a bug in the caller)."""


class InvalidKey(StorageError, ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"invalid storage key {key[:80]!r}")
        self.key = key


class ObjectNotFound(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no stored object {key!r}")
        self.key = key


class ObjectTooLarge(StorageError):
    """More bytes came than ``max_bytes``; nothing was kept."""

    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(f"object {key!r} exceeds {max_bytes} bytes")
        self.key = key
        self.max_bytes = max_bytes


def attachment_disposition(filename: str) -> str:
    """A Content-Disposition that makes a browser save rather than render (RFC 6266): an ASCII
    ``filename`` fallback with quotes, backslashes and control characters replaced, and the full
    name as UTF-8 in ``filename*``.
    """
    fallback = "".join(
        char if " " <= char <= "~" and char not in '"\\' else "_" for char in filename
    )
    fallback = fallback.strip() or "download"
    encoded = quote(filename or fallback, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


OCTET_STREAM = "application/octet-stream"
# Types a browser only displays, never runs: a download keeps its own Content-Type when it is
# one of these. Anything else (HTML, SVG and every other XML, JavaScript, PDF, types nobody
# listed yet) is served as application/octet-stream, beside the attachment disposition: a
# list of what is safe fails closed where a list of what is active would miss a type.
_PASSIVE_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "application/json",
        "application/zip",
        "application/gzip",
        OCTET_STREAM,
    }
)
_PASSIVE_FAMILIES = ("image/", "audio/", "video/", "font/")


def download_content_type(content_type: str) -> str:
    """The Content-Type a download is served with: the stored type when a browser could only
    display it, else ``application/octet-stream`` (a browser saves it, never renders it)."""
    essence = content_type.split(";", 1)[0].strip().lower()
    if essence in _PASSIVE_TYPES:
        return essence
    if (
        essence.startswith(_PASSIVE_FAMILIES)
        and "xml" not in essence  # image/svg+xml and its kin run scripts
        and "html" not in essence
    ):
        return essence
    return OCTET_STREAM


def check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
        raise InvalidKey(str(key))
    return key


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LENGTH or not _PREFIX.fullmatch(prefix):
        raise InvalidKey(str(prefix))
    return prefix


class ObjectStream:
    """An opened object: ``size`` (for Content-Length) and its bytes, read as they are iterated.

    Iterate it to the end or ``await stream.aclose()`` to release the file or connection.
    """

    def __init__(self, key: str, size: int, chunks: AsyncIterator[bytes]) -> None:
        self.key = key
        self.size = size
        self._chunks = chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def chunks_in_threads(
    read: Callable[[int], bytes],
    close: Callable[[], None],
    chunk_size: int,
    in_thread: Callable[[Callable[[int], bytes], int], Awaitable[bytes]],
) -> AsyncIterator[bytes]:
    """A blocking reader (a file, an HTTP body) as async chunks, each read in a thread."""
    try:
        while chunk := await in_thread(read, chunk_size):
            yield chunk
    finally:
        close()


class Storage(ABC):
    """Bytes by key. Every method validates its key (``InvalidKey``)."""

    @abstractmethod
    async def put(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredObject:
        """Stream ``chunks`` to ``key``, replacing what was there, computing size and SHA-256.

        Past ``max_bytes`` raises ``ObjectTooLarge`` and leaves nothing behind (no temporary file,
        no pending multipart upload, the previous object untouched). Memory use is bounded by the
        backend's buffer, never the object's size. Any other failure leaves nothing behind too.
        """

    @abstractmethod
    async def read(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        """Open ``key`` (``ObjectNotFound`` now, before any byte is sent) and stream it."""

    @abstractmethod
    async def head(self, key: str) -> int | None:
        """The object's size, or None if there is none."""

    async def digest(self, key: str) -> StoredObject:
        """Size and SHA-256 of what is stored, streamed (after a presigned PUT, say)."""
        stream = await self.read(key, chunk_size=1024 * 1024)
        sha256 = hashlib.sha256()
        size = 0
        try:
            async for chunk in stream:
                sha256.update(chunk)
                size += len(chunk)
        finally:
            await stream.aclose()
        return StoredObject(key=key, size=size, sha256=sha256.hexdigest())

    @abstractmethod
    async def move(self, source: str, destination: str) -> None:
        """Put what ``source`` holds at ``destination`` (replacing it) and remove ``source``,
        without the bytes passing through this process (a rename on disk, a server-side copy
        and delete in S3). ``ObjectNotFound`` when ``source`` holds nothing. A later write to
        ``source`` never reaches ``destination``.
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; nothing to remove is not an error."""

    @abstractmethod
    def keys(self, prefix: str = "") -> AsyncIterator[tuple[str, int, datetime]]:
        """``(key, size, last modified in UTC)`` of every object whose key starts with ``prefix``,
        in no particular order (S3 lists in key order, local disk in directory order).

        An async generator: ``async for key, size, modified in storage.keys("ten_1/")``.
        """

    @abstractmethod
    async def discard_incomplete(self, older_than: datetime) -> int:
        """Remove what puts that never finished left (a process killed mid-upload): temporary
        files on local disk, pending multipart uploads in S3 (billed until aborted), started
        before ``older_than``; how many. A put still running past ``older_than`` then fails.
        """

    @abstractmethod
    def presigned_put(
        self, key: str, *, size: int, content_type: str, expires_in: int
    ) -> str | None:
        """A URL a client PUTs exactly ``size`` bytes of ``content_type`` to, or None when the
        backend has none (local disk: coregraph serves its own signed URL, storage/signing.py).
        """

    @abstractmethod
    def presigned_get(
        self, key: str, *, expires_in: int, filename: str, content_type: str
    ) -> str | None:
        """A URL that downloads ``key`` as an attachment named ``filename`` (never rendered
        inline), or None when the backend has none (local disk).
        """

    async def aclose(self) -> None:  # noqa: B027 - a backend with nothing to release keeps it
        """Release connections and threads."""
