"""A byte-bounded LRU of decoded chunks (or blocks of them), so each is decoded once while resident."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

import numpy as np


class MemoryLRU:
    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.nbytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: Hashable, arr: np.ndarray) -> None:
        size = _resident_bytes(arr)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= _resident_bytes(old)
            self._items[key] = arr
            self.nbytes += size
            while self.nbytes > self.max_bytes and self._items:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= _resident_bytes(evicted)

    def __len__(self) -> int:
        return len(self._items)


def _resident_bytes(arr) -> int:
    if not isinstance(arr, np.ndarray):
        return arr.nbytes  # a BlockedChunk: its encoded bytes
    # A broadcast fill chunk owns a single element.
    return arr.nbytes if arr.base is None or arr.strides.count(0) == 0 else arr.itemsize
