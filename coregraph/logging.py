"""Structured JSON logs through structlog: one object per line, never a secret.

Every ``logging.getLogger(...)`` call keeps working: the root handler formats stdlib records
with structlog's ``ProcessorFormatter``, and ``structlog.get_logger()`` loggers go through the
same chain. Each line carries the context bound for the request or socket operation it belongs
to (``structlog.contextvars``: ``request_id``, ``principal``, ``tenant_id``, ``operation``,
bound by ``coregraph.app.RequestLog``, ``coregraph.http`` and ``coregraph.ws``) and, while a
span records, its ``trace_id`` (``coregraph.telemetry``). Fields given to the line itself
(``extra=``) win over bound ones.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from coregraph import telemetry


def _add_trace_id(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if "trace_id" not in event:
        trace_id = telemetry.current_trace_id()  # None, one global read, when not tracing
        if trace_id is not None:
            event["trace_id"] = trace_id
    return event


def _drop_uvicorn_colors(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)
    return event


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


# What every line goes through before it is rendered, stdlib record or structlog call alike.
_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    _add_trace_id,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
]


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """The formatter of every handler: ``time``, ``level``, ``logger``, ``message``, the bound
    context, the record's extra fields, and ``exception`` with the stack when there is one."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), _drop_uvicorn_colors],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
    )


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel("WARNING")
    # uvicorn's own access log would be a second, unstructured line per request.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
