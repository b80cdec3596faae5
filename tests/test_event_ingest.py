"""The ingest path's shortcuts decide as the exact checks do: a payload's NUL characters, depth
and size (``services.events._json_document``: one orjson encoding for the common case), and a
schema's verdict (``json_schema_precheck`` before jsonschema)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import GraphQLClient
from tests.test_events import new_team

ANYTHING = {"type": "object"}
ORDER = {
    "type": "object",
    "properties": {
        "amount": {"type": "number", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
    },
    "required": ["amount"],
}


def _nested(levels: int) -> dict[str, Any]:
    """An object whose innermost value sits ``levels`` containers deep."""
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize(
    ("data", "accepted"),
    [
        # A backslash followed by "u0000" is text, not a NUL: encoded as \\u0000.
        ({"note": "\\u0000"}, True),
        ({"note": "bad\x00"}, False),
        ({"bad\x00key": 1}, False),
        (_nested(64), True),
        (_nested(65), False),
        # Brackets inside strings are not nesting.
        ({"note": "[" * 200}, True),
        # 64 KiB as json.dumps writes it, non-ASCII escaped: 11,000 euro signs are 66,000
        # bytes of \u20ac escapes, though their UTF-8 is only 33,000.
        ({"note": "€" * 10_900}, True),
        ({"note": "€" * 11_000}, False),
        ({"note": "x" * (64 * 1024 - 20)}, True),
        ({"note": "x" * (64 * 1024)}, False),
    ],
)
async def test_payload_limits_hold_on_the_fast_path(
    client: GraphQLClient, data: dict[str, Any], accepted: bool
) -> None:
    team = await new_team(client)
    await team.register("ingest.checked", ANYTHING)

    response = await team.emit("ingest.checked", data)

    if accepted:
        assert response.ok()["emitEvent"]["replayed"] is False
    else:
        assert response.codes == ["BAD_USER_INPUT"]
        assert response.errors[0]["extensions"]["field"] == "data"


async def test_a_batch_names_the_item_and_path_its_schema_refuses(client: GraphQLClient) -> None:
    team = await new_team(client)
    await team.register("ingest.order", ORDER)
    before = await team.cursor()
    good = {"amount": 2.0, "lines": [{"sku": "A-1", "quantity": 2}]}
    inputs = [
        {"type": "ingest.order", "data": good},
        {"type": "ingest.order", "data": {"amount": 1, "lines": [{"sku": "B"}, {"qty": 1}]}},
        {"type": "ingest.order", "data": good},
    ]

    refused = await team.call(
        """mutation($inputs: [EmitEventInput!]!) { emitEvents(inputs: $inputs) {
            items { eventId } } }""",
        {"inputs": inputs},
    )

    assert refused.codes == ["BAD_USER_INPUT"]
    extensions = refused.errors[0]["extensions"]
    assert extensions["index"] == 1
    assert extensions["path"] == "$.lines[1].sku"
    assert await team.events(after=before) == []
