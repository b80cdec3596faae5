"""``GET /audit/export``: a tenant's audit trail as a file, streamed.

Authenticated like ``/graphql`` (``Authorization``, ``X-Tenant-Id``, ``X-Environment``); the
principal needs ``audit:read`` in the addressed tenant. Entries come in chain order (position),
optionally those created in ``[from, to)``, as JSON Lines (``format=jsonl``, the default) or CSV
(``format=csv``). Bulk reads are served as streamed HTTP rather than GraphQL lists (DESIGN.md,
cost model): rows are read in keyset batches and written as they come, so memory stays
constant for any size of trail.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from coregraph import rest
from coregraph.errors import BadUserInput, CoregraphError
from coregraph.services.audit import HASHED, HASHED_WHEN_SET, export_entries

if TYPE_CHECKING:
    from coregraph.app import Runtime

# Every column of an entry: what the hash covers, and the chain links.
COLUMNS = (*HASHED, *HASHED_WHEN_SET, "previous_hash", "hash")
_MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
# Rows are sent in chunks of about this size: one ASGI message per row would cost more than
# the row itself.
_CHUNK_BYTES = 64 * 1024


def _time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise BadUserInput(
            f"{name}: an ISO-8601 time with its offset, e.g. 2026-12-02T08:00:00Z", field=name
        )
    return value


def _values(row: Any) -> dict[str, Any]:
    values = {name: getattr(row, name) for name in COLUMNS}
    values["created_at"] = row.created_at.isoformat(timespec="microseconds")
    return values


async def _jsonl(rows: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    chunk = bytearray()
    async for row in rows:
        chunk += orjson.dumps(_values(row)) + b"\n"
        if len(chunk) >= _CHUNK_BYTES:
            yield bytes(chunk)
            chunk.clear()
    yield bytes(chunk)


async def _csv(rows: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    async for row in rows:
        values = _values(row)
        values["changes"] = orjson.dumps(values["changes"]).decode()
        writer.writerow(["" if values[name] is None else values[name] for name in COLUMNS])
        if buffer.tell() >= _CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


async def audit_export(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        tenant_id = (
            await rest.caller(request, runtime, what="the audit export", scope="audit:read")
        ).tenant_id
        created_from, created_to = _time(request, "from"), _time(request, "to")
        if created_from and created_to and created_to < created_from:
            raise BadUserInput("to: must not be before from", field="to")
        form = request.query_params.get("format") or "jsonl"
        if form not in _MEDIA_TYPES:
            raise BadUserInput("format: jsonl or csv", field="format")
    except rest.Refused as refused:
        return refused.response
    except CoregraphError as exc:
        return rest.error_response(request, exc)
    rows = export_entries(
        runtime.engine, tenant_id, created_from=created_from, created_to=created_to
    )
    body = _csv(rows) if form == "csv" else _jsonl(rows)
    filename = f"audit-{tenant_id}.{form}"
    return StreamingResponse(
        body,
        media_type=_MEDIA_TYPES[form],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
