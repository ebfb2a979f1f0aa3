"""A byte-bounded LRU of decoded chunks (or blocks of them), so each is decoded once while
resident, and the pool of buffers its evicted chunks leave behind for the next decodes."""

from __future__ import annotations

import sys
import threading
from typing import Callable, Hashable

import numpy as np

from ..adapters.lru import LRU


POOL_MIN = 8 << 20  # the pool's least bound: a deep chunk (64 x 256 x 256 x 2 bytes)


class BufferPool:
    """Memory of evicted chunks and blocks, handed to the next decode of the same size.

    Decoding into new memory costs a page fault per 4 KiB on first touch (on a VM, more
    than the decode itself); a buffer whose chunk was let go is already mapped. A buffer is
    taken back only when nothing but the evicted array refers to it (`_sole_buffer`): a
    reader, a view, a future or a dict still holding the array or a slice of it keeps its
    bytes as they are. Bounded: past `max_bytes` a returned buffer is freed as before."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.nbytes = 0
        self._free: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.reused = 0  # decodes that got a buffer back (tests, benchmarks)

    def take(self, nbytes: int) -> np.ndarray:
        """A writable uint8 buffer of `nbytes`: an evicted chunk's, else new memory."""
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self.nbytes -= nbytes
                self.reused += 1
                return free.pop()
        return np.empty(nbytes, np.uint8)

    def give(self, arr) -> bool:
        """Offer the memory under `arr`, an array just let go of. The caller must hold no
        reference to `arr` but the argument (pass it straight from the container it was
        popped from). Whether the pool took it."""
        owner = _sole_buffer(arr, _EXCLUSIVE)
        del arr
        if owner is None:
            return False
        with self._lock:
            if self.nbytes + owner.nbytes > self.max_bytes:
                return False
            self._free.setdefault(owner.nbytes, []).append(owner)
            self.nbytes += owner.nbytes
        return True


def _sole_buffer(arr, limits):
    """The uint8 memory an array was decoded into (its base owns it) when no one but the
    caller's one reference holds the array and no one at all holds another view of that
    memory; else None. With `limits` None: the reference counts, for calibration."""
    if type(arr) is not np.ndarray:
        return None  # a BlockedChunk or anything else: not ours to take apart
    owner = arr.base
    if (type(owner) is not np.ndarray or not owner.flags.owndata or owner.dtype != np.uint8
            or owner.ndim != 1 or owner.nbytes != arr.nbytes):
        return None
    # numpy points every view of a view at the array owning the memory, so each view of
    # `arr` or of `owner` counts here.
    counts = (sys.getrefcount(arr), sys.getrefcount(owner))
    if limits is None:
        return counts
    return owner if counts[0] <= limits[0] and counts[1] <= limits[1] else None


def _calibrate() -> tuple[int, int]:
    """The counts `_sole_buffer` sees for an array held only by its caller's argument, as
    BufferPool.give calls it (they differ between Python versions)."""
    def give(arr):
        counts = _sole_buffer(arr, None)
        del arr
        return counts

    return give(np.empty(8, np.uint8).view(np.uint16))


_EXCLUSIVE = _calibrate()


class MemoryLRU:
    """Chunks, and parts of chunks (decoded Blosc blocks). Under pressure, parts beyond a
    quarter of the bound go first: one is cheap to decode again and most are read once or
    twice, while a chunk evicted before it is read must come back from disk or the source.

    Chunks put `ahead` (readahead's, not read yet) go after every chunk a reader has used:
    in plain LRU order they would be the oldest entries by the time the reader reaches them.
    A read (get) makes one an ordinary chunk."""

    def __init__(self, max_bytes: int, on_evict: Callable[[Hashable], None] | None = None,
                 pool_bytes: int | None = None):
        """`on_evict(key)`: called, outside the cache's lock, for each chunk let go of.
        `pool_bytes`: the bound of the buffers kept for reuse (default: 1/32 of the cache, at
        least a few chunks' worth)."""
        self.max_bytes = max(0, int(max_bytes))
        self._on_evict = on_evict
        self.part_share = self.max_bytes // 4
        if pool_bytes is None:
            pool_bytes = min(self.max_bytes, max(POOL_MIN, self.max_bytes // 32))
        self.pool = BufferPool(pool_bytes)
        # Unbounded each: put below evicts across both by the rules above.
        self._items: LRU[Hashable, np.ndarray] = LRU(None, _resident_bytes)
        self._parts: LRU[Hashable, np.ndarray] = LRU(None, _resident_bytes)
        self._unread: dict[Hashable, int] = {}  # chunks put ahead and not read since: their bytes
        self.ahead_bytes = 0
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
            if arr is None:
                return self._parts.get(key)
            if self._unread:
                self._mark_read(key)
            return arr

    def peek(self, key: Hashable) -> np.ndarray | None:
        """The chunk, without making it the most recently used (nor read, if put ahead)."""
        with self._lock:
            return self._items.peek(key)

    def put(self, key: Hashable, arr: np.ndarray, part: bool = False, ahead: bool = False) -> None:
        if _resident_bytes(arr) > self.max_bytes:
            return
        gone, dropped = [], []
        with self._lock:
            if part:
                self._parts.put(key, arr)
            else:
                self._mark_read(key)
                self._items.put(key, arr)
                if ahead:
                    self._unread[key] = _resident_bytes(arr)
                    self.ahead_bytes += self._unread[key]
            skipped = 0  # unread chunks passed over in this round
            while self.nbytes > self.max_bytes:
                if len(self._parts) and (self._parts.total > self.part_share or not len(self._items)):
                    dropped.append(self._parts.pop_oldest()[1])
                    continue
                oldest = next(iter(self._items))
                if oldest in self._unread and skipped < len(self._unread):
                    self._items.get(oldest)  # to the newest end: read chunks go first
                    skipped += 1
                    continue
                self._mark_read(oldest)
                entry = self._items.pop_oldest()
                gone.append(entry[0])
                dropped.append(entry[1])
                del entry  # the pool takes a buffer back only if nothing else holds it
        self._recycle(dropped)
        if self._on_evict is not None:
            for old_key in gone:
                self._on_evict(old_key)

    def settle_ahead(self, key: Hashable) -> None:
        """A chunk put ahead will not be read soon after all (its readahead moved away): it
        ages like any chunk from now."""
        with self._lock:
            self._mark_read(key)

    def _mark_read(self, key: Hashable) -> None:
        self.ahead_bytes -= self._unread.pop(key, 0)

    def discard(self, key: Hashable, part: bool = False) -> None:
        """Forget an entry now (a block a reader has left behind); no eviction callback."""
        dropped = []
        with self._lock:
            lru = self._parts if part else self._items
            if key in lru:
                dropped.append(lru.pop(key))
            if not part:
                self._mark_read(key)
        self._recycle(dropped)

    def _recycle(self, dropped: list) -> None:
        while dropped:
            self.pool.give(dropped.pop())

    def __len__(self) -> int:
        return len(self._items) + len(self._parts)


def _resident_bytes(arr) -> int:
    if not isinstance(arr, np.ndarray):
        return arr.nbytes  # a BlockedChunk: its encoded bytes
    # A broadcast fill chunk owns a single element.
    return arr.nbytes if arr.base is None or arr.strides.count(0) == 0 else arr.itemsize
