"""A byte-bounded LRU of decoded chunks (or blocks of them), so each is decoded once while resident."""

from __future__ import annotations

import threading
from typing import Callable, Hashable

import numpy as np

from ..adapters.lru import LRU


class MemoryLRU:
    """Chunks, and parts of chunks (decoded Blosc blocks). Under pressure, parts beyond a
    quarter of the bound go first: one is cheap to decode again and most are read once or
    twice, while a chunk evicted before it is read must come back from disk or the source."""

    def __init__(self, max_bytes: int, on_evict: Callable[[Hashable], None] | None = None):
        """`on_evict(key)`: called, outside the cache's lock, for each chunk let go of."""
        self.max_bytes = max(0, int(max_bytes))
        self._on_evict = on_evict
        self.part_share = self.max_bytes // 4
        # Unbounded each: put below evicts across both by the rule above.
        self._items: LRU[Hashable, np.ndarray] = LRU(None, _resident_bytes)
        self._parts: LRU[Hashable, np.ndarray] = LRU(None, _resident_bytes)
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._items.total + self._parts.total

    @property
    def part_bytes(self) -> int:
        return self._parts.total

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            return arr if arr is not None else self._parts.get(key)

    def peek(self, key: Hashable) -> np.ndarray | None:
        """The chunk, without making it the most recently used."""
        with self._lock:
            return self._items.peek(key)

    def put(self, key: Hashable, arr: np.ndarray, part: bool = False) -> None:
        if _resident_bytes(arr) > self.max_bytes:
            return
        gone = []
        with self._lock:
            (self._parts if part else self._items).put(key, arr)
            while self.nbytes > self.max_bytes:
                if len(self._parts) and (self._parts.total > self.part_share or not len(self._items)):
                    self._parts.pop_oldest()
                elif len(self._items):
                    gone.append(self._items.pop_oldest()[0])
        if self._on_evict is not None:
            for old_key in gone:
                self._on_evict(old_key)

    def discard(self, key: Hashable, part: bool = False) -> None:
        """Forget an entry now (a block a reader has left behind); no eviction callback."""
        with self._lock:
            (self._parts if part else self._items).pop(key)

    def __len__(self) -> int:
        return len(self._items) + len(self._parts)


def _resident_bytes(arr) -> int:
    if not isinstance(arr, np.ndarray):
        return arr.nbytes  # a BlockedChunk: its encoded bytes
    # A broadcast fill chunk owns a single element.
    return arr.nbytes if arr.base is None or arr.strides.count(0) == 0 else arr.itemsize
