"""The queue that lets concurrent commits (and API-key reads) share one call
(``coregraph.group_commit``): what the event stream's and authentication's guarantees rest on.
An item only ever rides in a call sent after it was submitted, each gets its own answer, and a
refused shared call leaves every item to commit alone. The database-backed behaviour is in
test_event_append, test_event_ingest and test_api_key_authentication."""

from __future__ import annotations

import asyncio

import pytest

from coregraph.group_commit import CommitAlone, GroupCommit


class Refused(Exception):
    pass


class Calls:
    """A call that numbers itself and waits until the test lets it finish."""

    def __init__(self) -> None:
        self.carried: list[list[str]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def run(self, items: list[str]) -> list[str]:
        self.carried.append(list(items))
        number = len(self.carried)
        self.started.set()
        await self.release.wait()
        if "refused" in items:
            raise Refused()
        if "broken" in items:
            raise ConnectionError("lost")
        return [f"{item}@{number}" for item in items]


async def _settle() -> None:
    """Let every task that can run do so (a few turns of the event loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


def _group(calls: Calls, limit: int = 100) -> GroupCommit[str, str]:
    return GroupCommit(calls.run, lambda _item: 1, limit, lambda e: isinstance(e, Refused))


async def test_an_item_never_rides_in_a_call_sent_before_it_arrived() -> None:
    calls = Calls()
    group = _group(calls)
    first = asyncio.create_task(group.submit("k", "a"))
    await asyncio.wait_for(calls.started.wait(), 5)
    # Submitted while the call carrying "a" is under way: they wait for the next one.
    later = [asyncio.create_task(group.submit("k", item)) for item in ("b", "c")]
    await _settle()
    assert calls.carried == [["a"]]
    calls.release.set()
    assert await asyncio.wait_for(first, 5) == "a@1"
    assert await asyncio.wait_for(asyncio.gather(*later), 5) == ["b@2", "c@2"]
    assert calls.carried == [["a"], ["b", "c"]]


async def test_other_keys_do_not_wait_and_calls_respect_the_limit() -> None:
    calls = Calls()
    group = _group(calls, limit=2)
    first = asyncio.create_task(group.submit("k", "a"))
    await asyncio.wait_for(calls.started.wait(), 5)
    other = asyncio.create_task(group.submit("other", "x"))
    queued = [asyncio.create_task(group.submit("k", item)) for item in ("b", "c", "d")]
    await _settle()
    # Another key's call is sent while "k"'s is under way.
    assert calls.carried == [["a"], ["x"]]
    calls.release.set()
    await asyncio.wait_for(asyncio.gather(first, other, *queued), 5)
    assert calls.carried == [["a"], ["x"], ["b", "c"], ["d"]]
    assert [task.result() for task in queued] == ["b@3", "c@3", "d@4"]


async def test_a_refused_shared_call_leaves_each_item_to_commit_alone() -> None:
    calls = Calls()
    group = _group(calls)
    first = asyncio.create_task(group.submit("k", "a"))
    await asyncio.wait_for(calls.started.wait(), 5)
    shared = [asyncio.create_task(group.submit("k", item)) for item in ("b", "refused", "c")]
    calls.release.set()
    assert await first == "a@1"
    outcomes = await asyncio.wait_for(asyncio.gather(*shared, return_exceptions=True), 5)
    assert all(isinstance(outcome, CommitAlone) for outcome in outcomes)
    # Alone, the item at fault gets the refusal itself.
    with pytest.raises(Refused):
        await group.submit("k", "refused")


async def test_a_failure_with_the_outcome_unknown_is_every_items_failure() -> None:
    calls = Calls()
    group = _group(calls)
    first = asyncio.create_task(group.submit("k", "a"))
    await asyncio.wait_for(calls.started.wait(), 5)
    shared = [asyncio.create_task(group.submit("k", item)) for item in ("b", "broken")]
    calls.release.set()
    assert await first == "a@1"
    outcomes = await asyncio.wait_for(asyncio.gather(*shared, return_exceptions=True), 5)
    # Not CommitAlone: the call may have committed, so nothing is sent again.
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)


async def _first_call_under_way() -> tuple[Calls, GroupCommit[str, str], asyncio.Task[str]]:
    """A group whose first call, carrying "a", has started and waits to be released."""
    calls = Calls()
    group = _group(calls)
    first = asyncio.create_task(group.submit("k", "a"))
    await asyncio.wait_for(calls.started.wait(), 5)
    return calls, group, first


async def test_an_item_whose_request_went_away_before_its_call_is_left_out() -> None:
    calls, group, first = await _first_call_under_way()
    gone = asyncio.create_task(group.submit("k", "gone"))
    kept = asyncio.create_task(group.submit("k", "kept"))
    await _settle()
    gone.cancel()
    calls.release.set()
    assert await first == "a@1"
    assert await asyncio.wait_for(kept, 5) == "kept@2"
    assert calls.carried == [["a"], ["kept"]]


async def test_a_lone_call_cancelled_with_its_request_leaves_the_others_their_call() -> None:
    # The first item of an idle key goes from its submitter's own task: cancelling that
    # request interrupts its own call only, and what queued behind it still goes.
    calls, group, first = await _first_call_under_way()
    later = asyncio.create_task(group.submit("k", "b"))
    await _settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await _settle()
    assert calls.carried == [["a"], ["b"]]
    calls.release.set()
    assert await asyncio.wait_for(later, 5) == "b@2"
    assert await asyncio.wait_for(group.submit("k", "c"), 5) == "c@3"
