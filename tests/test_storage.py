"""One behaviour suite for every storage backend: local disk and S3 (moto's real S3-compatible
server on loopback). Each test gets an empty backend: a fresh directory, a fresh bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError

from coregraph.settings import Settings
from coregraph.storage import (
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StorageError,
    StoredObject,
    create_storage,
)
from coregraph.storage.local import WRITE_BUFFER, LocalStorage
from coregraph.storage.s3 import S3Storage
from tests.storage_support import S3Server, running_s3_server

MiB = 1024 * 1024
KEY = "ten_a1/fil_b2"


@dataclass
class Backend:
    name: str
    storage: Storage
    leftovers: Callable[[], list[str]]  # everything the backend holds, objects or not
    # What a put killed with its process leaves: a temporary file, a pending multipart upload.
    leave_incomplete: Callable[[str], None]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        root = tmp_path / "files"
        settings = Settings(storage_dir=str(root))  # type: ignore[call-arg]
        storage = create_storage(settings)
        assert isinstance(storage, LocalStorage)
        local = storage

        def leftovers() -> list[str]:
            return sorted(str(path.relative_to(root)) for path in root.rglob("*"))

        def leave_incomplete(key: str) -> None:
            handle, _ = local._open_temp(local.path(key))
            with handle:
                handle.write(b"half of it")

    else:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = server.new_bucket()
        prefix = "deploy/files"
        settings = Settings(**server.settings(bucket, prefix))  # type: ignore[arg-type]
        storage = create_storage(settings)
        assert isinstance(storage, S3Storage)

        def leftovers() -> list[str]:
            return server.objects(bucket) + [
                f"pending upload {key}" for key in server.pending_uploads(bucket)
            ]

        def leave_incomplete(key: str) -> None:
            name = f"{prefix}/{key}"
            upload = server.client.create_multipart_upload(Bucket=bucket, Key=name)
            server.client.upload_part(
                Bucket=bucket, Key=name, UploadId=upload["UploadId"], PartNumber=1, Body=b"half"
            )

    yield Backend(request.param, storage, leftovers, leave_incomplete)
    await storage.aclose()


async def chunked(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def generated(total: int, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    """``total`` bytes made a chunk at a time (never all in memory): counter-derived, not zeros."""
    sent = 0
    number = 0
    while sent < total:
        block = hashlib.sha256(number.to_bytes(8, "big")).digest() * (chunk // 32)
        block = block[: total - sent]
        sent += len(block)
        number += 1
        yield block


async def read_all(storage: Storage, key: str, chunk_size: int = 64 * 1024) -> bytes:
    stream = await storage.read(key, chunk_size=chunk_size)
    parts = [chunk async for chunk in stream]
    assert all(len(part) <= chunk_size for part in parts)
    data = b"".join(parts)
    assert stream.size == len(data)
    return data


def stored(key: str, data: bytes) -> StoredObject:
    return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())


async def test_round_trip_reports_size_and_sha256(backend: Backend) -> None:
    data = os.urandom(300_000)
    result = await backend.storage.put(KEY, chunked(data, 10_000), max_bytes=len(data))
    assert result == stored(KEY, data)
    assert await backend.storage.head(KEY) == len(data)
    assert await read_all(backend.storage, KEY, chunk_size=4096) == data
    assert await backend.storage.digest(KEY) == result


async def test_empty_object_and_overwrite(backend: Backend) -> None:
    assert await backend.storage.put(KEY, chunked(b""), max_bytes=10) == stored(KEY, b"")
    assert await backend.storage.head(KEY) == 0
    assert await read_all(backend.storage, KEY) == b""
    await backend.storage.put(KEY, chunked(b"second"), max_bytes=10)
    assert await read_all(backend.storage, KEY) == b"second"


@pytest.mark.parametrize("total", [100_000, 12 * MiB], ids=["single-request", "multipart"])
async def test_over_the_limit_leaves_nothing_behind(backend: Backend, total: int) -> None:
    # 12 MiB against a 10 MiB cap: S3 has uploaded a whole 8 MiB part before the cap is hit.
    limit = total - 2 * MiB if total > MiB else total - 1
    with pytest.raises(ObjectTooLarge) as raised:
        await backend.storage.put(KEY, generated(total), max_bytes=limit)
    assert raised.value.max_bytes == limit
    assert backend.leftovers() == []
    assert await backend.storage.head(KEY) is None


async def test_over_the_limit_keeps_the_previous_object(backend: Backend) -> None:
    await backend.storage.put(KEY, chunked(b"kept"), max_bytes=100)
    with pytest.raises(ObjectTooLarge):
        await backend.storage.put(KEY, chunked(b"x" * 101, 10), max_bytes=100)
    assert await read_all(backend.storage, KEY) == b"kept"


async def test_a_failing_source_leaves_nothing_behind(backend: Backend) -> None:
    async def broken() -> AsyncIterator[bytes]:
        async for chunk in generated(9 * MiB):
            yield chunk
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await backend.storage.put(KEY, broken(), max_bytes=100 * MiB)
    assert backend.leftovers() == []


async def test_a_cancelled_put_leaves_nothing_behind(backend: Backend) -> None:
    asked_for_more = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in generated(9 * MiB):  # past one S3 part: a multipart upload is open
            yield chunk
        asked_for_more.set()
        await asyncio.Event().wait()
        yield b"never"

    put = asyncio.create_task(backend.storage.put(KEY, stalls(), max_bytes=100 * MiB))
    await asyncio.wait_for(asked_for_more.wait(), timeout=30)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert backend.leftovers() == []


async def test_discard_incomplete_removes_what_a_killed_put_left(backend: Backend) -> None:
    await backend.storage.put("ten_a1/fil_kept", chunked(b"kept"), max_bytes=10)
    complete = backend.leftovers()
    backend.leave_incomplete("ten_a1/fil_crashed")
    assert backend.leftovers() != complete
    assert [key async for key, _, _ in backend.storage.keys()] == ["ten_a1/fil_kept"]
    now = datetime.now(UTC)
    # moto reports every multipart upload as initiated on 2010-11-10 (moto/s3/responses.py).
    before_it = now - timedelta(hours=1)
    if backend.name == "s3":
        before_it = datetime(2010, 1, 1, tzinfo=UTC)
    assert await backend.storage.discard_incomplete(before_it) == 0
    assert backend.leftovers() != complete
    assert await backend.storage.discard_incomplete(now + timedelta(minutes=1)) == 1
    assert backend.leftovers() == complete
    assert await read_all(backend.storage, "ten_a1/fil_kept") == b"kept"


async def test_move_replaces_the_destination_and_removes_the_source(backend: Backend) -> None:
    # Past boto3's 8 MiB copy threshold: S3 copies it in parts (UploadPartCopy), as CopyObject
    # alone stops at 5 GB.
    source, data = "ten_a1/fil_b2.upload", os.urandom(9 * MiB)
    await backend.storage.put(source, chunked(data, MiB), max_bytes=len(data))
    await backend.storage.put(KEY, chunked(b"older bytes"), max_bytes=100)
    await backend.storage.move(source, KEY)
    assert await read_all(backend.storage, KEY) == data
    assert await backend.storage.head(source) is None
    # A later write to the source lands there, not over what was moved.
    await backend.storage.put(source, chunked(b"later"), max_bytes=100)
    assert await read_all(backend.storage, KEY) == data
    await backend.storage.delete(source)
    with pytest.raises(ObjectNotFound):
        await backend.storage.move(source, KEY)
    assert await read_all(backend.storage, KEY) == data


async def test_delete_is_idempotent(backend: Backend) -> None:
    await backend.storage.put(KEY, chunked(b"bytes"), max_bytes=100)
    await backend.storage.delete(KEY)
    await backend.storage.delete(KEY)
    await backend.storage.delete("ten_a1/never_stored")
    assert await backend.storage.head(KEY) is None
    with pytest.raises(ObjectNotFound):
        await backend.storage.read(KEY)
    with pytest.raises(ObjectNotFound):
        await backend.storage.digest(KEY)
    assert backend.leftovers() == []


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "ten_a1/../../outside",
    "ten_a1/..",
    "ten_a1/./fil",
    "ten_a1//fil",
    "ten_a1/",
    "ten_a1\\fil",
    "ten_a1/fil\x00.txt",
    "ten_a1/fil\n",
    "ten_a1/\x7f",
    "ten_a1/.hidden",
    "ten a1/fil",
    "ten_a1/fïl",
    "x" * 513,
]


async def test_bad_keys_are_refused_by_every_operation(backend: Backend) -> None:
    storage = backend.storage
    for key in BAD_KEYS:
        with pytest.raises(InvalidKey):
            await storage.put(key, chunked(b"x"), max_bytes=10)
        with pytest.raises(InvalidKey):
            await storage.read(key)
        with pytest.raises(InvalidKey):
            await storage.head(key)
        with pytest.raises(InvalidKey):
            await storage.digest(key)
        with pytest.raises(InvalidKey):
            await storage.delete(key)
        with pytest.raises(InvalidKey):
            storage.presigned_put(key, size=1, content_type="text/plain", expires_in=60)
        with pytest.raises(InvalidKey):
            storage.presigned_get(key, expires_in=60, filename="f", content_type="text/plain")
        with pytest.raises(InvalidKey):
            [item async for item in storage.keys(key + "/")]
    assert backend.leftovers() == []


async def test_local_keys_resolve_inside_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"not yours")
    storage = LocalStorage(tmp_path / "files")
    (tmp_path / "files" / "ten_a1").symlink_to(outside)
    with pytest.raises(InvalidKey):
        await storage.read("ten_a1/secret")
    with pytest.raises(InvalidKey):
        await storage.put("ten_a1/new", chunked(b"x"), max_bytes=10)
    with pytest.raises(InvalidKey):
        await storage.delete("ten_a1/secret")
    assert sorted(path.name for path in outside.iterdir()) == ["secret"]
    assert [key async for key, _, _ in storage.keys("ten_a1/")] == []
    assert [key async for key, _, _ in storage.keys()] == []


async def test_local_keys_are_read_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("coregraph.storage.local.KEYS_BATCH", 2)
    storage = LocalStorage(tmp_path / "files")
    stored_keys = [f"ten_{tenant}/fil_{number}" for tenant in "ab" for number in range(3)]
    for key in stored_keys:
        await storage.put(key, chunked(key.encode()), max_bytes=100)
    listed = [(key, size) async for key, size, _ in storage.keys()]
    assert sorted(listed) == [(key, len(key)) for key in stored_keys]
    assert sorted([key async for key, _, _ in storage.keys("ten_b/")]) == stored_keys[3:]


async def test_keys_lists_by_prefix_with_size_and_time(backend: Backend) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    for key, data in [("ten_a/fil_1", b"1"), ("ten_a/fil_22", b"22"), ("ten_b/fil_1", b"333")]:
        await backend.storage.put(key, chunked(data), max_bytes=10)
    listed = sorted([item async for item in backend.storage.keys("ten_a/")])
    assert [(key, size) for key, size, _ in listed] == [("ten_a/fil_1", 1), ("ten_a/fil_22", 2)]
    after = datetime.now(UTC) + timedelta(seconds=5)
    assert all(before <= modified <= after for _, _, modified in listed)
    assert all(modified.tzinfo is not None for _, _, modified in listed)
    everything = sorted([key async for key, _, _ in backend.storage.keys()])
    assert everything == ["ten_a/fil_1", "ten_a/fil_22", "ten_b/fil_1"]
    assert [key async for key, _, _ in backend.storage.keys("ten_a/fil_2")] == ["ten_a/fil_22"]
    assert [key async for key, _, _ in backend.storage.keys("ten_c/")] == []


async def test_presigned_put_then_digest(backend: Backend) -> None:
    data = os.urandom(200_000)
    url = backend.storage.presigned_put(
        KEY, size=len(data), content_type="application/pdf", expires_in=300
    )
    if backend.name == "local":
        assert url is None  # coregraph serves its own signed URL (storage/signing.py)
        return
    assert url is not None and url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as http:
        response = await http.put(url, content=data, headers={"Content-Type": "application/pdf"})
    assert response.status_code == 200, response.text
    assert await backend.storage.digest(KEY) == stored(KEY, data)


async def test_presigned_get_downloads_as_an_attachment(backend: Backend) -> None:
    data = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
    await backend.storage.put(KEY, chunked(data), max_bytes=1000)
    url = backend.storage.presigned_get(
        KEY, expires_in=300, filename='pic "1".svg', content_type="image/svg+xml"
    )
    if backend.name == "local":
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-disposition"] == (
        "attachment; filename=\"pic _1_.svg\"; filename*=UTF-8''pic%20%221%22.svg"
    )
    # Active content: S3 is told to serve it as bytes to save, whatever type it was stored with.
    assert response.headers["content-type"] == "application/octet-stream"


def put_memory_bound(storage: Storage, chunk: int) -> int:
    """What a put may hold, from the backend's buffer: local disk gathers WRITE_BUFFER bytes of
    chunks (plus the one that crossed it); S3 one part in a BytesIO (which over-allocates up to
    1/8) plus the chunk that filled it, and botocore's 1 MiB reads of it while it signs (SHA-256
    of the payload over plain HTTP) and sends (2 MiB measured). 1 MiB more for everything else
    (botocore's request objects, the event loop)."""
    if isinstance(storage, S3Storage):
        return storage.part_size * 9 // 8 + chunk + 2 * MiB + 1 * MiB
    assert isinstance(storage, LocalStorage)
    return WRITE_BUFFER + chunk + 1 * MiB


async def test_large_objects_stream_in_bounded_memory(backend: Backend) -> None:
    total, chunk = 32 * MiB, 256 * 1024
    tracemalloc.start()
    try:
        result = await backend.storage.put(KEY, generated(total, chunk), max_bytes=total)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = await backend.storage.digest(KEY)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    async for block in generated(total, chunk):
        expected.update(block)
    assert result == digest == StoredObject(KEY, total, expected.hexdigest())
    # Several parts of the 32 MiB for S3 (4 at 8 MiB), 1 MiB writes for local disk: a bound from
    # the buffer, not the object. S3 measured 10.7-10.8 MiB against 12.25, local disk 1.0-1.1
    # against 2.25. Before each buffer was freed once written, the thread's work item could keep
    # the previous one alive while the next filled: two buffers (S3 up to 17.5 MiB, local disk
    # 2.0-3.0 MiB on a busy machine).
    bound = put_memory_bound(backend.storage, chunk)
    assert bound < total / 2
    assert put_peak < bound, f"put peaked at {put_peak / MiB:.1f} MiB (bound {bound / MiB:.2f})"
    assert read_peak < 4 * MiB, f"read peaked at {read_peak / MiB:.1f} MiB"


async def test_a_cancelled_local_digest_stops_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LocalStorage.digest reads the whole file in one thread: a request that gives up
    (cancels the check) must not leave that thread hashing a large file to its end."""
    import coregraph.storage.local as local

    storage = LocalStorage(tmp_path)
    await storage.put(KEY, generated(4 * MiB, 256 * 1024), max_bytes=4 * MiB)
    monkeypatch.setattr(local, "DIGEST_BUFFER", 1)  # millions of reads for the whole file
    started, release, finished = (threading.Event() for _ in range(3))
    updates = 0

    class Held:
        """sha256 that holds the thread at its first update until the check is cancelled."""

        def __init__(self) -> None:
            self.inner = hashlib.sha256()

        def update(self, data: memoryview) -> None:
            nonlocal updates
            updates += 1
            started.set()
            release.wait(10)
            self.inner.update(data)

        def hexdigest(self) -> str:
            finished.set()
            return self.inner.hexdigest()

    monkeypatch.setattr(local, "hashlib", SimpleNamespace(sha256=Held))
    check = asyncio.ensure_future(storage.digest(KEY))
    assert await asyncio.to_thread(started.wait, 10)
    check.cancel()
    with pytest.raises(asyncio.CancelledError):
        await check
    release.set()
    assert await asyncio.to_thread(finished.wait, 10)
    assert updates <= 2


@pytest.mark.parametrize(
    "url", ["s3://", "s3://B/x", "file:///var/files", "s3://bucket/../x y", "http://bucket"]
)
def test_a_bad_storage_url_stops_the_process(url: str) -> None:
    with pytest.raises(ValidationError, match="storage_url"):
        Settings(storage_url=url)  # type: ignore[call-arg]


def test_storage_url_picks_the_backend(tmp_path: Path) -> None:
    local = create_storage(Settings(storage_url="", storage_dir=str(tmp_path)))  # type: ignore[call-arg]
    assert isinstance(local, LocalStorage) and local.root == tmp_path.resolve()
    remote = create_storage(
        Settings(  # type: ignore[call-arg]
            storage_url="s3://files.example/deploy/eu/",
            s3_endpoint_url="http://127.0.0.1:9",
            s3_region="eu-west-1",
            # Given, so boto3 never looks further (its chain ends at the instance metadata).
            s3_access_key_id="AKIDEXAMPLE",
            s3_secret_access_key="example-secret",
        )
    )
    assert isinstance(remote, S3Storage)
    assert (remote.bucket, remote.prefix) == ("files.example", "deploy/eu/")
    url = remote.presigned_get("ten_a1/fil_b2", expires_in=60, filename="a", content_type="a/b")
    assert url is not None
    assert url.startswith("http://127.0.0.1:9/files.example/deploy/eu/ten_a1/fil_b2?")


def test_signing_without_credentials_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a link-local address
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = S3Storage("bucket", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    with pytest.raises(StorageError, match="cannot sign"):
        storage.presigned_get(KEY, expires_in=60, filename="a", content_type="a/b")
