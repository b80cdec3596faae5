"""Files, after the security review of issue 9: quota of deleted bytes, purge of pending
uploads, tokens kept out of the request log, cleanup that ends when deletes fail, one winner
among concurrent completeUpload calls, CORS for uploadFile, names measured after NFC.

Then the second review: download URLs refused once their file is deleted, and a cleanup
that leaves every object alone when the rows read back empty.

Runs on the behaviour suite's two backends (local disk and S3 through moto), reusing its
servers and helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from coregraph import db, ids, migrate
from coregraph.auth.principal import system_principal
from coregraph.http import multipart_max_bytes
from coregraph.models import File
from coregraph.request import RequestMeta
from coregraph.services import files as files_service
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings
from coregraph.storage import Storage, create_storage
from coregraph.storage.base import StoredObject
from coregraph.storage.local import LocalStorage
from tests.conftest import make_settings
from tests.support import (
    GraphQLClient,
    LogCapture,
    create_test_database,
    drop_test_database,
    env_database_url,
    running_server,
)
from tests.test_files import (  # noqa: F401  (the module's fixtures: b and s3_server)
    COMPLETE,
    CREATE_URL,
    DELETE,
    EVENTS,
    LIMITS,
    MAX_FILE,
    PREFLIGHT,
    QUOTA,
    FilesBackend,
    KiB,
    backend,
    create_url,
    download_url,
    owner_and_tenant,
    put,
    s3_server,
    tenant_objects,
    upload,
    uploaded,
    worker_engine,
)


async def test_soft_deleted_files_count_against_the_quota_until_purged(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"x" * MAX_FILE
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    file_id = created["file"]["id"]
    assert (await put(b, created, content)).status_code == 200
    (await b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)).ok()
    rest = QUOTA - MAX_FILE + 1
    (await b.client.execute(DELETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)).ok()
    # Its bytes are kept for the retention period: they still take the tenant's space.
    assert len(tenant_objects(b, tenant_id)) == 1
    refused = await create_url(b, owner, tenant_id, b"y" * rest)
    assert refused.codes == ["QUOTA_EXCEEDED"]
    assert refused.errors[0]["extensions"]["current"] == MAX_FILE
    purged = await b.client.execute(
        DELETE, {"id": file_id, "purge": True}, actor=owner, tenant_id=tenant_id
    )
    purged.ok()
    assert tenant_objects(b, tenant_id) == []
    (await create_url(b, owner, tenant_id, b"y" * rest)).ok()


async def test_purging_a_pending_file_removes_its_uploaded_bytes(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"bytes sent to an upload URL, never completed"
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    assert (await put(b, created, content)).status_code == 200
    assert len(tenant_objects(b, tenant_id)) == 1
    r = await b.client.execute(
        DELETE, {"id": created["file"]["id"], "purge": True}, actor=owner, tenant_id=tenant_id
    )
    r.ok()
    assert tenant_objects(b, tenant_id) == []


async def test_signed_url_tokens_stay_out_of_the_request_log(b: FilesBackend) -> None:
    token = "secret-token-value.abc123"
    base = b.server.url.removesuffix("/graphql")
    with LogCapture("coregraph.request") as logs:
        await b.http.get(f"{base}/files/download/{token}")
        await b.http.put(f"{base}/files/upload/{token}", content=b"x")
        lines = await logs.wait_for(2, lambda line: "/files/" in str(line.get("path")))
    assert sorted(line["path"] for line in lines) == [
        "/files/download/<redacted>",
        "/files/upload/<redacted>",
    ]
    assert token not in "".join(logs.raw)


class FailingDeletes(LocalStorage):
    """Local disk whose deletes fail, as a bucket refusing them would (fault injection)."""

    deletes = 0

    async def delete(self, key: str) -> None:
        self.deletes += 1
        raise OSError("delete refused")


async def test_a_cleanup_pass_ends_when_deletes_keep_failing(
    b: FilesBackend, tmp_path: Any
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    ids = []
    for _ in range(3):
        created = (await create_url(b, owner, tenant_id, b"z")).ok()["createUploadUrl"]
        ids.append(created["file"]["id"])
    engine, storage = worker_engine(b.settings), FailingDeletes(str(tmp_path))
    lapsed = datetime.now(UTC) + timedelta(
        seconds=b.settings.files_upload_url_ttl_seconds + b.settings.files_orphan_grace_seconds + 1
    )
    try:
        # A batch of 2 over (at least) these 3 due rows: the pass must end, having tried each.
        purged = await asyncio.wait_for(
            files_service.purge_expired(engine, storage, now=lapsed, batch=2), timeout=30
        )
    finally:
        await storage.aclose()
        await engine.dispose()
    assert purged == []
    assert storage.deletes >= len(ids)
    # Nothing was recorded purged: the next pass tries them again (the real storage now).
    engine, real = worker_engine(b.settings), create_storage(b.settings)
    try:
        again = await files_service.purge_expired(engine, real, now=lapsed)
    finally:
        await real.aclose()
        await engine.dispose()
    assert set(ids) <= set(again)


async def test_concurrent_completes_make_one_file_ready_once(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"completed by four callers at once"
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    file_id = created["file"]["id"]
    assert (await put(b, created, content)).status_code == 200
    answers = await asyncio.gather(
        *(
            b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)
            for _ in range(4)
        )
    )
    codes = sorted(str(r.codes) for r in answers)
    assert codes == sorted(["[]"] + ["['CONFLICT']"] * 3), [r.body for r in answers]
    events = await b.client.execute(
        EVENTS, {"types": ["file.uploaded"]}, actor=owner, tenant_id=tenant_id
    )
    uploaded = [e for e in events.ok()["events"]["nodes"] if e["data"]["fileId"] == file_id]
    assert len(uploaded) == 1
    assert len(tenant_objects(b, tenant_id)) == 1


async def test_a_browser_may_send_uploadfile_cross_origin(
    database_url: str, http: httpx.AsyncClient, tmp_path: Any
) -> None:
    portal = "https://portal.example.com"
    settings = make_settings(
        database_url, **LIMITS, storage_dir=str(tmp_path), cors_origins=[portal]
    )
    with running_server(settings) as server:
        preflight = {
            "Origin": portal,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": (
                "apollo-require-preflight,authorization,x-apollo-operation-name,x-tenant-id"
            ),
        }
        allowed = await http.options(server.url, headers=preflight)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == portal
        granted = allowed.headers["access-control-allow-headers"].lower()
        assert "apollo-require-preflight" in granted
        assert "x-apollo-operation-name" in granted
        client = GraphQLClient(http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        from tests.test_files import FilesBackend as Backend

        b = Backend("local", server, client, http, lambda: [])
        sent = await upload(
            b,
            owner,
            tenant_id,
            b"from the portal",
            headers={
                "Origin": portal,
                "Apollo-Require-Preflight": "true",
            },
        )
        sent.ok()
        assert sent.headers["access-control-allow-origin"] == portal


async def test_names_are_measured_after_normalisation(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    # U+2ADC is one character that NFC turns into two: 200 of them are stored as 400.
    grows = "\u2adc" * 200
    r = await upload(b, owner, tenant_id, b"named", grows)
    assert r.codes == ["BAD_USER_INPUT"], r.body
    assert tenant_objects(b, tenant_id) == []
    # 300 decomposed characters (e + combining acute) are 150 once composed: a fine name.
    shrinks = "e\u0301" * 150
    ok = await upload(b, owner, tenant_id, b"named", shrinks)
    assert ok.ok()["uploadFile"]["file"]["name"] == "\u00e9" * 150


async def test_a_purge_never_removes_the_bytes_of_a_file_completed_since_it_was_read(
    b: FilesBackend,
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"completed just before the cleanup got to it"
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    file_id = created["file"]["id"]
    assert (await put(b, created, content)).status_code == 200
    engine, storage = worker_engine(b.settings), create_storage(b.settings)
    lapsed = datetime.now(UTC) + timedelta(
        seconds=b.settings.files_upload_url_ttl_seconds + b.settings.files_orphan_grace_seconds + 1
    )
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            stale = await session.get(File, file_id)  # what a cleanup pass selected as due
        assert stale is not None and stale.status == "pending"
        (await b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)).ok()
        purged = await files_service.purge_file(
            files_service.cleanup_uow(engine), storage, stale, now=lapsed
        )
    finally:
        await storage.aclose()
        await engine.dispose()
    assert purged is False
    got = await b.http.get(await download_url(b, owner, tenant_id, file_id))
    assert got.content == content


async def test_a_multipart_post_is_authenticated_before_its_body_is_read(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    url, headers = b.server.url, {"Accept": "application/json", **PREFLIGHT}
    # A body that is not even multipart: refused for its missing credential, not parsed.
    anonymous = await b.http.post(
        url,
        content=b"x" * 64 * KiB,
        headers={**headers, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    # Declared larger than 3 files at the per-file limit and the overhead: refused unread.
    declared = multipart_max_bytes(b.settings) + 1
    oversized = await b.http.post(
        url,
        content=b"x" * declared,
        headers={
            **headers,
            **owner.headers(tenant_id),
            "Content-Type": "multipart/form-data; boundary=b",
        },
    )
    assert oversized.status_code == 413
    assert oversized.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    (await upload(b, owner, tenant_id, b"still fine")).ok()


def test_the_orphan_grace_setting_has_a_floor(database_url: str) -> None:
    with pytest.raises(ValidationError):
        make_settings(database_url, files_orphan_grace_seconds=0)
    assert (
        make_settings(database_url, files_orphan_grace_seconds=60).files_orphan_grace_seconds == 60
    )


FILE_STATUS = "query($id: ID!) { file(id: $id) { status completedAt } }"
UPLOAD_ONE = "mutation($file: Upload!) { uploadFile(file: $file) { fileId } }"
LIST_IDS = "query { files { nodes { id } } }"

# --- second review -------------------------------------------------------------------------


def past_the_grace(b: FilesBackend) -> datetime:
    """A cleanup's "now" at which what is stored now is older than the orphan grace."""
    return datetime.now(UTC) + timedelta(seconds=b.settings.files_orphan_grace_seconds + 1)


@contextlib.asynccontextmanager
async def cleanup_tools(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, Storage]]:
    """What the cleanup runs with: the worker role's engine and the backend's storage."""
    engine, storage = worker_engine(settings), create_storage(settings)
    try:
        yield engine, storage
    finally:
        await storage.aclose()
        await engine.dispose()


async def test_a_download_url_signed_before_a_soft_delete_is_refused_after_it(
    b: FilesBackend,
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    file = await uploaded(b, owner, tenant_id, b"downloadable until deleted")
    url = await download_url(b, owner, tenant_id, file["id"])
    assert (await b.http.get(url)).content == b"downloadable until deleted"
    (await b.client.execute(DELETE, {"id": file["id"]}, actor=owner, tenant_id=tenant_id)).ok()
    # S3 would serve a presigned GET until it lapses: the bytes are no longer at its key.
    refused = await b.http.get(url)
    assert refused.status_code in (403, 404)  # S3: 403 for a missing key if it may not list
    assert b"downloadable" not in refused.content
    [kept] = tenant_objects(b, tenant_id)  # kept for the retention period, aside
    assert kept.endswith(f"{file['id']}.deleted")
    async with cleanup_tools(b.settings) as (engine, storage):
        # Not an orphan while the row says "deleted, not purged yet"...
        reclaimed = await files_service.reclaim_orphans(
            engine, storage, grace_seconds=60, now=past_the_grace(b)
        )
        assert [k for k in reclaimed if tenant_id in k] == []
        assert tenant_objects(b, tenant_id) == [kept]
        # ...and the purge removes it.
        future = datetime.now(UTC) + timedelta(seconds=b.settings.files_retention_seconds + 1)
        assert file["id"] in await files_service.purge_expired(engine, storage, now=future)
    assert tenant_objects(b, tenant_id) == []


async def test_the_cleanup_moves_aside_bytes_a_delete_left_at_the_files_key(
    b: FilesBackend,
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    file = await uploaded(b, owner, tenant_id, b"its delete died before moving it")
    (await b.client.execute(DELETE, {"id": file["id"]}, actor=owner, tenant_id=tenant_id)).ok()
    key = f"{tenant_id}/{file['id']}"
    async with cleanup_tools(b.settings) as (engine, storage):
        # As if the process died between the deletion's commit and the move.
        await storage.move(f"{key}.deleted", key)
        reclaimed = await files_service.reclaim_orphans(
            engine, storage, grace_seconds=60, now=past_the_grace(b)
        )
        assert [k for k in reclaimed if tenant_id in k] == []
        assert await storage.head(key) is None
        assert await storage.head(f"{key}.deleted") == len(b"its delete died before moving it")


async def test_the_cleanup_reclaims_nothing_when_the_rows_read_back_empty(
    b: FilesBackend, tmp_path: Any
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    file = await uploaded(b, owner, tenant_id, b"a committed file")
    orphan = f"{tenant_id}/{ids.new_id('fil')}"
    storage = create_storage(b.settings)

    async def chunks() -> Any:
        yield b"bytes whose row never committed"

    await storage.put(orphan, chunks(), max_bytes=100)
    everything = b.objects()

    async def reclaim_with(engine: AsyncEngine) -> list[str]:
        try:
            return await files_service.reclaim_orphans(
                engine, storage, grace_seconds=60, now=past_the_grace(b)
            )
        finally:
            await engine.dispose()

    # The cleanup pointed at a database that has none of these rows (a fresh one, as a wrong
    # COREGRAPH_DATABASE_URL would be).
    base = env_database_url()
    url, name = await create_test_database(base, str(tmp_path))
    elsewhere = b.settings.model_copy(update={"database_url": url})
    try:
        await migrate.upgrade(elsewhere)
        assert await reclaim_with(worker_engine(elsewhere)) == []
    finally:
        if name and base:
            await drop_test_database(base, name)
    assert b.objects() == everything
    if b.settings.database_url.startswith("postgresql"):
        # The API's role with no tenant set: row-level security shows it no row at all.
        assert await reclaim_with(db.create_engine(b.settings)) == []
        assert b.objects() == everything
    # The worker's engine sees the rows: only the orphan goes.
    try:
        reclaimed = await reclaim_with(worker_engine(b.settings))
    finally:
        await storage.aclose()
    assert orphan in reclaimed
    assert [k for k in reclaimed if tenant_id in k] == [orphan]
    got = await b.http.get(await download_url(b, owner, tenant_id, file["id"]))
    assert got.content == b"a committed file"


class TenantUnitOfWork(UnitOfWork):
    """The write path as coregraph itself acting in one tenant (the CLI's way)."""

    tenant_id = ""

    async def __aenter__(self) -> TenantUnitOfWork:
        await super().__aenter__()
        await self.allow_tenant(self.tenant_id)
        return self


async def test_complete_upload_holds_no_transaction_while_it_digests(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"digested slowly" * 1000
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    file_id = created["file"]["id"]
    assert (await put(b, created, content)).status_code == 200
    engine, storage = db.create_engine(b.settings), create_storage(b.settings)
    digesting, go_on = asyncio.Event(), asyncio.Event()
    digest = storage.digest

    async def held_digest(key: str) -> StoredObject:
        # The storage's own digest, held open as a large object's would be.
        digesting.set()
        await asyncio.wait_for(go_on.wait(), timeout=60)
        return await digest(key)

    storage.digest = held_digest  # type: ignore[method-assign]

    def new_uow() -> UnitOfWork:
        uow = TenantUnitOfWork(engine, system_principal("test:complete"), RequestMeta())
        uow.tenant_id = tenant_id
        return uow

    completing = asyncio.create_task(
        files_service.complete_upload(new_uow, storage, tenant_id, file_id)
    )
    try:
        await asyncio.wait_for(digesting.wait(), timeout=30)
        # No connection is held while the bytes are read...
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # ...so the tenant's other writes go through (SQLite: its one write lock is free)...
        other = await asyncio.wait_for(upload(b, owner, tenant_id, b"written meanwhile"), 20)
        other.ok()
        # ...and a second completeUpload is refused at once, not queued behind the first.
        second = await asyncio.wait_for(
            b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id), 20
        )
        assert second.codes == ["CONFLICT"], second.body
        listed = await b.client.execute(
            FILE_STATUS, {"id": file_id}, actor=owner, tenant_id=tenant_id
        )
        assert listed.ok()["file"] == {"status": "PENDING", "completedAt": None}
        go_on.set()
        done = await asyncio.wait_for(completing, timeout=30)
    finally:
        go_on.set()
        if not completing.done():
            completing.cancel()
        await storage.aclose()
        await engine.dispose()
    assert (done.status, done.sha256) == ("ready", hashlib.sha256(content).hexdigest())
    got = await b.http.get(await download_url(b, owner, tenant_id, file_id))
    assert got.content == content


async def test_a_failed_complete_gives_its_claim_back(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"sent after a first, early completeUpload"
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    file_id = created["file"]["id"]
    early = await b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)
    assert early.codes == ["BAD_USER_INPUT"]
    assert (await put(b, created, content)).status_code == 200
    done = await b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)
    assert done.ok()["completeUpload"]["file"]["status"] == "READY"


SLOW = {"files_upload_idle_seconds": 1.0, "files_upload_min_bytes_per_second": 64 * KiB}


async def slow_request(
    url: str, method: str, headers: dict[str, str], body: bytes, *, every: float, chunk: int
) -> tuple[int, dict[str, Any], float]:
    """Send ``body`` to ``url`` ``chunk`` bytes at a time, one chunk every ``every`` seconds
    (a slowloris client: ``every`` 0 sends the first chunk, then nothing), until the server
    answers; its status, JSON body and the seconds it took. Bounded: 30 s at most."""
    parsed = httpx.URL(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    target = parsed.raw_path.decode()
    head = [f"{method} {target} HTTP/1.1", f"Host: {parsed.host}:{parsed.port}"]
    head += [f"{k}: {v}" for k, v in {**headers, "Content-Length": str(len(body))}.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())

    async def trickle() -> None:
        for start in range(0, len(body), chunk):
            writer.write(body[start : start + chunk])
            await writer.drain()
            if not every:
                return
            await asyncio.sleep(every)  # the client's pace: what is under test

    loop = asyncio.get_running_loop()
    started = loop.time()
    sending = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(30):
            response = await reader.read(64 * KiB)
            while b"\r\n\r\n" not in response:
                response += await reader.read(64 * KiB)
            header, _, rest = response.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(rest) < length:
                rest += await reader.read(64 * KiB)
    finally:
        sending.cancel()
        writer.close()
    took = loop.time() - started
    return int(header.split(b" ")[1]), json.loads(rest[:length]), took


async def test_an_upload_url_body_trickled_or_stalled_is_refused_and_leaves_nothing(
    b: FilesBackend,
) -> None:
    if b.name != "local":
        pytest.skip("S3 receives its presigned PUTs itself")
    settings = b.settings.model_copy(update=SLOW)
    with running_server(settings) as server:
        client = GraphQLClient(b.http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        content = b"t" * (64 * KiB)
        for every in (0.25, 0):  # 1 KiB every 0.25 s: 16 s for the body; then one that stalls
            created = (
                await client.execute(
                    CREATE_URL,
                    {"input": {"filename": "slow.bin", "size": len(content)}},
                    actor=owner,
                    tenant_id=tenant_id,
                )
            ).ok()["createUploadUrl"]
            status, body, took = await slow_request(
                created["uploadUrl"],
                "PUT",
                created["uploadHeaders"],
                content,
                every=every,
                chunk=KiB,
            )
            assert status == 408, body
            assert body["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"
            # Idle 1 s + 64 KiB at 64 KiB/s: refused after about 2 s (a stall after 1 s).
            assert took < 10
            assert tenant_objects(b, tenant_id) == []  # no bytes, no temporary file
        # An upload at a sane pace goes through.
        created = (
            await client.execute(
                CREATE_URL,
                {"input": {"filename": "fast.bin", "size": len(content)}},
                actor=owner,
                tenant_id=tenant_id,
            )
        ).ok()["createUploadUrl"]
        assert (await put(b, created, content)).status_code == 200


async def test_a_multipart_body_trickled_is_refused_and_leaves_nothing(b: FilesBackend) -> None:
    settings = b.settings.model_copy(update=SLOW)
    with running_server(settings) as server:
        client = GraphQLClient(b.http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        boundary = "cgslowboundary"
        operations = json.dumps({"query": UPLOAD_ONE, "variables": {"file": None}})
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n'
                f"{operations}\r\n--{boundary}\r\n"
                'Content-Disposition: form-data; name="map"\r\n\r\n{"0": ["variables.file"]}\r\n'
                f"--{boundary}\r\n"
                'Content-Disposition: form-data; name="0"; filename="slow.txt"\r\n'
                "Content-Type: text/plain\r\n\r\n"
            ).encode()
            + b"s" * (48 * KiB)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Accept": "application/json",
            **PREFLIGHT,
            **owner.headers(tenant_id),
        }
        status, answer, took = await slow_request(
            server.url, "POST", headers, body, every=0.25, chunk=KiB
        )
        assert status == 408, answer
        assert answer["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"
        assert took < 10
        assert tenant_objects(b, tenant_id) == []
        listed = await client.execute(LIST_IDS, {}, actor=owner, tenant_id=tenant_id)
        assert listed.ok()["files"]["nodes"] == []


async def test_pending_upload_urls_are_capped_per_tenant(b: FilesBackend) -> None:
    settings = b.settings.model_copy(update={"files_max_pending_uploads": 2})
    with running_server(settings) as server:
        client = GraphQLClient(b.http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)

        async def create() -> Any:
            return await client.execute(
                CREATE_URL,
                {"input": {"filename": "p.bin", "size": 5}},
                actor=owner,
                tenant_id=tenant_id,
            )

        first, second = [(await create()).ok()["createUploadUrl"] for _ in range(2)]
        refused = await create()
        assert refused.codes == ["QUOTA_EXCEEDED"], refused.body
        extensions = refused.errors[0]["extensions"]
        assert (extensions["meter"], extensions["limit"], extensions["current"]) == (
            "files.pending_uploads",
            2,
            2,
        )
        # Completing one, or deleting one, makes room for another.
        assert (await put(b, first, b"12345")).status_code == 200
        done = await client.execute(
            COMPLETE, {"id": first["file"]["id"]}, actor=owner, tenant_id=tenant_id
        )
        done.ok()
        (await create()).ok()
        assert (await create()).codes == ["QUOTA_EXCEEDED"]
        deleted = await client.execute(
            DELETE, {"id": second["file"]["id"]}, actor=owner, tenant_id=tenant_id
        )
        deleted.ok()
        (await create()).ok()
        # Another tenant has a cap of its own.
        other = await client.create_tenant(owner)
        mine = await client.execute(
            CREATE_URL, {"input": {"filename": "o.bin", "size": 5}}, actor=owner, tenant_id=other
        )
        mine.ok()
