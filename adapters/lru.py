"""One least-recently-used map, bounded by a count or by a total weight (bytes).

Not locked: each owner already serialises its own access (and often does more under the
same lock), so a second lock here would only cost."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

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
