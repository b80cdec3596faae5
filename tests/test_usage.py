"""Usage metering, first slice: meters (built-in and a tenant's own), recording usage through
the unit of work (idempotent, also under concurrent retries; late records within the window),
and the aggregations, computed in SQL, against hand-computed expectations on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from jsonschema import Draft202012Validator

from coregraph.services.events import BUILTIN_EVENT_TYPES
from tests.conftest import make_settings
from tests.support import Actor, GraphQLClient, Response, Server, running_server, unique

CREATE_METER = """mutation($input: CreateMeterInput!) { createMeter(input: $input) {
    meter { id key name unit aggregation dimensions uniqueDimension } } }"""
METERS = "{ meters { key unit aggregation dimensions uniqueDimension builtin meter { id key } } }"
RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) {
    id meter quantity occurredAt replayed } }"""
RECORD_BATCH = """mutation($records: [RecordUsageInput!]!) { recordUsageBatch(records: $records) {
    recorded replayed items { id meter quantity replayed } } }"""
USAGE = """query($meter: String!, $from: DateTime!, $to: DateTime!,
    $granularity: UsageGranularity!, $groupBy: [String!]) {
    usage(meter: $meter, from: $from, to: $to, granularity: $granularity, groupBy: $groupBy) {
        granularity meter { key aggregation } points { start group value } } }"""
SUMMARY = """query($period: String) { usageSummary(period: $period) {
    period from to meters { meter { key builtin } value } } }"""
USAGE_EVENTS = """{ events(types: ["usage.recorded"], first: 200) {
    nodes { type data actorKind } } }"""
METER_EVENTS = """{ events(types: ["meter.created"], first: 200) { nodes { type data } } }"""
AUDIT = """{ tenant { auditLog(first: 50, action: "meter.created") {
    nodes { action targetId } } } }"""

BUILTIN_KEYS = {"api.requests", "seats", "storage.bytes", "events.emitted", "webhooks.delivered"}


@dataclass
class Team:
    client: GraphQLClient
    owner: Actor
    tenant_id: str

    async def execute(
        self, query: str, variables: dict[str, Any] | None = None, actor: Actor | None = None
    ) -> Response:
        return await self.client.execute(
            query, variables, actor=actor or self.owner, tenant_id=self.tenant_id
        )

    async def run(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        return (await self.execute(query, variables)).ok()

    async def meter(self, aggregation: str, **extra: Any) -> str:
        key = f"app.{unique('m').replace('-', '_').lower()}"
        await self.run(
            CREATE_METER,
            {
                "input": {
                    "key": key,
                    "name": "Tokens",
                    "unit": "token",
                    "aggregation": aggregation,
                    "dimensions": ["model", "user"],
                    **extra,
                }
            },
        )
        return key

    async def usage(self, meter: str, start: datetime, end: datetime, **extra: Any) -> Any:
        variables = {"meter": meter, "from": _iso(start), "to": _iso(end), **extra}
        variables.setdefault("granularity", "DAY")
        return (await self.run(USAGE, variables))["usage"]

    async def summary(self, period: str | None = None) -> dict[str, str | None]:
        answer = (await self.run(SUMMARY, {"period": period}))["usageSummary"]
        return {m["meter"]["key"]: m["value"] for m in answer["meters"]}


async def new_team(client: GraphQLClient) -> Team:
    owner = await client.sign_up()
    return Team(client, owner, await client.create_tenant(owner))


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _record(meter: str, quantity: str, at: datetime, **dimensions: str) -> dict[str, Any]:
    return {"meter": meter, "quantity": quantity, "occurredAt": _iso(at), "dimensions": dimensions}


def _points(series: Any) -> list[tuple[datetime, dict[str, Any], str]]:
    return [(datetime.fromisoformat(p["start"]), p["group"], p["value"]) for p in series["points"]]


# --- meters ---


async def test_the_catalog_lists_the_builtin_meters_then_the_tenants_own(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    created = await team.run(
        CREATE_METER,
        {
            "input": {
                "key": "ai.unique_users",
                "name": "Active users",
                "unit": "user",
                "aggregation": "UNIQUE_COUNT",
                "dimensions": ["user", "region"],
                "uniqueDimension": "user",
            }
        },
    )
    meter = created["createMeter"]["meter"]
    assert meter["id"].startswith("mtr_")
    assert meter["aggregation"] == "UNIQUE_COUNT"

    catalog = (await team.run(METERS))["meters"]
    [event] = (await team.run(METER_EVENTS))["events"]["nodes"]

    assert event["data"] == {
        "meterId": meter["id"],
        "key": "ai.unique_users",
        "aggregation": "UNIQUE_COUNT",
        "dimensions": ["user", "region"],
    }
    Draft202012Validator(BUILTIN_EVENT_TYPES["meter.created"].schema).validate(event["data"])
    audited = (await team.run(AUDIT))["tenant"]["auditLog"]["nodes"]
    assert audited == [{"action": "meter.created", "targetId": meter["id"]}]
    assert {m["key"] for m in catalog if m["builtin"]} == BUILTIN_KEYS
    assert all(m["meter"] is None for m in catalog if m["builtin"])
    [own] = [m for m in catalog if not m["builtin"]]
    assert own["meter"] == {"id": meter["id"], "key": "ai.unique_users"}
    assert own["uniqueDimension"] == "user"
    # Another tenant sees only the built-ins.
    other = await new_team(client)
    assert {m["key"] for m in (await other.run(METERS))["meters"]} == BUILTIN_KEYS


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"key": "api.requests"}, "BAD_USER_INPUT", "key"),
        ({"key": "storage.mine"}, "BAD_USER_INPUT", "key"),
        ({"key": "Bad Key"}, "BAD_USER_INPUT", "key"),
        ({"aggregation": "UNIQUE_COUNT"}, "BAD_USER_INPUT", "uniqueDimension"),
        ({"aggregation": "UNIQUE_COUNT", "uniqueDimension": "nope"}, "BAD_USER_INPUT", None),
        ({"uniqueDimension": "model"}, "BAD_USER_INPUT", "uniqueDimension"),
        ({"dimensions": ["model", "model"]}, "BAD_USER_INPUT", "dimensions"),
        ({"dimensions": ["Model"]}, "BAD_USER_INPUT", "dimensions"),
        ({"unit": ""}, "BAD_USER_INPUT", "unit"),
    ],
)
async def test_create_meter_refuses_bad_definitions(
    client: GraphQLClient, changes: dict[str, Any], code: str, field: str | None
) -> None:
    team = await new_team(client)
    definition = {
        "key": "app.calls",
        "name": "Calls",
        "unit": "call",
        "aggregation": "SUM",
        "dimensions": ["model"],
        **changes,
    }

    response = await team.execute(CREATE_METER, {"input": definition})

    assert response.codes == [code]
    if field is not None:
        assert response.errors[0]["extensions"]["field"] == field
    assert not [m for m in (await team.run(METERS))["meters"] if not m["builtin"]]


async def test_meters_need_meters_manage_and_keys_are_unique(client: GraphQLClient) -> None:
    team = await new_team(client)
    member = await client.add_member(team.owner, team.tenant_id, role="member")
    definition = {"key": "app.calls", "name": "Calls", "unit": "call", "aggregation": "COUNT"}

    denied = await team.execute(CREATE_METER, {"input": definition}, actor=member)
    await team.run(CREATE_METER, {"input": definition})
    again = await team.execute(CREATE_METER, {"input": definition})

    assert denied.codes == ["FORBIDDEN"]
    assert again.codes == ["CONFLICT"]
    # A member reads the catalog (usage:read).
    assert any(
        m["key"] == "app.calls" for m in (await team.execute(METERS, actor=member)).ok()["meters"]
    )


# --- aggregation, one test per kind, against hand-computed expectations ---


def _day(offset: int = 0) -> datetime:
    """A UTC midnight ``3 - offset`` days back: inside the default 7-day late window."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=3 - offset)


# Records of the aggregation tests: (hours after _day(0), quantity, model, user). The last one
# is recorded in a call of its own after the others, at the same moment as the one before it.
RECORDS = [
    (1 + 10 / 60, "1.5", "a", "u1"),
    (1 + 50 / 60, "2.25", "b", "u2"),
    (5, "0.000001", "a", "u1"),
    (24 + 2, "10", "a", "u3"),
]
LATE_RECORD = (24 + 2, "7", "b", "u1")

# Per aggregation: (DAY ungrouped [day 0, day 1], DAY by model [(0,a), (0,b), (1,a), (1,b)],
# both days together: what usageSummary shows when they fall in one month).
EXPECTED = {
    "SUM": (["3.750001", "17"], ["1.500001", "2.25", "10", "7"], "20.750001"),
    "COUNT": (["3", "2"], ["2", "1", "1", "1"], "5"),
    "MAX": (["2.25", "10"], ["1.5", "2.25", "10", "7"], "10"),
    "UNIQUE_COUNT": (["2", "2"], ["1", "1", "1", "1"], "3"),
    # The last record of a bucket by occurredAt; at the same moment, the one recorded last.
    "LATEST": (["0.000001", "7"], ["0.000001", "2.25", "10", "7"], "7"),
}


async def _recorded_team(client: GraphQLClient, aggregation: str) -> tuple[Team, str]:
    team = await new_team(client)
    extra = {"uniqueDimension": "user"} if aggregation == "UNIQUE_COUNT" else {}
    meter = await team.meter(aggregation, **extra)
    start = _day(0)
    records = [
        _record(meter, q, start + timedelta(hours=h), model=m, user=u) for h, q, m, u in RECORDS
    ]
    await team.run(RECORD_BATCH, {"records": records})
    h, q, m, u = LATE_RECORD
    late = _record(meter, q, start + timedelta(hours=h), model=m, user=u)
    await team.run(RECORD, {"input": late})
    return team, meter


@pytest.mark.parametrize("aggregation", sorted(EXPECTED))
async def test_each_aggregation_matches_hand_computed_values(
    client: GraphQLClient, aggregation: str
) -> None:
    team, meter = await _recorded_team(client, aggregation)
    by_day, by_day_and_model, both_days = EXPECTED[aggregation]
    start, end = _day(0), _day(2)

    ungrouped = await team.usage(meter, start, end)
    grouped = await team.usage(meter, start, end, groupBy=["model"])
    months = [_day(0).strftime("%Y-%m"), _day(1).strftime("%Y-%m")]
    summaries = [(await team.summary(month))[meter] for month in months]

    assert ungrouped["meter"] == {"key": meter, "aggregation": aggregation}
    assert _points(ungrouped) == [
        (_day(0), {}, by_day[0]),
        (_day(1), {}, by_day[1]),
    ]
    assert _points(grouped) == [
        (_day(0), {"model": "a"}, by_day_and_model[0]),
        (_day(0), {"model": "b"}, by_day_and_model[1]),
        (_day(1), {"model": "a"}, by_day_and_model[2]),
        (_day(1), {"model": "b"}, by_day_and_model[3]),
    ]
    # The month's summary: both days, or each day alone at a month's turn.
    assert summaries == ([both_days] * 2 if months[0] == months[1] else by_day)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("SUM", ["2.250001", "17"]), ("COUNT", ["2", "2"]), ("MAX", ["2.25", "10"])],
)
async def test_ranges_cutting_through_hours_add_the_partial_hours_records(
    client: GraphQLClient, aggregation: str, expected: list[str]
) -> None:
    """SUM, COUNT and MAX are read from hourly rollups for the whole hours of the range and
    from the records for the partial hours at its ends: from 1:20 (the 1:10 record left out,
    the 1:50 one in) to 26:30 (the two records at 26:00 in)."""
    team, meter = await _recorded_team(client, aggregation)
    start = _day(0)
    series = await team.usage(
        meter, start + timedelta(hours=1, minutes=20), start + timedelta(hours=26, minutes=30)
    )
    assert _points(series) == [(_day(0), {}, expected[0]), (_day(1), {}, expected[1])]
    # Within one hour: the records alone.
    inside = await team.usage(
        meter,
        start + timedelta(hours=1, minutes=5),
        start + timedelta(hours=1, minutes=15),
        granularity="HOUR",
    )
    assert _points(inside) == [
        (start + timedelta(hours=1), {}, "1.5" if aggregation != "COUNT" else "1")
    ]


async def test_hour_and_month_buckets_and_the_range_bounds(client: GraphQLClient) -> None:
    team, meter = await _recorded_team(client, "SUM")
    start = _day(0)

    hourly = await team.usage(meter, start, _day(2), granularity="HOUR")
    # from inclusive, to exclusive: the fifth hour alone.
    fifth = await team.usage(
        meter, start + timedelta(hours=5), start + timedelta(hours=6), granularity="HOUR"
    )
    monthly = await team.usage(meter, start - timedelta(days=40), _day(2), granularity="MONTH")

    assert _points(hourly) == [
        (start + timedelta(hours=1), {}, "3.75"),
        (start + timedelta(hours=5), {}, "0.000001"),
        (start + timedelta(hours=26), {}, "17"),
    ]
    assert _points(fifth) == [(start + timedelta(hours=5), {}, "0.000001")]
    # The two days fall in one month or, at a month's turn, in two.
    if _day(0).month == _day(1).month:
        assert _points(monthly) == [(_day(0).replace(day=1), {}, "20.750001")]
    else:
        assert _points(monthly) == [
            (_day(0).replace(day=1), {}, "3.750001"),
            (_day(1), {}, "17"),
        ]


async def test_usage_summary_aggregates_every_meter_over_the_month(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    total = await team.meter("SUM")
    peak = await team.meter("MAX")
    idle = await team.meter("LATEST")
    now = datetime.now(UTC)
    await team.run(
        RECORD_BATCH,
        {
            "records": [
                {"meter": total, "quantity": "0.1"},
                {"meter": total, "quantity": "0.2"},
                {"meter": peak, "quantity": "-3"},
                {"meter": peak, "quantity": "-4"},
            ]
        },
    )

    summary = await team.summary(None)
    next_month = (now.replace(day=28) + timedelta(days=5)).strftime("%Y-%m")

    assert summary[total] == "0.3"  # exact: no float ever adds these
    assert summary[peak] == "-3"
    assert summary[idle] is None
    # The team's own operations, once flushed (COREGRAPH_API_REQUESTS_FLUSH_SECONDS).
    assert summary["api.requests"].isdigit()
    assert summary["seats"] == "1"  # the owner: the core records seats (tests/test_quotas.py)
    assert summary["storage.bytes"] is None  # no file yet: no record
    assert set(summary) >= BUILTIN_KEYS
    assert (await team.summary(next_month))[total] == "0"


# --- ingest ---


async def test_twenty_concurrent_retries_of_one_key_count_once(client: GraphQLClient) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    record = {"meter": meter, "quantity": "5", "idempotencyKey": "job-42", "dimensions": {}}
    before = len((await team.run(USAGE_EVENTS))["events"]["nodes"])

    answers = await asyncio.gather(*(team.execute(RECORD, {"input": record}) for _ in range(20)))
    again = (await team.run(RECORD, {"input": record}))["recordUsage"]

    results = [a.ok()["recordUsage"] for a in answers]
    assert len({r["id"] for r in results} | {again["id"]}) == 1
    assert sorted(r["replayed"] for r in results) == [False] + [True] * 19
    assert again["replayed"] is True
    assert (await team.summary())[meter] == "5"
    events = (await team.run(USAGE_EVENTS))["events"]["nodes"]
    assert len(events) == before + 1
    assert events[-1]["data"] == {"records": 1, "meters": {meter: 1}}
    Draft202012Validator(BUILTIN_EVENT_TYPES["usage.recorded"].schema).validate(events[-1]["data"])


async def test_keys_are_per_meter_and_repeats_within_a_batch_count_once(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    first, second = await team.meter("SUM"), await team.meter("SUM")
    records = [
        {"meter": first, "quantity": "1", "idempotencyKey": "k"},
        {"meter": second, "quantity": "2", "idempotencyKey": "k"},
        {"meter": first, "quantity": "100", "idempotencyKey": "k"},
        {"meter": first, "quantity": "4"},
    ]

    batch = (await team.run(RECORD_BATCH, {"records": records}))["recordUsageBatch"]
    again = (await team.run(RECORD_BATCH, {"records": records[:2]}))["recordUsageBatch"]

    assert (batch["recorded"], batch["replayed"]) == (3, 1)
    assert batch["items"][2]["id"] == batch["items"][0]["id"]
    assert batch["items"][2]["quantity"] == "1"
    assert (again["recorded"], again["replayed"]) == (0, 2)
    summary = await team.summary()
    assert (summary[first], summary[second]) == ("5", "2")
    events = (await team.run(USAGE_EVENTS))["events"]["nodes"]
    # One event per call that recorded something, carrying its counts; none for the replay.
    assert [e["data"] for e in events] == [{"records": 3, "meters": {first: 2, second: 1}}]


async def test_records_older_than_the_window_or_from_the_future_are_refused(
    client: GraphQLClient,
) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    now = datetime.now(UTC)
    good = {"meter": meter, "quantity": "1", "occurredAt": _iso(now - timedelta(days=6))}
    old = {**good, "occurredAt": _iso(now - timedelta(days=7, minutes=5))}
    future = {**good, "occurredAt": _iso(now + timedelta(hours=1))}

    refused_old = await team.execute(RECORD_BATCH, {"records": [good, old]})
    refused_future = await team.execute(RECORD, {"input": future})
    accepted = await team.execute(RECORD, {"input": good})

    assert refused_old.codes == ["BAD_USER_INPUT"]
    assert refused_old.errors[0]["extensions"]["index"] == 1
    assert refused_old.errors[0]["extensions"]["field"] == "occurredAt"
    assert "records[1]" in refused_old.errors[0]["message"]
    assert refused_future.codes == ["BAD_USER_INPUT"]
    assert accepted.ok()["recordUsage"]["replayed"] is False
    day = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    series = await team.usage(meter, day, day + timedelta(days=1))
    # The late record landed in its own day; the refused batch left nothing behind.
    assert _points(series) == [(day, {}, "1")]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"quantity": "NaN"}, "quantity"),
        ({"quantity": "Infinity"}, "quantity"),
        ({"quantity": "-1"}, "quantity"),
        ({"quantity": "0.0000001"}, "quantity"),
        ({"quantity": "1e13"}, "quantity"),
        ({"dimensions": {"colour": "red"}}, "dimensions"),
        ({"dimensions": {"model": 4}}, "dimensions"),
        ({"dimensions": ["model"]}, "dimensions"),
        ({"occurredAt": "2026-12-01T10:00:00"}, "occurredAt"),
        ({"meter": "api.requests"}, "meter"),
        ({"meter": "app.nothing"}, "meter"),
        ({"idempotencyKey": ""}, "idempotencyKey"),
    ],
)
async def test_a_bad_record_refuses_the_whole_batch_naming_its_index(
    client: GraphQLClient, record: dict[str, Any], field: str
) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    records = [{"meter": meter, "quantity": "1"}] * 2 + [{"meter": meter, **record}]

    response = await team.execute(RECORD_BATCH, {"records": records})

    assert response.codes == ["BAD_USER_INPUT"], response.errors
    extensions = response.errors[0]["extensions"]
    assert (extensions["index"], extensions["field"]) == (2, field)
    assert (await team.summary())[meter] == "0"


async def test_batches_are_bounded_and_scopes_apply(client: GraphQLClient) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    writer = await client.api_key(team.owner, team.tenant_id, ["usage:write"])
    reader = await client.add_member(team.owner, team.tenant_id, role="viewer")
    other = await new_team(client)
    day = _day(0)

    too_many = await team.execute(RECORD_BATCH, {"records": [{"meter": meter}] * 1001})
    written = await team.execute(RECORD, {"input": {"meter": meter, "quantity": "2"}}, writer)
    write_only_read = await team.execute(
        USAGE,
        {"meter": meter, "from": _iso(day), "to": _iso(_day(4)), "granularity": "DAY"},
        writer,
    )
    viewer_write = await team.execute(RECORD, {"input": {"meter": meter}}, reader)
    outsider = await other.execute(
        USAGE, {"meter": meter, "from": _iso(day), "to": _iso(_day(4)), "granularity": "DAY"}
    )
    outsider_write = await other.execute(RECORD, {"input": {"meter": meter}})

    assert too_many.codes == ["BAD_USER_INPUT"]
    assert written.ok()["recordUsage"]["quantity"] == "2"
    assert write_only_read.codes == ["FORBIDDEN"]
    assert viewer_write.codes == ["FORBIDDEN"]
    assert outsider.codes == ["NOT_FOUND"]
    assert outsider_write.codes == ["BAD_USER_INPUT"]
    assert (await team.summary())[meter] == "2"


async def test_test_mode_usage_stays_out_of_live(client: GraphQLClient) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    tester = await client.api_key(
        team.owner, team.tenant_id, ["usage:read", "usage:write"], environment="TEST"
    )
    record = {"meter": meter, "quantity": "9", "idempotencyKey": "same"}

    in_test = await team.execute(RECORD, {"input": record}, tester)
    in_live = (await team.run(RECORD, {"input": {**record, "quantity": "1"}}))["recordUsage"]
    test_summary = await team.execute(SUMMARY, {"period": None}, tester)

    # The same key in the other environment is another record.
    assert in_test.ok()["recordUsage"]["replayed"] is False
    assert in_live["replayed"] is False
    assert (await team.summary())[meter] == "1"
    values = {m["meter"]["key"]: m["value"] for m in test_summary.ok()["usageSummary"]["meters"]}
    assert values[meter] == "9"


async def test_group_by_and_ranges_are_checked(client: GraphQLClient) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    day = _day(0)
    base = {"meter": meter, "granularity": "DAY"}

    undeclared = await team.execute(
        USAGE, {**base, "from": _iso(day), "to": _iso(_day(1)), "groupBy": ["colour"]}
    )
    backwards = await team.execute(USAGE, {**base, "from": _iso(_day(1)), "to": _iso(day)})
    bad_period = await team.execute(SUMMARY, {"period": "2026-13"})

    assert undeclared.codes == ["BAD_USER_INPUT"]
    assert backwards.codes == ["BAD_USER_INPUT"]
    assert bad_period.codes == ["BAD_USER_INPUT"]


# --- the late window is a setting: a record from a closed month lands in that month ---


@pytest.fixture(scope="module")
def wide_window_client(database_url: str) -> Iterator[str]:
    settings = make_settings(database_url, usage_late_window_seconds=45 * 86400)
    with running_server(settings) as server:
        yield server.url


async def test_a_late_record_lands_in_its_closed_month(
    wide_window_client: str, http: httpx.AsyncClient
) -> None:
    team = await new_team(GraphQLClient(http, wide_window_client))
    meter = await team.meter("SUM")
    this_month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    closed = this_month - timedelta(hours=1)
    too_old = datetime.now(UTC) - timedelta(days=46)

    await team.run(RECORD, {"input": {"meter": meter, "quantity": "3", "occurredAt": _iso(closed)}})
    refused = await team.execute(
        RECORD, {"input": {"meter": meter, "quantity": "3", "occurredAt": _iso(too_old)}}
    )

    closed_day = closed.replace(hour=0)
    daily = await team.usage(meter, closed_day - timedelta(days=1), this_month + timedelta(days=1))
    monthly = await team.usage(
        meter, this_month - timedelta(days=40), this_month + timedelta(days=1), granularity="MONTH"
    )

    assert (await team.summary(closed.strftime("%Y-%m")))[meter] == "3"
    assert (await team.summary(this_month.strftime("%Y-%m")))[meter] == "0"
    # The usage series puts it in the closed month's last day, and in that month.
    assert _points(daily) == [(closed_day, {}, "3")]
    assert _points(monthly) == [(closed.replace(day=1, hour=0), {}, "3")]
    assert refused.codes == ["BAD_USER_INPUT"]


# --- POST /usage/bulk: JSON Lines ---


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


async def _bulk(
    http: httpx.AsyncClient, server: Server, body: bytes, actor: Actor | None, tenant_id: str
) -> httpx.Response:
    headers = {"Content-Type": "application/x-ndjson", "X-Tenant-Id": tenant_id}
    if actor is not None:
        headers["Authorization"] = f"Bearer {actor.token}"
    return await http.post(f"{server.base_url}/usage/bulk", content=body, headers=headers)


async def test_bulk_json_lines_record_like_a_batch(
    client: GraphQLClient, server: Server, http: httpx.AsyncClient
) -> None:
    team = await new_team(client)
    meter = await team.meter("SUM")
    writer = await client.api_key(team.owner, team.tenant_id, ["usage:write"])
    reader = await client.add_member(team.owner, team.tenant_id, role="viewer")
    at = _iso(_day(0) + timedelta(hours=3))
    records: list[dict[str, Any]] = [
        {"meter": meter, "quantity": "0.1", "occurredAt": at, "idempotencyKey": "a"},
        {"meter": meter, "quantity": "0.2", "occurredAt": at, "dimensions": {"model": "m"}},
        {"meter": meter, "quantity": 3, "idempotencyKey": "a"},
    ]

    first = await _bulk(http, server, _jsonl(records), writer, team.tenant_id)
    again = await _bulk(http, server, _jsonl(records[:1]), writer, team.tenant_id)
    bad = await _bulk(
        http,
        server,
        _jsonl([records[1], {**records[1], "dimensions": {"x": "y"}}]),
        writer,
        team.tenant_id,
    )
    not_json = await _bulk(http, server, b'{"meter": "x"}\nnot json\n', writer, team.tenant_id)
    forbidden = await _bulk(http, server, _jsonl(records), reader, team.tenant_id)
    anonymous = await _bulk(http, server, _jsonl(records), None, team.tenant_id)

    assert (first.status_code, first.json()) == (200, {"recorded": 2, "replayed": 1})
    assert again.json() == {"recorded": 0, "replayed": 1}
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert bad.json()["errors"][0]["extensions"]["index"] == 1
    assert not_json.status_code == 400
    assert not_json.json()["errors"][0]["extensions"]["index"] == 1
    assert forbidden.status_code == 403
    assert anonymous.status_code == 401
    series = await team.usage(meter, _day(0), _day(1))
    assert _points(series) == [(_day(0), {}, "0.3")]
