"""The one structured ``request`` log line, written per HTTP request and per WebSocket operation
so both transports can be read, counted and alerted on alike. Never give it a credential."""

from __future__ import annotations

import logging
import time
from typing import Literal

from coregraph.metrics import observe_operation

log = logging.getLogger("coregraph.request")

Transport = Literal["http", "websocket"]


def log_request(
    *,
    transport: Transport,
    request_id: str | None,
    principal: str,
    tenant_id: str | None,
    operation: str | None,
    outcome: str,
    started: float,
    operation_type: str | None = None,
    **details: object,
) -> None:
    """``started`` is the ``time.perf_counter()`` reading when the request or operation began;
    ``details`` are the transport's own fields (an HTTP method and status, a socket's id).
    Metrics count the same observation; ``operation_type`` is the type of the operation the
    document named (None when no document was parsed or the name is not in it)."""
    observe_operation(transport, operation, operation_type, outcome, started, details.get("path"))
    log.info(
        "request",
        extra={
            "transport": transport,
            "request_id": request_id,
            "principal": principal,
            "tenant_id": tenant_id,
            "operation": operation,
            "outcome": outcome,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            **details,
        },
    )
