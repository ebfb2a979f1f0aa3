"""A byte-bounded LRU of decoded chunks (or blocks of them), so each is decoded once while resident."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np


class MemoryLRU:
    """Chunks, and parts of chunks (decoded Blosc blocks). Under pressure, parts beyond a
    quarter of the bound go first: one is cheap to decode again and most are read once or
    twice, while a chunk evicted before it is read must come back from disk or the source."""

    def __init__(self, max_bytes: int, on_evict: Callable[[Hashable], None] | None = None):
        """`on_evict(key)`: called, outside the cache's lock, for each chunk let go of."""
        self.max_bytes = max(0, int(max_bytes))
        self._on_evict = on_evict
        self.part_share = self.max_bytes // 4
        self.nbytes = 0
        self.part_bytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._parts: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            for items in (self._items, self._parts):
                arr = items.get(key)
                if arr is not None:
                    items.move_to_end(key)
                    return arr
            return None

    def peek(self, key: Hashable) -> np.ndarray | None:
        """The chunk, without making it the most recently used."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: Hashable, arr: np.ndarray, part: bool = False) -> None:
        size = _resident_bytes(arr)
        if size > self.max_bytes:
            return
        items = self._parts if part else self._items
        gone = []
        with self._lock:
            old = items.pop(key, None)
            if old is not None:
                self._count(-_resident_bytes(old), part)
            items[key] = arr
            self._count(size, part)
            while self.nbytes > self.max_bytes:
                if self._parts and (self.part_bytes > self.part_share or not self._items):
                    _, evicted = self._parts.popitem(last=False)
                    self._count(-_resident_bytes(evicted), True)
                elif self._items:
                    old_key, evicted = self._items.popitem(last=False)
                    self._count(-_resident_bytes(evicted), False)
                    gone.append(old_key)
        if self._on_evict is not None:
            for old_key in gone:
                self._on_evict(old_key)

    def discard(self, key: Hashable, part: bool = False) -> None:
        """Forget an entry now (a block a reader has left behind); no eviction callback."""
        with self._lock:
            arr = (self._parts if part else self._items).pop(key, None)
            if arr is not None:
                self._count(-_resident_bytes(arr), part)

    def _count(self, size: int, part: bool) -> None:
        self.nbytes += size
        if part:
            self.part_bytes += size

    def __len__(self) -> int:
        return len(self._items) + len(self._parts)


def _resident_bytes(arr) -> int:
    if not isinstance(arr, np.ndarray):
        return arr.nbytes  # a BlockedChunk: its encoded bytes
    # A broadcast fill chunk owns a single element.
    return arr.nbytes if arr.base is None or arr.strides.count(0) == 0 else arr.itemsize
