"""Readahead: while a view is read plane after plane, fetch the chunks of the next planes.

One Readahead watches one ordering of a level's planes (a stack file, or a folder of plane
files read in name order). Forward steps extend a window of chunks ahead of the reader,
bounded in bytes: the nearest are decoded into the memory cache, as many as it holds until
the reader comes to them beside what readers use now (ChunkEngine.ahead_room); only the ones
after them are fetched into the disk cache (no memory held), and move up from the disk tier
as the reader moves on. Any jump resets the window and drops the fetches that have not started.
While the engine's fetches keep failing (`readahead_paused`), the window is dropped the same
way and not extended; it grows again from the reader's plane once a fetch succeeds.
"""

from __future__ import annotations

import threading
from collections import deque
from itertools import islice
from typing import Callable, Sequence

JITTER = 2  # planes a read may lag behind the newest one without counting as a jump back


class Readahead:
    def __init__(
        self,
        engine,
        level,
        plane_count: int,
        chunks_of_plane: Callable[[int], Sequence[tuple[int, ...]]],
    ):
        self.engine, self.level, self.plane_count = engine, level, plane_count
        self.chunks_of_plane = chunks_of_plane
        self.budget = engine.readahead_bytes
        self.stage_budget = engine.stage_bytes
        self._lock = threading.Lock()
        self._seen: int | None = None  # plane of the latest read
        self._last: int | None = None  # newest plane the window follows
        self._ahead: deque[tuple[int, tuple[int, ...]]] = deque()  # (plane, chunk) ahead of the reader, in order
        self._ahead_set: set[tuple[int, ...]] = set()
        self._decoding: set[tuple[int, ...]] = set()  # of those, the ones asked into memory
        self._staged: set[tuple[int, ...]] = set()  # and the ones asked onto disk
        self._next_plane = 0  # first plane whose chunks are not in the window yet
        self._cancelled = threading.Event()

    def observe(self, plane: int) -> None:
        """Called on every read of `plane` (reads within one plane are frequent and cheap)."""
        if self.budget <= 0:
            return
        with self._lock:
            if plane == self._seen:
                return
            self._seen = plane
            current = self.chunks_of_plane(plane)
            self._whole_plane(current)
            last = self._last
            if last is not None and last - JITTER <= plane <= last:
                return  # concurrent kernel reads finish out of order around the reader's plane
            self._last = plane
            if self.engine.readahead_paused:
                self._reset(plane)
                return
            if last is None or plane != last + 1:
                self._reset(plane)
                if last is None or plane != 0:
                    return  # random access: wait for a second step before guessing
            self._advance(plane, set(current), self._in_use(plane, current))

    def _whole_plane(self, chunks) -> None:
        """Readers walk a plane row by row; fetch all of its chunks in one wave instead of
        one chunk row at a time. Only when they fit the memory cache with room to spare:
        a plane of a huge 2D image is often read a tile at a time."""
        limit = self.engine.memory.max_bytes * 3 // 4
        if len(chunks) > 1 and len(chunks) * self.level.chunk_nbytes <= limit:
            self.engine.prefetch(self.level, chunks, urgent=True)

    def _in_use(self, plane: int, current) -> int:
        """How many chunks a reader of `plane` uses: its plane's and the few before it that
        reads still reach (JITTER), counted once where planes share chunks."""
        chunks = set(current)
        for p in range(max(0, plane - JITTER), plane):
            chunks.update(self.chunks_of_plane(p))
        return len(chunks)

    def _reset(self, plane: int) -> None:
        self._cancelled.set()  # fetches already started still fill the caches
        self._cancelled = threading.Event()
        if self._decoding:
            self.engine.forget_ahead(self.level, self._decoding)
        self.engine.keep_ahead(self, 0)
        self._ahead, self._ahead_set, self._decoding, self._staged = deque(), set(), set(), set()
        self._next_plane = plane + 1

    def _advance(self, plane: int, current: set, in_use: int) -> None:
        """`in_use`: how many chunks the reader uses now.

        Each step costs what changed, not the window: planes are read in turn, and a window
        of small chunks holds a thousand of them (walking it all twice per plane was a third
        of the daemon's Python while it served planes from memory). After every step each
        chunk of the window is asked either into memory (a prefix of it, the nearest) or
        onto disk (the rest)."""
        # Forget chunks the reader has reached; they no longer count against the budgets.
        ahead = self._ahead
        while ahead and ahead[0][0] <= plane:
            _, c = ahead.popleft()
            self._ahead_set.discard(c)
            self._decoding.discard(c)
            self._staged.discard(c)
        if not self._ahead_set.isdisjoint(current):  # a chunk of this plane was taken for a later one
            ahead = self._ahead = deque((p, c) for p, c in ahead if c not in current)
            self._ahead_set = {c for _, c in ahead}
            self._decoding &= self._ahead_set
            self._staged &= self._ahead_set
        self._next_plane = max(self._next_plane, plane + 1)
        # Chunks kept encoded count as what they hold in memory, and the blocks a walk keeps
        # decoded of them as the decoded blocks' share: those of the chunks in use and of as
        # many ahead (the reader steps into the next slab while the last blocks of this one
        # are still kept).
        chunk_bytes, walk_bytes = self.engine.chunk_footprint(self.level)
        budget = self.engine.ahead_room(self, in_use * chunk_bytes, 2 * in_use * walk_bytes if walk_bytes else None)
        room = (budget + self.stage_budget) // chunk_bytes - len(ahead)
        new_from = len(ahead)  # chunks before this one are each in memory or on disk already
        while room > 0 and self._next_plane < self.plane_count:
            p = self._next_plane
            fresh = [c for c in self.chunks_of_plane(p) if c not in self._ahead_set and c not in current]
            take = fresh[:room]
            ahead.extend((p, c) for c in take)
            self._ahead_set.update(take)
            room -= len(take)
            if len(take) < len(fresh):
                break  # the rest of this plane's chunks wait for room
            self._next_plane += 1
        # The nearest chunks not yet asked into memory go there while there is room (some of
        # them staged on disk before), the new ones after them onto disk.
        decode_room = budget // chunk_bytes - len(self._decoding)
        to_memory, i = [], len(self._decoding)
        while decode_room > 0 and i < len(ahead):
            c = ahead[i][1]
            i += 1
            if c not in self._decoding:
                to_memory.append(c)
                self._decoding.add(c)
                decode_room -= 1
        to_disk = [c for _, c in islice(ahead, max(i, new_from), None) if c not in self._staged]
        self._staged.update(to_disk)
        self.engine.keep_ahead(self, len(self._decoding) * chunk_bytes)
        if to_memory:
            self.engine.prefetch(self.level, to_memory, cancelled=self._cancelled)
        if to_disk:
            self.engine.stage(self.level, to_disk, cancelled=self._cancelled)
