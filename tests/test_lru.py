"""The shared LRU and LoadOnce (adapters/lru.py): bounds, eviction order, one load per key."""

from __future__ import annotations

import threading
import time

import pytest

from ngffmount.adapters.lru import LRU, LoadOnce


def test_count_bound_evicts_least_recently_used():
    lru = LRU(3)
    for k in "abc":
        lru.put(k, k.upper())
    assert lru.get("a") == "A"  # now the most recently used
    assert lru.put("d", "D") == [("b", "B")]
    assert list(lru) == ["c", "a", "d"]
    assert lru.peek("c") == "C" and list(lru) == ["c", "a", "d"], "peek does not reorder"
    assert lru.get("b", "none") == "none"


def test_weight_bound_and_keep_last():
    lru = LRU(10, weigh=len)
    lru.put("a", b"x" * 4)
    lru.put("b", b"x" * 4)
    assert lru.put("c", b"x" * 4) == [("a", b"x" * 4)] and lru.total == 8
    lru.put("b", b"x")  # a replacement is weighed anew
    assert lru.total == 5
    assert [k for k, _ in lru.put("big", b"x" * 20)] == ["c", "b", "big"] and len(lru) == 0
    kept = LRU(10, weigh=len, keep_last=True)
    kept.put("a", b"x")
    assert [k for k, _ in kept.put("big", b"x" * 20)] == ["a"] and list(kept) == ["big"]


def test_unbounded_lru_leaves_eviction_to_its_owner():
    lru = LRU(None, weigh=len)
    assert lru.put("a", b"xxx") == [] and lru.put("b", b"yy") == []
    assert lru.pop_oldest() == ("a", b"xxx") and lru.total == 2
    assert lru.pop("b") == b"yy" and lru.pop("b") is None and lru.total == 0


def run_together(call, n: int, gate: threading.Event) -> None:
    """`n` threads run `call` while `gate` holds the load back, so all of them overlap."""
    threads = [threading.Thread(target=call) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)


def test_load_once_loads_each_key_once_while_others_wait():
    loads: list[list[str]] = []
    gate = threading.Event()

    def load(keys):
        loads.append(keys)
        gate.wait(10)
        return {k: k * 2 for k in keys}

    once = LoadOnce(LRU(100))
    results = []
    run_together(lambda: results.append(once.get_many({"b", "a"}, load)), 8, gate)
    assert loads == [["a", "b"]], "one load, with the keys sorted"
    assert results == [{"a": "aa", "b": "bb"}] * 8
    assert once.get("a", lambda: pytest.fail("kept values are not loaded again")) == "aa"
    once.clear()
    assert once.get("a", lambda: "new") == "new"


def test_load_once_failure_reaches_every_waiter_and_is_not_kept():
    gate = threading.Event()

    def fail():
        gate.wait(10)
        raise OSError("source down")

    once = LoadOnce(LRU(10))
    errors = []

    def call():
        try:
            once.get("k", fail)
        except OSError as exc:
            errors.append(str(exc))

    run_together(call, 4, gate)
    assert errors == ["source down"] * 4
    assert once.get("k", lambda: "back") == "back"
