"""Group commit: concurrent commits that can share one database call share it.

A tenant's event stream is numbered under its head row's lock, held from the advance until
the commit has been flushed, so the commits of one tenant cannot overlap: each waits for the
previous one's round trip and WAL flush (bench/RESULTS.md, "Event ingest"). ``GroupCommit``
lets the units of work of one process that commit the same way at the same moment (the same
chain, the same row-level-security scope) go in one call: the first one starts a call at
once; those that arrive while it is under way queue, and the next call carries all of them.
Nothing ever waits for company: an idle stream commits as before.

Each item keeps its own outcome: the call returns one result per item. A call carrying
several items that was refused (``refused``: an error that proves nothing committed, such as a
reused idempotency key caught by a unique index) tells every item to commit alone
(``CommitAlone``), so one bad item fails only its own request and the others commit as if they
had never been grouped. Any other failure (the connection lost: the outcome unknown) is every
item's failure, as it would have been for each alone; nothing is sent twice.

The same queue shares reads whose answer must be fresh for each request (an API key's row,
``coregraph.auth.authenticate``): an item only ever rides in a call sent after it was
submitted, so what the call reads is at least as recent as a read of the item's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger("coregraph.group_commit")

Item = TypeVar("Item")
Result = TypeVar("Result")


class CommitAlone(Exception):
    """The shared call failed: commit this item on its own, as if it had not been grouped."""


@dataclass(slots=True)
class _Queue(Generic[Item, Result]):
    waiting: list[tuple[Item, asyncio.Future[Result]]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    # A call carrying one item is under way in its submitter's own task (``submit``).
    alone: bool = False


class GroupCommit(Generic[Item, Result]):
    """Items submitted under one key while a call for that key is under way go together in
    the next call (at most ``limit`` of ``size`` a call, and always at least one item)."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        size: Callable[[Item], int],
        limit: int,
        refused: Callable[[Exception], bool],
    ) -> None:
        self._run = run
        self._refused = refused
        self._size = size
        self._limit = limit
        self._queues: dict[Hashable, _Queue[Item, Result]] = {}

    async def submit(self, key: Hashable, item: Item) -> Result:
        """``item``'s result once the call carrying it has committed. Raises what the call
        raised when it carried ``item`` alone, or ``CommitAlone``. An item whose call went
        alone from its submitter's task shares that task's fate: cancelled, its call is
        interrupted like any statement of a cancelled request (no other item is in it)."""
        queue = self._queues.get(key)
        if queue is None:
            # No call under way for this key: this item's own call goes at once, from its
            # submitter's task (no task and no future to hand it over: the common case of an
            # idle stream); items submitted meanwhile queue for the next call, as below.
            queue = self._queues[key] = _Queue(alone=True)
            try:
                [value] = await self._run([item])
                return value
            finally:
                queue.alone = False
                if queue.waiting:
                    queue.task = asyncio.create_task(self._drain(key, queue))
                elif self._queues.get(key) is queue:
                    del self._queues[key]
        result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        queue.waiting.append((item, result))
        if queue.task is None and not queue.alone:
            # A task of its own rather than the submitter's: a request cancelled while its
            # call is under way does not cancel the others' commit.
            queue.task = asyncio.create_task(self._drain(key, queue))
        return await result

    async def _drain(self, key: Hashable, queue: _Queue[Item, Result]) -> None:
        try:
            while queue.waiting:
                batch: list[tuple[Item, asyncio.Future[Result]]] = []
                total = 0
                while queue.waiting:
                    item, result = queue.waiting[0]
                    if result.done():  # its request went away before the call: not written
                        queue.waiting.pop(0)
                        continue
                    if batch and total + self._size(item) > self._limit:
                        break
                    queue.waiting.pop(0)
                    batch.append((item, result))
                    total += self._size(item)
                if batch:
                    await self._call(batch)
        finally:
            queue.task = None
            if self._queues.get(key) is queue:
                del self._queues[key]
            for _item, result in queue.waiting:  # only if this task itself was cancelled
                if not result.done():
                    result.set_exception(CommitAlone())

    async def _call(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _result in batch])
        except Exception as error:
            alone = len(batch) > 1 and self._refused(error)
            if alone:
                log.debug("a grouped commit was refused; its items commit alone", exc_info=True)
            for _item, result in batch:
                if not result.done():
                    result.set_exception(CommitAlone() if alone else error)
            return
        except BaseException:
            # Cancelled mid-call (the process is stopping): whether it committed is unknown.
            for _item, result in batch:
                if not result.done():
                    result.set_exception(RuntimeError("the commit was interrupted"))
            raise
        for (_item, result), value in zip(batch, results, strict=True):
            if not result.done():
                result.set_result(value)
