"""``POST /usage/bulk``: usage records as JSON Lines, for high-volume producers.

Authenticated like ``/graphql`` and ``/audit/export`` (``Authorization``, ``X-Tenant-Id``,
``X-Environment``); the principal needs ``usage:write`` in the addressed tenant. Each line is
one record, the fields of ``RecordUsageInput``: ``{"meter": "ai.tokens", "quantity": "12.5",
"occurredAt": "2026-12-02T08:00:00Z", "dimensions": {"model": "m1"}, "idempotencyKey": "…"}``
(quantity best sent as a string: a JSON number is read through a float). At most
``MAX_LINES`` lines and ``MAX_BYTES`` bytes, recorded exactly as ``recordUsageBatch`` records
them: one transaction, all or nothing (a bad line is ``BAD_USER_INPUT`` with its 0-based
``extensions.index``), one ``usage.recorded`` event, used keys answered, not counted again.
The answer is ``{"recorded": n, "replayed": m}``. It skips GraphQL's parsing, validation and
per-field execution, which is most of a large batch's cost (DESIGN.md, cost model).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from coregraph import rest
from coregraph.errors import BadUserInput, CoregraphError
from coregraph.services import usage
from coregraph.services.uow import UnitOfWork
from coregraph.streams.relay import wake_after_commit

if TYPE_CHECKING:
    from coregraph.app import Runtime

MAX_LINES = 10_000
MAX_BYTES = 8 * 1024 * 1024
_FIELDS = frozenset({"meter", "quantity", "occurredAt", "dimensions", "idempotencyKey"})


def _line_error(index: int, message: str, field: str | None = None) -> BadUserInput:
    return BadUserInput(f"line {index + 1}: {message}", field=field, index=index)


def _draft(index: int, line: bytes) -> usage.UsageDraft:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise _line_error(index, "not a JSON object") from None
    if not isinstance(item, dict):
        raise _line_error(index, "not a JSON object")
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise _line_error(index, f"unknown field '{str(unknown[0])[:70]}'", unknown[0])
    meter = item.get("meter")
    if not isinstance(meter, str):
        raise _line_error(index, "meter: a meter's key", "meter")
    raw_quantity = item.get("quantity", 1)
    try:
        if not isinstance(raw_quantity, str | int | float) or isinstance(raw_quantity, bool):
            raise InvalidOperation
        quantity = Decimal(str(raw_quantity))
    except InvalidOperation:
        raise _line_error(index, "quantity: a decimal number", "quantity") from None
    occurred_at: datetime | None = None
    raw_time = item.get("occurredAt")
    if raw_time is not None:
        try:
            occurred_at = datetime.fromisoformat(raw_time) if isinstance(raw_time, str) else None
        except ValueError:
            occurred_at = None
        if occurred_at is None:
            raise _line_error(index, "occurredAt: an ISO-8601 time with its offset", "occurredAt")
    key = item.get("idempotencyKey")
    if key is not None and not isinstance(key, str):
        raise _line_error(index, "idempotencyKey: a string", "idempotencyKey")
    return usage.UsageDraft(
        meter=meter,
        quantity=quantity,
        occurred_at=occurred_at,
        dimensions=item.get("dimensions"),
        idempotency_key=key,
    )


async def _body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BYTES:
            raise BadUserInput(f"body: at most {MAX_BYTES // (1024 * 1024)} MiB", field="body")
    return bytes(body)


def _drafts(body: bytes) -> list[usage.UsageDraft]:
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise BadUserInput("body: no records (one JSON object per line)", field="body")
    if len(lines) > MAX_LINES:
        raise BadUserInput(f"body: at most {MAX_LINES} lines", field="body")
    return [_draft(index, line) for index, line in enumerate(lines)]


async def usage_bulk(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    try:
        who = await rest.caller(request, runtime, what="usage ingest", scope="usage:write")
        principal, tenant_id, meta = who.principal, who.tenant_id, who.meta
        drafts = _drafts(await _body(request))

        def unit_of_work() -> UnitOfWork:
            uow = UnitOfWork(runtime.engine, principal, meta)
            uow.on_commit(partial(wake_after_commit, runtime.broker, uow))
            return uow

        window = usage.LateWindow(
            late=timedelta(seconds=runtime.settings.usage_late_window_seconds),
            skew=timedelta(seconds=runtime.settings.usage_future_skew_seconds),
        )
        recorded = await usage.record_usage_once(
            unit_of_work,
            tenant_id,
            drafts,
            window=window,
            default_plan=runtime.settings.default_plan,
        )
    except rest.Refused as refused:
        return refused.response
    except CoregraphError as exc:
        return rest.error_response(request, exc)
    replayed = sum(r.replayed for r in recorded)
    answer: dict[str, Any] = {"recorded": len(recorded) - replayed, "replayed": replayed}
    return Response(orjson.dumps(answer), media_type="application/json")
