"""Replay, then live: what the ``events`` and ``auditLog`` subscriptions share (and, for a
topic without positions, live only: ``webhookDeliveries``).

A stream is one broker topic whose messages carry a gap-free position per chain (an event's
``sequence`` in its tenant, an audit entry's ``position`` in its chain; DESIGN.md, Streams).
A subscriber that gives ``after`` gets what it missed from the database, then live messages,
with no gap and no duplicate, even while commits land during the switch:

1. subscribe to the broker first (from then on every published message is queued for us);
2. replay from storage everything after ``after``, in order;
3. drain the live queue, dropping every position at or below the last one handled (the
   replay already read it, or the relay published it twice after a crash); a position past
   the next one (a message this process never heard: a relay that re-published from further
   back, a Redis hiccup, or simply the tenant's other environment sharing the sequence) is
   first filled from the database.

Without ``after`` the stream starts at the last position committed when it starts (read
before subscribing, then replayed from like a given ``after``), so nothing committed earlier
arrives, and nothing committed once the subscriber is registered with the broker is missed.

Filters run here, on the server, before anything is sent; positions are tracked on every
message of the topic, matching or not, so a narrow filter costs no extra database reads.

The subscriber's rights are its current ones: the socket's credential is authenticated again
at most once a second while items flow, beside the stream rather than in its way (not per
item: a fan-out to many subscribers would otherwise cost a database round trip each), and
after ``COREGRAPH_SUBSCRIPTION_IDLE_RECHECK_SECONDS`` without an item when nothing flows; the
stream ends with UNAUTHENTICATED or FORBIDDEN when the credential, the membership or the
scope is gone. Each item is then
completed as the same GraphQL type the queries return, so its type's checks run per item.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable

from coregraph.auth.principal import Principal
from coregraph.errors import CoregraphError, Forbidden
from coregraph.streams.broker import BrokerError, Message, SubscriberTooSlow, Subscription

if TYPE_CHECKING:
    from coregraph.context import Context

Item = TypeVar("Item")

# How often a flowing subscription re-authenticates its socket's credential, at most.
RECHECK_SECONDS = 1.0
# Rows per database read while replaying or filling a gap.
BATCH = 500


class SubscriberCutOff(CoregraphError):
    """The subscriber fell further behind than the broker buffers (COREGRAPH_SUBSCRIBER_BUFFER):
    subscribe again with the last cursor received."""

    code = "SUBSCRIBER_TOO_SLOW"


class StreamInterrupted(CoregraphError):
    """The broker connection was lost: subscribe again with the last cursor received."""

    code = "STREAM_INTERRUPTED"


@runtime_checkable
class Reauthenticating(Protocol):
    """A context that can authenticate its credential again (a socket's operation context)."""

    async def reauthenticate(self) -> Principal: ...


ReadAfter = Callable[[int, int | None, int], Awaitable[Sequence[Any]]]


@dataclass(frozen=True, slots=True)
class Stream(Generic[Item]):
    """One subscription's stream: where it listens, how it reads storage, what it sends."""

    topic: str
    # The message's and the row's position attribute: "sequence" or "position".
    position: str
    # Rows with after < position < before (no upper bound when ``before`` is None), filtered,
    # in order, at most ``limit``.
    read: ReadAfter
    # The last position committed now (0 for none): where a stream without ``after`` starts.
    head: Callable[[], Awaitable[int]]
    # A live message as a row (the same attribute names as the table's columns).
    row_of: Callable[[Message], Any]
    matches: Callable[[Any], bool]
    item_of: Callable[[Any], Item]
    # The rights the subscription needs, in its tenant, for as long as it runs.
    tenant_id: str
    scope: str
    where: str


async def replay_then_live(
    ctx: Context, stream: Stream[Item], after: int | None
) -> AsyncIterator[Item]:
    rights = _Rights(ctx, stream)
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(rights.close)
        if after is None:
            # Read before subscribing: what commits between the two is replayed below, so a
            # subscriber is never in place with a commit it will not get (a client that saw
            # the subscription registered and then committed must receive its change).
            after = await stream.head()
        live = await cleanup.enter_async_context(ctx.runtime.broker.subscribe(stream.topic))
        # Subscribed, then read: whatever commits from here on reaches ``live``.
        last = after
        async for row in _stored(stream, after, None):
            last = getattr(row, stream.position)
            await rights.check_if_due()
            yield stream.item_of(row)
        # No pooled connection is held while waiting for live messages (the transport
        # releases it after each item sent; this covers a read that yielded nothing).
        await ctx.reset_reads()
        idle = ctx.settings.subscription_idle_recheck_seconds
        with _broker_errors(stream.where, live):
            while (message := await _next_message(live, idle, rights)) is not None:
                position = int(message[stream.position])
                if position <= last:
                    continue
                if position > last + 1:
                    async for row in _stored(stream, last, position):
                        await rights.check_if_due()
                        yield stream.item_of(row)
                    await ctx.reset_reads()
                last = position
                row = stream.row_of(message)
                if stream.matches(row):
                    await rights.check_if_due()
                    yield stream.item_of(row)


async def _next_message(live: Subscription, idle: float, rights: _Rights) -> Message | None:
    """The next live message, or None once the broker subscription ended."""
    while True:
        try:
            if live.pending:
                # Taken at once. asyncio.wait_for wraps every wait in a task, which costs at
                # least one turn of the event loop, and on a process serving requests a turn
                # takes milliseconds: a subscriber took one message a turn while the relay
                # published whole batches, and was cut off (SUBSCRIBER_TOO_SLOW at 250
                # events/s in bench.scale).
                return await anext(live)
            return await asyncio.wait_for(live.__anext__(), idle)
        except TimeoutError:
            # Nothing flows to carry the rights check: run one now, and wait for it.
            await rights.check_now()
        except StopAsyncIteration:
            return None


@contextlib.contextmanager
def _broker_errors(where: str, live: Subscription) -> Iterator[None]:
    """A broker subscription's end, as the subscriber's typed error."""
    try:
        yield
    except SubscriberTooSlow as exc:
        raise SubscriberCutOff(
            f"{where}: the subscriber fell {live.buffer} items behind and was cut "
            "off; subscribe again with the last cursor it received"
        ) from exc
    except BrokerError as exc:
        raise StreamInterrupted(
            f"{where}: the stream was interrupted; subscribe again with the last cursor received"
        ) from exc


@dataclass(frozen=True, slots=True)
class LiveFeed(Generic[Item]):
    """A live-only subscription (webhook attempts): messages of one topic that carry no
    position to resume from, filtered on the server, rights checked as a stream's are."""

    topic: str
    matches: Callable[[Message], bool]
    item_of: Callable[[Message], Item]
    tenant_id: str
    scope: str
    where: str


async def live_only(ctx: Context, feed: LiveFeed[Item]) -> AsyncIterator[Item]:
    """What ``feed``'s topic carries from now on, as long as the subscriber may read it."""
    rights = _Rights(ctx, feed)
    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback(rights.close)
        live = await cleanup.enter_async_context(ctx.runtime.broker.subscribe(feed.topic))
        await ctx.reset_reads()
        idle = ctx.settings.subscription_idle_recheck_seconds
        with _broker_errors(feed.where, live):
            while (message := await _next_message(live, idle, rights)) is not None:
                if feed.matches(message):
                    await rights.check_if_due()
                    yield feed.item_of(message)


async def _stored(stream: Stream[Any], after: int, before: int | None) -> AsyncIterator[Any]:
    while True:
        rows = await stream.read(after, before, BATCH)
        for row in rows:
            yield row
        if len(rows) < BATCH:
            return
        after = getattr(rows[-1], stream.position)


class _Rights:
    """The subscriber's current rights. A due check runs beside the stream, not in its way:
    items keep flowing while the credential is authenticated again (a fan-out would otherwise
    stall every subscriber of a process on that round trip), and its answer is applied before
    the next item. Rights are thus never more than a second and one round trip old."""

    def __init__(self, ctx: Context, stream: Stream[Any] | LiveFeed[Any]) -> None:
        self.ctx = ctx
        self.stream = stream
        self.checked_at = time.monotonic()
        self._check: asyncio.Future[Principal] | None = None

    async def check_if_due(self) -> None:
        check = self._check
        if check is not None:
            if not check.done():
                return
            self._check = None
            # Raises UNAUTHENTICATED / FORBIDDEN when the credential no longer authenticates
            # (revoked key, ended session, no longer a member of the tenant).
            self._apply(check.result())
            return
        now = time.monotonic()
        if now - self.checked_at < RECHECK_SECONDS:
            return
        self.checked_at = now
        ctx = self.ctx
        if isinstance(ctx, Reauthenticating):
            self._check = asyncio.ensure_future(ctx.reauthenticate())
        else:
            self._apply(ctx.principal)

    async def check_now(self) -> None:
        """Recheck at once (a quiet subscription), finishing a check already under way."""
        check, self._check = self._check, None
        self.checked_at = time.monotonic()
        ctx = self.ctx
        if check is not None:
            principal = await check
        elif isinstance(ctx, Reauthenticating):
            principal = await ctx.reauthenticate()
        else:
            principal = ctx.principal
        self._apply(principal)

    def _apply(self, principal: Principal) -> None:
        self.ctx.principal = principal
        if principal.tenant_id != self.stream.tenant_id:
            raise Forbidden(f"{self.stream.where}: the subscription's tenant is no longer yours")
        if self.stream.scope not in principal.scopes_in(self.stream.tenant_id):
            raise Forbidden(f"{self.stream.where} requires the scope {self.stream.scope}")

    def close(self) -> None:
        check, self._check = self._check, None
        if check is None:
            return
        if not check.done():
            check.cancel()
        elif not check.cancelled():
            check.exception()  # the stream ended first: nothing left to refuse


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def event_row(message: Message) -> Any:
    """An event message (``messages.event_message``) as a row of the events table."""
    actor = message["actor"]
    return SimpleNamespace(
        id=message["id"],
        type=message["type"],
        sequence=int(message["sequence"]),
        tenant_id=message["tenant"],
        environment=message["environment"],
        occurred_at=_moment(message["occurredAt"]),
        actor_kind=actor["kind"],
        actor_id=actor["id"],
        acting_for_user_id=actor["actingForUserId"],
        support_session_id=actor.get("supportSessionId"),
        data=message["data"],
    )


def audit_row(message: Message) -> Any:
    """An audit message (``messages.audit_message``) as a row of the audit table."""
    actor, target = message["actor"], message["target"]
    return SimpleNamespace(
        id=message["id"],
        chain_id=message["chain"],
        position=int(message["position"]),
        tenant_id=message["tenant"],
        environment=message["environment"],
        action=message["action"],
        actor_kind=actor["kind"],
        actor_id=actor["id"],
        acting_for_user_id=actor["actingForUserId"],
        support_session_id=actor.get("supportSessionId"),
        target_type=target["type"],
        target_id=target["id"],
        changes=message["changes"],
        request_id=message["requestId"],
        ip=message["ip"],
        user_agent=message["userAgent"],
        created_at=_moment(message["createdAt"]),
        previous_hash=message["previousHash"],
        hash=message["hash"],
    )
