"""The broker: committed events and audit entries, fanned out to live subscribers.

One interface, two implementations (DESIGN.md, Streams): ``InProcessBroker`` on the embedded
defaults, ``RedisBroker`` when ``COREGRAPH_REDIS_URL`` is set, so a subscriber on one API
process hears what a relay in another process published. Each process holds one Redis pub/sub
connection and fans each message out to its local subscribers in memory.

Topics are per tenant and environment for events (``events_topic``) and per chain for audit
entries (``audit_topic``: a tenant, or a user's security log). Messages are small JSON documents
(the relay's envelopes); a subscriber receives them decoded, one dict shared by every local
subscriber, so it must not change it.

Delivery is at least once and in order per topic: after a relay crash the same sequence can
arrive twice, so subscribers drop what they already have by its ``sequence`` (events) or
``position`` (audit entries). A subscription that starts live from storage (``after``) enters
``subscribe`` first, then reads what it missed from the database, then iterates, skipping
what the replay already yielded: entering returns only once the subscription is in place, so
nothing committed in between falls through the gap.

Each subscriber has a bounded queue (``COREGRAPH_SUBSCRIBER_BUFFER``). A subscriber that falls
that far behind is cut off: its iterator raises ``SubscriberTooSlow``; publishers never wait
for it and memory never grows for it.

When the Redis connection is lost (Redis down, or the connection dropped: redis-py reconnects
and resubscribes, but what was published meanwhile never reached this process), every
subscription ends with ``BrokerDisconnected`` and is forgotten, and the next subscriber listens
on a new connection; one that cannot listen because Redis is unreachable ends the same way at
once. Subscribers resume from storage with their last position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from coregraph.models.base import Environment
from coregraph.settings import Settings

log = logging.getLogger("coregraph.broker")

Message = Mapping[str, Any]

# Queued messages a subscriber takes in a row before it lets the event loop turn.
TAKEN_BEFORE_A_TURN = 64

_TOPIC = re.compile(r"^[a-z]+(:[A-Za-z0-9_-]{1,64}){1,2}$")
_END = object()


def events_topic(tenant_id: str, environment: Environment | str) -> str:
    return _checked(f"events:{tenant_id}:{environment}")


def audit_topic(chain_id: str) -> str:
    """A tenant's audit trail, or (for entries outside any tenant) a user's security log."""
    return _checked(f"audit:{chain_id}")


def webhook_attempts_topic(tenant_id: str) -> str:
    """Every attempt a worker makes to deliver one of the tenant's webhooks
    (``coregraph.services.webhooks.attempt_message``), both environments."""
    return _checked(f"webhooks:{tenant_id}")


def _checked(topic: str) -> str:
    if not _TOPIC.match(topic):
        raise ValueError(f"not a topic: {topic!r}")
    return topic


class BrokerError(Exception):
    """A subscription ended before its subscriber did: resume from the last position seen."""


class SubscriberTooSlow(BrokerError):
    def __init__(self, topic: str, buffer: int) -> None:
        super().__init__(
            f"subscriber fell {buffer} messages behind on {topic} and was cut off; resume "
            "from the last sequence it processed"
        )
        self.topic = topic


class BrokerDisconnected(BrokerError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"the broker connection was lost while subscribed to {topic}")
        self.topic = topic


class Subscription:
    """One subscriber's view of a topic: an async iterator over its messages, bounded.

    Its queue lives on the event loop that subscribed; publishers on another thread hand
    messages over with ``call_soon_threadsafe``, so order is kept and nobody blocks.
    """

    def __init__(self, topic: str, buffer: int) -> None:
        self.topic = topic
        self.buffer = buffer
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=buffer + 1)
        self._error: BrokerError | None = None
        self._ended = False
        self._taken_in_a_row = 0

    def _offer(self, message: Message) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= self.buffer:
            self._end(SubscriberTooSlow(self.topic, self.buffer))
            return
        self._queue.put_nowait(message)

    def _end(self, error: BrokerError | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        # What it had not read yet is dropped: the subscriber resumes from storage instead.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)

    def deliver(self, message: Message) -> None:
        """Hand ``message`` over from any thread."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._offer(message)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._offer, message)

    def end(self, error: BrokerError | None = None) -> None:
        """End the subscription from any thread; its iterator raises ``error`` if given."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._end(error)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._end, error)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        if self._queue.empty():
            self._taken_in_a_row = 0
            item = await self._queue.get()
        else:
            # Queued messages are taken without waiting for the loop; every TAKEN_BEFORE_A_TURN
            # of them the loop gets a turn anyway, so a backlog does not hold the process's
            # other requests and subscribers while it drains.
            self._taken_in_a_row += 1
            if self._taken_in_a_row >= TAKEN_BEFORE_A_TURN:
                self._taken_in_a_row = 0
                await asyncio.sleep(0)
            item = self._queue.get_nowait()
        if item is _END:
            self._queue.put_nowait(_END)
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        message: Message = item
        return message


class _Signal:
    """A wake-up a coroutine on one loop waits for and anything on any thread can give."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False

    def set(self) -> None:
        event, loop = self._event, self._loop
        if event is None or loop is None:
            self._pending = True
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def wait(self, at_most: float) -> bool:
        """True when woken, False when ``at_most`` seconds passed first."""
        if self._event is None:
            self._event, self._loop = asyncio.Event(), asyncio.get_running_loop()
        if self._pending:
            self._pending = False
            return True
        try:
            await asyncio.wait_for(self._event.wait(), at_most)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()


class Broker:
    """The interface: publish to a topic, subscribe to one, wake the relay."""

    def __init__(self, buffer: int = 1000) -> None:
        self.buffer = buffer
        self._subscribers: dict[str, list[Subscription]] = {}
        self._lock = threading.Lock()
        self._relay_wakeup = _Signal()
        self._webhook_wakeup = _Signal()

    async def publish(self, topic: str, message: bytes | Message) -> None:
        raise NotImplementedError

    async def publish_many(self, messages: list[tuple[str, bytes | Message]]) -> None:
        """Publish in this order (one round trip on Redis)."""
        for topic, message in messages:
            await self.publish(topic, message)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, topic: str, *, buffer: int | None = None
    ) -> AsyncIterator[Subscription]:
        """``async with broker.subscribe(topic) as messages: async for message in messages``.

        Once entered, every message published to ``topic`` reaches this subscriber (until it
        falls ``buffer`` messages behind and is cut off with ``SubscriberTooSlow``)."""
        subscription = Subscription(_checked(topic), buffer or self.buffer)
        with self._lock:
            local = self._subscribers.setdefault(topic, [])
            local.append(subscription)
            first = len(local) == 1
        try:
            if first:
                try:
                    await self._listen(topic)
                except BrokerDisconnected:
                    # The broker cannot listen now (Redis is unreachable): this subscription,
                    # and any that joined the topic meanwhile, end at once as if the connection
                    # had been lost under them, rather than wait for messages that never come.
                    self._strand(topic)
            yield subscription
        finally:
            subscription._end()
            with self._lock:
                local = self._subscribers.get(topic, [])
                if subscription in local:
                    local.remove(subscription)
                last = not local
                if last:
                    self._subscribers.pop(topic, None)
            if last:
                await self._unlisten(topic)

    def _strand(self, topic: str | None = None) -> None:
        """End the subscriptions of ``topic`` (of every topic when None) with
        ``BrokerDisconnected`` and forget them, so the next subscriber listens anew."""
        with self._lock:
            if topic is None:
                stranded = list(self._subscribers.items())
                self._subscribers.clear()
            else:
                stranded = [(topic, self._subscribers.pop(topic, []))]
        for name, local in stranded:
            for subscription in local:
                subscription.end(BrokerDisconnected(name))

    def subscriber_count(self, topic: str) -> int:
        with self._lock:
            return len(self._subscribers.get(topic, ()))

    def _fan_out(self, topic: str, message: Message) -> None:
        with self._lock:
            local = list(self._subscribers.get(topic, ()))
        for subscription in local:
            subscription.deliver(message)

    async def _listen(self, topic: str) -> None:
        """The first local subscriber of ``topic`` arrived."""

    async def _unlisten(self, topic: str) -> None:
        """The last local subscriber of ``topic`` left."""

    async def wake_relay(self) -> None:
        """A commit appended to a stream: wake the relay now rather than at its next poll."""
        self._relay_wakeup.set()

    async def wait_for_relay_work(self, at_most: float) -> bool:
        """The relay waits here between passes: True when woken, False after ``at_most`` seconds."""
        return await self._relay_wakeup.wait(at_most)

    async def wake_webhooks(self) -> None:
        """Deliveries became due (scheduled by the relay, retried or replayed through the API):
        wake the webhook workers now rather than at their next poll."""
        self._webhook_wakeup.set()

    async def wait_for_webhook_work(self, at_most: float) -> bool:
        """A webhook worker waits here when it has nothing to claim: True when woken, False
        after ``at_most`` seconds."""
        return await self._webhook_wakeup.wait(at_most)

    async def close(self) -> None:
        with self._lock:
            everyone = [s for local in self._subscribers.values() for s in local]
            self._subscribers.clear()
        for subscription in everyone:
            subscription.end()


def _decoded(message: bytes | Message) -> Message:
    # A round trip through JSON on both brokers: subscribers see the same shapes either way
    # and never share a mutable object with the publisher.
    if isinstance(message, bytes | bytearray | memoryview):
        decoded: Message = orjson.loads(message)
    else:
        decoded = orjson.loads(orjson.dumps(message))
    return decoded


def _encoded(message: bytes | Message) -> bytes:
    if isinstance(message, bytes):
        return message
    return orjson.dumps(message)


class InProcessBroker(Broker):
    """The embedded default: subscribers and the relay share one process."""

    async def publish(self, topic: str, message: bytes | Message) -> None:
        self._fan_out(_checked(topic), _decoded(message))


class RedisBroker(Broker):
    """Redis pub/sub across processes: one connection per process for every subscription, a
    reader task that fans messages out locally, and a channel on which commits in any process
    wake the relay wherever it runs."""

    def __init__(self, redis: Any, prefix: str, buffer: int = 1000) -> None:
        super().__init__(buffer)
        self.redis = redis
        self.prefix = prefix
        self._wake_channel = f"{prefix}:relay-wakeup"
        self._webhook_wake_channel = f"{prefix}:webhook-wakeup"
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmations: dict[str, list[asyncio.Future[None]]] = {}
        self._commands = asyncio.Lock()
        self._wake_listening = False
        self._webhook_wake_listening = False

    def _channel(self, topic: str) -> str:
        return f"{self.prefix}:{topic}"

    async def publish(self, topic: str, message: bytes | Message) -> None:
        await self.redis.publish(self._channel(_checked(topic)), _encoded(message))

    async def publish_many(self, messages: list[tuple[str, bytes | Message]]) -> None:
        if not messages:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for topic, message in messages:
                pipe.publish(self._channel(_checked(topic)), _encoded(message))
            await pipe.execute()

    async def _listen(self, topic: str) -> None:
        await self._subscribe_channel(self._channel(topic))

    async def _unlisten(self, topic: str) -> None:
        async with self._commands:
            if self._pubsub is not None and not self.subscriber_count(topic):
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(self._channel(topic))

    async def _subscribe_channel(self, channel: str) -> None:
        """Subscribe and wait (bounded) until Redis confirms: from then on nothing is missed."""
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        async with self._commands:
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub()
            self._confirmations.setdefault(channel, []).append(confirmed)
            # redis-py is imported only by processes that use it (its commands' modules are
            # ~5 MiB of a server's resident set): this one does.
            from redis.exceptions import RedisError

            try:
                try:
                    await self._pubsub.subscribe(channel)
                except RedisError:
                    raise
                except Exception:
                    # Not Redis refusing: redis-py's connection caught between a reconnect and
                    # a write (seen right after Redis came back: AttributeError on a writer
                    # that was None). Its next command connects again and resubscribes the
                    # connection's channels: one more try, then a typed refusal.
                    log.warning("subscribing failed on a reconnecting connection; once more")
                    await self._pubsub.subscribe(channel)
            except Exception as exc:
                self._unconfirmed(channel, confirmed)
                if self._reader is None or self._reader.done():
                    # Nothing reads this connection: forget it, so the next subscriber (once
                    # Redis is back) starts on a new one rather than on what this failure left.
                    failed, self._pubsub = self._pubsub, None
                    with contextlib.suppress(Exception):
                        await failed.aclose()
                raise BrokerDisconnected(channel) from exc
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="coregraph-broker-reader")
        try:
            await asyncio.wait_for(confirmed, timeout=10)
        except TimeoutError as exc:
            self._unconfirmed(channel, confirmed)
            raise BrokerDisconnected(channel) from exc
        except BaseException:
            self._unconfirmed(channel, confirmed)
            raise

    def _unconfirmed(self, channel: str, confirmed: asyncio.Future[None]) -> None:
        waiting = self._confirmations.get(channel, [])
        if confirmed in waiting:
            waiting.remove(confirmed)

    async def _read(self) -> None:
        pubsub = self._pubsub
        prefix = self.prefix + ":"
        try:
            while True:
                item = await pubsub.get_message(timeout=None)
                if item is None:
                    continue
                kind = item["type"]
                channel = item["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else str(channel)
                if kind == "subscribe":
                    waiting = self._confirmations.get(channel)
                    if waiting:
                        future = waiting.pop(0)
                        if not future.done():
                            future.set_result(None)
                elif kind == "message":
                    if channel == self._wake_channel:
                        self._relay_wakeup.set()
                        continue
                    if channel == self._webhook_wake_channel:
                        self._webhook_wakeup.set()
                        continue
                    try:
                        message = _decoded(item["data"])
                    except orjson.JSONDecodeError:
                        log.warning(
                            "dropped a message that is not JSON", extra={"channel": channel}
                        )
                        continue
                    self._fan_out(channel.removeprefix(prefix), message)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Messages may have been missed while the connection was down: end every
            # subscription, so subscribers resume from storage rather than run with a gap.
            # Forgotten too: whoever subscribes next listens on a new connection.
            log.exception("the broker lost its Redis connection")
            # This reader is finished from here on, although closing the connection below
            # still awaits: whoever subscribes meanwhile must start a reader of its own.
            if self._reader is asyncio.current_task():
                self._reader = None
            self._strand()
            for waiting in self._confirmations.values():
                for future in waiting:
                    if not future.done():
                        future.set_exception(BrokerDisconnected("(subscribing)"))
            self._confirmations.clear()
            self._pubsub, self._wake_listening = None, False
            self._webhook_wake_listening = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def wake_relay(self) -> None:
        await super().wake_relay()
        await self.redis.publish(self._wake_channel, b"1")

    async def wait_for_relay_work(self, at_most: float) -> bool:
        if not self._wake_listening:
            self._wake_listening = True
            try:
                await self._subscribe_channel(self._wake_channel)
            except Exception:
                self._wake_listening = False
                log.exception("could not listen for relay wake-ups; polling only")
        return await super().wait_for_relay_work(at_most)

    async def wake_webhooks(self) -> None:
        await super().wake_webhooks()
        await self.redis.publish(self._webhook_wake_channel, b"1")

    async def wait_for_webhook_work(self, at_most: float) -> bool:
        if not self._webhook_wake_listening:
            self._webhook_wake_listening = True
            try:
                await self._subscribe_channel(self._webhook_wake_channel)
            except Exception:
                self._webhook_wake_listening = False
                log.exception("could not listen for webhook wake-ups; polling only")
        return await super().wait_for_webhook_work(at_most)

    async def close(self) -> None:
        await super().close()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def create_broker(settings: Settings, redis: Any = None) -> Broker:
    """Redis when configured (``redis`` is the process's client), in-process otherwise."""
    if redis is not None:
        return RedisBroker(redis, settings.redis_prefix, settings.subscriber_buffer)
    return InProcessBroker(settings.subscriber_buffer)
