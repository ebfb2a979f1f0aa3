"""Readahead: while a view is read plane after plane, fetch the chunks of the next planes.

One Readahead watches one ordering of a level's planes (a stack file, or a folder of plane
files read in name order). Forward steps extend a window of queued chunks, bounded in
bytes; any jump resets it and cancels what has not started.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, Sequence


class Readahead:
    def __init__(
        self,
        engine,
        level,
        plane_count: int,
        chunks_of_plane: Callable[[int], Sequence[tuple[int, ...]]],
        budget_bytes: int | None = None,
    ):
        self.engine, self.level, self.plane_count = engine, level, plane_count
        self.chunks_of_plane = chunks_of_plane
        self.budget = engine.readahead_bytes if budget_bytes is None else budget_bytes
        self._lock = threading.Lock()
        self._last: int | None = None
        self._queued: list[tuple[int, tuple[int, ...]]] = []  # (plane, chunk) ahead of the reader
        self._queued_set: set[tuple[int, ...]] = set()
        self._next_plane = 0  # first plane whose chunks are not queued yet
        self._pending: list[Future] = []

    def observe(self, plane: int) -> None:
        """Called on every read of `plane` (reads within one plane are frequent and cheap)."""
        if self.budget <= 0:
            return
        with self._lock:
            last, self._last = self._last, plane
            if plane == last:
                return
            current = self.chunks_of_plane(plane)
            self._whole_plane(current)
            if last is None or plane != last + 1:
                self._reset(plane)
                if last is None or plane != 0:
                    return  # random access: wait for a second step before guessing
            self._advance(plane, set(current))

    def _whole_plane(self, chunks) -> None:
        """Readers walk a plane row by row; fetch all of its chunks in one wave instead of
        one chunk row at a time. Only when they fit the memory cache with room to spare:
        a plane of a huge 2D image is often read a tile at a time."""
        limit = self.engine.memory.max_bytes * 3 // 4
        if len(chunks) > 1 and len(chunks) * self.level.chunk_nbytes <= limit:
            self.engine.prefetch(self.level, chunks, urgent=True)

    def _reset(self, plane: int) -> None:
        for fut in self._pending:
            fut.cancel()  # only cancels what has not started; started fetches fill the caches
        self._pending = []
        self._queued, self._queued_set = [], set()
        self._next_plane = plane + 1

    def _advance(self, plane: int, current: set) -> None:
        # Forget chunks the reader has reached; they no longer count against the budget.
        self._queued = [(p, c) for p, c in self._queued if p > plane and c not in current]
        self._queued_set = {c for _, c in self._queued}
        self._pending = [f for f in self._pending if not f.done()]
        self._next_plane = max(self._next_plane, plane + 1)
        chunk_bytes = self.level.chunk_nbytes
        room = self.budget - len(self._queued) * chunk_bytes
        batch = []
        while room >= chunk_bytes and self._next_plane < self.plane_count:
            p = self._next_plane
            fresh = [c for c in self.chunks_of_plane(p) if c not in self._queued_set and c not in current]
            take = fresh[: room // chunk_bytes]
            for c in take:
                self._queued.append((p, c))
                self._queued_set.add(c)
                batch.append(c)
            room -= len(take) * chunk_bytes
            if len(take) < len(fresh):
                break  # the rest of this plane's chunks wait for room
            self._next_plane += 1
        if batch:
            fut = self.engine.prefetch(self.level, batch)
            if fut is not None:
                self._pending.append(fut)
