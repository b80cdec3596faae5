"""Files: uploads (through GraphQL or a signed URL), deletion, purge and orphan cleanup.

The row (``models.File``) is the truth; the bytes live in ``coregraph.storage`` under
``{tenant_id}/{file_id}``. Bytes are stored before their row commits, so a crash in between
leaves bytes without a row: an *orphan*, invisible to every reader (they all start from the
row) and reclaimed by ``reclaim_orphans`` once older than a grace period (a running upload's
bytes are young). Deleted files keep their bytes until ``purge_after``; ``purge_expired`` then
removes them, and also the bytes of upload URLs that were never completed.

The per-tenant quota counts the bytes of ready files, of the upload URLs handed out
(their declared size is reserved until they complete or lapse) and of deleted files not purged
yet (their bytes are still kept). It is checked, with the tenant's quota lock held, before any
byte is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import puremagic
from sqlalchemy import and_, false, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from coregraph import ids
from coregraph.auth.principal import system_principal
from coregraph.errors import BadUserInput, Conflict, QuotaExceeded
from coregraph.models import File, FileStatus
from coregraph.models.base import utcnow
from coregraph.request import RequestMeta
from coregraph.services import billing, quotas, validation
from coregraph.services.uow import UnitOfWork
from coregraph.settings import Settings
from coregraph.storage.base import (
    OCTET_STREAM,
    ObjectNotFound,
    ObjectTooLarge,
    Storage,
    StoredObject,
)

log = logging.getLogger("coregraph.files")

MAX_NAME_LENGTH = 255
MAX_LABELS = 20
MAX_LABEL_VALUE = 256
SNIFF_BYTES = 4096
QUOTA_METER = "storage.bytes"
_LABEL_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_CONTENT_TYPE_RE = re.compile(
    r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$"
)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_SUFFIX = ".upload"
DELETED_SUFFIX = ".deleted"
# A completeUpload claim older than this is taken to be a call that died: another may take the
# file over (the first, if still running, then finds its claim gone and records nothing).
COMPLETION_CLAIM_SECONDS = 300
PENDING_UPLOADS_METER = "files.pending_uploads"

NewUnitOfWork = Callable[[], UnitOfWork]


# --- input -------------------------------------------------------------------------------


def check_filename(value: str, field: str = "filename") -> str:
    """A file's name, not a path: one segment, printable, at most 255 characters. The name is
    never echoed back (it may be huge or hold bytes a terminal or log would interpret)."""
    if not isinstance(value, str) or not value.strip():
        raise BadUserInput(f"{field}: must not be empty", field=field)
    # Measured as stored: NFC may change the length (and grows a few scripts' names).
    value = unicodedata.normalize("NFC", value)
    if len(value) > MAX_NAME_LENGTH:
        raise BadUserInput(f"{field}: at most {MAX_NAME_LENGTH} characters", field=field)
    # Cc: NUL and every other control character; Cf: invisible formatting (bidi overrides
    # that make "evil\u202egnp.exe" display as "evilexe.png").
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        raise BadUserInput(f"{field}: must not contain control characters", field=field)
    if "/" in value or "\\" in value or value in (".", "..") or value != value.strip():
        raise BadUserInput(
            f"{field}: a file name, not a path (no '/', '\\', '.' or '..', no surrounding spaces)",
            field=field,
        )
    return value


def is_label_key(key: object) -> bool:
    return isinstance(key, str) and _LABEL_KEY_RE.match(key) is not None


def check_labels(value: Any, field: str = "labels") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadUserInput(f"{field}: a JSON object of string values", field=field)
    if len(value) > MAX_LABELS:
        raise BadUserInput(f"{field}: at most {MAX_LABELS} labels", field=field)
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not is_label_key(key):
            raise BadUserInput(
                f"{field}: keys are 1-63 lowercase letters, digits, '_', '.' or '-'", field=field
            )
        if not isinstance(item, str) or len(item) > MAX_LABEL_VALUE:
            raise BadUserInput(
                f"{field}.{key}: a string of at most {MAX_LABEL_VALUE} characters", field=field
            )
        labels[key] = validation.text(
            item, f"{field}.{key}", max_length=MAX_LABEL_VALUE, min_length=0
        )
    return labels


def check_content_type(value: str | None, field: str = "contentType") -> str | None:
    """A client's declared media type, kept for reference only (the stored type is sniffed)."""
    if value is None or value == "":
        return None
    essence = value.split(";", 1)[0].strip().lower()
    if not _CONTENT_TYPE_RE.match(essence):
        raise BadUserInput(f"{field}: a media type such as 'application/pdf'", field=field)
    return essence


def check_sha256(value: str | None, field: str = "sha256") -> str | None:
    if value is None:
        return None
    digest = value.strip().lower()
    if not _SHA256_RE.match(digest):
        raise BadUserInput(f"{field}: 64 hexadecimal characters", field=field)
    return digest


def check_size(value: int, settings: Settings, field: str = "size") -> int:
    if value < 0:
        raise BadUserInput(f"{field}: must not be negative", field=field)
    if value > settings.files_max_file_bytes:
        raise too_large(settings.files_max_file_bytes, field)
    return value


def too_large(max_bytes: int, field: str) -> BadUserInput:
    return BadUserInput(
        f"{field}: larger than the {max_bytes}-byte limit per file",
        field=field,
        reason="PAYLOAD_TOO_LARGE",
        maxBytes=max_bytes,
    )


def sniff(head: bytes) -> str:
    """The media type the bytes say they are (never the client's claim)."""
    if not head:
        return OCTET_STREAM
    try:
        found = puremagic.from_string(head, mime=True)
    except (puremagic.PureError, ValueError):
        found = ""
    if found:
        return str(found)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at the end of the sniffed bytes is still text.
        try:
            head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return OCTET_STREAM
    return "text/plain"


def storage_key(tenant_id: str, file_id: str) -> str:
    return f"{tenant_id}/{file_id}"


def upload_key(row: File) -> str:
    """Where a file's upload URL puts its bytes: never its own key, so once ``completeUpload``
    has moved them there, a URL still valid (an S3 presigned PUT can be used until it lapses)
    can only write beside it, bytes no reader sees and the cleanup reclaims."""
    return row.storage_key + UPLOAD_SUFFIX


def tombstone_key(row: File) -> str:
    """Where a soft-deleted file's bytes wait for their purge: off the file's own key, so a
    URL signed before the delete (an S3 presigned GET is served until it lapses, whatever the
    row says) finds nothing there."""
    return row.storage_key + DELETED_SUFFIX


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """Whose bytes a storage key holds: a file of a tenant, as its own bytes (``suffix`` ""),
    its upload URL's (``UPLOAD_SUFFIX``) or its soft-deleted ones (``DELETED_SUFFIX``)."""

    tenant_id: str
    file_id: str
    suffix: str


def key_owner(key: str) -> KeyOwner | None:
    """Whose bytes ``key`` holds, or None when it is not a file's key."""
    tenant_id, _, name = key.partition("/")
    suffix = next((x for x in (UPLOAD_SUFFIX, DELETED_SUFFIX) if name.endswith(x)), "")
    file_id = name.removesuffix(suffix)
    if ids.is_valid(tenant_id, "ten") and ids.is_valid(file_id, File.__id_prefix__ or ""):
        return KeyOwner(tenant_id, file_id, suffix)
    return None


# --- quota -------------------------------------------------------------------------------


async def lock_quota(uow: UnitOfWork, tenant_id: str) -> None:
    """Hold the tenant's quota until the transaction ends, so two uploads cannot both fit in
    the same free space: the plan's quota lock of storage.bytes."""
    await billing.lock_quota(uow, tenant_id, QUOTA_METER)


async def sqlite_write_lock(uow: UnitOfWork, tenant_id: str) -> None:
    """SQLite has one writer at a time, but Python's driver opens a transaction only at the
    first write, so a read before it runs outside any lock (and ``with_for_update`` is a no-op
    there). A write that changes nothing takes the database's write lock first."""
    await uow.session.execute(
        update(File).where(File.tenant_id == tenant_id, false()).values(status=File.status)
    )


async def used_bytes(session: AsyncSession, tenant_id: str) -> int:
    """Bytes the tenant holds: ready files, upload URLs still reserving their size, and deleted
    files whose bytes are kept until their purge (every row not purged yet)."""
    used = await session.scalar(
        select(func.coalesce(func.sum(File.size), 0)).where(
            File.tenant_id == tenant_id, File.purged_at.is_(None)
        )
    )
    return int(used or 0)


def quota_exceeded(limit: int, current: int, adding: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"the tenant's storage quota of {limit} bytes would be exceeded ({current} used,"
        f" {adding} more asked)",
        meter=QUOTA_METER,
        limit=limit,
        current=current,
    )


async def room_left(uow: UnitOfWork, settings: Settings, tenant_id: str) -> tuple[int, int, int]:
    """(bytes used, bytes still free, the quota) for ``tenant_id``, with its quota lock held.
    The quota: the plan's hard storage.bytes limit when it has one, else the setting."""
    await lock_quota(uow, tenant_id)
    plan = await billing.current_plan(uow.session, tenant_id, settings.default_plan)
    limit = plan.limit(QUOTA_METER)
    quota = int(limit.value) if limit is not None and limit.hard else settings.files_quota_bytes
    used = await used_bytes(uow.session, tenant_id)
    return used, max(quota - used, 0), quota


# --- writes ------------------------------------------------------------------------------


def snapshot(row: File) -> dict[str, Any]:
    return {
        "name": row.name,
        "contentType": row.content_type,
        "size": row.size,
        "sha256": row.sha256,
        "labels": dict(row.labels),
        "status": row.status,
        "environment": str(row.environment),
    }


def _record(
    uow: UnitOfWork,
    action: str,
    row: File,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """The audit entry of a change to ``row``, in its tenant and environment."""
    uow.record(
        action,
        tenant_id=row.tenant_id,
        environment=row.environment,
        target_type="File",
        target_id=row.id,
        before=before,
        after=after,
    )


def _uploaded(uow: UnitOfWork, row: File) -> None:
    _record(uow, "file.uploaded", row, after=snapshot(row))
    uow.emit(
        "file.uploaded",
        tenant_id=row.tenant_id,
        environment=row.environment,
        data={
            "fileId": row.id,
            "name": row.name,
            "contentType": row.content_type,
            "size": row.size,
            "sha256": row.sha256,
            "labels": dict(row.labels),
        },
    )


@dataclass
class _Head:
    """Passes chunks through, keeping the first bytes for sniffing."""

    chunks: AsyncIterable[bytes]
    head: bytearray = field(default_factory=bytearray)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            if len(self.head) < SNIFF_BYTES:
                self.head += chunk[: SNIFF_BYTES - len(self.head)]
            yield chunk


async def upload_file(
    new_uow: NewUnitOfWork,
    storage: Storage,
    settings: Settings,
    tenant_id: str,
    *,
    filename: str,
    declared_content_type: str | None,
    chunks: AsyncIterable[bytes],
    size: int | None,
    labels: Any,
) -> File:
    """Store a whole upload and its row in one unit of work (``uploadFile``).

    ``size``, when known (a spooled multipart part), is checked against the limits before a
    byte is stored; the stream is cut at the limit either way. If the unit of work fails after
    the bytes were stored they are removed; if the process dies instead, they are an orphan for
    ``reclaim_orphans``.
    """
    name = check_filename(filename, "file")
    declared = check_content_type(declared_content_type, "file")
    checked_labels = check_labels(labels)
    if size is not None and size > settings.files_max_file_bytes:
        raise too_large(settings.files_max_file_bytes, "file")
    file_id = ids.new_id("fil")
    key = storage_key(tenant_id, file_id)
    stored = False
    try:
        async with new_uow() as uow:
            used, free, quota = await room_left(uow, settings, tenant_id)
            if size is not None and size > free:
                raise quota_exceeded(quota, used, size)
            sniffed = _Head(chunks)
            limit = min(settings.files_max_file_bytes, free)
            try:
                result = await storage.put(key, sniffed, max_bytes=limit)
            except ObjectTooLarge:
                # put kept nothing.
                if limit < settings.files_max_file_bytes:
                    raise quota_exceeded(quota, used, limit + 1) from None
                raise too_large(settings.files_max_file_bytes, "file") from None
            stored = True
            principal = uow.principal
            row = File(
                id=file_id,
                tenant_id=tenant_id,
                environment=principal.environment,
                name=name,
                content_type=sniff(bytes(sniffed.head)),
                declared_content_type=declared,
                size=result.size,
                sha256=result.sha256,
                labels=checked_labels,
                status=FileStatus.READY.value,
                storage_key=key,
                uploaded_by_kind=principal.kind.value,
                uploaded_by_id=principal.actor_id,
                completed_at=utcnow(),
            )
            uow.session.add(row)
            await uow.session.flush()
            _uploaded(uow, row)
            await quotas.storage_changed(uow, tenant_id, default_plan=settings.default_plan)
    except BaseException:
        if stored:
            await _forget_bytes(storage, key)
        raise
    return row


async def _forget_bytes(storage: Storage, key: str) -> None:
    try:
        await storage.delete(key)
    except Exception:
        # Left for reclaim_orphans: the row never committed, so nobody can see them.
        log.exception("could not remove the bytes of a failed upload", extra={"key": key})


async def create_upload(
    uow: UnitOfWork,
    settings: Settings,
    tenant_id: str,
    *,
    filename: str,
    content_type: str | None,
    size: int,
    sha256: str | None,
    labels: Any,
) -> File:
    """A pending file whose bytes a signed URL will carry (``createUploadUrl``); its declared
    size is reserved against the quota until it completes or its URL lapses."""
    name = check_filename(filename)
    declared = check_content_type(content_type)
    size = check_size(size, settings)
    expected = check_sha256(sha256)
    checked_labels = check_labels(labels)
    used, free, quota = await room_left(uow, settings, tenant_id)
    if size > free:
        raise quota_exceeded(quota, used, size)
    now = utcnow()
    await check_pending_uploads(uow.session, settings, tenant_id, now)
    expires_at = now + timedelta(seconds=settings.files_upload_url_ttl_seconds)
    principal = uow.principal
    file_id = ids.new_id("fil")
    row = File(
        id=file_id,
        tenant_id=tenant_id,
        environment=principal.environment,
        name=name,
        content_type=declared or OCTET_STREAM,
        declared_content_type=declared,
        size=size,
        sha256=None,
        expected_sha256=expected,
        labels=checked_labels,
        status=FileStatus.PENDING.value,
        storage_key=storage_key(tenant_id, file_id),
        uploaded_by_kind=principal.kind.value,
        uploaded_by_id=principal.actor_id,
        upload_expires_at=expires_at,
        # Never completed: its reservation and any bytes go once the URL has lapsed.
        purge_after=expires_at + timedelta(seconds=settings.files_orphan_grace_seconds),
    )
    uow.session.add(row)
    await uow.session.flush()
    _record(
        uow,
        "file.upload_started",
        row,
        after={**snapshot(row), "expectedSha256": expected, "uploadExpiresAt": expires_at},
    )
    await quotas.storage_changed(uow, tenant_id, default_plan=settings.default_plan)
    return row


async def check_pending_uploads(
    session: AsyncSession, settings: Settings, tenant_id: str, now: datetime
) -> None:
    """Refuse another upload URL to a tenant holding ``files_max_pending_uploads`` already
    (neither completed nor lapsed): each holds a row, a reservation and maybe bytes. Run under
    the tenant's quota lock, so concurrent calls cannot both take the last one."""
    limit = settings.files_max_pending_uploads
    pending = int(
        await session.scalar(
            select(func.count()).where(
                File.tenant_id == tenant_id,
                File.status == FileStatus.PENDING.value,
                File.upload_expires_at > now,
                File.purged_at.is_(None),
            )
        )
        or 0
    )
    if pending >= limit:
        raise QuotaExceeded(
            f"the tenant holds {pending} upload URLs not completed yet, the most it may; complete"
            " or delete one, or let one lapse",
            meter=PENDING_UPLOADS_METER,
            limit=limit,
            current=pending,
        )


async def claim_upload(engine: AsyncEngine, tenant_id: str, file_id: str) -> File | None:
    """Mark a pending file's upload URL used, once: the row, or None when the URL was used
    already, has lapsed or names no pending file. Committed before any byte is received, so
    two concurrent PUTs cannot both pass."""
    from coregraph import db

    now = utcnow()
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        await db.scope_transaction(await session.connection(), tenant_ids={tenant_id})
        claimed = await session.execute(
            update(File)
            .where(
                File.id == file_id,
                File.tenant_id == tenant_id,
                File.status == FileStatus.PENDING.value,
                File.upload_used_at.is_(None),
                File.upload_expires_at > now,
            )
            .values(upload_used_at=now)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return await session.get(File, file_id)


async def claim_completion(uow: UnitOfWork, tenant_id: str, file_id: str) -> File:
    """The pending file, claimed for one ``completeUpload`` call: ``completed_at`` is set while
    the file is still pending, in a short transaction holding the row lock (on SQLite, the
    database's write lock). A file already ready answers ``CONFLICT``, and so does one another
    call is completing (unless its claim is older than ``COMPLETION_CLAIM_SECONDS``: a call
    that died is taken over)."""
    if uow.engine.dialect.name != "postgresql":
        await sqlite_write_lock(uow, tenant_id)
    row = await get_file(uow, tenant_id, file_id)
    if row.status == FileStatus.READY.value:
        raise Conflict("id: this file's upload is already complete", field="id")
    if row.status != FileStatus.PENDING.value:
        raise BadUserInput("id: this file's upload is already complete or deleted", field="id")
    now = utcnow()
    if row.purge_after is not None and row.purge_after <= now:
        raise BadUserInput("id: this upload URL has lapsed; ask for a new one", field="id")
    if row.completed_at is not None and row.completed_at > now - timedelta(
        seconds=COMPLETION_CLAIM_SECONDS
    ):
        raise Conflict("id: this file's upload is being completed by another call", field="id")
    row.completed_at = now
    await uow.session.flush()
    return row


async def claimed_file(uow: UnitOfWork, tenant_id: str, file_id: str, claim: datetime) -> File:
    """The file claimed at ``claim``, locked again to record what its bytes showed: refused if
    it was completed, deleted, purged or taken over meanwhile."""
    if uow.engine.dialect.name != "postgresql":
        await sqlite_write_lock(uow, tenant_id)
    row = await get_file(uow, tenant_id, file_id)
    if row.status == FileStatus.READY.value or (
        row.status == FileStatus.PENDING.value and row.completed_at != claim
    ):
        raise Conflict("id: this file's upload was completed by another call", field="id")
    if row.status != FileStatus.PENDING.value or row.purged_at is not None:
        raise BadUserInput("id: this upload was deleted or lapsed meanwhile", field="id")
    return row


async def _release_claim(
    new_uow: NewUnitOfWork, tenant_id: str, file_id: str, claim: datetime
) -> None:
    """Give a claim back (the call failed before recording anything), so a retry need not wait
    for it to age."""
    try:
        async with new_uow() as uow:
            row = await claimed_file(uow, tenant_id, file_id, claim)
            row.completed_at = None
    except Exception:
        log.warning("could not release a completeUpload claim", extra={"file_id": file_id})


async def _uploaded_bytes(storage: Storage, row: File) -> tuple[StoredObject, bytes]:
    """Move what the upload URL received to the file's own key, then its size, SHA-256 and
    first bytes there: what is checked is what stays, whatever a PUT to the URL does next."""
    no_bytes = BadUserInput("id: no bytes were uploaded to this file's URL yet", field="id")
    try:
        await storage.move(upload_key(row), row.storage_key)
    except ObjectNotFound:
        # Moved by an earlier call that did not get to record it: its bytes are where they go.
        if await storage.head(row.storage_key) is None:
            raise no_bytes from None
    try:
        return await storage.digest(row.storage_key), await _head(storage, row.storage_key)
    except ObjectNotFound:
        # Removed meanwhile (a purge of the lapsed upload).
        raise no_bytes from None


async def complete_upload(
    new_uow: NewUnitOfWork, storage: Storage, tenant_id: str, file_id: str
) -> File:
    """Check the bytes an upload URL received against what was declared and make the file
    ready (``completeUpload``). Bytes that do not match are removed with the pending row, and
    the call refused: nothing half-recorded stays behind.

    Three steps, so no transaction (nor, on SQLite, the database's write lock) waits on the
    storage: claim the file (a short transaction), move and digest its bytes (no transaction:
    on S3 a copy and a read as long as the object), then lock the row again and record the
    outcome if the claim still holds. A call failing in between gives its claim back; one
    that dies leaves the file pending, claimed until the claim ages, and purged if it lapses."""
    validation.object_id(file_id, "fil", "id")
    async with new_uow() as uow:
        claimed = await claim_completion(uow, tenant_id, file_id)
    claim = claimed.completed_at
    assert claim is not None
    try:
        stored, head = await _uploaded_bytes(storage, claimed)
    except BaseException:
        await asyncio.shield(_release_claim(new_uow, tenant_id, file_id, claim))
        raise
    async with new_uow() as uow:
        row = await claimed_file(uow, tenant_id, file_id, claim)
        problem = None
        if stored.size != row.size:
            problem = f"{stored.size} bytes were uploaded, {row.size} were declared"
        elif row.expected_sha256 is not None and stored.sha256 != row.expected_sha256:
            problem = "the uploaded bytes do not match the declared SHA-256"
        if problem is None:
            row.sha256 = stored.sha256
            row.content_type = sniff(head)
            row.status = FileStatus.READY.value
            row.completed_at = utcnow()
            row.purge_after = None
            await uow.session.flush()
            _uploaded(uow, row)
            return row
        _record(uow, "file.upload_rejected", row, before=snapshot(row), after={"reason": problem})
        await uow.session.delete(row)
        await quotas.storage_changed(uow, tenant_id, thresholds=False)
    # Committed: the pending row is gone, so are its bytes; then the caller hears why.
    await storage.delete(row.storage_key)
    raise BadUserInput(f"id: {problem}; the upload was discarded", field="id")


async def _head(storage: Storage, key: str) -> bytes:
    stream = await storage.read(key, chunk_size=SNIFF_BYTES)
    head = bytearray()
    try:
        async for chunk in stream:
            head += chunk
            if len(head) >= SNIFF_BYTES:
                break
    finally:
        await stream.aclose()
    return bytes(head[:SNIFF_BYTES])


async def get_file(uow: UnitOfWork, tenant_id: str, file_id: str, field: str = "id") -> File:
    validation.object_id(file_id, "fil", field)
    row = await uow.session.scalar(
        select(File)
        .where(
            File.tenant_id == tenant_id,
            File.environment == uow.principal.environment.value,
            File.id == file_id,
        )
        .with_for_update()
    )
    if row is None:
        raise validation.not_found("file", field)
    return row


async def delete_file(
    new_uow: NewUnitOfWork,
    storage: Storage,
    settings: Settings,
    tenant_id: str,
    file_id: str,
    *,
    purge: bool,
) -> File:
    """Soft-delete a file (its bytes stay for ``files_retention_seconds``), or with ``purge``
    remove its bytes at once, after the deletion commits. Purging an already deleted file
    removes its bytes now."""
    async with new_uow() as uow:
        row = await get_file(uow, tenant_id, file_id)
        was_ready = row.status == FileStatus.READY.value
        if row.status == FileStatus.DELETED.value:
            if not purge or row.purged_at is not None:
                raise validation.not_found("file", "id")
            row.purge_after = utcnow()
        else:
            before = snapshot(row)
            now = utcnow()
            row.status = FileStatus.DELETED.value
            row.deleted_at = now
            row.purge_after = now + timedelta(
                seconds=0 if purge else settings.files_retention_seconds
            )
            _record(
                uow,
                "file.deleted",
                row,
                before=before,
                after={**snapshot(row), "purgeAfter": row.purge_after},
            )
            uow.emit(
                "file.deleted",
                tenant_id=tenant_id,
                environment=row.environment,
                data={"fileId": row.id, "name": row.name, "purged": purge},
            )
    if purge:
        await purge_file(new_uow, storage, row)
    elif was_ready:
        await hide_bytes(storage, row)
    return row


async def hide_bytes(storage: Storage, row: File) -> None:
    """Move a soft-deleted file's bytes to its tombstone key, where they wait for the purge:
    download URLs signed before the delete then find nothing. After the deletion commits (a
    move is a server-side copy on S3, as long as the object, and no transaction waits on it); if
    the move fails or the process dies first, ``reclaim_orphans`` moves them on its next pass
    and the purge removes every key anyway."""
    try:
        await storage.move(row.storage_key, tombstone_key(row))
    except ObjectNotFound:
        pass  # purged or moved meanwhile
    except Exception:
        log.exception("could not move a deleted file's bytes aside", extra={"file_id": row.id})


async def purge_file(
    new_uow: NewUnitOfWork, storage: Storage, row: File, *, now: datetime | None = None
) -> bool:
    """Remove a file's bytes, then record it; False when the row, locked and read again, is no
    longer due (completed, purged or given a later ``purge_after`` since ``row`` was read).
    The bytes go first, with the row locked, so a ``completeUpload`` cannot make the file ready
    meanwhile; a failure after that leaves a row that says "not purged yet" and the next
    cleanup deletes nothing twice."""
    now = now or utcnow()
    async with new_uow() as uow:
        await uow.allow_tenant(row.tenant_id)
        if uow.engine.dialect.name != "postgresql":
            await sqlite_write_lock(uow, row.tenant_id)
        current = await uow.session.scalar(
            select(File).where(File.id == row.id, File.tenant_id == row.tenant_id).with_for_update()
        )
        if (
            current is None
            or current.purged_at is not None
            or current.purge_after is None
            or current.purge_after > now
        ):
            return False
        was_pending = current.status == FileStatus.PENDING.value
        # Every key, whatever the status says: a pending file deleted before its purge has its
        # bytes at the upload key, a soft-deleted one at its tombstone (or still at its own
        # key, if the process died before moving them), and deleting a missing key is harmless.
        await storage.delete(current.storage_key)
        await storage.delete(upload_key(current))
        await storage.delete(tombstone_key(current))
        now = utcnow()
        current.purged_at = now
        current.status = FileStatus.DELETED.value
        await uow.session.flush()
        _record(
            uow,
            "file.purged",
            row,
            after={"purgedAt": now, "wasPending": was_pending},
        )
        await quotas.storage_changed(uow, row.tenant_id, thresholds=False)
    row.purged_at = now
    return True


# --- cleanup (``coregraph files-cleanup``) -------------------------------------------------


CLEANUP_ACTOR = "cli:files-cleanup"


def cleanup_uow(engine: AsyncEngine, actor: str = CLEANUP_ACTOR) -> NewUnitOfWork:
    meta = RequestMeta(user_agent="coregraph files cleanup")
    return lambda: UnitOfWork(engine, system_principal(actor), meta)


async def purge_expired(
    engine: AsyncEngine, storage: Storage, *, now: datetime | None = None, batch: int = 500
) -> list[str]:
    """Remove the bytes of every file past its ``purge_after`` (deleted files past retention,
    upload URLs never completed); the ids of the files purged. Reads every tenant: on
    PostgreSQL ``engine`` is the worker role's (migration 0012)."""
    now = now or utcnow()
    new_uow = cleanup_uow(engine)
    purged: list[str] = []
    after: tuple[datetime, str] | None = None
    while True:
        # One sweep in (purge_after, id) order, each batch after the last row seen: a file
        # whose purge fails is not selected again (it is tried again next pass).
        query = select(File).where(File.purge_after <= now, File.purged_at.is_(None))
        if after is not None:
            query = query.where(
                or_(
                    File.purge_after > after[0],
                    and_(File.purge_after == after[0], File.id > after[1]),
                )
            )
        async with AsyncSession(engine, expire_on_commit=False) as session:
            due = list(
                await session.scalars(query.order_by(File.purge_after, File.id).limit(batch))
            )
        for row in due:
            try:
                if await purge_file(new_uow, storage, row, now=now):
                    purged.append(row.id)
            except Exception:
                # One file's failure must not keep the others' bytes; it is tried again next run.
                log.exception("purging a file failed", extra={"file_id": row.id})
        if len(due) < batch:
            return purged
        last = due[-1]
        assert last.purge_after is not None
        after = (last.purge_after, last.id)


async def reclaim_orphans(
    engine: AsyncEngine,
    storage: Storage,
    *,
    grace_seconds: float,
    now: datetime | None = None,
    batch: int = 500,
) -> list[str]:
    """Delete stored objects that no committed row accounts for (a crash between storing the
    bytes and committing the row), the bytes of purged files, and what an upload URL received
    once its file was no longer pending (a presigned PUT used again after ``completeUpload``),
    once older than ``grace_seconds`` (an upload still running has young bytes); the keys
    deleted. Objects whose key is not a file's are left alone. A deleted file's bytes still at
    its own key (its delete did not get to move them) are moved to its tombstone key.

    Only keys of tenants whose file rows this engine shows are judged: rows that read back
    empty (the wrong database, a role or scope that sees no row) leave every object alone
    instead of making all of them look orphaned. The price: the orphan of a tenant that never
    committed a file row waits for its first one."""
    cutoff = (now or utcnow()) - timedelta(seconds=grace_seconds)
    reclaimed: list[str] = []
    candidates: dict[str, KeyOwner] = {}

    async def sweep() -> None:
        tenants = {owner.tenant_id for owner in candidates.values()}
        wanted = {owner.file_id for owner in candidates.values()}
        async with AsyncSession(engine) as session:
            # Tenants the engine shows any file row of, purged ones included (rows are never
            # removed): keys of the others are not judged.
            shown = set(
                await session.scalars(
                    select(File.tenant_id).where(File.tenant_id.in_(tenants)).distinct()
                )
            )
            rows = await session.execute(
                select(File.tenant_id, File.id, File.status).where(
                    File.tenant_id.in_(shown), File.id.in_(wanted), File.purged_at.is_(None)
                )
            )
            statuses = {(tenant_id, file_id): status for tenant_id, file_id, status in rows}
        unseen = len(tenants - shown)
        if unseen:
            log.warning(
                "objects of tenants with no visible file row were left alone",
                extra={"tenants": unseen},
            )
        for key, owner in candidates.items():
            if owner.tenant_id not in shown:
                continue
            status = statuses.get((owner.tenant_id, owner.file_id))
            if status is None or (
                owner.suffix == UPLOAD_SUFFIX and status != FileStatus.PENDING.value
            ):
                await storage.delete(key)
                reclaimed.append(key)
            elif owner.suffix == "" and status == FileStatus.DELETED.value:
                with contextlib.suppress(ObjectNotFound):  # moved or purged meanwhile
                    await storage.move(key, key + DELETED_SUFFIX)
        candidates.clear()

    async for key, _size, modified in storage.keys(""):
        owner = key_owner(key)
        if owner is None or modified > cutoff:
            continue
        candidates[key] = owner
        if len(candidates) >= batch:
            await sweep()
    if candidates:
        await sweep()
    return reclaimed


@dataclass(frozen=True, slots=True)
class Cleanup:
    purged: list[str]  # file ids whose bytes were removed
    orphans: list[str]  # keys of bytes no file accounted for
    incomplete: int  # uploads a killed process left half-written


async def cleanup(engine: AsyncEngine, storage: Storage, *, grace_seconds: float) -> Cleanup:
    """One pass of ``coregraph files-cleanup``: purge what is due, reclaim orphans, and discard
    what puts killed mid-way left, older than ``grace_seconds``."""
    purged = await purge_expired(engine, storage)
    orphans = await reclaim_orphans(engine, storage, grace_seconds=grace_seconds)
    incomplete = await storage.discard_incomplete(utcnow() - timedelta(seconds=grace_seconds))
    return Cleanup(purged, orphans, incomplete)


async def clean_periodically(engine: AsyncEngine, settings: Settings) -> None:
    """``cleanup`` now and then every ``files_cleanup_interval_seconds``, until cancelled (the
    worker's, and serve's where it runs the relay). Safe beside other workers and the CLI: a
    file's bytes are deleted before its row says purged, and deleting twice is harmless."""
    from coregraph.storage import create_storage

    storage = create_storage(settings)
    try:
        while True:
            try:
                done = await cleanup(
                    engine, storage, grace_seconds=settings.files_orphan_grace_seconds
                )
                if done.purged or done.orphans or done.incomplete:
                    log.info(
                        "files cleaned up",
                        extra={
                            "purged": len(done.purged),
                            "orphans": len(done.orphans),
                            "incomplete": done.incomplete,
                        },
                    )
            except Exception:
                # The database or the bucket is away: try again next interval.
                log.exception("files cleanup failed; retrying")
            await asyncio.sleep(settings.files_cleanup_interval_seconds)
    finally:
        await storage.aclose()
