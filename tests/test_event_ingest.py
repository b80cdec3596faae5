"""The ingest path's shortcuts decide as the exact checks do: a payload's NUL characters, depth
and size (``services.events._json_document``: one orjson encoding for the common case), a
schema's verdict (``json_schema_precheck`` before jsonschema), and the registered types a
process remembers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coregraph import db
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.errors import BadUserInput
from coregraph.request import RequestMeta
from coregraph.services import events
from coregraph.services.uow import UnitOfWork
from tests.support import GraphQLClient, Server
from tests.test_events import new_team

META = RequestMeta(user_agent="coregraph-tests")

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


class _RolledBack(Exception):
    pass


async def test_a_registration_rolled_back_is_not_remembered_as_registered(
    client: GraphQLClient, server: Server
) -> None:
    """Registered types are remembered per process, but only what a committed unit of work
    read: a registration that rolled back leaves the type unregistered for the next emit."""
    team = await new_team(client)
    principal = Principal(
        kind=PrincipalKind.USER,
        user_id=team.owner.user_id,
        tenant_id=team.tenant_id,
        tenant_scopes={team.tenant_id: frozenset({"events:write", "events:read"})},
    )
    engine = db.create_engine(server.settings)
    try:
        with pytest.raises(_RolledBack):
            async with UnitOfWork(engine, principal, META) as uow:
                await events.register_event_type(
                    uow, team.tenant_id, type="ingest.phantom", description="", schema=ANYTHING
                )
                [emitted] = await events.emit_events(
                    uow, team.tenant_id, [events.EventDraft("ingest.phantom", {"n": 1})]
                )
                assert emitted.replayed is False
                raise _RolledBack

        refused = await team.emit("ingest.phantom", {"n": 2})
        assert refused.codes == ["BAD_USER_INPUT"]
        assert refused.errors[0]["extensions"]["field"] == "type"
        with pytest.raises(BadUserInput):
            async with UnitOfWork(engine, principal, META) as uow:
                await events.emit_events(
                    uow, team.tenant_id, [events.EventDraft("ingest.phantom", {"n": 3})]
                )
    finally:
        await engine.dispose()


async def test_concurrent_emits_each_get_their_own_answer(client: GraphQLClient) -> None:
    """emitEvent requests of one tenant at the same moment (their commits grouped on
    PostgreSQL, services.group_commit): each gets its own event, a replayed key the first
    event, a payload its schema refuses BAD_USER_INPUT — the others are unaffected, and the
    stream has no gap."""
    team = await new_team(client)
    await team.register("ingest.grouped", ORDER)
    first = (await team.emit("ingest.grouped", {"amount": 1}, key="used")).ok()["emitEvent"]
    before = await team.cursor()

    def data(index: int) -> dict[str, Any]:
        return {"amount": "lots"} if index == 3 else {"amount": index}

    answers = await asyncio.wait_for(
        asyncio.gather(
            *(
                team.emit("ingest.grouped", data(i), key="used" if i == 7 else f"new-{i}")
                for i in range(16)
            )
        ),
        60,
    )
    assert answers[3].codes == ["BAD_USER_INPUT"]
    assert answers[3].errors[0]["extensions"]["path"] == "$.amount"
    replay = answers[7].ok()["emitEvent"]
    assert replay["replayed"] is True and replay["event"] == first["event"]
    emitted = {i: answers[i].ok()["emitEvent"]["event"] for i in range(16) if i not in (3, 7)}
    assert all(event["data"] == {"amount": i} for i, event in emitted.items())
    stored = await team.events(after=before)
    assert sorted(e["id"] for e in stored) == sorted(e["id"] for e in emitted.values())
    sequences = sorted(e["sequence"] for e in emitted.values())
    assert sequences == list(range(sequences[0], sequences[0] + 14))
    assert sequences[0] == first["event"]["sequence"] + 1
