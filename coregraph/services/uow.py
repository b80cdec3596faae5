"""The one write path (DESIGN.md, "The one rule").

Every change to production truth runs inside a ``UnitOfWork``: one database transaction that
applies the change and appends its audit entries (``record``) and its domain events (``emit``),
so they commit or roll back with the change itself. What must happen only once the change is
durable — wake the outbox relay, drop a request's cached reads — is registered with
``on_commit`` and runs after the commit, never after a rollback. The GraphQL context, the CLI
and external-login provisioning all write through this one class.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from sqlalchemy import Table, insert, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.event import listens_for
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from coregraph import db, ids, telemetry
from coregraph.auth.principal import Principal, PrincipalKind
from coregraph.errors import CoregraphError, Forbidden
from coregraph.group_commit import CommitAlone, GroupCommit
from coregraph.models import AuditEntry, Event, StreamHead
from coregraph.models.base import Environment, utcnow
from coregraph.request import RequestMeta
from coregraph.services import usage_store
from coregraph.services.audit import entry_hash

log = logging.getLogger("coregraph.uow")

REDACTED = "[redacted]"
SECRET_FIELDS = frozenset(
    {
        "password",
        "password_hash",
        "secret",
        "secret_hash",
        "token",
        "token_hash",
        "refresh_token",
        "refresh_token_hash",
    }
)


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """Before/after of the fields that changed, secrets redacted."""
    before = before or {}
    after = after or {}
    changed: dict[str, Any] = {"before": {}, "after": {}}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new and key in before and key in after:
            continue
        if key in SECRET_FIELDS:
            old = REDACTED if old is not None else None
            new = REDACTED if new is not None else None
        if key in before:
            changed["before"][key] = _jsonable(old)
        if key in after:
            changed["after"][key] = _jsonable(new)
    return changed


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value)
    return value


AfterCommit = Callable[[], Awaitable[None] | None]

_EVENTS: Table = Event.__table__  # type: ignore[assignment]


@dataclass(slots=True, eq=False)
class StatedEvent:
    """An event stated in a unit of work: the row of the events table (the outbox) it becomes
    as the unit of work commits, ``sequence`` given then. A plain record rather than an ORM
    object: a batch of events is one multi-row insert, without the ORM's per-object state."""

    id: str
    tenant_id: str
    environment: Environment
    type: str
    occurred_at: datetime
    actor_kind: str
    actor_id: str | None
    acting_for_user_id: str | None
    data: dict[str, Any]
    idempotency_key: str | None
    request_id: str | None
    trace_parent: str | None = None
    support_session_id: str | None = None
    sequence: int | None = None

    def row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _STATED_EVENT_FIELDS}


_STATED_EVENT_FIELDS = tuple(field.name for field in fields(StatedEvent))
# Columns of a chain's events passed as arrays to _ADVANCE_AND_INSERT (tenant_id is the chain,
# sequence is computed there), with their PostgreSQL array types.
_FUSED_COLUMNS = {
    "id": "text[]",
    "environment": "text[]",
    "type": "text[]",
    "occurred_at": "timestamptz[]",
    "actor_kind": "text[]",
    "actor_id": "text[]",
    "acting_for_user_id": "text[]",
    "data": "text[]",
    "idempotency_key": "text[]",
    "request_id": "text[]",
    "trace_parent": "text[]",
    "support_session_id": "text[]",
}
_FUSED_VALUES = [name for name in _FUSED_COLUMNS if name != "id"]
# append_events() (migration 0016) predates support sessions: events stated under one take the
# in-transaction path (_advance_and_insert), which writes every column.
_APPENDED_COLUMNS = {k: v for k, v in _FUSED_COLUMNS.items() if k != "support_session_id"}
_ADVANCE_AND_INSERT = text(
    "WITH head AS ("
    " UPDATE stream_heads SET event_sequence = event_sequence + :count"
    " WHERE chain_id = :chain_id RETURNING event_sequence - :count AS base"
    "), inserted AS ("
    f" INSERT INTO events (id, tenant_id, sequence, {', '.join(_FUSED_VALUES)})"
    " SELECT e.id, :chain_id, head.base + e.n, "
    + ", ".join("e.data::jsonb" if name == "data" else f"e.{name}" for name in _FUSED_VALUES)
    + " FROM head, unnest("
    + ", ".join(f"CAST(:{name} AS {kind})" for name, kind in _FUSED_COLUMNS.items())
    + f") WITH ORDINALITY AS e({', '.join(_FUSED_COLUMNS)}, n) RETURNING 1"
    ") SELECT base FROM head"
)


# Migration 0013 (and 0016's trace_parents): scopes its own (autocommitted) transaction,
# advances the chain's head and inserts its events; the same columns as _ADVANCE_AND_INSERT.
_APPEND_EVENTS = text(
    "SELECT append_events(:tenant_ids, :user_id, :api_key_hash, :invitation_token_hash,"
    " :chain_id, "
    + ", ".join(f"CAST(:{name} AS {kind})" for name, kind in _APPENDED_COLUMNS.items())
    + ")"
)
# _APPEND_EVENTS and the usage records of the same unit of work, with their hourly rollups
# (services.usage_store), in one statement: the inserts read the function's result, so they
# run after the function has scoped the transaction (for row-level security) and appended the
# events, and the statement's autocommit covers all three.
_USAGE_COLUMNS = {
    "id": "text[]",
    "tenant_id": "text[]",
    "environment": "text[]",
    "meter": "text[]",
    "quantity": "numeric[]",
    "occurred_at": "timestamptz[]",
    "dimensions": "text[]",
    "idempotency_key": "text[]",
    "recorded_at": "timestamptz[]",
}
_ROLLUP_COLUMNS = {
    "tenant_id": "text[]",
    "environment": "text[]",
    "meter": "text[]",
    "hour": "timestamptz[]",
    "dimensions_key": "text[]",
    "dimensions": "text[]",
    "quantity_sum": "numeric[]",
    "record_count": "bigint[]",
    "quantity_max": "numeric[]",
}


def _unnest_insert(table: str, columns: dict[str, str], prefix: str) -> str:
    return (
        f" INSERT INTO {table} ({', '.join(columns)}) SELECT "
        + ", ".join(
            f"{prefix}.{n}::jsonb" if n == "dimensions" else f"{prefix}.{n}" for n in columns
        )
        + " FROM appended, unnest("
        + ", ".join(f"CAST(:{prefix}_{name} AS {kind})" for name, kind in columns.items())
        + f") AS {prefix}({', '.join(columns)})"
    )


_APPEND_EVENTS_AND_USAGE = text(
    "WITH appended AS MATERIALIZED ("
    + _APPEND_EVENTS.text
    + " AS base), metered AS ("
    + _unnest_insert("usage_records", _USAGE_COLUMNS, "usage")
    + " RETURNING 1), rolled AS ("
    + _unnest_insert("usage_rollups", _ROLLUP_COLUMNS, "rollup")
    + " ON CONFLICT (tenant_id, environment, meter, hour, dimensions_key) DO UPDATE SET"
    " quantity_sum = usage_rollups.quantity_sum + EXCLUDED.quantity_sum,"
    " record_count = usage_rollups.record_count + EXCLUDED.record_count,"
    " quantity_max = GREATEST(usage_rollups.quantity_max, EXCLUDED.quantity_max)"
    " RETURNING 1) SELECT base FROM appended"
)
_SCOPE = "coregraph_scope"


class _ScopedSession(Session):
    """A unit of work's session: the transaction it begins (at its first statement, not
    before) is scoped for row-level security by its first statement on the connection."""


@listens_for(_ScopedSession, "after_begin")
def _scope_on_begin(session: Session, _transaction: SessionTransaction, conn: Connection) -> None:
    scope = session.info.get(_SCOPE)
    if scope is not None and conn.dialect.name == "postgresql":
        conn.execute(db.SCOPE_STATEMENT, scope)


def _json_text(data: Any) -> str:
    try:
        return orjson.dumps(data).decode()
    except TypeError:  # what orjson refuses (an integer past 64 bits) json may still write
        return json.dumps(data)


def _columns(
    rows: list[dict[str, Any]], names: dict[str, str], prefix: str
) -> dict[str, list[Any]]:
    """``rows`` as one array parameter per column (``unnest``), named ``<prefix>_<column>``."""
    columns: dict[str, list[Any]] = {f"{prefix}_{name}": [] for name in names}
    for row in rows:
        for name in names:
            value = row[name]
            if name == "environment":
                value = str(value)
            elif name == "dimensions":
                value = _json_text(value)
            columns[f"{prefix}_{name}"].append(value)
    return columns


@dataclass(slots=True, eq=False)
class _Append:
    """One unit of work's events-only commit (``UnitOfWork._append_events``)."""

    chain_id: str
    scope: dict[str, str]
    events: list[StatedEvent]
    usage: list[dict[str, Any]]


async def _append_together(engine: AsyncEngine, appends: list[_Append]) -> list[int]:
    """Commit ``appends`` (one chain, one scope) in one autocommitted call of
    ``append_events()``: their events numbered in turn, their usage records and rollups in the
    same statement. Each one's sequence base (its first event is base + 1)."""
    first = appends[0]
    events = [event for append in appends for event in append.events]
    usage = [row for append in appends for row in append.usage]
    parameters = {**first.scope, **_event_columns(first.chain_id, events)}
    del parameters["support_session_id"]
    statement = _APPEND_EVENTS
    if usage:
        statement = _APPEND_EVENTS_AND_USAGE
        parameters.update(_columns(usage, _USAGE_COLUMNS, "usage"))
        parameters.update(_columns(usage_store.rollup_rows(usage), _ROLLUP_COLUMNS, "rollup"))
    row = await db.fetch_autocommitted(engine, statement, parameters)
    assert row is not None  # one row, one column: the sequence base
    base = int(next(iter(row.values())))
    bases = []
    for append in appends:
        bases.append(base)
        base += len(append.events)
    return bases


def _refused(error: Exception) -> bool:
    """The database refused the statement (so nothing of it committed), rather than the
    connection failing with the outcome unknown."""
    return isinstance(error, DBAPIError) and not error.connection_invalidated


# A call carries at most this many events (a batch of emitEvents larger still goes alone).
GROUPED_EVENTS_LIMIT = 1000
_GROUP_COMMITS: WeakKeyDictionary[AsyncEngine, GroupCommit[_Append, int]] = WeakKeyDictionary()


def _group_commit(engine: AsyncEngine) -> GroupCommit[_Append, int]:
    group = _GROUP_COMMITS.get(engine)
    if group is None:
        group = _GROUP_COMMITS[engine] = GroupCommit(
            partial(_append_together, engine),
            lambda append: len(append.events),
            GROUPED_EVENTS_LIMIT,
            _refused,
        )
    return group


def _event_columns(chain_id: str, sequenced: list[StatedEvent]) -> dict[str, Any]:
    columns: dict[str, Any] = {name: [] for name in _FUSED_COLUMNS}
    for stated in sequenced:
        for name, values in columns.items():
            values.append(getattr(stated, name))
    columns["data"] = [_json_text(data) for data in columns["data"]]
    return {"chain_id": chain_id, "count": len(sequenced), **columns}


class UnitOfWork:
    """``async with UnitOfWork(...) as uow:`` — commit on success, roll back on any exception."""

    def __init__(self, engine: AsyncEngine, principal: Principal, meta: RequestMeta) -> None:
        self.engine = engine
        self.principal = principal
        self.meta = meta
        # Made at its first use (``session``): an events-only unit of work on PostgreSQL
        # commits without one (``_append_events``), and building, committing and closing an
        # unused session cost about a tenth of an emitEvent's CPU.
        self._session: AsyncSession | None = None
        self._scope_parameters: dict[str, str] = {}
        self.audit_entries: list[AuditEntry] = []
        self.events: list[StatedEvent] = []
        # Usage records written with the commit (record_usage), and records written whose
        # rollups are added with it (insert_usage).
        self.usage: list[dict[str, Any]] = []
        self._rollups_due: list[dict[str, Any]] = []
        self._after_commit: list[AfterCommit] = []
        self._keep_on_failure = False
        # Set by a change that makes webhook deliveries due now (a retry, a replay, a test
        # send, an endpoint enabled again): the workers are woken after the commit instead of
        # finding them at their next poll. Deliveries of new events are the relay's to wake.
        self.webhooks_due = False

    @property
    def session(self) -> AsyncSession:
        """This unit of work's session; its transaction begins with its first statement."""
        if self._session is None:
            self._session = AsyncSession(
                self.engine, expire_on_commit=False, sync_session_class=_ScopedSession
            )
            self._session.info[_SCOPE] = self._scope_parameters
        return self._session

    async def __aenter__(self) -> UnitOfWork:
        if self.principal.read_only:
            # The second wall behind the schema's refusal of mutations (schema.support_mode):
            # a READ support session writes nothing, by any path (REST routes included).
            raise Forbidden("this support session is read-only: nothing can be changed under it")
        # The transaction begins with the first statement (scoped then, _scope_on_begin): a
        # unit of work that only states events sends none before its commit, which is then
        # one autocommitted call on PostgreSQL (_append_events).
        self._tenant_ids = set(self.principal.tenant_scopes)
        self._invitation_token_hash: str | None = None
        self._user_id = self.principal.user_id
        await self._scope()
        return self

    async def _scope(self) -> None:
        """Scope this transaction as the unit of work now stands, once it has begun."""
        self._scope_parameters = db.scope_parameters(
            tenant_ids=self._tenant_ids,
            user_id=self._user_id,
            invitation_token_hash=self._invitation_token_hash,
        )
        session = self._session
        if session is None:
            return  # scoped as it is made (``session``) and as its transaction begins
        session.info[_SCOPE] = self._scope_parameters
        if session.in_transaction() and self.engine.dialect.name == "postgresql":
            await session.execute(db.SCOPE_STATEMENT, self._scope_parameters)

    async def allow_tenant(self, tenant_id: str) -> None:
        """This transaction creates or joins ``tenant_id``: let row-level security admit it."""
        self._tenant_ids.add(tenant_id)
        await self._scope()

    async def reveal_user(self, user_id: str) -> None:
        """Let this transaction see ``user_id``'s own rows (their memberships), as a
        transaction acting for them does: a system command deciding about that user."""
        self._user_id = user_id
        await self._scope()

    async def reveal_invitation(self, token_hash: str) -> None:
        """Let this transaction find the invitation whose token the caller holds."""
        self._invitation_token_hash = token_hash
        await self._scope()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        committed = False
        try:
            if exc_type is None or self._keep_on_failure:
                await self._append_to_streams()
                if self._session is not None:
                    await self._session.commit()
                committed = True
            elif self._session is not None:
                await self._session.rollback()
        finally:
            if self._session is not None:
                await self._session.close()
        if committed:
            await self._run_after_commit()

    def on_commit(self, hook: AfterCommit) -> None:
        """Run ``hook`` (plain or async) once this unit of work has committed; hooks run in the
        order they were registered, and not at all when it rolls back."""
        self._after_commit.append(hook)

    async def _run_after_commit(self) -> None:
        for hook in self._after_commit:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # The change is committed: a failing follow-up must neither undo it nor turn
                # the caller's success into an error. It is logged with its stack instead.
                log.exception("after-commit hook failed", extra={"hook": repr(hook)})

    def emit(
        self,
        type: str,
        *,
        tenant_id: str,
        data: Mapping[str, Any] | None = None,
        environment: Environment | None = None,
        idempotency_key: str | None = None,
    ) -> StatedEvent:
        """State a domain event in this transaction: it is written to the outbox (the events
        table) with the tenant's next sequence number as the unit of work commits, and exists
        if and only if the change does."""
        actor_kind, actor = self._actor(None)
        event = StatedEvent(
            id=ids.new_id("evt"),
            tenant_id=tenant_id,
            environment=environment or self.principal.environment,
            type=type,
            occurred_at=utcnow(),
            actor_kind=actor_kind,
            actor_id=actor,
            acting_for_user_id=self.principal.acting_for_user_id,
            data=dict(data or {}),
            idempotency_key=idempotency_key,
            request_id=self.meta.request_id,
            # None (one global read) unless tracing is on.
            trace_parent=telemetry.current_traceparent(),
            support_session_id=self.principal.support_session_id,
        )
        self.events.append(event)
        return event

    async def insert_usage(self, rows: list[dict[str, Any]]) -> None:
        """Insert usage records (``services.usage.usage_row``) now — later reads in this
        transaction see them — and add them to their hourly rollups with the commit, after
        the streams' heads (``_add_rollups``)."""
        await usage_store.insert_records(self.session, rows)
        self._rollups_due.extend(rows)

    def record_usage(self, rows: list[dict[str, Any]]) -> None:
        """Usage records (``services.usage.usage_row``) written with this unit of work's commit,
        for a built-in meter whose count needs no read before it: on PostgreSQL an events-only
        unit of work then still commits in one statement (``_append_events``)."""
        self.usage.extend(rows)

    async def _append_to_streams(self) -> None:
        """Give this transaction's audit entries their chain positions and hashes, and its
        events their sequence numbers, then write them, with the usage recorded for the commit.

        Runs last, just before the commit: each chain's head row is locked by the update that
        advances it (a row lock on PostgreSQL, the write lock on SQLite) until the commit, so
        positions are handed out in commit order per tenant and no stream cursor can skip a row
        that commits late. Chains are taken in sorted order, so two units of work never wait
        on each other in a cycle.
        """
        if await self._append_events():
            return
        if self.usage:
            # Before the heads below are advanced (they stay locked until the commit); their
            # rollups after them (``_add_rollups``).
            await usage_store.insert_records(self.session, self.usage)
            self._rollups_due.extend(self.usage)
        await self._advance_streams()
        await self._add_rollups()

    async def _add_rollups(self) -> None:
        """The hourly rollups of the usage this transaction wrote, last: every writer takes a
        tenant's stream head before its rollup rows (the one-statement commit does so inside
        its statement), so two commits never wait on each other in a cycle over a hot rollup
        row (they did: deadlocks under concurrent emitEvent, bench.ingest)."""
        if self._rollups_due:
            await usage_store.add_rollups(self.session, self._rollups_due)
            self._rollups_due = []

    async def _advance_streams(self) -> None:
        if not self.audit_entries and not self.events:
            return
        entries: dict[str, list[AuditEntry]] = {}
        for entry in self.audit_entries:
            entries.setdefault(entry.chain_id, []).append(entry)
        events: dict[str, list[StatedEvent]] = {}
        for event in self.events:
            events.setdefault(event.tenant_id, []).append(event)
        heads: Table = StreamHead.__table__  # type: ignore[assignment]
        inserted: list[StatedEvent] = []
        for chain_id in sorted(entries.keys() | events.keys()):
            chained, sequenced = entries.get(chain_id, []), events.get(chain_id, [])
            if chain_id not in self._tenant_ids and chain_id != self._user_id:
                # A user's own security log (sign-up, login): row-level security admits its
                # head to a transaction acting for that user.
                self._user_id = chain_id
                await self._scope()
            if not chained and self.engine.dialect.name == "postgresql":
                # Events only (what emitEvent(s) write): the head's advance and the insert in
                # one statement, so the head stays locked for that statement and the commit,
                # not for a further round trip.
                await self._advance_and_insert(heads, chain_id, sequenced)
                continue
            inserted += sequenced
            audit_position, previous, event_sequence = await self._advance(
                heads, chain_id, len(chained), len(sequenced)
            )
            position = audit_position - len(chained)
            for entry in chained:
                position += 1
                entry.position = position
                entry.previous_hash = previous
                entry.hash = previous = entry_hash(entry, previous)
            if chained:
                await self.session.execute(
                    update(heads).where(heads.c.chain_id == chain_id).values(audit_hash=previous)
                )
            sequence = event_sequence - len(sequenced)
            for event in sequenced:
                sequence += 1
                event.sequence = sequence
        if self.audit_entries:
            self.session.add_all(self.audit_entries)
            await self.session.flush()
        if inserted:
            await self.session.execute(insert(_EVENTS), [event.row() for event in inserted])

    async def _append_events(self) -> bool:
        """PostgreSQL, a unit of work that only states events of one of its tenants and has
        sent no statement: scope, advance the head and insert them in one autocommitted call
        (migration 0013), so the head row is locked for that statement and its commit on the
        server, with no round trip to the client in between. Concurrent units of work of this
        process with the same chain and scope share the call (``group_commit``): one head
        advance and one WAL flush for all of them, each with its own numbers and outcome.
        False where it does not apply."""
        chain_id = self.events[0].tenant_id if self.events else None
        if (
            chain_id is None
            or self.audit_entries
            or self.engine.dialect.name != "postgresql"
            # (a row added, even unflushed, begins the session's transaction)
            or (self._session is not None and self._session.in_transaction())
            or chain_id not in self._tenant_ids
            or any(event.tenant_id != chain_id for event in self.events)
            or self.principal.support_session_id is not None
        ):
            return False
        scope = self._scope_parameters
        append = _Append(chain_id, scope, self.events, self.usage)
        try:
            base = await _group_commit(self.engine).submit((chain_id, *scope.values()), append)
        except CommitAlone:
            [base] = await _append_together(self.engine, [append])
        for number, stated in enumerate(self.events, start=base + 1):
            stated.sequence = number
        return True

    async def _advance_and_insert(
        self, heads: Table, chain_id: str, sequenced: list[StatedEvent]
    ) -> None:
        """PostgreSQL: move ``chain_id``'s event sequence forward by ``len(sequenced)`` and
        insert them, numbered from where it stood, in one statement (the head row stays
        locked until the commit, as with ``_advance``)."""
        parameters = _event_columns(chain_id, sequenced)
        base = (await self.session.execute(_ADVANCE_AND_INSERT, parameters)).scalar()
        if base is None:
            # The chain's first event: make its head (as _advance does), then go again.
            await self._advance(heads, chain_id, 0, 0)
            base = (await self.session.execute(_ADVANCE_AND_INSERT, parameters)).scalar_one()
        for number, event in enumerate(sequenced, start=int(base) + 1):
            event.sequence = number

    async def _advance(
        self, heads: Table, chain_id: str, audit_count: int, event_count: int
    ) -> tuple[int, str, int]:
        """Move ``chain_id``'s head forward and lock it; (last audit position, the hash at the
        old head, last event sequence) after the move."""
        advance = (
            update(heads)
            .where(heads.c.chain_id == chain_id)
            .values(
                audit_position=heads.c.audit_position + audit_count,
                event_sequence=heads.c.event_sequence + event_count,
            )
            .returning(heads.c.audit_position, heads.c.audit_hash, heads.c.event_sequence)
        )
        row = (await self.session.execute(advance)).first()
        if row is None:
            # The chain's first entry. A concurrent first writer may insert the head too: the
            # insert then does nothing and the update waits for that writer's commit.
            await self.session.execute(
                db.dialect_insert(self.engine.dialect.name, heads)
                .values(chain_id=chain_id, audit_position=0, audit_hash="", event_sequence=0)
                .on_conflict_do_nothing(index_elements=[heads.c.chain_id])
            )
            row = (await self.session.execute(advance)).one()
        return int(row.audit_position), str(row.audit_hash), int(row.event_sequence)

    async def flush_unique(self, conflict: CoregraphError) -> None:
        """Flush now; if a concurrent request won a unique constraint first (the check before
        it raced), answer ``conflict`` rather than an internal error."""
        try:
            await self.session.flush()
        except IntegrityError:
            raise conflict from None

    def keep_on_failure(self) -> None:
        """Commit what was written even though the operation then fails.

        Only for security reactions that must stick while the caller still gets an error
        (revoking a session whose rotated refresh token was replayed).
        """
        self._keep_on_failure = True

    def record(
        self,
        action: str,
        *,
        tenant_id: str | None,
        target_type: str | None = None,
        target_id: str | None = None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
        environment: Environment | None = None,
        actor_id: str | None = None,
    ) -> AuditEntry:
        """Append an audit entry to this transaction: it commits with the change or not at all.

        ``actor_id`` names the acting user when the request itself carries no principal but the
        action proves who acts (a password, a refresh token, an external identity token). A
        system principal (a CLI command) always names itself: ``system``, ``cli:create-user``,
        and the OS user in ``user_agent`` (``coregraph.request.system_request``).
        """
        actor_kind, actor = self._actor(actor_id)
        chain_id = tenant_id
        if chain_id is None:
            # Outside any tenant: the user's own security log (the user who acted, or the one
            # a system command acted on).
            chain_id = actor if actor_kind == PrincipalKind.USER.value else None
            if chain_id is None and target_type == "User":
                chain_id = target_id
        if chain_id is None:
            raise ValueError(f"{action}: an entry outside any tenant must concern a user")
        entry = AuditEntry(
            id=ids.new_id("aud"),
            tenant_id=tenant_id,
            environment=environment or self.principal.environment,
            actor_kind=actor_kind,
            actor_id=actor,
            acting_for_user_id=self.principal.acting_for_user_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            changes=diff(before, after),
            request_id=self.meta.request_id,
            ip=self.meta.ip,
            user_agent=self.meta.user_agent,
            created_at=utcnow(),
            chain_id=chain_id,
            support_session_id=self.principal.support_session_id,
        )
        # Written, with its place in the chain, as the unit of work commits.
        self.audit_entries.append(entry)
        return entry

    def _actor(self, actor_id: str | None) -> tuple[str, str | None]:
        """(actor kind, actor id) for an entry or an event: the principal, or the user an
        anonymous request proved it acts as (``actor_id``). A system principal always names
        itself."""
        principal = self.principal
        actor_kind, actor = principal.kind.value, principal.actor_id
        if actor_id is not None and principal.kind is not PrincipalKind.SYSTEM:
            if actor is None:
                actor_kind = PrincipalKind.USER.value
            actor = actor_id
        return actor_kind, actor
