"""Files: uploads through GraphQL (multipart) and through signed URLs, downloads, deletion,
quota, bad input, tenant isolation, and the cleanup of orphan bytes after a crash.

One behaviour suite for both storage backends: local disk, and S3 through moto's real
S3-compatible server on loopback (coregraph then hands out presigned URLs). Each backend gets a
server of its own with small limits, sharing the session's database.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from coregraph import db
from coregraph.services import files as files_service
from coregraph.services.events import BUILTIN_EVENT_TYPES
from coregraph.settings import Settings
from coregraph.storage import create_storage, signing
from coregraph.storage.base import StoredObject
from tests.conftest import make_settings
from tests.storage_support import S3Server, running_s3_server
from tests.support import Actor, GraphQLClient, Response, Server, running_server

KiB = 1024
MAX_MULTIPART_FILE = 64 * KiB
MAX_FILE = 256 * KiB
QUOTA = 400 * KiB
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
PREFLIGHT = {"Apollo-Require-Preflight": "true"}

UPLOAD = """mutation($file: Upload!, $labels: JSON) { uploadFile(file: $file, labels: $labels) {
    fileId file { id name contentType size sha256 labels status environment uploadedByKind } } }"""
CREATE_URL = """mutation($input: CreateUploadUrlInput!) { createUploadUrl(input: $input) {
    uploadUrl expiresAt uploadHeaders file { id status size } } }"""
COMPLETE = """mutation($id: ID!) { completeUpload(id: $id) {
    file { id status size sha256 contentType } } }"""
DELETE = """mutation($id: ID!, $purge: Boolean! = false) { deleteFile(id: $id, purge: $purge) {
    fileId file { id status deletedAt } } }"""
FILE = """query($id: ID!, $e: Int) { file(id: $id) { id name status size
    downloadUrl(expiresIn: $e) } }"""
FILE_ONLY = "query($id: ID!) { file(id: $id) { id name status } }"
LIST = """query($filter: FileFilter, $first: Int, $after: String) {
    files(filter: $filter, first: $first, after: $after) {
    totalCount pageInfo { hasNextPage endCursor } nodes { id name status contentType labels } } }"""
EVENTS = (
    """query($types: [String!]) { events(types: $types, first: 200) { nodes { type data } } }"""
)
AUDIT = """query($action: String!) { tenant { auditLog(first: 200, action: $action) {
    nodes { action targetId } } } }"""


@dataclass
class FilesBackend:
    name: str
    server: Server
    client: GraphQLClient
    http: httpx.AsyncClient
    objects: Callable[[], list[str]]  # every object (or file, on disk) the backend holds

    @property
    def settings(self) -> Settings:
        return self.server.settings

    def env(self) -> dict[str, str]:
        """The server's settings as COREGRAPH_* variables, for the CLI and a crashing process."""
        s = self.settings
        values = {
            "COREGRAPH_ENV": s.env,
            "COREGRAPH_DATABASE_URL": s.database_url,
            "COREGRAPH_JWT_SECRET": s.jwt_secret,
            "COREGRAPH_WEBHOOK_SECRET_KEYS": s.webhook_secret_keys,
            "COREGRAPH_STORAGE_DIR": s.storage_dir,
        }
        for name in ("storage_url", "s3_endpoint_url", "s3_region", "s3_access_key_id"):
            if getattr(s, name):
                values[f"COREGRAPH_{name.upper()}"] = str(getattr(s, name))
        if s.s3_secret_access_key:
            values["COREGRAPH_S3_SECRET_ACCESS_KEY"] = s.s3_secret_access_key
        return {**os.environ, **values}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


LIMITS: dict[str, object] = {
    "files_multipart_max_file_bytes": MAX_MULTIPART_FILE,
    "files_max_file_bytes": MAX_FILE,
    "files_quota_bytes": QUOTA,
    "files_multipart_max_files": 3,
    "files_multipart_max_parts": 5,
}


@pytest.fixture(scope="module", params=["local", "s3"], name="b")
def backend(
    request: pytest.FixtureRequest,
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    http: httpx.AsyncClient,
) -> Iterator[FilesBackend]:
    root = tmp_path_factory.mktemp("files")
    overrides: dict[str, object] = {**LIMITS, "storage_dir": str(root)}
    if request.param == "local":

        def objects() -> list[str]:
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        bucket = s3.new_bucket()
        overrides.update(s3.settings(bucket, "coregraph"))

        def objects() -> list[str]:
            return sorted(s3.objects(bucket))

    with running_server(make_settings(database_url, **overrides)) as server:
        yield FilesBackend(request.param, server, GraphQLClient(http, server.url), http, objects)


async def owner_and_tenant(b: FilesBackend) -> tuple[Actor, str]:
    owner = await b.client.sign_up()
    tenant_id = await b.client.create_tenant(owner)
    return owner, tenant_id


def multipart(
    query: str,
    variables: dict[str, Any],
    files: dict[str, tuple[str, bytes, str]],
    mapping: dict[str, list[str]],
) -> tuple[dict[str, str], dict[str, Any]]:
    data = {
        "operations": json.dumps({"query": query, "variables": variables}),
        "map": json.dumps(mapping),
    }
    return data, files


async def upload(
    b: FilesBackend,
    actor: Actor | None,
    tenant_id: str | None,
    content: bytes,
    filename: str = "report.bin",
    *,
    content_type: str = "text/plain",
    labels: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    data, files = multipart(
        UPLOAD,
        {"file": None, "labels": labels},
        {"0": (filename, content, content_type)},
        {"0": ["variables.file"]},
    )
    all_headers = {"Accept": "application/graphql-response+json"}
    all_headers.update(PREFLIGHT if headers is None else headers)
    if actor is not None:
        all_headers.update(actor.headers(tenant_id))
    response = await b.http.post(b.server.url, data=data, files=files, headers=all_headers)
    return Response(response.status_code, response.json(), response.headers)


async def uploaded(b: FilesBackend, actor: Actor, tenant_id: str, content: bytes, **kw: Any) -> Any:
    return (await upload(b, actor, tenant_id, content, **kw)).ok()["uploadFile"]["file"]


async def download_url(b: FilesBackend, actor: Actor, tenant_id: str, file_id: str) -> str:
    r = await b.client.execute(FILE, {"id": file_id}, actor=actor, tenant_id=tenant_id)
    return str(r.ok()["file"]["downloadUrl"])


async def file_count(b: FilesBackend, actor: Actor, tenant_id: str) -> int:
    r = await b.client.execute(
        LIST,
        {"filter": {"status": ["PENDING", "READY", "DELETED"]}},
        actor=actor,
        tenant_id=tenant_id,
    )
    return int(r.ok()["files"]["totalCount"])


def tenant_objects(b: FilesBackend, tenant_id: str) -> list[str]:
    return [key for key in b.objects() if tenant_id in key]


# --- upload and download --------------------------------------------------------------------


async def test_upload_sniffs_the_type_and_downloads_as_an_attachment(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    r = await upload(
        b, owner, tenant_id, PNG, "photo.txt", content_type="text/plain", labels={"kind": "avatar"}
    )
    payload = r.ok()["uploadFile"]
    file = payload["file"]
    assert payload["fileId"] == file["id"]
    assert file["contentType"] == "image/png"  # from the bytes, not the client's claim
    assert file["size"] == len(PNG)
    assert file["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert file["labels"] == {"kind": "avatar"}
    assert (file["status"], file["environment"], file["uploadedByKind"]) == (
        "READY",
        "LIVE",
        "user",
    )
    url = await download_url(b, owner, tenant_id, file["id"])
    got = await b.http.get(url)
    assert got.status_code == 200
    assert got.content == PNG
    assert got.headers["content-disposition"].startswith("attachment;")
    assert "photo.txt" in got.headers["content-disposition"]

    events = await b.client.execute(
        EVENTS, {"types": ["file.uploaded"]}, actor=owner, tenant_id=tenant_id
    )
    [event] = events.ok()["events"]["nodes"]
    Draft202012Validator(BUILTIN_EVENT_TYPES["file.uploaded"].schema).validate(event["data"])
    assert event["data"]["fileId"] == file["id"]
    assert event["data"]["sha256"] == file["sha256"]
    audit = await b.client.execute(
        AUDIT, {"action": "file.uploaded"}, actor=owner, tenant_id=tenant_id
    )
    assert [e["targetId"] for e in audit.ok()["tenant"]["auditLog"]["nodes"]] == [file["id"]]


async def test_active_content_is_never_rendered(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    file = await uploaded(b, owner, tenant_id, SVG, filename="logo.svg", content_type="image/png")
    assert file["contentType"] == "image/svg+xml"
    got = await b.http.get(await download_url(b, owner, tenant_id, file["id"]))
    assert got.status_code == 200
    assert got.headers["content-disposition"].startswith("attachment;")
    # Served as bytes to save, by coregraph's route and by S3's presigned GET alike.
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.content == SVG
    page = await uploaded(b, owner, tenant_id, HTML, filename="page.txt")
    assert page["contentType"] == "text/html"
    got = await b.http.get(await download_url(b, owner, tenant_id, page["id"]))
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["content-disposition"].startswith("attachment;")
    # What a browser only displays keeps its type.
    image = await uploaded(b, owner, tenant_id, PNG, filename="a.png")
    got = await b.http.get(await download_url(b, owner, tenant_id, image["id"]))
    assert got.headers["content-type"] == "image/png"
    if b.name == "local":
        assert got.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in got.headers["content-security-policy"]
        assert "default-src 'none'" in got.headers["content-security-policy"]


async def test_listing_filters_and_pages_newest_first(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    ids = []
    for index in range(3):
        labels = {"batch": "a" if index < 2 else "b"}
        file = await uploaded(
            b, owner, tenant_id, f"text {index}".encode(), filename=f"n{index}.txt", labels=labels
        )
        ids.append(file["id"])
    page = (await b.client.execute(LIST, {"first": 2}, actor=owner, tenant_id=tenant_id)).ok()[
        "files"
    ]
    assert [n["id"] for n in page["nodes"]] == [ids[2], ids[1]]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = (
        await b.client.execute(
            LIST,
            {"first": 2, "after": page["pageInfo"]["endCursor"]},
            actor=owner,
            tenant_id=tenant_id,
        )
    ).ok()["files"]
    assert [n["id"] for n in rest["nodes"]] == [ids[0]]
    labelled = await b.client.execute(
        LIST, {"filter": {"labels": {"batch": "a"}}}, actor=owner, tenant_id=tenant_id
    )
    assert sorted(n["id"] for n in labelled.ok()["files"]["nodes"]) == sorted(ids[:2])
    by_name = await b.client.execute(
        LIST,
        {"filter": {"namePrefix": "n2", "contentType": "text/*"}},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert [n["id"] for n in by_name.ok()["files"]["nodes"]] == [ids[2]]
    odd_key = await b.client.execute(
        LIST, {"filter": {"labels": {'a"b': "x"}}}, actor=owner, tenant_id=tenant_id
    )
    assert odd_key.codes == ["BAD_USER_INPUT"]


# --- CSRF and multipart limits ----------------------------------------------------------------


async def test_a_multipart_post_without_a_preflight_header_is_refused(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    # What a cross-site <form enctype="multipart/form-data"> sends: no custom header at all.
    data, files = multipart(
        UPLOAD, {"file": None}, {"0": ("a.txt", b"hello", "text/plain")}, {"0": ["variables.file"]}
    )
    browser = await b.http.post(
        b.server.url,
        data=data,
        files=files,
        headers={"Origin": "https://evil.example", "Accept": "text/html,*/*"},
    )
    assert browser.status_code == 400
    assert browser.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    # Even with a credential: without the header the request is not executed.
    r = await upload(b, owner, tenant_id, b"hello", headers={})
    assert r.status == 400 and r.codes == ["BAD_REQUEST"]
    empty = await upload(b, owner, tenant_id, b"hello", headers={"Apollo-Require-Preflight": ""})
    assert empty.status == 400
    # The other header Apollo accepts.
    ok = await upload(b, owner, tenant_id, b"hello", headers={"X-Apollo-Operation-Name": "up"})
    ok.ok()
    assert await file_count(b, owner, tenant_id) == 1


async def test_multipart_limits(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    big = await upload(b, owner, tenant_id, b"x" * (MAX_MULTIPART_FILE + 1))
    assert big.status == 413 and big.codes == ["PAYLOAD_TOO_LARGE"]
    headers = {"Accept": "application/json", **PREFLIGHT, **owner.headers(tenant_id)}
    query = (
        "mutation($a: Upload!, $b: Upload!, $c: Upload!, $d: Upload!) {"
        " a: uploadFile(file: $a) { fileId } b: uploadFile(file: $b) { fileId }"
        " c: uploadFile(file: $c) { fileId } d: uploadFile(file: $d) { fileId } }"
    )
    names = ["a", "b", "c", "d"]
    data, files = multipart(
        query,
        {n: None for n in names},
        {str(i): (f"{n}.txt", b"x", "text/plain") for i, n in enumerate(names)},
        {str(i): [f"variables.{n}"] for i, n in enumerate(names)},
    )
    too_many = await b.http.post(b.server.url, data=data, files=files, headers=headers)
    assert too_many.status_code == 400, too_many.text
    # A map naming a part that is not sent, or a path that is not a null variable.
    data, files = multipart(
        UPLOAD, {"file": None}, {"0": ("a.txt", b"x", "text/plain")}, {"1": ["variables.file"]}
    )
    unmapped = await b.http.post(b.server.url, data=data, files=files, headers=headers)
    assert unmapped.status_code == 400
    data, files = multipart(
        UPLOAD, {"file": "x"}, {"0": ("a.txt", b"x", "text/plain")}, {"0": ["variables.file"]}
    )
    not_null = await b.http.post(b.server.url, data=data, files=files, headers=headers)
    assert not_null.status_code == 400
    # An Upload variable sent as JSON, not as a part.
    as_json = await b.client.execute(
        UPLOAD, {"file": "/etc/passwd"}, actor=owner, tenant_id=tenant_id
    )
    assert as_json.codes == ["BAD_USER_INPUT"]
    assert await file_count(b, owner, tenant_id) == 0
    assert tenant_objects(b, tenant_id) == []


# --- bad input -------------------------------------------------------------------------------

BAD_NAMES = {
    "parent": "../../etc/passwd",
    "nested": "a/../b.txt",
    "absolute": "/etc/passwd",
    "windows": "C:\\Windows\\win.ini",
    "nul": "a\x00b.txt",
    "control": "bell\x07.txt",
    "bidi": "invoice\u202egnp.exe",
    "long": "a" * 10_000,
    "dots": "..",
    "empty": "",
}


async def raw_upload(b: FilesBackend, actor: Actor, tenant_id: str, filename: str) -> Response:
    """An upload whose part header carries ``filename`` byte for byte (an HTTP client would
    percent-encode control characters, as browsers do; an attacker's script need not)."""
    boundary = "cgboundary7MA4YWxk"
    operations = json.dumps({"query": UPLOAD, "variables": {"file": None}})
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="operations"\r\n\r\n'
        f"{operations}\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="map"\r\n\r\n'
        '{"0": ["variables.file"]}\r\n'
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="0"; filename="{filename}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
        "hello\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Accept": "application/graphql-response+json",
        **PREFLIGHT,
        **actor.headers(tenant_id),
    }
    response = await b.http.post(b.server.url, content=body, headers=headers)
    return Response(response.status_code, response.json(), response.headers)


@pytest.mark.parametrize("name", sorted(BAD_NAMES))
async def test_bad_filenames_are_refused_and_leave_nothing(b: FilesBackend, name: str) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    filename = BAD_NAMES[name]
    r = await b.client.execute(
        CREATE_URL,
        {"input": {"filename": filename, "size": 5}},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert r.codes == ["BAD_USER_INPUT"], r.body
    assert filename not in json.dumps(r.body) or name in ("dots", "empty")
    up = await raw_upload(b, owner, tenant_id, filename)
    if name == "long":
        # Longer than a part's header may be: refused by the parser before GraphQL.
        assert up.status == 400 and up.codes == ["BAD_REQUEST"], up.body
    elif name == "windows":
        # python-multipart keeps only what follows the last backslash (old IE sent full
        # paths): no path survives into the name.
        assert up.ok()["uploadFile"]["file"]["name"] == "win.ini"
        return
    else:
        assert up.codes == ["BAD_USER_INPUT"], up.body
    assert await file_count(b, owner, tenant_id) == 0
    assert tenant_objects(b, tenant_id) == []


async def test_bad_declarations_are_refused(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    for bad in (
        {"size": -1},
        {"size": MAX_FILE + 1},
        {"size": 5, "sha256": "not-a-digest"},
        {"size": 5, "contentType": "text/html\r\nX-Evil: 1"},
    ):
        r = await b.client.execute(
            CREATE_URL, {"input": {"filename": "a.txt", **bad}}, actor=owner, tenant_id=tenant_id
        )
        assert r.codes == ["BAD_USER_INPUT"], (bad, r.body)
    too_big = await b.client.execute(
        CREATE_URL,
        {"input": {"filename": "a.txt", "size": MAX_FILE + 1}},
        actor=owner,
        tenant_id=tenant_id,
    )
    assert too_big.errors[0]["extensions"]["reason"] == "PAYLOAD_TOO_LARGE"
    labels = await upload(b, owner, tenant_id, b"x", labels={"Bad Key": "v"})  # type: ignore[dict-item]
    assert labels.codes == ["BAD_USER_INPUT"]
    assert await file_count(b, owner, tenant_id) == 0


# --- upload URLs --------------------------------------------------------------------------------


async def put(b: FilesBackend, created: dict[str, Any], content: bytes) -> httpx.Response:
    return await b.http.put(created["uploadUrl"], content=content, headers=created["uploadHeaders"])


async def create_url(
    b: FilesBackend, owner: Actor, tenant_id: str, content: bytes, **fields: Any
) -> Response:
    values = {"filename": "big.bin", "size": len(content), **fields}
    return await b.client.execute(CREATE_URL, {"input": values}, actor=owner, tenant_id=tenant_id)


async def test_upload_url_then_complete(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = PNG * 20
    created = (
        await create_url(b, owner, tenant_id, content, sha256=hashlib.sha256(content).hexdigest())
    ).ok()["createUploadUrl"]
    assert created["file"]["status"] == "PENDING"
    assert (await put(b, created, content)).status_code == 200
    done = (
        await b.client.execute(
            COMPLETE, {"id": created["file"]["id"]}, actor=owner, tenant_id=tenant_id
        )
    ).ok()["completeUpload"]["file"]
    assert done["status"] == "READY"
    assert done["contentType"] == "image/png"
    assert done["sha256"] == hashlib.sha256(content).hexdigest()
    got = await b.http.get(await download_url(b, owner, tenant_id, done["id"]))
    assert got.content == content
    again = await b.client.execute(
        COMPLETE, {"id": created["file"]["id"]}, actor=owner, tenant_id=tenant_id
    )
    assert again.codes == ["CONFLICT"]


async def test_an_upload_url_used_again_after_complete_cannot_replace_the_bytes(
    b: FilesBackend,
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"the bytes that were checked"
    forged = b"bytes nobody ever checked!!"
    assert len(forged) == len(content)
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    assert (await put(b, created, content)).status_code == 200
    file_id = created["file"]["id"]
    (await b.client.execute(COMPLETE, {"id": file_id}, actor=owner, tenant_id=tenant_id)).ok()
    again = await put(b, created, forged)
    # coregraph's own URL is spent; S3's presigned PUT is taken until it lapses, but it writes
    # beside the file's bytes, never over them.
    assert again.status_code == (200 if b.name == "s3" else 409)
    got = await b.http.get(await download_url(b, owner, tenant_id, file_id))
    assert got.content == content
    engine, storage = worker_engine(b.settings), create_storage(b.settings)
    try:
        assert await storage.digest(f"{tenant_id}/{file_id}") == StoredObject(
            f"{tenant_id}/{file_id}", len(content), hashlib.sha256(content).hexdigest()
        )
        # What the reused URL wrote is no file's bytes: the cleanup reclaims it.
        reclaimed = await files_service.reclaim_orphans(engine, storage, grace_seconds=0)
    finally:
        await storage.aclose()
        await engine.dispose()
    assert reclaimed == ([f"{tenant_id}/{file_id}.upload"] if b.name == "s3" else [])
    assert tenant_objects(b, tenant_id) == [f"coregraph/{tenant_id}/{file_id}"] or b.name == "local"
    assert len(tenant_objects(b, tenant_id)) == 1
    got = await b.http.get(await download_url(b, owner, tenant_id, file_id))
    assert got.content == content


async def test_browsers_of_allowed_origins_may_put_to_upload_urls(
    database_url: str, http: httpx.AsyncClient, tmp_path: Any
) -> None:
    portal, evil = "https://portal.example.com", "https://evil.example"
    settings = make_settings(
        database_url, **LIMITS, storage_dir=str(tmp_path), cors_origins=[portal]
    )
    with running_server(settings) as server:
        client = GraphQLClient(http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        content = b"sent by a browser on the portal"
        created = (
            await client.execute(
                CREATE_URL,
                {"input": {"filename": "a.txt", "size": len(content), "contentType": "text/plain"}},
                actor=owner,
                tenant_id=tenant_id,
            )
        ).ok()["createUploadUrl"]
        url = created["uploadUrl"]
        assert "/files/upload/" in url
        preflight = {
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        }
        allowed = await http.options(url, headers={"Origin": portal, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == portal
        assert "PUT" in allowed.headers["access-control-allow-methods"]
        assert "content-type" in allowed.headers["access-control-allow-headers"].lower()
        refused = await http.options(url, headers={"Origin": evil, **preflight})
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        # Only what an upload needs: no credential header, and PUT nowhere else.
        with_auth = {**preflight, "Access-Control-Request-Headers": "authorization"}
        assert (await http.options(url, headers={"Origin": portal, **with_auth})).status_code == 400
        graphql_put = await http.options(server.url, headers={"Origin": portal, **preflight})
        assert graphql_put.status_code == 400
        assert "PUT" not in graphql_put.headers.get("access-control-allow-methods", "")
        # The PUT itself, as the browser sends it after the preflight.
        sent = await http.put(
            url, content=content, headers={"Origin": portal, **created["uploadHeaders"]}
        )
        assert sent.status_code == 200, sent.text
        assert sent.headers["access-control-allow-origin"] == portal
        done = await client.execute(
            COMPLETE, {"id": created["file"]["id"]}, actor=owner, tenant_id=tenant_id
        )
        assert done.ok()["completeUpload"]["file"]["size"] == len(content)


async def test_bytes_that_do_not_match_the_declaration_are_discarded(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"the declared bytes, exactly"
    wrong = b"something else entirely...!"
    assert len(wrong) == len(content)
    created = (
        await create_url(b, owner, tenant_id, content, sha256=hashlib.sha256(content).hexdigest())
    ).ok()["createUploadUrl"]
    response = await put(b, created, wrong)
    if b.name == "local":
        assert response.status_code == 400  # refused at once
    r = await b.client.execute(
        COMPLETE, {"id": created["file"]["id"]}, actor=owner, tenant_id=tenant_id
    )
    assert r.codes == ["BAD_USER_INPUT"]
    assert tenant_objects(b, tenant_id) == []
    if b.name == "s3":
        # The pending row went with the bytes.
        assert await file_count(b, owner, tenant_id) == 0
    # Fewer bytes than declared: S3 checks the signed length, coregraph the declared size.
    short = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    refused = await put(b, short, content[:5])
    if b.name == "local":
        assert refused.status_code == 400
        # Refused before the URL was spent: the right bytes may still be sent.
        assert (await put(b, short, content)).status_code == 200
        (
            await b.client.execute(
                COMPLETE, {"id": short["file"]["id"]}, actor=owner, tenant_id=tenant_id
            )
        ).ok()
        assert len(tenant_objects(b, tenant_id)) == 1
        # Without a Content-Length (chunked), the body's end tells: too few bytes are refused.
        short = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]

        async def five() -> Any:
            yield content[:5]

        assert (await b.http.put(short["uploadUrl"], content=five())).status_code == 400
    # Whatever the bucket took (moto does not enforce the signed length), completing refuses.
    r = await b.client.execute(
        COMPLETE, {"id": short["file"]["id"]}, actor=owner, tenant_id=tenant_id
    )
    assert r.codes == ["BAD_USER_INPUT"]
    assert len(tenant_objects(b, tenant_id)) == (1 if b.name == "local" else 0)
    if b.name == "local":
        # More bytes than declared, streamed without a Content-Length: cut off at the size.
        more = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]

        async def body() -> Any:
            for _ in range(10):
                yield content

        too_long = await b.http.put(more["uploadUrl"], content=body())
        assert too_long.status_code == 413
        assert len(tenant_objects(b, tenant_id)) == 1  # the completed one alone


async def test_a_local_upload_url_works_once_and_not_after_expiry(b: FilesBackend) -> None:
    if b.name != "local":
        pytest.skip("S3 enforces its own presigned URLs' lapse")
    owner, tenant_id = await owner_and_tenant(b)
    content = b"once only"
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    first, second = await asyncio.gather(put(b, created, content), put(b, created, content))
    assert sorted([first.status_code, second.status_code]) == [200, 409]
    assert (await put(b, created, content)).status_code == 409
    # A token signed in the past for a fresh pending file: lapsed.
    fresh = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    lapsed = signing.sign(
        b.settings,
        {"p": "put", "t": tenant_id, "f": fresh["file"]["id"]},
        expires_in=60,
        now=time.time() - 120,
    )
    base = fresh["uploadUrl"].rsplit("/", 1)[0]
    assert (await b.http.put(f"{base}/{lapsed}", content=content)).status_code == 404
    tampered = fresh["uploadUrl"][:-3] + (
        "AAA" if not fresh["uploadUrl"].endswith("AAA") else "BBB"
    )
    assert (await b.http.put(tampered, content=content)).status_code == 404
    # A download token is no upload token.
    get_token = signing.sign(
        b.settings, {"p": "get", "t": tenant_id, "f": fresh["file"]["id"]}, expires_in=60
    )
    assert (await b.http.put(f"{base}/{get_token}", content=content)).status_code == 404
    assert (await put(b, fresh, content)).status_code == 200


# --- quota -------------------------------------------------------------------------------------


async def test_uploads_past_the_quota_are_refused_before_keeping_bytes(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    reserved = (await create_url(b, owner, tenant_id, b"x" * MAX_FILE)).ok()["createUploadUrl"]
    (await create_url(b, owner, tenant_id, b"x" * 100 * KiB)).ok()
    used = MAX_FILE + 100 * KiB
    r = await create_url(b, owner, tenant_id, b"x" * (QUOTA - used + 1))
    assert r.codes == ["QUOTA_EXCEEDED"]
    ext = r.errors[0]["extensions"]
    assert (ext["meter"], ext["limit"], ext["current"]) == ("storage.bytes", QUOTA, used)
    fits = await uploaded(b, owner, tenant_id, b"y" * (QUOTA - used - 10))
    over = await upload(b, owner, tenant_id, b"z" * 11)
    assert over.codes == ["QUOTA_EXCEEDED"]
    assert over.errors[0]["extensions"]["current"] == QUOTA - 10
    assert tenant_objects(b, tenant_id) == [f"{tenant_id}/{fits['id']}"] or b.name == "s3"
    # Deleting and purging frees the space (a soft-deleted file's bytes still count).
    deleted = await b.client.execute(
        DELETE, {"id": reserved["file"]["id"], "purge": True}, actor=owner, tenant_id=tenant_id
    )
    deleted.ok()
    (await upload(b, owner, tenant_id, b"z" * 11)).ok()


# --- deletion and cleanup ------------------------------------------------------------------------


def worker_engine(settings: Settings) -> Any:
    return db.create_engine(settings, role=settings.database_worker_role)


async def test_delete_soft_then_purge_after_retention(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    kept = await uploaded(b, owner, tenant_id, b"keep me a while")
    gone = await uploaded(b, owner, tenant_id, b"remove me now")
    old_url = await download_url(b, owner, tenant_id, kept["id"])
    r = (await b.client.execute(DELETE, {"id": kept["id"]}, actor=owner, tenant_id=tenant_id)).ok()
    assert r["deleteFile"]["file"]["status"] == "DELETED"
    assert len(tenant_objects(b, tenant_id)) == 2  # the bytes stay for the retention period
    # A URL signed before the delete is refused after it, by S3 as by coregraph's route (S3
    # answers 403 for a missing key to whom may not list the bucket).
    assert (await b.http.get(old_url)).status_code in (403, 404)
    after = await b.client.execute(FILE, {"id": kept["id"]}, actor=owner, tenant_id=tenant_id)
    assert after.codes == ["NOT_FOUND"]  # downloadUrl of a deleted file
    assert after.data["file"]["status"] == "DELETED"
    again = await b.client.execute(DELETE, {"id": kept["id"]}, actor=owner, tenant_id=tenant_id)
    assert again.codes == ["NOT_FOUND"]
    purged = await b.client.execute(
        DELETE, {"id": gone["id"], "purge": True}, actor=owner, tenant_id=tenant_id
    )
    purged.ok()
    # The deleted file's bytes wait for their purge at its tombstone key.
    [tombstone] = tenant_objects(b, tenant_id)
    assert tombstone.endswith(f"{tenant_id}/{kept['id']}.deleted")

    engine, storage = worker_engine(b.settings), create_storage(b.settings)
    try:
        assert kept["id"] not in await files_service.purge_expired(engine, storage)
        future = datetime.now(UTC) + timedelta(seconds=b.settings.files_retention_seconds + 1)
        assert kept["id"] in await files_service.purge_expired(engine, storage, now=future)
    finally:
        await storage.aclose()
        await engine.dispose()
    assert tenant_objects(b, tenant_id) == []
    events = await b.client.execute(
        EVENTS, {"types": ["file.deleted"]}, actor=owner, tenant_id=tenant_id
    )
    assert sorted(
        (e["data"]["fileId"], e["data"]["purged"]) for e in events.ok()["events"]["nodes"]
    ) == sorted([(kept["id"], False), (gone["id"], True)])
    for event in events.ok()["events"]["nodes"]:
        Draft202012Validator(BUILTIN_EVENT_TYPES["file.deleted"].schema).validate(event["data"])
    audit = await b.client.execute(
        AUDIT, {"action": "file.purged"}, actor=owner, tenant_id=tenant_id
    )
    assert {e["targetId"] for e in audit.ok()["tenant"]["auditLog"]["nodes"]} == {
        kept["id"],
        gone["id"],
    }


async def test_the_running_worker_purges_deleted_files_past_their_retention(
    b: FilesBackend,
) -> None:
    """serve's in-process worker (the same tasks as ``coregraph worker``) cleans up every
    files_cleanup_interval_seconds, as files-cleanup would."""
    settings = b.settings.model_copy(
        update={
            "run_relay": "true",
            "files_retention_seconds": 2,
            "files_cleanup_interval_seconds": 0.2,
        }
    )
    with running_server(settings) as server:
        client = GraphQLClient(b.http, server.url)
        owner = await client.sign_up()
        tenant_id = await client.create_tenant(owner)
        file = await uploaded(b, owner, tenant_id, b"deleted, then purged by the worker")
        kept = await uploaded(b, owner, tenant_id, b"never deleted")
        deleted = await client.execute(DELETE, {"id": file["id"]}, actor=owner, tenant_id=tenant_id)
        deleted.ok()
        # Within its retention: the worker's passes keep the bytes.
        assert len(tenant_objects(b, tenant_id)) == 2
        # The bytes go inside the purge's transaction, its audit entry when it commits.
        async with asyncio.timeout(30):
            while True:
                audit = await client.execute(
                    AUDIT, {"action": "file.purged"}, actor=owner, tenant_id=tenant_id
                )
                if (
                    len(tenant_objects(b, tenant_id)) == 1
                    and audit.ok()["tenant"]["auditLog"]["nodes"]
                ):
                    break
                await asyncio.sleep(0.1)
    assert [e["targetId"] for e in audit.ok()["tenant"]["auditLog"]["nodes"]] == [file["id"]]
    assert [k for k in tenant_objects(b, tenant_id) if kept["id"] in k] == tenant_objects(
        b, tenant_id
    )
    got = await b.http.get(await download_url(b, owner, tenant_id, kept["id"]))
    assert got.content == b"never deleted"


async def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(
        subprocess.run, args, env=env, capture_output=True, timeout=60, check=False
    )


CRASH = textwrap.dedent(
    """
    import asyncio, os, sys
    from coregraph import db
    from coregraph.auth.principal import system_principal
    from coregraph.request import RequestMeta
    from coregraph.services import files
    from coregraph.services.uow import UnitOfWork
    from coregraph.settings import load_settings
    from coregraph.storage import create_storage

    TENANT = sys.argv[1]

    class DiesBeforeCommit(UnitOfWork):
        async def __aenter__(self):
            await super().__aenter__()
            await self.allow_tenant(TENANT)
            return self

        async def __aexit__(self, exc_type, exc, tb):
            if exc_type is None:
                await self.session.flush()  # the row is written, not committed
                print("stored", flush=True)
                os._exit(3)  # the process dies here, as in a power cut
            return await super().__aexit__(exc_type, exc, tb)

    async def main():
        settings = load_settings()
        engine = db.create_engine(settings)
        storage = create_storage(settings)

        async def chunks():
            yield b"bytes whose row never commits"

        await files.upload_file(
            lambda: DiesBeforeCommit(engine, system_principal("test:crash"), RequestMeta()),
            storage, settings, TENANT, filename="crash.txt", declared_content_type=None,
            chunks=chunks(), size=None, labels=None,
        )

    asyncio.run(main())
    """
)


# The CLI as if run ``argv[1]`` seconds from now: the files service's clock moved forward.
LATER = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    from coregraph.services import files
    from coregraph.cli import app

    shift, real = timedelta(seconds=float(sys.argv[1])), files.utcnow
    files.utcnow = lambda: real() + shift
    app(sys.argv[2:], prog_name="coregraph")
    """
)


async def test_a_crash_between_storing_and_committing_leaves_orphans_the_cleanup_reclaims(
    b: FilesBackend,
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    survivor = await uploaded(b, owner, tenant_id, b"a committed file")
    env = b.env()
    crashed = await run([sys.executable, "-c", CRASH, tenant_id], env)
    assert crashed.returncode == 3, crashed.stderr.decode()[-2000:]
    orphans = [k for k in tenant_objects(b, tenant_id) if survivor["id"] not in k]
    assert len(orphans) == 1  # the bytes were kept...
    assert await file_count(b, owner, tenant_id) == 1  # ...but no file is visible

    cleanup = [sys.executable, "-m", "coregraph.cli", "files-cleanup"]
    young = await run(cleanup, env)
    assert young.returncode == 0, young.stderr.decode()[-2000:]
    assert b"reclaimed 0 orphan" in young.stdout  # within the grace period: could be running
    # No grace below the floor, from the CLI either.
    lowered = await run([*cleanup, "--orphan-grace-seconds", "59"], env)
    assert lowered.returncode == 2 and b"at least 60" in lowered.stderr
    # The same command once the orphan is older than the grace (its clock moved past it).
    later = b.settings.files_orphan_grace_seconds + 1
    done = await run([sys.executable, "-c", LATER, str(later), "files-cleanup"], env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"reclaimed 1 orphan" in done.stdout
    survivor_keys = [k for k in tenant_objects(b, tenant_id) if survivor["id"] in k]
    assert len(survivor_keys) == 1 and tenant_objects(b, tenant_id) == survivor_keys
    got = await b.http.get(await download_url(b, owner, tenant_id, survivor["id"]))
    assert got.content == b"a committed file"


# --- tenant isolation -----------------------------------------------------------------------------

ENTITIES = """query($r: [_Any!]!) { _entities(representations: $r) { ... on File { id name } } }"""
NODE = "query($id: ID!) { node(id: $id) { id ... on File { name } } }"


async def test_a_member_of_a_cannot_reach_bs_files(b: FilesBackend) -> None:
    owner_b, tenant_b = await owner_and_tenant(b)
    secret = await uploaded(b, owner_b, tenant_b, b"tenant B's secret")
    url_b = await download_url(b, owner_b, tenant_b, secret["id"])
    owner_a, tenant_a = await owner_and_tenant(b)
    mine = await uploaded(b, owner_a, tenant_a, b"tenant A's own")
    a = await b.client.add_member(owner_a, tenant_a, "member")

    r = await b.client.execute(FILE_ONLY, {"id": secret["id"]}, actor=a, tenant_id=tenant_a)
    assert r.codes == ["NOT_FOUND"]
    listed = await b.client.execute(LIST, {}, actor=a, tenant_id=tenant_a)
    assert [n["id"] for n in listed.ok()["files"]["nodes"]] == [mine["id"]]
    node = await b.client.execute(NODE, {"id": secret["id"]}, actor=a, tenant_id=tenant_a)
    assert node.data["node"] is None
    entities = await b.client.execute(
        ENTITIES, {"r": [{"__typename": "File", "id": secret["id"]}]}, actor=a, tenant_id=tenant_a
    )
    assert entities.data["_entities"] == [None] and entities.codes == ["NOT_FOUND"]
    deleted = await b.client.execute(DELETE, {"id": secret["id"]}, actor=a, tenant_id=tenant_a)
    assert deleted.codes == ["NOT_FOUND"]
    purged = await b.client.execute(
        DELETE, {"id": secret["id"], "purge": True}, actor=a, tenant_id=tenant_a
    )
    assert purged.codes == ["NOT_FOUND"]
    completed = await b.client.execute(COMPLETE, {"id": secret["id"]}, actor=a, tenant_id=tenant_a)
    assert completed.codes == ["NOT_FOUND"]
    # Addressing tenant B while not a member of it.
    direct = await b.client.execute(FILE_ONLY, {"id": secret["id"]}, actor=a, tenant_id=tenant_b)
    assert direct.data is None or direct.data.get("file") is None
    assert len(tenant_objects(b, tenant_b)) == 1

    if b.name == "local":
        # B's URL presented with A's credentials: judged as A, who may not read B's files.
        reused = await b.http.get(url_b, headers=a.headers(tenant_a))
        assert reused.status_code == 404 and b"secret" not in reused.content
        # A's own URL bent to name B's file: the signature no longer holds.
        url_a = await download_url(b, a, tenant_a, mine["id"])
        token_a = url_a.rsplit("/", 1)[1]
        body, signature = token_a.split(".")
        claims = json.loads(signing._b64decode(body))
        forged_body = signing._b64encode(
            json.dumps(
                {**claims, "f": secret["id"], "t": tenant_b}, sort_keys=True, separators=(",", ":")
            ).encode()
        )
        forged = url_a.rsplit("/", 1)[0] + f"/{forged_body}.{signature}"
        assert (await b.http.get(forged)).status_code == 404
        # A token naming B's file but A's tenant (as if signed for A) finds no such file.
        crossed = signing.sign(
            b.settings, {"p": "get", "t": tenant_a, "f": secret["id"]}, expires_in=60
        )
        assert (await b.http.get(url_a.rsplit("/", 1)[0] + f"/{crossed}")).status_code == 404
    # B's own URL still works for B's own use.
    assert (await b.http.get(url_b)).content == b"tenant B's secret"


async def test_download_urls_lapse_and_refuse_tampering(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    file = await uploaded(b, owner, tenant_id, b"short-lived")
    for bad in (0, -5, b.settings.files_download_url_max_seconds + 1):
        r = await b.client.execute(
            FILE, {"id": file["id"], "e": bad}, actor=owner, tenant_id=tenant_id
        )
        assert r.codes == ["BAD_USER_INPUT"]
    url = await download_url(b, owner, tenant_id, file["id"])
    if b.name == "local":
        base, token = url.rsplit("/", 1)
        lapsed = signing.sign(
            b.settings,
            {"p": "get", "t": tenant_id, "f": file["id"]},
            expires_in=5,
            now=time.time() - 10,
        )
        assert (await b.http.get(f"{base}/{lapsed}")).status_code == 404
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        assert (await b.http.get(f"{base}/{flipped}")).status_code == 404
        put_token = signing.sign(
            b.settings, {"p": "put", "t": tenant_id, "f": file["id"]}, expires_in=60
        )
        assert (await b.http.get(f"{base}/{put_token}")).status_code == 404
    else:
        # S3 checks its own signatures and lapse (moto's server does not enforce them); the
        # URL is presigned for the time asked.
        r = await b.client.execute(
            FILE, {"id": file["id"], "e": 120}, actor=owner, tenant_id=tenant_id
        )
        assert "X-Amz-Expires=120" in r.ok()["file"]["downloadUrl"]
    assert (await b.http.get(url)).content == b"short-lived"


async def test_read_only_and_write_only_credentials(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    viewer = await b.client.add_member(owner, tenant_id, "viewer")
    refused = await upload(b, viewer, tenant_id, b"nope")
    assert refused.codes == ["FORBIDDEN"]
    assert await file_count(b, owner, tenant_id) == 0
    writer = await b.client.api_key(owner, tenant_id, ["files:write"])
    r = await upload(b, writer, tenant_id, b"write only")
    assert r.data["uploadFile"]["fileId"].startswith("fil_")
    assert r.codes == ["FORBIDDEN"]  # it may not read the file it wrote
    listed = await b.client.execute(LIST, {}, actor=viewer, tenant_id=tenant_id)
    assert len(listed.ok()["files"]["nodes"]) == 1


async def test_concurrent_reservations_never_exceed_the_quota(b: FilesBackend) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    # Each fits alone; two of them do not.
    size = QUOTA // 2 + 1
    answers = await asyncio.gather(
        *(create_url(b, owner, tenant_id, b"x" * size) for _ in range(4))
    )
    assert sorted(str(r.codes) for r in answers) == sorted(["[]"] + ["['QUOTA_EXCEEDED']"] * 3), [
        r.body for r in answers
    ]


async def test_an_upload_url_never_completed_gives_its_space_and_bytes_back(
    b: FilesBackend,
) -> None:
    owner, tenant_id = await owner_and_tenant(b)
    content = b"x" * MAX_FILE
    created = (await create_url(b, owner, tenant_id, content)).ok()["createUploadUrl"]
    assert (await put(b, created, content)).status_code == 200
    assert len(tenant_objects(b, tenant_id)) == 1
    full = await create_url(b, owner, tenant_id, content)
    assert full.codes == ["QUOTA_EXCEEDED"]
    engine, storage = worker_engine(b.settings), create_storage(b.settings)
    try:
        assert await files_service.purge_expired(engine, storage) == []
        lapsed = datetime.now(UTC) + timedelta(
            seconds=b.settings.files_upload_url_ttl_seconds
            + b.settings.files_orphan_grace_seconds
            + 1
        )
        assert created["file"]["id"] in await files_service.purge_expired(
            engine, storage, now=lapsed
        )
    finally:
        await storage.aclose()
        await engine.dispose()
    assert tenant_objects(b, tenant_id) == []
    late = await b.client.execute(
        COMPLETE, {"id": created["file"]["id"]}, actor=owner, tenant_id=tenant_id
    )
    assert late.codes == ["BAD_USER_INPUT"]
    (await create_url(b, owner, tenant_id, content)).ok()
