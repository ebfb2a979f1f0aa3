"""Write-behind for the disk cache: fetched bytes wait in memory while a reader is active.

Writing the 670 MB of a 1 GiB level into the disk cache costs about a CPU-second of copies
into the page cache; during a cold scroll on two cores that second is taken from decoding
and serving planes. So, like the kernel's dirty pages, fetched bytes are written once reads
pause for QUIET_S. Three bounds keep that honest:
- MAX_WAIT_S: another process sharing the cache waits for a chunk this one fetched (its
  fetch slot is held until the bytes are on disk) at most about that long;
- `bound`: bytes waiting that nothing else holds. Most waiting bytes are also the memory
  cache's resident chunks (the very same bytes object), which cost no memory of their own;
  the rest (staged chunks, chunks evicted before their write) count, and past the bound the
  oldest of them are written at once; a fetch thread waits for the writer to take them
  (`add_or_wait`), and writes its bytes itself only if that takes long (`add` says no);
- `flush()` and `close()` write everything now (tests, `cache prefetch`, unmount).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable, NamedTuple

from .readpause import ReadPauses

QUIET_S = 0.5
MAX_WAIT_S = 5.0
# Entries written together (one SQLite transaction: see DiskCache.put_many).
BATCH_ENTRIES = 32
BATCH_BYTES = 16 << 20  # also the size of the aligned buffer its file is written from


class Pending(NamedTuple):
    key: str  # disk cache key
    data: bytes
    slots: list[int]  # fetch slots to let go of once written
    memory_key: Hashable  # the chunk's key in the memory cache
    queued: float
    meta: dict | None = None  # the entry's metadata (DiskCache.put)


class WriteBehind(ReadPauses):
    def __init__(self, write: Callable[[Pending], None], held_in_memory: Callable[[Hashable, bytes], bool],
                 bound: int, write_many: Callable[[list[Pending]], None] | None = None):
        """`write(pending)` stores one entry and lets go of its slots, `write_many(pendings)`
        several at once (when given); `held_in_memory(memory_key, data)` says whether the
        memory cache holds these very bytes."""
        self._write = write
        self._write_many = write_many
        self._held_in_memory = held_in_memory
        self.bound = bound
        self._queue: OrderedDict[str, Pending] = OrderedDict()
        self._by_memory_key: dict[Hashable, str] = {}
        self._alone: set[str] = set()  # keys whose bytes nothing else holds
        self.alone_bytes = 0
        self._taken = 0  # of alone_bytes, those of the batch being written now
        self.nbytes = 0
        self._flushes = 0
        ReadPauses.__init__(self)  # reading(): around a reader's request, writes wait until QUIET_S after it
        threading.Thread(target=self._run, name="disk-write", daemon=True).start()

    def get(self, key: str) -> bytes | None:
        entry = self._queue.get(key)
        return None if entry is None else entry.data

    def get_entry(self, key: str) -> tuple[bytes, dict | None] | None:
        entry = self._queue.get(key)
        return None if entry is None else (entry.data, entry.meta)

    def __contains__(self, key: str) -> bool:
        return key in self._queue

    def add(self, key: str, data: bytes, slots: list[int], memory_key: Hashable, meta: dict | None = None) -> bool:
        """Queue bytes for the disk; False (nothing queued) when bytes held by nothing else
        are past the bound, or the key waits already: the caller writes them itself."""
        with self._cond:
            if key in self._queue or (self.alone_bytes > self.bound and not self._held_in_memory(memory_key, data)):
                return False
            self._enqueue(Pending(key, data, slots, memory_key, time.monotonic(), meta))
        return True

    def _enqueue(self, entry: Pending) -> None:
        self._queue[entry.key] = entry
        self._by_memory_key[entry.memory_key] = entry.key
        self.nbytes += len(entry.data)
        self._refresh(entry.key)
        # The writer sleeps until its next due time, which a new entry moves only when the
        # queue was empty or bytes held by nothing else are now past the bound: waking it
        # for every chunk would cost a thread switch per chunk of a scroll for nothing.
        if len(self._queue) == 1 or self.alone_bytes > self.bound:
            self._cond.notify_all()

    def add_or_wait(self, key: str, data: bytes, slots: list[int], memory_key: Hashable, meta: dict | None = None,
                    timeout: float = 2.0) -> bool:
        """As `add`, but past the bound wait (at most `timeout` seconds) until the writer has
        taken enough bytes into the batch it writes, instead of saying no at once. While a
        batch is being written its bytes still count (they are served from the queue), so
        during a scroll past the bound every fetch that arrived meanwhile was refused and
        written alone, by its fetch thread: a file and a transaction per chunk (~17% of the
        chunks of a 1 GiB level's cold scroll)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (key not in self._queue and self.alone_bytes - self._taken > self.bound
                   and not self._held_in_memory(memory_key, data)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            if key in self._queue:
                return False
            self._enqueue(Pending(key, data, slots, memory_key, time.monotonic(), meta))
        return True

    def memory_changed(self, memory_key: Hashable) -> None:
        """The memory cache took in or let go of this chunk: recount whether its waiting bytes
        are held elsewhere (from the memory cache itself, so the order of calls does not matter)."""
        with self._cond:
            key = self._by_memory_key.get(memory_key)
            if key is not None:
                self._refresh(key)
                if self.alone_bytes > self.bound:  # only then is anything due sooner
                    self._cond.notify_all()

    def _refresh(self, key: str) -> None:
        entry = self._queue[key]
        alone = not self._held_in_memory(entry.memory_key, entry.data)
        if alone and key not in self._alone:
            self._alone.add(key)
            self.alone_bytes += len(entry.data)
        elif not alone and key in self._alone:
            self._alone.discard(key)
            self.alone_bytes -= len(entry.data)

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued now, and wait for it (at most `timeout` seconds): whether
        everything was written."""
        with self._cond:
            self._flushes += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._queue, timeout)
            finally:
                self._flushes -= 1

    def _next_due(self, now: float) -> tuple[Pending | None, float]:
        """The entry to write now, or None and how long to wait before asking again."""
        oldest = next(iter(self._queue.values()))
        quiet_at = self._last_read + QUIET_S
        if self._flushes or (not self._readers and now >= quiet_at) or now >= oldest.queued + MAX_WAIT_S:
            return oldest, 0.0
        if self.alone_bytes > self.bound:
            return next(e for k, e in self._queue.items() if k in self._alone), 0.0
        wake = oldest.queued + MAX_WAIT_S
        if not self._readers:
            wake = min(wake, quiet_at)
        return None, max(0.01, min(wake - now, QUIET_S))

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        self._cond.wait()
                        continue
                    entry, wait = self._next_due(time.monotonic())
                    if entry is not None:
                        batch = self._batch(entry)
                        self._taken = sum(len(e.data) for e in batch if e.key in self._alone)
                        break
                    self._cond.wait(wait)
            try:
                if len(batch) > 1:
                    self._write_many(batch)
                else:
                    self._write(entry)
            except Exception:
                pass  # write() counts its own failures; the entries must still leave the queue
            finally:
                with self._cond:
                    for entry in batch:
                        del self._queue[entry.key]
                        if self._by_memory_key.get(entry.memory_key) == entry.key:
                            del self._by_memory_key[entry.memory_key]
                        if entry.key in self._alone:
                            self._alone.discard(entry.key)
                            self.alone_bytes -= len(entry.data)
                        self.nbytes -= len(entry.data)
                    self._taken = 0
                    self._cond.notify_all()

    def _batch(self, first: Pending) -> list[Pending]:
        """`first`, and with `write_many` the other entries that are due now as well (for a
        flush, a pause in reads, their age, or their bytes held by nothing else past the
        bound), oldest first, up to BATCH_ENTRIES or BATCH_BYTES."""
        batch, size = [first], len(first.data)
        if self._write_many is None:
            return batch
        now = time.monotonic()
        everything = self._flushes or (not self._readers and now >= self._last_read + QUIET_S)
        for key, entry in self._queue.items():
            if len(batch) >= BATCH_ENTRIES or size >= BATCH_BYTES:
                break
            if entry is first:
                continue
            if (everything or now >= entry.queued + MAX_WAIT_S
                    or (key in self._alone and self.alone_bytes > self.bound)):
                batch.append(entry)
                size += len(entry.data)
        return batch
