"""Scalars whose stock parsing costs more than it needs to.

``DateTime``: strawberry parses input with ``dateutil.parser.isoparse``, ~10 µs a value in
pure Python — a ``recordUsageBatch`` of 1,000 records spent a fifth of its server time there
(bench/RESULTS.md). ``datetime.fromisoformat`` (C, Python 3.11+ reads every ISO 8601 form a
client sends: offsets, ``Z``, fractions) parses the same strings to the same values in well
under a microsecond; what it does not read still goes to ``isoparse``, so nothing accepted
before is refused now. Output is unchanged (``isoformat``)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import dateutil.parser
from strawberry.schema.types.base_scalars import DateTimeDefinition, wrap_parser
from strawberry.types.scalar import ScalarDefinition, ScalarWrapper


def parse_datetime(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return dateutil.parser.isoparse(value)


DATETIME = dataclasses.replace(
    DateTimeDefinition, parse_value=wrap_parser(parse_datetime, "DateTime")
)
# For the schema's ``scalar_overrides``.
OVERRIDES: dict[object, type | ScalarWrapper | ScalarDefinition] = {datetime: DATETIME}
