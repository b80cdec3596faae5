"""Ids: well formed, unique and in creation order, also many to a millisecond; a forked process
does not repeat its parent's random bytes."""

from __future__ import annotations

import multiprocessing

from coregraph import ids


def _ids_in_child(queue: multiprocessing.Queue[list[str]]) -> None:
    queue.put([ids.new_id("evt") for _ in range(50)])


def test_ids_are_well_formed_unique_and_in_creation_order() -> None:
    made = [ids.new_id("evt") for _ in range(5000)]

    assert all(ids.is_valid(value, "evt") for value in made)
    assert len(set(made)) == len(made)
    assert made == sorted(made)


def test_a_forked_child_draws_random_bytes_of_its_own() -> None:
    ids.new_id("evt")  # the parent holds unused random bytes now
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = context.Queue()
    child = context.Process(target=_ids_in_child, args=(queue,))
    child.start()
    from_child = queue.get(timeout=30)
    child.join(timeout=30)
    from_parent = [ids.new_id("evt") for _ in range(50)]

    # The same millisecond may start both lists; the random parts must still differ.
    assert not {value[-16:] for value in from_child} & {value[-16:] for value in from_parent}
