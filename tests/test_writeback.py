"""The disk cache's write-behind alone: when queued bytes reach the disk (no disk, no FUSE)."""

from __future__ import annotations

import threading
import time

import pytest

from ngffmount.cache import writeback
from ngffmount.cache.writeback import WriteBehind


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(writeback, "QUIET_S", 0.2)
    monkeypatch.setattr(writeback, "MAX_WAIT_S", 60.0)


def recorder(hold: threading.Event | None = None):
    written = []

    def write(entry):
        if hold is not None:
            hold.wait(10)
        written.append(entry.key)

    return write, written


def test_writes_wait_while_a_reader_reads_and_start_once_reads_pause(quick):
    write, written = recorder()
    wb = WriteBehind(write, lambda key, data: False, bound=1 << 20)
    with wb.reading():
        assert wb.add("a", b"x" * 10, [], "ma")
        time.sleep(0.5)
        assert written == [] and wb.get("a") == b"x" * 10 and "a" in wb and wb.nbytes == 10
    paused = time.monotonic()
    assert wait_for(lambda: written == ["a"])
    assert time.monotonic() - paused >= 0.1, "written before the reads had paused"
    assert wait_for(lambda: "a" not in wb and wb.nbytes == 0 and wb.get("a") is None)


def test_with_no_reader_bytes_are_written_at_once(quick, monkeypatch):
    monkeypatch.setattr(writeback, "QUIET_S", 5.0)
    write, written = recorder()
    wb = WriteBehind(write, lambda key, data: False, bound=1 << 20)
    wb.add("a", b"x", [], "ma")
    assert wait_for(lambda: written == ["a"], timeout=2.0), "waited for a pause in reads nobody made"


def test_reads_that_never_pause_delay_a_write_at_most_max_wait(quick, monkeypatch):
    monkeypatch.setattr(writeback, "MAX_WAIT_S", 0.5)
    write, written = recorder()
    wb = WriteBehind(write, lambda key, data: False, bound=1 << 20)
    with wb.reading():
        wb.add("a", b"x", [], "ma")
        assert wait_for(lambda: written == ["a"])


def test_past_the_bound_the_oldest_bytes_nothing_else_holds_are_written_during_reads(quick):
    held = {"m1"}
    write, written = recorder()
    wb = WriteBehind(write, lambda key, data: key in held, bound=100)
    with wb.reading():
        wb.add("k1", b"1" * 80, [], "m1")  # the memory cache holds these: they do not count
        wb.add("k2", b"2" * 80, [], "m2")
        assert wb.alone_bytes == 80
        time.sleep(0.3)
        assert written == []
        wb.add("k3", b"3" * 80, [], "m3")  # 160 alone: past the bound
        assert wait_for(lambda: written == ["k2"])
        time.sleep(0.3)
        assert written == ["k2"] and wb.alone_bytes == 80
        held.discard("m1")
        wb.memory_changed("m1")  # evicted: now k1's bytes count, and it is the oldest
        assert wait_for(lambda: written == ["k2", "k1"])
        assert wb.alone_bytes == 80 and wb.nbytes == 80
    wb.flush()
    assert written == ["k2", "k1", "k3"] and wb.nbytes == 0 and wb.alone_bytes == 0


def test_add_refuses_bytes_past_the_bound_and_keys_already_waiting(quick):
    hold = threading.Event()
    write, written = recorder(hold)
    wb = WriteBehind(write, lambda key, data: key == "held", bound=100)
    with wb.reading():
        assert wb.add("k1", b"1" * 80, [], "m1")
        assert wb.add("k2", b"2" * 80, [], "m2")  # 160 alone: k1 goes to the (stuck) writer
        assert not wb.add("k3", b"3" * 10, [], "m3"), "past the bound: the caller writes"
        assert wb.add("k4", b"4" * 10, [], "held"), "held by the memory cache: costs nothing"
        assert not wb.add("k2", b"2" * 80, [], "m2"), "already waiting"
        hold.set()
        wb.flush()
    assert sorted(written) == ["k1", "k2", "k4"] and wb.nbytes == 0


def test_past_the_bound_a_fetch_waits_for_the_writer_instead_of_writing_alone(quick):
    """Bytes the writer has taken into the batch it writes no longer keep others out: a
    fetch thread queues its bytes then (`add_or_wait`), and past the bound it waits for the
    writer rather than write a file of its own; it gives up (the caller writes) only after
    its timeout."""
    hold = threading.Event()
    write, written = recorder(hold)
    wb = WriteBehind(write, lambda key, data: False, bound=100)
    with wb.reading():
        assert wb.add("k1", b"1" * 80, [], "m1")
        assert wb.add("k2", b"2" * 80, [], "m2")  # 160 alone: the writer takes k1, and is stuck
        time.sleep(0.2)
        assert not wb.add("k3", b"3" * 10, [], "m3"), "a plain add still says no past the bound"
        assert wb.add_or_wait("k3", b"3" * 10, [], "m3", timeout=5.0), "k1 is on its way: room for k3"
        assert wb.add_or_wait("k4", b"4" * 20, [], "m4", timeout=5.0)  # now 110 not taken: past the bound
        assert not wb.add_or_wait("k5", b"5" * 10, [], "m5", timeout=0.2), "the writer is stuck: give up"
        done = []
        waiter = threading.Thread(target=lambda: done.append(wb.add_or_wait("k5", b"5" * 10, [], "m5", timeout=10)))
        waiter.start()
        time.sleep(0.3)
        assert done == [], "past the bound with the writer stuck: it waits"
        hold.set()  # the writer goes on: k1 written, then the next oldest taken
        waiter.join(10)
        assert done == [True]
    assert wb.flush(5.0)
    assert sorted(written) == ["k1", "k2", "k3", "k4", "k5"] and wb.nbytes == 0 and wb.alone_bytes == 0


def test_flush_writes_everything_now_even_during_reads(quick):
    write, written = recorder()
    wb = WriteBehind(write, lambda key, data: False, bound=1 << 20)
    with wb.reading():
        for k in "abc":
            wb.add(k, k.encode(), [], k)
        wb.flush()
        assert written == ["a", "b", "c"]


def test_a_failing_write_leaves_the_queue_and_the_writer_goes_on(quick):
    written = []

    def write(entry):
        if entry.key == "bad":
            raise OSError("disk full")
        written.append(entry.key)

    wb = WriteBehind(write, lambda key, data: False, bound=1 << 20)
    wb.add("bad", b"x", [], "m1")
    wb.add("good", b"y", [], "m2")
    wb.flush()
    assert written == ["good"] and "bad" not in wb and wb.nbytes == 0


def test_entries_due_together_are_written_in_batches(quick, monkeypatch):
    monkeypatch.setattr(writeback, "BATCH_ENTRIES", 4)
    batches = []
    wb = WriteBehind(lambda entry: batches.append([entry.key]), lambda key, data: False, bound=1 << 20,
                     write_many=lambda entries: batches.append([e.key for e in entries]))
    with wb.reading():
        for i in range(10):
            assert wb.add(f"k{i}", b"x", [], f"m{i}")
        assert batches == []
    assert wb.flush(5.0)
    assert batches == [["k0", "k1", "k2", "k3"], ["k4", "k5", "k6", "k7"], ["k8", "k9"]]
    assert "k9" not in wb and wb.nbytes == 0
