"""FetchQueue without FUSE: priority order, promotion of what a reader waits for, dropped readahead."""

from __future__ import annotations

import threading
import time

from ngffmount.cache.fetchqueue import AHEAD, DEMAND, STAGE, FetchQueue


def blocked_queue():
    """A one-worker queue whose worker is held until `release` is set, so tasks pile up."""
    queue, release, started = FetchQueue(1), threading.Event(), threading.Event()
    queue.submit("hold", DEMAND, lambda: (started.set(), release.wait(10)), lambda: None)
    assert started.wait(10)
    return queue, release


def test_higher_priority_first_then_in_submission_order():
    queue, release = blocked_queue()
    ran = []
    for name, prio in [("stage", STAGE), ("ahead1", AHEAD), ("demand", DEMAND), ("ahead2", AHEAD)]:
        queue.submit(name, prio, lambda n=name: ran.append(n), lambda: ran.append("dropped"))
    release.set()
    assert queue.wait_idle(10)
    assert ran == ["demand", "ahead1", "ahead2", "stage"]


def test_promoted_task_runs_first_and_is_not_dropped():
    queue, release = blocked_queue()
    ran, cancelled = [], threading.Event()
    queue.submit("a", AHEAD, lambda: ran.append("a"), lambda: ran.append("a dropped"), cancelled)
    queue.submit("b", STAGE, lambda: ran.append("b"), lambda: ran.append("b dropped"), cancelled)
    queue.submit("c", DEMAND, lambda: ran.append("c"), lambda: ran.append("c dropped"))
    queue.promote("b", DEMAND)  # a reader now waits for b
    cancelled.set()  # the readahead that queued a and b was reset
    release.set()
    assert queue.wait_idle(10)
    assert ran == ["c", "b", "a dropped"]


def test_burst_of_submits_runs_concurrently_up_to_the_bound():
    queue = FetchQueue(4)
    barrier = threading.Barrier(4, timeout=10)
    done = []
    for i in range(8):
        queue.submit(i, AHEAD, lambda: done.append(barrier.wait()), lambda: None)
    assert queue.wait_idle(20)
    assert len(done) == 8, "four tasks at a time met at the barrier, twice"


def test_readers_never_wait_behind_readahead_that_holds_every_thread():
    """Readahead stuck on a silent remote fills every thread it may; a reader's fetch (and a
    readahead fetch a reader now waits for) still starts at once, on the threads kept for
    readers. More readahead waits."""
    queue, release = FetchQueue(4), threading.Event()
    stuck = threading.Barrier(5, timeout=10)
    for i in range(4):
        queue.submit(("ahead", i), AHEAD, lambda: (stuck.wait(), release.wait(10)), lambda: None)
    stuck.wait()  # four readahead fetches hold their threads
    ran = []
    queue.submit("more", STAGE, lambda: ran.append("more"), lambda: None)
    queue.submit("promoted", AHEAD, lambda: ran.append("promoted"), lambda: None)
    demand = threading.Event()
    queue.submit("demand", DEMAND, demand.set, lambda: None)
    assert demand.wait(5), "the reader's fetch started while readahead held every thread"
    queue.promote("promoted", DEMAND)
    deadline = time.monotonic() + 5
    while "promoted" not in ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["promoted"], "promoted at once; more readahead still waits"
    release.set()
    assert queue.wait_idle(10)
    assert ran == ["promoted", "more"]
