"""The outbox relay: committed events and audit entries to the broker, in commit order.

A unit of work writes its events (the outbox) and audit entries with gap-free positions per
chain, in commit order (``coregraph.services.uow``). The relay publishes them, per chain in
position order, to ``events:{tenant}:{environment}`` and ``audit:{chain}``, and records how far
it got in ``relay_positions``. It finds work by comparing each chain's ``stream_heads`` row with
its own position, never by scanning the events table.

Delivery is at least once. A crash between commit and publish only delays: a restarted relay
resumes from the first unrecorded position. A crash after publishing and before recording
publishes those rows again, so subscribers drop what they already have by ``sequence``
(events) or ``position`` (audit entries).

Any number of relays may run on PostgreSQL: each chain's batch is published inside a short
transaction that holds its ``relay_positions`` row (``FOR UPDATE SKIP LOCKED``), so two relays
never publish one chain at the same time and a relay skips chains another one is serving.
On SQLite run a single relay (``coregraph serve`` does, in-process).

It wakes after every commit that appended to a stream (``wake_after_commit``: in-process, and
over Redis from other processes) and polls every ``COREGRAPH_RELAY_POLL_SECONDS`` for commits
nothing announced.

The events it publishes are also where webhooks start: the transaction that records a batch
as published schedules its deliveries (``coregraph.services.webhooks.schedule``), and once it
has committed the webhook workers are woken (``coregraph.streams.webhooks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
from sqlalchemy import BindParameter, Row, Table, bindparam, exists, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coregraph import db, telemetry
from coregraph.models import AuditEntry, Event, RelayPosition, StreamHead
from coregraph.services import webhooks
from coregraph.services.uow import UnitOfWork
from coregraph.streams.broker import Broker, Message, audit_topic, events_topic
from coregraph.streams.messages import audit_message, event_message

log = logging.getLogger("coregraph.relay")

_HEADS: Table = StreamHead.__table__  # type: ignore[assignment]
_POSITIONS: Table = RelayPosition.__table__  # type: ignore[assignment]
_EVENTS: Table = Event.__table__  # type: ignore[assignment]
_AUDIT: Table = AuditEntry.__table__  # type: ignore[assignment]

# A pass's statements, built once: a pass runs after every commit, and building them (and
# their cache keys from scratch) was about a fifth of its CPU.
# The chains with rows not yet published (or never seen: a new chain).
_BEHIND = (
    select(
        _HEADS.c.chain_id,
        _POSITIONS.c.chain_id.is_(None).label("new"),
        (
            _POSITIONS.c.chain_id.is_(None)
            | (_HEADS.c.event_sequence > _POSITIONS.c.events_published)
        ).label("events_behind"),
        (
            _POSITIONS.c.chain_id.is_(None)
            | (_HEADS.c.audit_position > _POSITIONS.c.audit_published)
        ).label("audit_behind"),
    )
    .select_from(_HEADS.outerjoin(_POSITIONS, _POSITIONS.c.chain_id == _HEADS.c.chain_id))
    .where(
        or_(
            _POSITIONS.c.chain_id.is_(None),
            _HEADS.c.event_sequence > _POSITIONS.c.events_published,
            _HEADS.c.audit_position > _POSITIONS.c.audit_published,
        )
    )
    .order_by(_HEADS.c.chain_id)
)
_CHAIN: BindParameter[str] = bindparam("chain")
_POSITION = select(_POSITIONS).where(_POSITIONS.c.chain_id == _CHAIN)
_CLAIM = _POSITION.with_for_update(skip_locked=True)
_EVENTS_AFTER = (
    # has_endpoints in the statement that reads the events, so in their snapshot.
    select(_EVENTS, webhooks.has_endpoints(_CHAIN))
    .where(_EVENTS.c.tenant_id == _CHAIN, _EVENTS.c.sequence > bindparam("published"))
    .order_by(_EVENTS.c.sequence)
)
_AUDIT_AFTER = (
    select(_AUDIT)
    .where(_AUDIT.c.chain_id == _CHAIN, _AUDIT.c.position > bindparam("published"))
    .order_by(_AUDIT.c.position)
)
_RECORD = (
    update(_POSITIONS)
    .where(_POSITIONS.c.chain_id == _CHAIN)
    .values(
        events_published=bindparam("events_to"),
        audit_published=bindparam("audit_to"),
    )
)


async def wake_after_commit(broker: Broker, uow: UnitOfWork) -> None:
    """An ``on_commit`` hook: wake the relay if the unit of work appended to a stream, and the
    webhook workers if it made deliveries due (``UnitOfWork.webhooks_due``)."""
    if uow.events or uow.audit_entries:
        await broker.wake_relay()
    if uow.webhooks_due:
        await broker.wake_webhooks()


class Relay:
    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        *,
        poll_seconds: float = 0.5,
        batch: int = 500,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.poll_seconds = poll_seconds
        self.batch = batch
        # PostgreSQL: several relays share the chains. SQLite: one relay, nothing to claim.
        self.claims = engine.dialect.name == "postgresql"
        self._claim = _CLAIM if self.claims else _POSITION
        self._events_after = _EVENTS_AFTER.limit(batch)
        self._audit_after = _AUDIT_AFTER.limit(batch)
        self._stop = asyncio.Event()
        self.published = 0

    async def run(self) -> None:
        """Publish until ``stop()``: a pass, then wait for a wake-up or the poll interval."""
        self._stop.clear()
        log.info("relay started", extra={"poll_seconds": self.poll_seconds})
        while not self._stop.is_set():
            try:
                if await self.publish_pending():
                    continue  # a full batch may have left more behind
            except Exception:
                # The database or the broker is away: nothing was recorded, so the same rows
                # are published on a later pass. Wait the poll interval rather than spin.
                log.exception("relay pass failed; retrying")
            await self._idle()
        log.info("relay stopped", extra={"published": self.published})

    def stop(self) -> None:
        self._stop.set()

    async def _idle(self) -> None:
        woken = asyncio.ensure_future(self.broker.wait_for_relay_work(self.poll_seconds))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({woken, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (woken, stopped):
                task.cancel()
            await asyncio.gather(woken, stopped, return_exceptions=True)

    async def publish_pending(self) -> int:
        """One pass over every chain with unpublished rows; how many messages it published."""
        # Autocommitted: one statement (two for a new chain), no transaction around it. At a
        # pass per commit, BEGIN and COMMIT were two of a pass's eleven round trips.
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            behind = (await conn.execute(_BEHIND)).all()
            if any(row.new for row in behind):
                await self._add_new_chains(conn)
        published = 0
        failed = None
        for row in behind:
            try:
                published += await self._publish_chain(
                    row.chain_id, events=bool(row.events_behind), audit=bool(row.audit_behind)
                )
            except Exception as exc:
                # One chain that cannot be published (its rows stay unrecorded, so they are
                # tried again) must not hold back every other tenant's stream.
                failed = failed or exc
                log.exception("relay could not publish a chain", extra={"chain_id": row.chain_id})
        self.published += published
        if failed is not None and not published:
            raise failed
        return published

    async def _add_new_chains(self, conn: AsyncConnection) -> None:
        missing = select(_HEADS.c.chain_id, literal(0), literal(0)).where(
            ~exists().where(_POSITIONS.c.chain_id == _HEADS.c.chain_id)
        )
        await conn.execute(
            db.dialect_insert(conn.dialect.name, _POSITIONS)
            .from_select(["chain_id", "events_published", "audit_published"], missing)
            .on_conflict_do_nothing(index_elements=[_POSITIONS.c.chain_id])
        )

    async def _publish_chain(
        self, chain_id: str, *, events: bool = True, audit: bool = True
    ) -> int:
        """Publish the chain's next batch; ``events``/``audit`` False when the pass found that
        stream of the chain caught up, so it is not read (what commits after the pass read
        the heads wakes the relay for another pass, and the poll catches the rest)."""
        async with self.engine.begin() as conn:
            position = (await conn.execute(self._claim, {"chain": chain_id})).first()
            if position is None:
                return 0  # another relay is publishing this chain right now
            after = {"chain": chain_id}
            event_rows: Sequence[Row[Any]] = ()
            if events:
                after["published"] = position.events_published
                event_rows = (await conn.execute(self._events_after, after)).all()
            entries: Sequence[Row[Any]] = ()
            if audit:
                after["published"] = position.audit_published
                entries = (await conn.execute(self._audit_after, after)).all()
            published = _contiguous(event_rows, "sequence", position.events_published)
            entries = _contiguous(entries, "position", position.audit_published)
            if not published and not entries:
                return 0
            messages: list[tuple[str, bytes | Message]] = [
                (events_topic(row.tenant_id, row.environment), encoded(event_message(row)))
                for row in published
            ]
            messages += [(audit_topic(chain_id), encoded(audit_message(row))) for row in entries]
            with _tracing(chain_id, published, len(messages)):
                await self.broker.publish_many(messages)
                # Webhook deliveries of these events, in the transaction that records them as
                # published: a crash before the commit schedules them again with the rows, and
                # the unique endpoint + event pair keeps a second pass from scheduling any twice.
                # Skipped, with its round trip, for a tenant without an enabled endpoint.
                scheduled = 0
                if published and published[0].tenant_has_endpoints:
                    scheduled = await webhooks.schedule(conn, published)
                # Recorded in the same transaction that holds the claim: a crash before this
                # commit publishes these rows again (at least once), never skips them.
                await conn.execute(
                    _RECORD,
                    {
                        "chain": chain_id,
                        "events_to": (
                            published[-1].sequence if published else position.events_published
                        ),
                        "audit_to": (entries[-1].position if entries else position.audit_published),
                    },
                )
        if scheduled:
            try:
                await self.broker.wake_webhooks()
            except Exception:
                # Committed: the webhook workers find the deliveries at their next poll.
                log.exception("could not wake the webhook workers")
        return len(messages)


def _tracing(
    chain_id: str, events: Sequence[Row[Any]], messages: int
) -> contextlib.AbstractContextManager[Any]:
    """The publish span of a batch holding events stated while tracing: a child of the first
    one's span (the mutation that stated it), linked to the others'. Untraced otherwise."""
    parents = [row.trace_parent for row in events if row.trace_parent]
    if not parents:
        return contextlib.nullcontext()
    return telemetry.continuing(
        "relay publish",
        parents[0],
        links=parents[1:],
        attributes={"coregraph.chain_id": chain_id, "messaging.batch.message_count": messages},
    )


def encoded(message: Message) -> bytes:
    """``message`` as the broker carries it (orjson). A row orjson cannot encode must not stall
    its chain for good (it would be tried again at every pass, and every later row wait
    behind it): integers beyond 64 bits, which events stored before emitEvent refused them
    may hold, are published as their decimal strings (orjson would read them back as lossy
    floats); the database row and the webhook body keep the number itself."""
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        log.warning("relay message with integers beyond 64 bits: published as strings")
        return orjson.dumps(_wide_integers_as_strings(message))


def _wide_integers_as_strings(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, dict):
        return {key: _wide_integers_as_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wide_integers_as_strings(item) for item in value]
    return value


def _contiguous(rows: Sequence[Row[Any]], column: str, published: int) -> list[Row[Any]]:
    """The rows that follow ``published`` without a gap. Positions are gap-free and handed out
    in commit order, so a gap means a row this transaction cannot see yet: stop before it."""
    kept = []
    expected = published + 1
    for row in rows:
        if getattr(row, column) != expected:
            break
        kept.append(row)
        expected += 1
    return kept


@contextlib.asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[Relay]:
    """Run ``relay`` in the background for the block; on exit it finishes its pass and stops
    (cancelled after 10 s: whatever it had not recorded is published again on the next start)."""
    # Polling leaves no trace (the task starts in this context); a batch of traced events
    # continues their trace (_tracing).
    with telemetry.untraced():
        task = asyncio.create_task(relay.run(), name="coregraph-relay")
    try:
        yield relay
    finally:
        relay.stop()
        try:
            await asyncio.wait_for(task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
