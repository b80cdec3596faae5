"""Signed, short-lived URLs for a file's bytes: the backend's own presigned URLs (S3), or
coregraph's (local disk), served by ``coregraph.files_http``.

coregraph's URL carries a token signed with ``coregraph.storage.signing`` that names what it is
for (``get`` or ``put``), the file and the file's tenant, and when it lapses. The routes check
the signature and the lapse, then load the file in that tenant only: a token names one file of
one tenant and can be bent to no other. A download URL is a bearer capability for one file for
a few minutes, as S3's presigned URLs are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coregraph import ids
from coregraph.request import RequestMeta
from coregraph.settings import Settings
from coregraph.storage import Storage, signing

DEFAULT_DOWNLOAD_SECONDS = 300
GET = "get"
PUT = "put"


@dataclass(frozen=True, slots=True)
class FileGrant:
    """What a verified token allows: ``purpose`` on ``file_id`` of ``tenant_id`` (an upload:
    of exactly ``size`` bytes)."""

    purpose: str
    tenant_id: str
    file_id: str
    size: int | None = None


def _base_url(settings: Settings, meta: RequestMeta) -> str:
    return (settings.public_url or meta.base_url or "").rstrip("/")


def _token(
    settings: Settings, purpose: str, tenant_id: str, file_id: str, seconds: int, **more: Any
) -> str:
    claims = {"p": purpose, "t": tenant_id, "f": file_id, **more}
    return signing.sign(settings, claims, expires_in=seconds)


def read_token(settings: Settings, token: str, purpose: str) -> FileGrant | None:
    """The grant a token carries for ``purpose``, or None (tampered, lapsed, another purpose
    or not ours)."""
    claims = signing.verify(settings, token)
    if claims is None or claims.get("p") != purpose:
        return None
    tenant_id, file_id = claims.get("t"), claims.get("f")
    if not isinstance(tenant_id, str) or not ids.is_valid(tenant_id, "ten"):
        return None
    if not isinstance(file_id, str) or not ids.is_valid(file_id, "fil"):
        return None
    size = claims.get("s")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return None
    return FileGrant(purpose, tenant_id, file_id, size)


def download_url(
    storage: Storage,
    settings: Settings,
    meta: RequestMeta,
    *,
    tenant_id: str,
    file_id: str,
    key: str,
    filename: str,
    content_type: str,
    expires_in: int,
) -> str:
    presigned = storage.presigned_get(
        key, expires_in=expires_in, filename=filename, content_type=content_type
    )
    if presigned is not None:
        return presigned
    token = _token(settings, GET, tenant_id, file_id, expires_in)
    return f"{_base_url(settings, meta)}/files/download/{token}"


def upload_url(
    storage: Storage,
    settings: Settings,
    meta: RequestMeta,
    *,
    tenant_id: str,
    file_id: str,
    key: str,
    size: int,
    content_type: str,
    expires_in: int,
) -> str:
    presigned = storage.presigned_put(
        key, size=size, content_type=content_type, expires_in=expires_in
    )
    if presigned is not None:
        return presigned
    token = _token(settings, PUT, tenant_id, file_id, expires_in, s=size)
    return f"{_base_url(settings, meta)}/files/upload/{token}"
