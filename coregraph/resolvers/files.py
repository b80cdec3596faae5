"""file, files, uploadFile, createUploadUrl, completeUpload and deleteFile."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.federation import field
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON

from coregraph import models
from coregraph.context import Context
from coregraph.errors import BadUserInput
from coregraph.schema.approvals import MutationPayload
from coregraph.schema.files import File, FileFilter, files_of
from coregraph.schema.pagination import Connection, paginate
from coregraph.schema.readable import readable
from coregraph.services import file_urls, files, validation
from coregraph.uploads import UploadedFile

Info = strawberry.Info[Context, None]


@strawberry.input
class CreateUploadUrlInput:
    filename: str
    content_type: str | None = strawberry.field(
        default=None, description="What the client believes; the stored type is sniffed."
    )
    size: int = strawberry.field(description="Exactly the bytes that will be PUT.")
    sha256: str | None = strawberry.field(
        default=None, description="Hex SHA-256 of the bytes; completeUpload checks it."
    )
    labels: JSON | None = None


@strawberry.type
class FilePayload(MutationPayload):
    file: File | None
    file_id: strawberry.ID | None = strawberry.field(
        description="The file's id, also for a key that may write files but not read them."
    )

    @classmethod
    def of(cls, row: models.File) -> FilePayload:
        return cls(file=File.from_row(row), file_id=strawberry.ID(row.id))


@strawberry.type
class CreateUploadUrlPayload(MutationPayload):
    file: File | None
    upload_url: str | None = strawberry.field(
        description="PUT the bytes here (once) before expiresAt, then call completeUpload."
    )
    expires_at: datetime | None
    upload_headers: JSON | None = strawberry.field(
        description="Headers the PUT must carry (a presigned S3 URL signs its Content-Type)."
    )


@strawberry.type
class FilesQuery:
    @field(requires_scopes=[["files:read"]], description="A file of this tenant, by id.")
    async def file(self, info: Info, id: strawberry.ID) -> File | None:
        ctx = info.context
        file_id = validation.object_id(str(id), "fil", "id")
        # Deleted files too: their history stays readable (downloadUrl refuses them).
        statement = readable(ctx.principal, models.File, tenant_id=ctx.require_tenant()).where(
            models.File.environment == ctx.principal.environment.value,
            models.File.id == file_id,
        )
        rows = await ctx.read(statement)
        if not rows:
            raise validation.not_found("file", "id")
        return File.from_row(rows[0])

    @field(
        requires_scopes=[["files:read"]],
        description="This tenant's files in the request's environment, newest first.",
    )
    async def files(
        self,
        info: Info,
        filter: FileFilter | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> Connection[File] | None:
        ctx = info.context
        statement = files_of(ctx.principal, ctx.require_tenant(), filter)
        return await paginate(
            ctx, statement, models.File.id, first, after, File.from_row, newest_first=True
        )


@strawberry.type
class FilesMutation:
    @field(
        requires_scopes=[["files:write"]],
        description="Upload a small file with the GraphQL multipart request specification"
        " (send a non-empty Apollo-Require-Preflight header). Large files: createUploadUrl.",
    )
    async def upload_file(
        self, info: Info, file: Upload, labels: JSON | None = None
    ) -> FilePayload | None:
        ctx = info.context
        if not isinstance(file, UploadedFile):
            raise BadUserInput("file: send the file as a part of a multipart request", field="file")
        row = await files.upload_file(
            ctx.unit_of_work,
            ctx.runtime.storage,
            ctx.settings,
            ctx.require_tenant(),
            filename=file.filename,
            declared_content_type=file.content_type,
            chunks=file.chunks(),
            size=file.size,
            labels=labels,
        )
        return FilePayload.of(row)

    @field(
        requires_scopes=[["files:write"]],
        description="Reserve a file and get a short-lived URL to PUT its bytes to (once).",
    )
    async def create_upload_url(
        self, info: Info, input: CreateUploadUrlInput
    ) -> CreateUploadUrlPayload | None:
        ctx = info.context
        tenant_id = ctx.require_tenant()
        async with ctx.unit_of_work() as uow:
            row = await files.create_upload(
                uow,
                ctx.settings,
                tenant_id,
                filename=input.filename,
                content_type=input.content_type,
                size=input.size,
                sha256=input.sha256,
                labels=input.labels,
            )
        assert row.upload_expires_at is not None
        content_type = row.declared_content_type or files.OCTET_STREAM
        url = file_urls.upload_url(
            ctx.runtime.storage,
            ctx.settings,
            ctx.meta,
            tenant_id=tenant_id,
            file_id=row.id,
            key=files.upload_key(row),
            size=row.size,
            content_type=content_type,
            expires_in=ctx.settings.files_upload_url_ttl_seconds,
        )
        return CreateUploadUrlPayload(
            file=File.from_row(row),
            upload_url=url,
            expires_at=row.upload_expires_at,
            upload_headers=JSON({"Content-Type": content_type}),
        )

    @field(
        requires_scopes=[["files:write"]],
        description="Check the bytes PUT to the upload URL (size, SHA-256) and make the file"
        " READY. Bytes that do not match are discarded with the reservation.",
    )
    async def complete_upload(self, info: Info, id: strawberry.ID) -> FilePayload | None:
        ctx = info.context
        row = await files.complete_upload(
            ctx.unit_of_work, ctx.runtime.storage, ctx.require_tenant(), str(id)
        )
        return FilePayload.of(row)

    @field(
        requires_scopes=[["files:write"]],
        description="Delete a file: its bytes are kept for COREGRAPH_FILES_RETENTION_SECONDS,"
        " or removed at once with purge: true.",
    )
    async def delete_file(
        self, info: Info, id: strawberry.ID, purge: bool = False
    ) -> FilePayload | None:
        ctx = info.context
        row = await files.delete_file(
            ctx.unit_of_work,
            ctx.runtime.storage,
            ctx.settings,
            ctx.require_tenant(),
            str(id),
            purge=purge,
        )
        return FilePayload.of(row)
