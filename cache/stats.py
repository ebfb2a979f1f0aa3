"""Chunk engine counters behind MOUNT/.ngffmount/stats.json.

Remote requests and bytes are counted where they happen, in adapters.storage.TRANSFERS.
"""

from __future__ import annotations

import threading
import time

COUNTERS = (
    "chunks_fetched",  # chunks asked of the source
    "chunks_missing",  # absent in the source: served as the fill value
    "memory_hits",
    "memory_misses",
    "disk_hits",
    "disk_misses",
    "disk_corrupt",
    "disk_write_failures",  # chunks not written to the disk cache (full, removed, broken): see the log
    "decodes",  # whole chunks decoded
    "block_decodes",  # Blosc blocks decoded alone (BlockedChunk)
    "decoded_bytes",  # by both: decoded bytes / chunk bytes is how often each chunk was decoded
    "prefetched",  # chunks queued by readahead
    "revalidated",  # cached chunks checked against the source again (--revalidate)
    "chunks_changed",  # of those, chunks whose bytes had changed at the source
    "revalidation_failures",  # the source could not be asked: the cached chunk was served
    "errors",
)


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)
        self.started = time.time()

    def register(self, names) -> None:
        """Counters a cache tier brings (tier.py), after these; known ones stay where they are."""
        with self._lock:
            for name in names:
                self._values.setdefault(name, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def snapshot(self) -> dict:
        with self._lock:
            out = dict(self._values)
        out["uptime_s"] = round(time.time() - self.started, 3)
        return out
