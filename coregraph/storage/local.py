"""Local disk storage, the embedded default: one file per key under a root directory.

A put writes a temporary file beside its destination (``.tmp-…``: no valid key starts with a
dot, so none can name it and ``keys()`` skips it), fsyncs it and renames it over the destination,
then fsyncs the directory: a reader sees the old object or the new one, never half of one, and a
crash leaves at most a temporary file. Blocking calls run in threads, so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from coregraph.storage.base import (
    DEFAULT_CHUNK_SIZE,
    InvalidKey,
    ObjectNotFound,
    ObjectStream,
    ObjectTooLarge,
    Storage,
    StoredObject,
    check_key,
    check_prefix,
    chunks_in_threads,
)

# Bytes gathered before one write in a thread: fewer thread hops than one per received chunk.
WRITE_BUFFER = 1024 * 1024
TEMP_PREFIX = ".tmp-"
# Keys listed per thread hop.
KEYS_BATCH = 1000
# digest() reads into one buffer of this size, in one thread, so checking a file allocates no
# chunk per read. (Chunks of 1 MiB read in a thread stayed in that thread's malloc arena, ~2 MiB
# of the server's resident set for good once a file had been checked: bench/RESULTS.md, Files.)
DIGEST_BUFFER = 64 * 1024


class LocalStorage(Storage):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where ``key`` lives; refuses a key that would resolve outside the root (a symlink)."""
        check_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(key)
        return path

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredObject:
        path = self.path(key)
        handle, temp = await asyncio.to_thread(self._open_temp, path)
        sha256 = hashlib.sha256()
        size = 0
        # Chunks are gathered, not copied: one writelines in a thread per WRITE_BUFFER bytes.
        pending: list[bytes] = []
        pending_size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ObjectTooLarge(key, max_bytes)
                sha256.update(chunk)
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= WRITE_BUFFER:
                    await asyncio.to_thread(handle.writelines, pending)
                    # Emptied, not replaced: the thread's work item still refers to this list
                    # until that thread next holds the GIL, and the next chunks arrive meanwhile.
                    pending.clear()
                    pending_size = 0
            await asyncio.to_thread(self._finish, handle, pending, temp, path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._discard, handle, temp))
            raise
        return StoredObject(key=key, size=size, sha256=sha256.hexdigest())

    def _open_temp(self, path: Path) -> tuple[BinaryIO, Path]:
        temp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}")
        # A concurrent delete may prune the directory between mkdir and open: make it again.
        for _ in range(5):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                continue
            return os.fdopen(fd, "wb"), temp
        raise FileNotFoundError(path.parent)

    def _finish(self, handle: BinaryIO, rest: list[bytes], temp: Path, path: Path) -> None:
        with handle:
            handle.writelines(rest)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        self._fsync_dir(path.parent)

    def _discard(self, handle: BinaryIO, temp: Path) -> None:
        handle.close()
        temp.unlink(missing_ok=True)
        self._prune(temp.parent)

    def _prune(self, directory: Path) -> None:
        """Remove empty directories from ``directory`` up to (not including) the root."""
        while directory != self.root and directory.is_relative_to(self.root):
            try:
                directory.rmdir()
            except OSError:  # not empty, or already gone
                return
            directory = directory.parent

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    async def read(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        path = self.path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        size = os.fstat(handle.fileno()).st_size
        chunks = chunks_in_threads(handle.read, handle.close, chunk_size, asyncio.to_thread)
        return ObjectStream(key, size, chunks)

    async def digest(self, key: str) -> StoredObject:
        path = self.path(key)
        # A cancelled check stops its thread at the next buffer, not at the end of the file.
        stop = threading.Event()
        try:
            size, sha256 = await asyncio.to_thread(self._digest, path, key, stop)
        finally:
            stop.set()
        return StoredObject(key=key, size=size, sha256=sha256)

    @staticmethod
    def _digest(path: Path, key: str, stop: threading.Event) -> tuple[int, str]:
        sha256 = hashlib.sha256()
        size = 0
        buffer = bytearray(DIGEST_BUFFER)
        view = memoryview(buffer)
        try:
            handle = path.open("rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        with handle:
            while not stop.is_set() and (count := handle.readinto(buffer)):
                sha256.update(view[:count])
                size += count
        return size, sha256.hexdigest()

    async def head(self, key: str) -> int | None:
        path = self.path(key)
        try:
            stat = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return stat.st_size if S_ISREG(stat.st_mode) else None

    async def move(self, source: str, destination: str) -> None:
        await asyncio.to_thread(self._move, self.path(source), self.path(destination), source)

    def _move(self, source: Path, destination: Path, key: str) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, destination)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        self._fsync_dir(destination.parent)
        if source.parent != destination.parent:
            self._fsync_dir(source.parent)
            self._prune(source.parent)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        await asyncio.to_thread(self._delete, path)

    def _delete(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            path.unlink()
        self._prune(path.parent)

    async def keys(self, prefix: str = "") -> AsyncIterator[tuple[str, int, datetime]]:
        check_prefix(prefix)
        # Walk only the directory the prefix names in full; filter the rest by name. Read in
        # batches in a thread: memory stays bounded however many files there are.
        entries = self._entries(self.root.joinpath(*prefix.split("/")[:-1]), prefix)
        while batch := await asyncio.to_thread(list, itertools.islice(entries, KEYS_BATCH)):
            for key, size, mtime in batch:
                yield key, size, datetime.fromtimestamp(mtime, UTC)

    def _entries(self, start: Path, prefix: str) -> Iterator[tuple[str, int, float]]:
        if not start.resolve().is_relative_to(self.root):
            return  # a symlink out of the root: nothing of ours
        pending = [start]
        while pending:
            try:
                listing = os.scandir(pending.pop())
            except (FileNotFoundError, NotADirectoryError):
                continue
            with listing:
                for entry in listing:
                    if entry.name.startswith("."):  # temporary files
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        key = Path(entry.path).relative_to(self.root).as_posix()
                        if not key.startswith(prefix):
                            continue
                        with contextlib.suppress(FileNotFoundError):
                            stat = entry.stat(follow_symlinks=False)
                            yield key, stat.st_size, stat.st_mtime

    async def discard_incomplete(self, older_than: datetime) -> int:
        return await asyncio.to_thread(self._discard_incomplete, older_than.timestamp())

    def _discard_incomplete(self, cutoff: float) -> int:
        discarded = 0
        for directory, _subdirectories, files in os.walk(self.root):
            for name in files:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = Path(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        discarded += 1
                        self._prune(path.parent)
        return discarded

    def presigned_put(
        self, key: str, *, size: int, content_type: str, expires_in: int
    ) -> str | None:
        check_key(key)
        return None

    def presigned_get(
        self, key: str, *, expires_in: int, filename: str, content_type: str
    ) -> str | None:
        check_key(key)
        return None
