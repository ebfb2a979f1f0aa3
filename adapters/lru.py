"""One least-recently-used map, bounded by a count or by a total weight (bytes), and
LoadOnce: such a map whose misses are loaded once while concurrent callers wait.

LRU is not locked: each owner already serialises its own access (and often does more under
the same lock), so a second lock there would only cost."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable, Generic, Hashable, Iterable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(_value) -> int:
    return 1


class LRU(Generic[K, V]):
    """Entries weigh `weigh(value)` (1 each by default: a count bound). Past `bound` the
    least recently used go first; `keep_last` keeps the newest even when it alone is over.
    With `bound` None nothing is evicted by put: the owner applies its own policy through
    `pop_oldest`."""

    def __init__(self, bound: int | None, weigh: Callable[[V], int] = _one, keep_last: bool = False):
        self.bound = bound
        self.total = 0
        self._weigh = weigh
        self._keep = 1 if keep_last else 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        """Keys, least recently used first."""
        return iter(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    def get(self, key: K, default=None):
        """The value, now the most recently used; `default` when absent."""
        entry = self._items.get(key)
        if entry is None:
            return default
        self._items.move_to_end(key)
        return entry[0]

    def peek(self, key: K, default=None):
        """The value, without making it the most recently used."""
        entry = self._items.get(key)
        return default if entry is None else entry[0]

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Add or replace; returns what the bound evicted, oldest first."""
        self.pop(key)
        weight = self._weigh(value)
        self._items[key] = (value, weight)
        self.total += weight
        evicted = []
        if self.bound is not None:
            while self.total > self.bound and len(self._items) > self._keep:
                evicted.append(self.pop_oldest())
        return evicted

    def pop(self, key: K, default=None):
        entry = self._items.pop(key, None)
        if entry is None:
            return default
        self.total -= entry[1]
        return entry[0]

    def pop_oldest(self) -> tuple[K, V]:
        key, (value, weight) = self._items.popitem(last=False)
        self.total -= weight
        return key, value

    def clear(self) -> None:
        self._items.clear()
        self.total = 0


class LoadOnce(Generic[K, V]):
    """Values loaded at most once at a time per key: concurrent callers wait for the load
    under way instead of starting their own. Loaded values are kept in `cache`; a failed
    load is not kept, and every caller waiting for it gets its exception."""

    def __init__(self, cache: LRU[K, V]):
        self.cache = cache
        self._lock = threading.Lock()
        self._inflight: dict[K, Future] = {}

    def get(self, key: K, load: Callable[[], V]) -> V:
        return self.get_many([key], lambda keys: {key: load()})[key]

    def get_many(self, keys: Iterable[K], load: Callable[[list[K]], Mapping[K, V]]) -> dict[K, V]:
        """The value of each key. `load(keys)` is called at most once, with the keys (sorted)
        neither kept nor being loaded by another caller, and returns a value for each."""
        found: dict[K, V] = {}
        mine: dict[K, Future] = {}
        waiting: dict[K, Future] = {}
        with self._lock:
            for key in keys:
                if key in self.cache:
                    found[key] = self.cache.get(key)
                elif key in self._inflight:
                    waiting[key] = self._inflight[key]
                else:
                    mine[key] = self._inflight[key] = Future()
        if mine:
            todo = sorted(mine)
            try:
                loaded = load(todo)
                loaded = {key: loaded[key] for key in todo}
            except BaseException as exc:
                with self._lock:
                    for key in todo:
                        del self._inflight[key]
                for fut in mine.values():
                    fut.set_exception(exc)
                raise
            with self._lock:
                for key in todo:
                    self.cache.put(key, loaded[key])
                    del self._inflight[key]
            for key, fut in mine.items():
                fut.set_result(loaded[key])
            found.update(loaded)
        for key, fut in waiting.items():
            found[key] = fut.result()
        return found

    def clear(self) -> None:
        """Forget the values kept (loads under way finish for their callers)."""
        with self._lock:
            self.cache.clear()
