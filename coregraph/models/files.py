"""Files: a tenant's stored objects. The row is the truth about a file; the bytes live in
``coregraph.storage`` under ``storage_key``.

A file is ``pending`` from ``createUploadUrl`` until ``completeUpload`` checks the bytes that
were PUT (size, SHA-256, sniffed type), ``ready`` from then (or at once through
``uploadFile``), and ``deleted`` after ``deleteFile``. Deleted files and upload URLs that were
never completed keep their bytes until ``purge_after``; ``purged_at`` says the bytes are gone.
Bytes whose row never committed (a crash between storing and committing) are orphans:
``coregraph files-cleanup`` reclaims them, recognising them by the file id their key carries.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from coregraph.models.base import (
    Base,
    Environment,
    JSONDocument,
    TenantOwned,
    Timestamped,
    UTCDateTime,
    environment_column,
    id_column,
)


class FileStatus(enum.StrEnum):
    PENDING = "pending"  # an upload URL was handed out; no verified bytes yet
    READY = "ready"
    DELETED = "deleted"


class File(TenantOwned, Timestamped, Base):
    __tablename__ = "files"
    __id_prefix__ = "fil"
    __environment_scoped__ = True
    __table_args__ = (
        Index("ix_files_tenant_id_environment_id", "tenant_id", "environment", "id"),
        Index("ix_files_purge_after", "purge_after"),
    )

    id: Mapped[str] = id_column()
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), nullable=False)
    environment: Mapped[Environment] = environment_column()
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    # Sniffed from the bytes; the client's claim is kept beside it, never trusted.
    content_type: Mapped[str] = mapped_column(String(255), nullable=False)
    declared_content_type: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[dict[str, str]] = mapped_column(JSONDocument, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    storage_key: Mapped[str] = mapped_column(String(512), nullable=False)
    uploaded_by_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    uploaded_by_id: Mapped[str | None] = mapped_column(String(64))
    # An upload URL (pending files): the bytes it must carry, until when it may be used, and
    # when it was used (once only).
    expected_sha256: Mapped[str | None] = mapped_column(String(64))
    upload_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    upload_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Ready files: when completed. Pending ones: when a completeUpload call claimed the file
    # (services/files.py: it moves and digests the bytes outside any transaction).
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    purge_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
