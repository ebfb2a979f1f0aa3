"""Chunk engine counters behind MOUNT/.ngffmount/stats.json.

Remote requests and bytes are counted where they happen, in adapters.storage.TRANSFERS,
with the same Counters.
"""

from __future__ import annotations

import time

from ..adapters.counters import Counters

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


class Stats(Counters):
    def __init__(self):
        super().__init__(COUNTERS)
        self.started = time.time()

    def snapshot(self) -> dict:
        out = super().snapshot()
        out["uptime_s"] = round(time.time() - self.started, 3)
        return out
