"""A resident chunk kept encoded, whose blocks are decoded as reads first need them.

A plane of a 64-deep chunk is 1/64 of it: decoding the whole chunk for the first plane
costs 64 times the work and fresh memory that plane needs (on this kind of VM, first
touches of memory are what a cold plane spends most on). Decoded blocks live in the
memory cache beside the chunks, so a scroll still decodes each block once. A read that
moves on to the next block of a chunk is walking it in C order (a z-scroll): the block
after that is decoded in the background, as readahead decoded whole chunks before, and
the blocks it has left behind are dropped.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from .memory import MemoryLRU
from .stats import Stats

# Fewer blocks than this and a read needs most of the chunk anyway: decode it whole.
MIN_BLOCKS = 4
# Decoded blocks a walk in C order keeps of one chunk: the one behind (reads lag a little),
# the one it reads and the one decoded ahead (_follow).
WALK_BLOCKS = 3


class BlockedChunk:
    """Slices like a read-only array of the chunk's shape (`chunk[box]`, box a tuple of
    slices with start and stop); each slice decodes only the blocks it lies in."""

    def __init__(self, frame, shape, dtype: np.dtype, key, memory: MemoryLRU, stats: Stats,
                 background: Callable[..., None]):
        self.frame = frame
        frame.buffers = memory.pool.take  # blocks into the memory of blocks or chunks let go of
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = len(frame.raw)  # what it holds in memory, for the memory cache's bound
        self.walk_bytes = min(WALK_BLOCKS, frame.nblocks) * frame.block_bytes  # and its blocks a z-scroll keeps
        self._key = key
        self._memory = memory
        self._stats = stats
        self._background = background
        self._lock = threading.Lock()
        self._asked: set[int] = set()  # blocks decoded or queued since the chunk came in
        self._decoded: set[int] = set()  # blocks decoded since the chunk came in
        self._kept_from = 0  # blocks before this one have been let go
        strides, n = [], 1
        for size in reversed(self.shape):
            strides.append(n)
            n *= size
        self._elem_strides = tuple(reversed(strides))  # C order, in elements

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        starts = [s.start for s in box]
        stops = [s.stop for s in box]
        # The box lies within elements [first, last] of the chunk in C order.
        first = sum(a * st for a, st in zip(starts, self._elem_strides))
        last = sum((b - 1) * st for b, st in zip(stops, self._elem_strides))
        per_block = self.frame.block_bytes // self.dtype.itemsize
        b0, b1 = first // per_block, last // per_block
        if b0 != b1 and not _walks_in_order(starts, stops, self.shape):
            return self._sparse(starts, stops, first, last, per_block)
        if b0 == b1:
            flat = self._block(b0)[first - b0 * per_block:]
        else:
            flat = np.empty(last + 1 - first, self.dtype)
            for b in range(b0, b1 + 1):
                lo, hi = max(first, b * per_block), min(last + 1, (b + 1) * per_block)
                flat[lo - first:hi - first] = self._block(b)[lo - b * per_block:hi - b * per_block]
        self._follow(b0, b1)
        itemsize = self.dtype.itemsize
        # The box from its first element, with the chunk's strides (read-only, as flat is).
        return np.ndarray([b - a for a, b in zip(starts, stops)], self.dtype, flat,
                          strides=[st * itemsize for st in self._elem_strides])

    def _sparse(self, starts, stops, first: int, last: int, per_block: int) -> np.ndarray:
        """A box that is no walk in C order (a row of each z of the chunk, for an XZ
        plane): only the blocks its rows lie in are decoded. Nothing is dropped or decoded
        ahead, since such reads do not walk the chunk in order."""
        # The first and last element of each row of the box, relative to the chunk.
        row_starts = np.zeros(1, np.int64)
        for a, b, st in zip(starts[:-1], stops[:-1], self._elem_strides[:-1]):
            row_starts = (row_starts[:, None] + np.arange(a, b, dtype=np.int64) * st).ravel()
        row_starts += starts[-1]
        row_ends = row_starts + (stops[-1] - starts[-1] - 1)
        # Blocks covered by any row: +1 where a row's blocks begin, -1 after they end.
        marks = np.zeros(self.frame.nblocks + 1, np.int64)
        np.add.at(marks, row_starts // per_block, 1)
        np.add.at(marks, row_ends // per_block + 1, -1)
        flat = np.empty(last + 1 - first, self.dtype)
        for b in np.flatnonzero(np.cumsum(marks)[:-1] > 0).tolist():
            lo, hi = max(first, b * per_block), min(last + 1, (b + 1) * per_block)
            flat[lo - first:hi - first] = self._block(b)[lo - b * per_block:hi - b * per_block]
        flat.flags.writeable = False
        itemsize = self.dtype.itemsize
        return np.ndarray([b - a for a, b in zip(starts, stops)], self.dtype, flat,
                          strides=[st * itemsize for st in self._elem_strides])

    def _follow(self, first: int, last: int) -> None:
        """After a read of blocks first..last: decode the next one ahead, and let go of the
        blocks before first - 1, which a walk in C order reads no more. Its memory is then
        reused for the next blocks instead of new memory (on a VM whose host backs memory
        lazily, new memory is the dearest part of a cold scroll)."""
        ahead = last + 1
        if last - 1 in self._asked and ahead < self.frame.nblocks and ahead not in self._asked:
            self._asked.add(ahead)
            self._background(self._block, ahead, True)
        if first - 1 in self._asked and first - 1 > self._kept_from:
            for block in range(self._kept_from, first - 1):
                self._memory.discard((*self._key, block), part=True)
            self._kept_from = first - 1

    def _block(self, block: int, ahead: bool = False) -> np.ndarray | None:
        """The decoded block, from memory or decoded now. `ahead` (a decode ahead of the
        reader, in the background): None if it was decoded already, even if let go of since:
        a reader that came first has used it and moved on."""
        self._asked.add(block)
        key = (*self._key, block)
        arr = self._memory.get(key)
        if arr is None:
            with self._lock:  # two readers of one block decode it once
                arr = self._memory.get(key)
                if arr is None and ahead and block in self._decoded:
                    return None
                if arr is None:
                    self._decoded.add(block)
                    try:
                        arr = self.frame.decode_block(block).view(self.dtype)
                    except Exception:
                        self._stats.add("errors")
                        raise
                    arr.flags.writeable = False
                    self._stats.add("block_decodes")
                    self._stats.add("decoded_bytes", arr.nbytes)
                    self._memory.put(key, arr, part=True)
        return arr


def _walks_in_order(starts, stops, shape) -> bool:
    """Whether reads of boxes like [starts, stops) walk the chunk in C order: rows of one
    plane of the chunk from its first column (maybe cut short at the level's edge). A box
    across planes of the chunk that takes one row of each (an XZ plane), or one column of
    rows (a YZ plane), is no such walk: planes next to it read the same blocks again."""
    dims = [b - a for a, b in zip(starts, stops)]
    for i, n in enumerate(dims[:-1]):
        if n > 1:
            middle_whole = all(starts[j] == 0 and stops[j] == shape[j] for j in range(i + 1, len(dims) - 1))
            return middle_whole and starts[-1] == 0 and (dims[-1] > 1 or shape[-1] == 1)
    return True
