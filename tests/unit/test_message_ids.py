"""Message ids (``moat.model.new_message_id``): ULIDs whose randomness comes from a pool of
kernel randomness, refilled a few hundred ids at a time."""

from __future__ import annotations

import os
import time

from ulid import ULID

from moat.model import new_message_id


def test_ids_are_unique_and_sort_by_arrival() -> None:
    first = [new_message_id() for _ in range(2000)]  # several refills of the pool
    time.sleep(0.002)
    later = new_message_id()
    assert len(set(first)) == len(first)
    assert all(len(i) == 26 and i.isalnum() for i in first)
    assert max(first) < later
    assert abs(ULID.from_str(later).timestamp - time.time()) < 1


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_message_id()  # the pool is full in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_message_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_message_id() for _ in range(5)]
    # Same millisecond or not, the random parts differ.
    assert {i[10:] for i in child}.isdisjoint(i[10:] for i in parent)
