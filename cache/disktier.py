"""The disk cache as a tier (tier.py): DiskCache's entries, its fetch locks shared by every
daemon on the cache folder, and the write-behind that keeps disk writes off a reader's path."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable, Hashable

from .disk import CorruptEntry, DiskCache
from .throttledlog import ThrottledLog
from .writeback import Pending, WriteBehind

log = logging.getLogger("ngffmount")

# Fetched bytes that wait for their disk write (see writeback.py) and that nothing else
# holds: past this, the fetch thread writes them itself.
DISK_BACKLOG_BYTES = 256 << 20


class DiskTier:
    name = "disk"
    counters = ("disk_hits", "disk_misses", "disk_corrupt", "disk_write_failures")
    local = True

    def __init__(self, disk: DiskCache, backlog_bytes: int = DISK_BACKLOG_BYTES):
        self.disk = disk
        self._backlog_bytes = backlog_bytes
        self.writes: WriteBehind | None = None
        self.stats = None
        self._trouble = ThrottledLog(log)

    def attach(self, stats, held_in_memory: Callable[[Hashable, bytes], bool]) -> None:
        self.stats = stats
        self.writes = WriteBehind(self._write, held_in_memory, self._backlog_bytes, self._write_many)

    @property
    def source(self) -> str | None:
        return self.disk.source

    def holds(self, key: str) -> bool:
        """In the disk cache, or on its way there. Never raises: a disk cache in trouble
        answers no (DiskCache), and the chunk comes from the source."""
        return key in self.writes or key in self.disk

    def get(self, key: str):
        """(bytes, metadata) from the write-behind queue or the disk cache, or None."""
        try:
            entry = self.writes.get_entry(key)
            return entry if entry is not None else self.disk.get_entry(key)
        except CorruptEntry:
            self.stats.add("disk_corrupt")
            return None

    def claim(self, key: str) -> list[int]:
        """The chunk's slot is held from before the fetch until its bytes are on disk, so
        another daemon on this cache folder waits and then finds them there. This daemon's
        threads wait only until the bytes are queued for the disk (a reader coming for a
        staged chunk takes them from the queue)."""
        slots = self.disk.locks.slots([key])
        if self.disk.locks.claim(slots):
            # Another daemon held it: its bytes may be on disk since a moment, before the
            # index would see them.
            self.disk.index.look(key)
        return slots

    def release(self, claim: list[int]) -> None:
        self.disk.locks.release(claim)

    def put(self, key: str, data: bytes, meta: dict | None, claim: list[int], memory_key: Hashable) -> None:
        """Hand fetched bytes to the write-behind (its thread lets go of their fetch slots),
        waiting for room past its bound; should that take long, write them here and now."""
        if self.writes.add_or_wait(key, data, claim, memory_key, meta):
            # This process's readers take the bytes from the queue. (Should the write and its
            # release come first, this only ends the claim the release left to it.)
            self.disk.locks.downgrade(claim)
        else:
            self._write(Pending(key, data, claim, None, 0.0, meta), downgraded=False)

    def _write(self, entry: Pending, downgraded: bool = True) -> None:
        """A full or broken cache disk costs speed, never a read. The disk cache logs its
        own trouble; what it did not foresee is logged here, once, then counted."""
        try:
            if not self.disk.put(entry.key, entry.data, entry.meta):
                self.stats.add("disk_write_failures")
        except Exception as exc:
            self.stats.add("disk_write_failures")
            self._trouble.report("disk-write", "disk cache write failed: %r", exc)
        finally:
            self.disk.locks.release(entry.slots, downgraded=downgraded)

    def _write_many(self, entries: list[Pending]) -> None:
        """A batch from the write-behind: one SQLite transaction (DiskCache.put_many)."""
        try:
            failed = self.disk.put_many([(e.key, e.data, e.meta) for e in entries]).count(False)
            if failed:
                self.stats.add("disk_write_failures", failed)
        except Exception as exc:
            self.stats.add("disk_write_failures", len(entries))
            self._trouble.report("disk-write", "disk cache write failed: %r", exc)
        finally:
            for entry in entries:
                self.disk.locks.release(entry.slots, downgraded=True)

    def delete(self, key: str) -> None:
        self.disk.delete(key)

    def reading(self):
        return self.writes.reading() if self.writes is not None else nullcontext()

    def memory_changed(self, memory_key: Hashable) -> None:
        self.writes.memory_changed(memory_key)

    @property
    def backlog(self) -> int:
        return self.writes.nbytes

    def flush(self, timeout: float | None = None) -> bool:
        return self.writes.flush(timeout)

    def check(self) -> None:
        pass  # DiskCache says what it must when it opens
