"""Quota refusals, kept: a refused operation leaves no trace of its own (its unit of work rolls
back), yet "why was I refused?" is the first question support is asked. Each refusal becomes a
``quota.refused`` event in the refused principal's tenant and environment — at most one per
tenant, environment, meter and minute, so a client hammering a hard limit costs one write a
minute, not one per request.

Written after the answer, off the request's path: a lost write loses a trace, never an answer.
Within a process a minute's repeats are dropped before any write; across processes the event's
idempotency key (``quota.refused:<meter>:<minute>``) lets the first one win.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from coregraph.auth.principal import Principal
from coregraph.errors import QuotaExceeded
from coregraph.models.base import utcnow
from coregraph.request import RequestMeta
from coregraph.services.uow import UnitOfWork
from coregraph.streams.broker import Broker
from coregraph.streams.relay import wake_after_commit

log = logging.getLogger("coregraph.quota_refusals")

REFUSED_EVENT = "quota.refused"


class QuotaRefusals:
    def __init__(self, engine: AsyncEngine, broker: Broker) -> None:
        self.engine = engine
        self.broker = broker
        self._minute: datetime | None = None
        self._seen: set[tuple[str, str, str]] = set()
        self._writes: set[asyncio.Task[None]] = set()

    def note(self, principal: Principal, refusal: QuotaExceeded, meta: RequestMeta) -> None:
        """Keep ``refusal`` of ``principal``'s operation, unless this minute already has."""
        tenant_id = principal.tenant_id
        meter = refusal.extensions.get("meter")
        if tenant_id is None or not isinstance(meter, str) or principal.read_only:
            return
        minute = utcnow().replace(second=0, microsecond=0)
        if minute != self._minute:
            self._minute, self._seen = minute, set()
        key = (tenant_id, principal.environment.value, meter)
        if key in self._seen:
            return
        self._seen.add(key)
        task = asyncio.get_running_loop().create_task(
            self._write(principal, tenant_id, meter, minute, refusal, meta)
        )
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(
        self,
        principal: Principal,
        tenant_id: str,
        meter: str,
        minute: datetime,
        refusal: QuotaExceeded,
        meta: RequestMeta,
    ) -> None:
        extensions = refusal.extensions
        data = {
            "meter": meter,
            "limit": extensions.get("limit"),
            "current": extensions.get("current"),
            "period": extensions.get("period"),
            "minute": minute.isoformat(),
        }
        try:
            async with UnitOfWork(self.engine, principal, meta) as uow:
                uow.emit(
                    REFUSED_EVENT,
                    tenant_id=tenant_id,
                    data=data,
                    idempotency_key=f"{REFUSED_EVENT}:{meter}:{minute:%Y-%m-%dT%H:%M}",
                )
                uow.on_commit(lambda: wake_after_commit(self.broker, uow))
        except IntegrityError:
            pass  # another process kept this minute's refusal first
        except Exception:
            log.warning("a quota refusal could not be kept", exc_info=True)

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
