"""S3-compatible object storage (AWS S3, MinIO, Ceph, R2…) through boto3.

boto3 blocks, so its calls run in a thread pool of this backend's own (the event loop never
waits on the network, and a burst of downloads cannot starve the default executor that DNS
lookups and the local backend use). Its calls are few and large: a put sends one request for an
object smaller than a part, else a multipart upload of ``part_size`` parts, so memory stays
bounded by one part whatever the object's size: the part's buffer (BytesIO over-allocates up to
1/8) plus the chunk that filled it, plus botocore's 1 MiB reads of it while signing and sending.
Past ``max_bytes`` (or on any failure) the multipart upload is aborted: no object, no pending
parts billed in the bucket.

Keys live under the URL's prefix (``s3://bucket/prefix`` stores ``ten_1/fil_2`` as
``prefix/ten_1/fil_2``).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from coregraph.storage.base import (
    DEFAULT_CHUNK_SIZE,
    ObjectNotFound,
    ObjectStream,
    ObjectTooLarge,
    Storage,
    StorageError,
    StoredObject,
    attachment_disposition,
    check_key,
    check_prefix,
    chunks_in_threads,
    download_content_type,
)

T = TypeVar("T")

# S3's smallest part but the last; 8 MiB is what the AWS CLI uses.
MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_threads: int = 16,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (S3's minimum)")
        prefix = prefix.strip("/")
        check_prefix(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size
        config = Config(
            signature_version="s3v4",
            max_pool_connections=max_threads,
            retries={"max_attempts": 3, "mode": "standard"},
            # Custom endpoints (MinIO, moto, most S3-compatible servers) serve path-style URLs.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # boto3's default adds CRC checksums many S3-compatible servers refuse, and would
            # put them in presigned URLs a browser cannot compute; we check SHA-256 ourselves.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # None falls back to boto3's own chain (environment, profile, instance role).
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        self._threads = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="s3")

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, lambda: function(*args, **kwargs))

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StoredObject:
        name = self._name(key)
        sha256 = hashlib.sha256()
        size = 0
        part = io.BytesIO()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise ObjectTooLarge(key, max_bytes)
                sha256.update(chunk)
                part.write(chunk)
                if part.tell() >= self.part_size:
                    if upload_id is None:
                        created = await self._call(
                            self._client.create_multipart_upload, Bucket=self.bucket, Key=name
                        )
                        upload_id = created["UploadId"]
                    parts.append(await self._upload_part(name, upload_id, len(parts) + 1, part))
                    # Free the part now: the executor's work item still refers to it until its
                    # thread next holds the GIL, and on a busy machine the next part would
                    # fill meanwhile (two parts in memory, tests/test_storage.py).
                    part.close()
                    part = io.BytesIO()
            if upload_id is None:
                part.seek(0)
                await self._call(
                    self._client.put_object,
                    Bucket=self.bucket,
                    Key=name,
                    Body=part,
                    ContentLength=size,
                )
            else:
                if part.tell() or not parts:
                    parts.append(await self._upload_part(name, upload_id, len(parts) + 1, part))
                await self._call(
                    self._client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
                upload_id = None
        except BaseException as error:
            if upload_id is not None:
                await asyncio.shield(self._abort(name, upload_id))
            if isinstance(error, ClientError):
                raise StorageError(f"storing {key!r} failed: {_code(error)}") from error
            raise
        finally:
            part.close()
        return StoredObject(key=key, size=size, sha256=sha256.hexdigest())

    async def _upload_part(
        self, name: str, upload_id: str, number: int, part: io.BytesIO
    ) -> dict[str, Any]:
        length = part.tell()
        part.seek(0)
        uploaded = await self._call(
            self._client.upload_part,
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
            Body=part,
            ContentLength=length,
        )
        return {"PartNumber": number, "ETag": uploaded["ETag"]}

    async def _abort(self, name: str, upload_id: str) -> None:
        await self._call(
            self._client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
        )

    async def read(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        name = self._name(key)
        try:
            got = await self._call(self._client.get_object, Bucket=self.bucket, Key=name)
        except ClientError as error:
            if _code(error) in _MISSING:
                raise ObjectNotFound(key) from None
            raise StorageError(f"reading {key!r} failed: {_code(error)}") from error
        body = got["Body"]
        chunks = chunks_in_threads(body.read, body.close, chunk_size, self._call)
        return ObjectStream(key, int(got["ContentLength"]), chunks)

    async def head(self, key: str) -> int | None:
        name = self._name(key)
        try:
            found = await self._call(self._client.head_object, Bucket=self.bucket, Key=name)
        except ClientError as error:
            if _code(error) in _MISSING:
                return None
            raise StorageError(f"looking up {key!r} failed: {_code(error)}") from error
        return int(found["ContentLength"])

    async def move(self, source: str, destination: str) -> None:
        # S3 has no rename: a server-side copy (boto3's managed copy: one CopyObject, or
        # UploadPartCopy parts past its threshold, as CopyObject stops at 5 GB), then a delete.
        # The copy reads one version of the source: a PUT to it meanwhile is not mixed in.
        name = self._name(source)
        try:
            await self._call(
                self._client.copy,
                {"Bucket": self.bucket, "Key": name},
                self.bucket,
                self._name(destination),
            )
        except ClientError as error:
            if _code(error) in _MISSING:
                raise ObjectNotFound(source) from None
            raise StorageError(f"moving {source!r} failed: {_code(error)}") from error
        await self.delete(source)

    async def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            await self._call(self._client.delete_object, Bucket=self.bucket, Key=name)
        except ClientError as error:
            if _code(error) not in _MISSING:
                raise StorageError(f"deleting {key!r} failed: {_code(error)}") from error

    async def keys(self, prefix: str = "") -> AsyncIterator[tuple[str, int, datetime]]:
        check_prefix(prefix)
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        iterator = iter(pages)
        while page := await self._call(next, iterator, None):
            for item in page.get("Contents", []):
                modified: datetime = item["LastModified"]
                yield (
                    item["Key"].removeprefix(self.prefix),
                    int(item["Size"]),
                    modified.astimezone(UTC),
                )

    async def discard_incomplete(self, older_than: datetime) -> int:
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        iterator = iter(pages)
        discarded = 0
        while page := await self._call(next, iterator, None):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < older_than:
                    await self._abort(upload["Key"], upload["UploadId"])
                    discarded += 1
        return discarded

    def presigned_put(
        self, key: str, *, size: int, content_type: str, expires_in: int
    ) -> str | None:
        # Content-Type and Content-Length are signed: the client must PUT exactly those.
        url: str = self._presign(
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._name(key),
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=expires_in,
            HttpMethod="PUT",
        )
        return url

    def presigned_get(
        self, key: str, *, expires_in: int, filename: str, content_type: str
    ) -> str | None:
        url: str = self._presign(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._name(key),
                # Both overridden: S3 serves what the object was stored with otherwise, and
                # cannot add nosniff or a CSP as coregraph's own route does.
                "ResponseContentDisposition": attachment_disposition(filename),
                "ResponseContentType": download_content_type(content_type),
            },
            ExpiresIn=expires_in,
        )
        return url

    def _presign(self, method: str, **kwargs: Any) -> str:
        try:
            url: str = self._client.generate_presigned_url(method, **kwargs)
        except BotoCoreError as error:  # no credentials found, most likely
            raise StorageError(f"cannot sign a URL for S3: {error}") from error
        return url

    async def aclose(self) -> None:
        await asyncio.to_thread(self._threads.shutdown, wait=True, cancel_futures=True)
        self._client.close()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "unknown"))
