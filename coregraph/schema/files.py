"""GraphQL types of the files domain: a file, its status, and the list's filter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from sqlalchemy import Select
from strawberry.federation import field, type as ftype
from strawberry.scalars import JSON

from coregraph import models
from coregraph.auth.principal import Principal
from coregraph.context import Context
from coregraph.errors import BadUserInput, NotFound
from coregraph.models.base import Environment as EnvironmentValue
from coregraph.models.files import FileStatus as FileStatusValue
from coregraph.schema.access import Environment
from coregraph.schema.lookup import entity
from coregraph.schema.node import Node
from coregraph.schema.readable import readable
from coregraph.services import file_urls, files

FileStatus = strawberry.enum(
    FileStatusValue,
    description="PENDING: an upload URL was handed out, completeUpload not yet called.",
)


@entity(models.File)
@ftype(
    keys=["id"],
    requires_scopes=[["files:read"]],
    description="A file stored under a tenant. Its bytes are reached through downloadUrl.",
)
class File(Node):
    id: strawberry.ID
    name: str
    content_type: str = strawberry.field(
        description="Sniffed from the bytes; the client's claim is never trusted."
    )
    size: int = strawberry.field(description="Bytes (declared, while PENDING).")
    sha256: str | None = strawberry.field(
        description="Hex SHA-256 of the bytes; null while PENDING."
    )
    labels: JSON
    status: FileStatus  # type: ignore[valid-type]
    environment: Environment  # type: ignore[valid-type]
    uploaded_by_kind: str = strawberry.field(description="user, api_key or system.")
    uploaded_by_id: str | None
    created_at: datetime
    completed_at: datetime | None
    deleted_at: datetime | None
    purged_at: datetime | None = strawberry.field(description="When the bytes were removed.")
    tenant_id: strawberry.Private[str]
    storage_key: strawberry.Private[str]

    @field(
        description="A signed URL that downloads the file as an attachment, valid expiresIn"
        " seconds (default 300, at most COREGRAPH_FILES_DOWNLOAD_URL_MAX_SECONDS)."
    )
    def download_url(
        self, info: strawberry.Info[Context, None], expires_in: int | None = None
    ) -> str | None:
        ctx = info.context
        if self.status != FileStatusValue.READY:
            raise NotFound("downloadUrl: the file has no downloadable bytes", field="downloadUrl")
        limit = ctx.settings.files_download_url_max_seconds
        seconds = file_urls.DEFAULT_DOWNLOAD_SECONDS if expires_in is None else expires_in
        if not 1 <= seconds <= limit:
            raise BadUserInput(f"expiresIn: between 1 and {limit} seconds", field="expiresIn")
        return file_urls.download_url(
            ctx.runtime.storage,
            ctx.settings,
            ctx.meta,
            tenant_id=self.tenant_id,
            file_id=str(self.id),
            key=self.storage_key,
            filename=self.name,
            content_type=self.content_type,
            expires_in=seconds,
        )

    @classmethod
    def from_row(cls, row: Any) -> File:
        return cls(
            id=strawberry.ID(row.id),
            name=row.name,
            content_type=row.content_type,
            size=row.size,
            sha256=row.sha256,
            labels=JSON(dict(row.labels)),
            status=FileStatusValue(row.status),
            environment=EnvironmentValue(row.environment),
            uploaded_by_kind=row.uploaded_by_kind,
            uploaded_by_id=row.uploaded_by_id,
            created_at=row.created_at,
            # While pending, completed_at marks a completeUpload in progress: not a completion.
            completed_at=None if row.status == FileStatusValue.PENDING else row.completed_at,
            deleted_at=row.deleted_at,
            purged_at=row.purged_at,
            tenant_id=row.tenant_id,
            storage_key=row.storage_key,
        )


@strawberry.input(description="Files matching every given condition.")
class FileFilter:
    status: list[FileStatus] | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="Default: PENDING and READY (deleted files are left out)."
    )
    name_prefix: str | None = None
    content_type: str | None = strawberry.field(
        default=None, description="An exact type ('image/png') or a family ('image/*')."
    )
    labels: JSON | None = strawberry.field(
        default=None, description="Each given label must be present with this value."
    )
    created_from: datetime | None = None
    created_to: datetime | None = None


MAX_FILTER_LABELS = 10


def _like_prefix(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def files_of(principal: Principal, tenant_id: str, where: FileFilter | None) -> Select[Any]:
    """The tenant's files in the principal's environment, narrowed by ``where``."""
    file = models.File
    statement = readable(principal, file, tenant_id=tenant_id).where(
        file.environment == principal.environment.value
    )
    where = where or FileFilter()
    statuses = where.status or [FileStatusValue.PENDING, FileStatusValue.READY]
    statement = statement.where(file.status.in_([FileStatusValue(s).value for s in statuses]))
    if where.name_prefix is not None:
        if len(where.name_prefix) > 255 or "\x00" in where.name_prefix:
            raise BadUserInput("namePrefix: at most 255 characters, no NUL", field="namePrefix")
        statement = statement.where(file.name.like(_like_prefix(where.name_prefix), escape="\\"))
    if where.content_type is not None:
        wanted = where.content_type.strip().lower()
        if len(wanted) > 255 or "\x00" in wanted:
            raise BadUserInput("contentType: a media type or 'family/*'", field="contentType")
        if wanted.endswith("/*"):
            statement = statement.where(
                file.content_type.like(_like_prefix(wanted[:-1]), escape="\\")
            )
        else:
            statement = statement.where(file.content_type == wanted)
    if where.labels is not None:
        labels = where.labels
        if not isinstance(labels, dict) or len(labels) > MAX_FILTER_LABELS:
            raise BadUserInput(
                f"labels: an object of at most {MAX_FILTER_LABELS} string values", field="labels"
            )
        for key, value in labels.items():
            if not files.is_label_key(key) or not isinstance(value, str) or "\x00" in value:
                raise BadUserInput("labels: label keys with string values", field="labels")
            statement = statement.where(file.labels[key].as_string() == value)
    for moment, name in ((where.created_from, "createdFrom"), (where.created_to, "createdTo")):
        if moment is not None and moment.tzinfo is None:
            raise BadUserInput(f"{name}: must carry a timezone offset", field=name)
    if where.created_from is not None:
        statement = statement.where(file.created_at >= where.created_from)
    if where.created_to is not None:
        statement = statement.where(file.created_at < where.created_to)
    return statement
