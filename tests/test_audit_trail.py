"""The audit trail: a tenant's chain checks out until someone edits the database behind
coregraph's back, PostgreSQL refuses such edits itself, auditLog filters, a user's own security
log, and the streamed export."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from coregraph import db
from coregraph.models import AuditEntry
from coregraph.services.audit import entry_hash, export_entries
from tests.support import Actor, GraphQLClient, Server, unique

VERIFY = """query($from: Int, $to: Int) { verifyAuditChain(from: $from, to: $to) {
    ok checked brokenAt { id position } reason } }"""

ENTRIES = """query($first: Int, $after: String, $action: String, $actorId: String,
    $targetId: ID, $environment: Environment, $from: DateTime, $to: DateTime) {
  tenant { auditLog(first: $first, after: $after, action: $action, actorId: $actorId,
      targetId: $targetId, environment: $environment, from: $from, to: $to) {
    totalCount pageInfo { hasNextPage endCursor }
    nodes { id action actorId targetId environment createdAt position hash previousHash } } } }"""

SECURITY_LOG = """query($first: Int, $after: String) { viewer { securityLog(first: $first,
    after: $after) { pageInfo { hasNextPage endCursor }
    nodes { id action actorId targetType position hash previousHash } } } }"""


async def busy_tenant(client: GraphQLClient) -> tuple[Actor, str]:
    """A tenant with a few members, keys and roles: a dozen or so audit entries."""
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    for role in ("admin", "member", "viewer"):
        await client.add_member(owner, tenant_id, role)
    await client.api_key(owner, tenant_id, ["audit:read"])
    await client.api_key(owner, tenant_id, ["tenant:read"], environment="TEST")
    await create_roles(client, owner, tenant_id, 3)
    return owner, tenant_id


async def create_roles(client: GraphQLClient, owner: Actor, tenant_id: str, count: int) -> None:
    """``count`` roles, up to 30 per request (each its own unit of work and audit entry)."""
    made = 0
    while made < count:
        batch = min(30, count - made)
        fields = " ".join(
            f'r{i}: createRole(input: {{key: "{unique("role-")}", name: "R{i}", '
            f'permissions: ["tenant:read"]}}) {{ role {{ id }} }}'
            for i in range(batch)
        )
        (await client.execute(f"mutation {{ {fields} }}", actor=owner, tenant_id=tenant_id)).ok()
        made += batch


async def verify(
    client: GraphQLClient, actor: Actor, tenant_id: str | None, **positions: int
) -> dict[str, Any]:
    r = await client.execute(VERIFY, positions or None, actor=actor, tenant_id=tenant_id)
    return dict(r.ok()["verifyAuditChain"])


async def entries(
    client: GraphQLClient, actor: Actor, tenant_id: str, **filters: Any
) -> list[dict[str, Any]]:
    r = await client.execute(ENTRIES, {"first": 200, **filters}, actor=actor, tenant_id=tenant_id)
    return list(r.ok()["tenant"]["auditLog"]["nodes"])


async def entry_at(server: Server, tenant_id: str, position: int) -> str:
    async with owner_connection(server) as conn:
        found = await conn.scalar(
            text("SELECT id FROM audit_entries WHERE chain_id = :t AND position = :p"),
            {"t": tenant_id, "p": position},
        )
    return str(found)


class owner_connection:
    """A connection as the database's owner (a superuser in the test setup): someone editing
    the audit table behind coregraph's back. On PostgreSQL it switches triggers off for its own
    session (``session_replication_role = replica``), as only a superuser can."""

    def __init__(self, server: Server, *, bypass_triggers: bool = False) -> None:
        self.engine = db.create_engine(server.settings, as_owner=True)
        self.bypass_triggers = bypass_triggers

    async def __aenter__(self) -> AsyncConnection:
        self.conn = await self.engine.connect()
        if self.conn.dialect.name == "postgresql" and self.bypass_triggers:
            await self.conn.execute(text("SET LOCAL session_replication_role = replica"))
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.conn.commit()
            await self.conn.close()
        finally:
            await self.engine.dispose()


async def tamper(server: Server, statement: str, **params: Any) -> None:
    async with owner_connection(server, bypass_triggers=True) as conn:
        result = await conn.execute(text(statement), params)
        assert result.rowcount == 1


# --- verifyAuditChain ------------------------------------------------------------------------


async def test_an_untouched_chain_of_a_busy_tenant_verifies(client: GraphQLClient) -> None:
    owner, tenant_id = await busy_tenant(client)
    r = await client.execute(
        "{ tenant { auditLog { totalCount } } }", actor=owner, tenant_id=tenant_id
    )
    total = r.ok()["tenant"]["auditLog"]["totalCount"]
    assert total >= 12

    assert await verify(client, owner, tenant_id) == {
        "ok": True,
        "checked": total,
        "brokenAt": None,
        "reason": None,
    }
    # A range checks only its own entries, anchored at the entry before it.
    assert (await verify(client, owner, tenant_id, **{"from": 3, "to": 7}))["checked"] == 5
    assert (await verify(client, owner, tenant_id, **{"from": total}))["checked"] == 1
    assert (await verify(client, owner, tenant_id, **{"from": total + 5}))["checked"] == 0

    # An API key holding audit:read checks its own tenant's chain.
    key = await client.api_key(owner, tenant_id, ["audit:read"])
    assert (await verify(client, key, None))["ok"] is True


async def test_verifying_needs_audit_read_in_the_addressed_tenant(client: GraphQLClient) -> None:
    owner, tenant_id = await busy_tenant(client)
    member = await client.add_member(owner, tenant_id, "member")
    r = await client.execute(VERIFY, actor=member, tenant_id=tenant_id)
    assert r.codes == ["FORBIDDEN"] and r.data == {"verifyAuditChain": None}
    r = await client.execute(VERIFY, actor=owner, headers={"X-Tenant-Id": ""})
    assert r.codes == ["FORBIDDEN"]
    r = await client.execute(VERIFY)
    assert r.codes == ["UNAUTHENTICATED"]
    # Another tenant's owner cannot address this tenant at all.
    stranger = await client.sign_up()
    await client.create_tenant(stranger)
    r = await client.execute(VERIFY, actor=stranger, tenant_id=tenant_id)
    assert r.codes == ["FORBIDDEN"]


@pytest.mark.parametrize(
    ("positions", "field"),
    [({"from": 0}, "from"), ({"to": -1}, "to"), ({"from": 5, "to": 2}, "to")],
)
async def test_positions_out_of_range_are_bad_input(
    client: GraphQLClient, positions: dict[str, int], field: str
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(VERIFY, positions, actor=owner, tenant_id=tenant_id)
    assert r.codes == ["BAD_USER_INPUT"]
    assert r.errors[0]["extensions"]["field"] == field


async def test_a_changed_entry_is_pointed_at(client: GraphQLClient, server: Server) -> None:
    owner, tenant_id = await busy_tenant(client)
    total = (await verify(client, owner, tenant_id))["checked"]
    victim = await entry_at(server, tenant_id, 5)

    # Someone with database access rewrites who did it.
    await tamper(
        server,
        "UPDATE audit_entries SET actor_id = 'usr_someone_else' WHERE id = :id",
        id=victim,
    )
    assert await verify(client, owner, tenant_id) == {
        "ok": False,
        "checked": 4,
        "brokenAt": {"id": victim, "position": 5},
        "reason": "its content does not match its hash",
    }
    # A range that ends before the change still checks out; one that starts after it too
    # (it is anchored at the stored hash of the entry before it).
    assert (await verify(client, owner, tenant_id, to=4))["ok"] is True
    assert (await verify(client, owner, tenant_id, **{"from": 6}))["checked"] == total - 5


async def test_a_forger_who_recomputes_hashes_is_caught_too(
    client: GraphQLClient, server: Server
) -> None:
    """Rewrite an entry and give it a matching hash: the next entry no longer follows it.
    Rewrite every hash after it as well: the chain's head no longer matches its last entry."""
    owner, tenant_id = await busy_tenant(client)
    total = (await verify(client, owner, tenant_id))["checked"]
    async with owner_connection(server) as conn:
        rows = (
            await conn.execute(
                select(AuditEntry.__table__)
                .where(AuditEntry.chain_id == tenant_id)
                .order_by(AuditEntry.position)
            )
        ).all()
    forged = [SimpleNamespace(**row._mapping) for row in rows]
    forged[2].actor_id = "usr_someone_else"
    forged[2].hash = entry_hash(forged[2], forged[2].previous_hash)
    await tamper(
        server,
        "UPDATE audit_entries SET actor_id = :a, hash = :h WHERE id = :id",
        a=forged[2].actor_id,
        h=forged[2].hash,
        id=forged[2].id,
    )
    result = await verify(client, owner, tenant_id)
    assert result["brokenAt"] == {"id": forged[3].id, "position": 4}
    assert result["reason"] == "it does not follow the previous entry"

    for previous, entry in itertools.pairwise(forged):
        entry.previous_hash = previous.hash
        entry.hash = entry_hash(entry, entry.previous_hash)
        await tamper(
            server,
            "UPDATE audit_entries SET previous_hash = :p, hash = :h WHERE id = :id",
            p=entry.previous_hash,
            h=entry.hash,
            id=entry.id,
        )
    assert await verify(client, owner, tenant_id) == {
        "ok": False,
        "checked": total - 1,
        "brokenAt": {"id": forged[-1].id, "position": total},
        "reason": "it is not the entry the chain's head recorded",
    }


async def test_a_deleted_entry_is_reported_where_it_was(
    client: GraphQLClient, server: Server
) -> None:
    owner, tenant_id = await busy_tenant(client)
    total = (await verify(client, owner, tenant_id))["checked"]
    await tamper(
        server, "DELETE FROM audit_entries WHERE id = :id", id=await entry_at(server, tenant_id, 6)
    )
    assert await verify(client, owner, tenant_id) == {
        "ok": False,
        "checked": 5,
        "brokenAt": {"id": None, "position": 6},
        "reason": "an entry is missing here",
    }
    # The last entry leaves no gap behind it; the chain's head still remembers it.
    await tamper(
        server,
        "DELETE FROM audit_entries WHERE id = :id",
        id=await entry_at(server, tenant_id, total),
    )
    result = await verify(client, owner, tenant_id, **{"from": 8})
    assert result["brokenAt"] == {"id": None, "position": total}
    assert result["checked"] == total - 8


# --- the database refuses ------------------------------------------------------------------


@pytest.fixture
def postgres_only(server: Server) -> None:
    if server.settings.is_sqlite:
        pytest.skip("the append-only trigger is PostgreSQL's; run with COREGRAPH_DATABASE_URL")


@pytest.mark.usefixtures("postgres_only")
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET action = 'nothing.happened' WHERE tenant_id = :t",
        "DELETE FROM audit_entries WHERE tenant_id = :t",
    ],
)
async def test_postgresql_refuses_to_change_audit_entries(
    client: GraphQLClient, server: Server, statement: str
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    engine = db.create_engine(server.settings)  # the application's role
    try:
        async with engine.connect() as conn:
            # In its own tenant, where row-level security lets it see every row.
            await db.scope_transaction(conn, tenant_ids=[tenant_id])
            assert await conn.scalar(
                text("SELECT count(*) FROM audit_entries WHERE tenant_id = :t"), {"t": tenant_id}
            )
            with pytest.raises(DBAPIError, match="audit_entries is append-only"):
                await conn.execute(text(statement), {"t": tenant_id})
            await conn.rollback()
    finally:
        await engine.dispose()
    # Not even the table's owner, without switching triggers off.
    with pytest.raises(DBAPIError, match="audit_entries is append-only"):
        async with owner_connection(server) as conn:
            await conn.execute(text(statement), {"t": tenant_id})
    assert (await verify(client, owner, tenant_id))["ok"] is True


def test_only_retention_deletes_audit_entries_and_nothing_updates_them() -> None:
    """The trigger would turn such code into an error at run time; this finds it first. The
    one deleter is retention (``services/audit_retention.py``), run by the worker role."""
    from pathlib import Path

    package = Path(__file__).resolve().parent.parent / "coregraph"
    offenders = []
    for path in package.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        source = path.read_text().lower()
        needles = [
            "update audit_entries",
            "update(auditentry",
            "update(_audit)",
            "update(_audit.",
            "truncate audit_entries",
            "truncate table audit_entries",
        ]
        if path.name != "audit_retention.py":
            needles += ["delete from audit_entries", "delete(auditentry", "delete(_audit"]
        offenders += [f"{path.name}: {needle}" for needle in needles if needle in source]
    assert offenders == []
    retention = (package / "services" / "audit_retention.py").read_text().lower()
    assert "delete(_audit" in retention, "the test no longer sees how retention deletes"


# --- auditLog --------------------------------------------------------------------------------


async def test_audit_log_filters_by_actor_action_target_environment_and_time(
    client: GraphQLClient,
) -> None:
    owner, tenant_id = await busy_tenant(client)
    everything = await entries(client, owner, tenant_id)
    assert [e["position"] for e in everything] == sorted(
        (e["position"] for e in everything), reverse=True
    )
    # Each entry links to the one before it.
    by_position = {e["position"]: e for e in everything}
    for position, entry in by_position.items():
        previous = by_position.get(position - 1)
        assert entry["previousHash"] == (previous["hash"] if previous else "")
        assert len(entry["hash"]) == 64

    members = await entries(client, owner, tenant_id, action="member.")
    assert members and all(e["action"].startswith("member.") for e in members)
    assert {e["id"] for e in members} == {
        e["id"] for e in everything if e["action"].startswith("member.")
    }
    # LIKE's wildcards are plain characters in a prefix.
    assert await entries(client, owner, tenant_id, action="%") == []
    assert await entries(client, owner, tenant_id, action="member_") == []

    owner_actions = await entries(client, owner, tenant_id, actorId=owner.user_id)
    assert owner_actions and all(e["actorId"] == owner.user_id for e in owner_actions)
    assert len(owner_actions) < len(everything)

    target = next(e["targetId"] for e in everything if e["action"] == "role.created")
    assert [e["targetId"] for e in await entries(client, owner, tenant_id, targetId=target)] == [
        target
    ]
    test_only = await entries(client, owner, tenant_id, environment="TEST")
    assert [e["action"] for e in test_only] == ["api_key.created"]

    # A time range is [from, to): the middle entries by their own timestamps.
    ordered = sorted(everything, key=lambda e: e["position"])
    start, end = ordered[3]["createdAt"], ordered[8]["createdAt"]
    middle = await entries(client, owner, tenant_id, **{"from": start, "to": end})
    expected = [e["id"] for e in everything if start <= e["createdAt"] < end]
    assert [e["id"] for e in middle] == expected and len(expected) >= 5
    later = datetime.fromisoformat(ordered[-1]["createdAt"]) + timedelta(seconds=1)
    assert await entries(client, owner, tenant_id, **{"from": later.isoformat()}) == []

    # Filters combine, and keep the keyset pagination.
    r = await client.execute(
        ENTRIES, {"first": 2, "action": "role."}, actor=owner, tenant_id=tenant_id
    )
    page = r.ok()["tenant"]["auditLog"]
    assert page["totalCount"] == 3 and page["pageInfo"]["hasNextPage"] is True
    r = await client.execute(
        ENTRIES,
        {"first": 2, "action": "role.", "after": page["pageInfo"]["endCursor"]},
        actor=owner,
        tenant_id=tenant_id,
    )
    rest = r.ok()["tenant"]["auditLog"]["nodes"]
    assert [e["action"] for e in page["nodes"] + rest] == ["role.created"] * 3


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        # Not a cursor of an audit list: an events cursor, and an id cursor of another list.
        ({"after": "c2VxOjE"}, "after"),
        ({"after": "YzE6dXNyXzAx"}, "after"),
        ({"action": "  "}, "action"),
        ({"action": "x" * 81}, "action"),
        ({"actorId": "usr_" + "x" * 40}, "actorId"),
        ({"targetId": "not-an-id"}, "targetId"),
        ({"from": "2026-12-02T08:00:00"}, "from"),
        ({"from": "2026-12-02T09:00:00Z", "to": "2026-12-02T08:00:00Z"}, "to"),
    ],
)
async def test_bad_audit_log_filters_are_bad_input(
    client: GraphQLClient, filters: dict[str, str], field: str
) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    r = await client.execute(ENTRIES, filters, actor=owner, tenant_id=tenant_id)
    assert r.codes == ["BAD_USER_INPUT"], r.body
    assert r.errors[0]["extensions"]["field"] == field


# --- viewer.securityLog ----------------------------------------------------------------------


async def test_a_user_reads_their_own_security_log_and_nobody_else_does(
    client: GraphQLClient,
) -> None:
    ada = await client.sign_up()
    r = await client.execute(
        """mutation($input: LoginInput!) { login(input: $input) { refreshToken } }""",
        {"input": {"email": ada.email, "password": "correct-horse-battery-staple"}},
    )
    refresh = r.ok()["login"]["refreshToken"]
    r = await client.execute(
        "mutation($t: String!) { refreshSession(refreshToken: $t) { accessToken } }",
        {"t": refresh},
    )
    r.ok()
    tenant_id = await client.create_tenant(ada)  # a tenant's entry: not in the security log

    r = await client.execute(SECURITY_LOG, actor=ada)
    log = r.ok()["viewer"]["securityLog"]["nodes"]
    assert [e["action"] for e in log] == [
        "session.refreshed",
        "session.created",
        "session.created",
        "user.signed_up",
    ]
    assert [e["position"] for e in log] == [4, 3, 2, 1]
    assert all(e["actorId"] == ada.user_id for e in log)
    assert log[0]["previousHash"] == log[1]["hash"] and log[-1]["previousHash"] == ""

    # Paginated, newest first.
    r = await client.execute(SECURITY_LOG, {"first": 3}, actor=ada)
    first = r.ok()["viewer"]["securityLog"]
    assert first["pageInfo"]["hasNextPage"] is True
    r = await client.execute(
        SECURITY_LOG, {"first": 3, "after": first["pageInfo"]["endCursor"]}, actor=ada
    )
    second = r.ok()["viewer"]["securityLog"]
    assert [e["id"] for e in first["nodes"] + second["nodes"]] == [e["id"] for e in log]
    assert second["pageInfo"]["hasNextPage"] is False

    # Grace, in the same tenant with every right there, sees only her own log ...
    grace = await client.add_member(ada, tenant_id, "admin")
    r = await client.execute(SECURITY_LOG, actor=grace, tenant_id=tenant_id)
    theirs = r.ok()["viewer"]["securityLog"]["nodes"]
    assert theirs and all(e["actorId"] == grace.user_id for e in theirs)
    assert not {e["id"] for e in theirs} & {e["id"] for e in log}
    # ... not Ada's entries by id, through node or _entities ...
    for entry in log:
        r = await client.execute(
            "query($id: ID!) { node(id: $id) { id } }",
            {"id": entry["id"]},
            actor=grace,
            tenant_id=tenant_id,
        )
        assert r.codes == ["NOT_FOUND"] and r.data == {"node": None}, r.body
        r = await client.execute(
            """query($r: [_Any!]!) { _entities(representations: $r) {
                ... on AuditEntry { id action } } }""",
            {"r": [{"__typename": "AuditEntry", "id": entry["id"]}]},
            actor=grace,
            tenant_id=tenant_id,
        )
        assert r.codes == ["NOT_FOUND"] and r.data == {"_entities": [None]}, r.body
        # ... nor through the tenant's audit log.
        assert await entries(client, grace, tenant_id, targetId=entry["id"]) == []
    assert not {e["id"] for e in await entries(client, grace, tenant_id)} & {e["id"] for e in log}
    # Nor by reaching Ada as a colleague.
    r = await client.execute(
        "{ tenant { members { nodes { user { id securityLog { nodes { id } } } } } } }",
        actor=grace,
        tenant_id=tenant_id,
    )
    assert "FORBIDDEN" in r.codes
    users = [m["user"] for m in r.data["tenant"]["members"]["nodes"] if m["user"]]
    assert all(u["securityLog"] is None for u in users if u["id"] == ada.user_id)


async def test_an_api_key_has_no_security_log(client: GraphQLClient) -> None:
    owner = await client.sign_up()
    tenant_id = await client.create_tenant(owner)
    key = await client.api_key(owner, tenant_id, ["audit:read", "members:read"])
    r = await client.execute(SECURITY_LOG, actor=key)
    assert r.ok() == {"viewer": None}
    r = await client.execute(
        "{ tenant { members { nodes { user { securityLog { nodes { id } } } } } } }", actor=key
    )
    assert r.codes == ["FORBIDDEN"]


# --- export ----------------------------------------------------------------------------------


async def export(
    http: httpx.AsyncClient,
    server: Server,
    actor: Actor | None,
    tenant_id: str | None = None,
    **params: str,
) -> httpx.Response:
    headers = actor.headers(tenant_id) if actor else {}
    return await http.get(f"{server.base_url}/audit/export", params=params, headers=headers)


def parse_jsonl(body: bytes) -> list[dict[str, Any]]:
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()]


async def test_export_streams_every_entry_once_in_order_as_jsonl_and_csv(
    client: GraphQLClient, http: httpx.AsyncClient, server: Server
) -> None:
    owner, tenant_id = await busy_tenant(client)
    await create_roles(client, owner, tenant_id, 300)
    total = (await verify(client, owner, tenant_id))["checked"]
    assert total > 300

    response = await export(http, server, owner, tenant_id)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = parse_jsonl(response.content)
    assert [line["position"] for line in lines] == list(range(1, total + 1))
    assert len({line["id"] for line in lines}) == total
    assert {line["tenant_id"] for line in lines} == {tenant_id}
    assert all(line["previous_hash"] == prev["hash"] for prev, line in itertools.pairwise(lines))
    assert lines[0]["action"] == "tenant.created"

    response = await export(http, server, owner, tenant_id, format="csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["id"] for row in rows] == [line["id"] for line in lines]
    assert [orjson.loads(row["changes"]) for row in rows] == [line["changes"] for line in lines]
    assert rows[0]["acting_for_user_id"] == "" and rows[0]["hash"] == lines[0]["hash"]

    # A time range: [from, to).
    start, end = lines[100]["created_at"], lines[250]["created_at"]
    response = await export(http, server, owner, tenant_id, **{"from": start, "to": end})
    ranged = parse_jsonl(response.content)
    assert [line["id"] for line in ranged] == [
        line["id"] for line in lines if start <= line["created_at"] < end
    ]
    assert len(ranged) >= 150

    # An API key with audit:read exports its own tenant.
    key = await client.api_key(owner, tenant_id, ["audit:read"])
    response = await export(http, server, key)
    assert response.status_code == 200
    assert len(parse_jsonl(response.content)) == total + 1  # and its own creation


async def test_export_reads_in_keyset_batches(client: GraphQLClient, server: Server) -> None:
    """Batches continue where the last one ended: nothing twice, nothing left out."""
    _owner, tenant_id = await busy_tenant(client)
    engine = db.create_engine(server.settings)
    try:
        whole = [row.id async for row in export_entries(engine, tenant_id)]
        batched = [row.id async for row in export_entries(engine, tenant_id, batch=4)]
        exact = [row.id async for row in export_entries(engine, tenant_id, batch=len(whole))]
    finally:
        await engine.dispose()
    assert batched == whole == exact and len(whole) >= 12


async def test_export_refuses_who_may_not_read_the_trail(
    client: GraphQLClient, http: httpx.AsyncClient, server: Server
) -> None:
    owner, tenant_id = await busy_tenant(client)
    member = await client.add_member(owner, tenant_id, "member")
    stranger = await client.sign_up()
    stranger_tenant = await client.create_tenant(stranger)
    narrow_key = await client.api_key(owner, tenant_id, ["tenant:read"])

    cases: list[tuple[Actor | None, str | None, int, str]] = [
        (None, None, 401, "UNAUTHENTICATED"),
        (member, tenant_id, 403, "FORBIDDEN"),
        (narrow_key, None, 403, "FORBIDDEN"),
        (stranger, tenant_id, 403, "FORBIDDEN"),  # another tenant's id
        (owner, None, 403, "FORBIDDEN"),  # no tenant addressed
    ]
    owner.tenant_id = None
    for actor, tenant, status, code in cases:
        response = await export(http, server, actor, tenant)
        assert response.status_code == status, (actor, response.text)
        body = response.json()
        assert body["errors"][0]["extensions"]["code"] == code
        assert body["errors"][0]["extensions"]["requestId"] == response.headers["x-request-id"]
    # The stranger exports their own tenant, and sees nothing of the other.
    response = await export(http, server, stranger, stranger_tenant)
    assert {line["tenant_id"] for line in parse_jsonl(response.content)} == {stranger_tenant}

    for params, field in (
        ({"format": "xml"}, "format"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-12-02T08:00:00"}, "to"),
        ({"from": "2026-12-02T09:00:00Z", "to": "2026-12-02T08:00:00Z"}, "to"),
    ):
        response = await export(http, server, owner, tenant_id, **params)
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"] == {
            "code": "BAD_USER_INPUT",
            "field": field,
            "requestId": response.headers["x-request-id"],
        }
