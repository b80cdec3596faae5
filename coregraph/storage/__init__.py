"""Tenant-scoped file storage (DESIGN.md): one interface (``base.py``), one module per backend —
``local.py`` (local disk, the embedded default) and ``s3.py`` (S3-compatible, production) — and
the signed URLs coregraph serves itself for the local backend (``signing.py``).
Files are tenant-owned rows like any other (``models.base.TenantOwned``); the bytes live here,
under keys the files service builds as ``{tenant_id}/{file_id}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coregraph.storage.base import (
    InvalidKey,
    ObjectNotFound,
    ObjectStream,
    ObjectTooLarge,
    Storage,
    StorageError,
    StoredObject,
    attachment_disposition,
    download_content_type,
)
from coregraph.storage.local import LocalStorage

if TYPE_CHECKING:
    from coregraph.settings import Settings

__all__ = [
    "InvalidKey",
    "LocalStorage",
    "ObjectNotFound",
    "ObjectStream",
    "ObjectTooLarge",
    "Storage",
    "StorageError",
    "StoredObject",
    "attachment_disposition",
    "create_storage",
    "download_content_type",
]


def create_storage(settings: Settings) -> Storage:
    """The backend ``COREGRAPH_STORAGE_URL`` names: unset, local disk under ``storage_dir``;
    ``s3://bucket/prefix``, that bucket (``COREGRAPH_S3_*``).
    """
    if not settings.storage_url:
        return LocalStorage(settings.storage_dir)
    # Imported only when used: boto3 and its service models cost the embedded default ~0.3 s
    # of startup and tens of MB.
    from coregraph.storage.s3 import S3Storage

    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    return S3Storage(
        bucket,
        prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )
