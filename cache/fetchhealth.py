"""How the remote is doing, as the engine's fetches see it.

While fetches keep failing (the remote is down), readahead pauses: it would only queue more
requests that cannot succeed. A chunk whose fetch just ran out of time fails again at once
for a moment: the kernel retries a failed page read right away, and would double the
reader's wait. One successful fetch ends both.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Hashable, Iterable

READAHEAD_BACKOFF_AFTER = 3  # fetches failed in a row that pause readahead
RECENT_FAILURE_S = 1.0  # how long a chunk that ran out of time fails at once

log = logging.getLogger("ngffmount")


class FetchHealth:
    def __init__(self):
        self._lock = threading.Lock()
        self._failed_in_a_row = 0
        self._timed_out: dict[Hashable, tuple[float, str]] = {}  # chunk -> (when, why)

    @property
    def readahead_paused(self) -> bool:
        return self._failed_in_a_row >= READAHEAD_BACKOFF_AFTER

    def fetched(self, data) -> None:
        """A fetch ended with `data` (bytes, None, or the exception that stopped it)."""
        failed = isinstance(data, BaseException)
        with self._lock:
            before = self._failed_in_a_row
            self._failed_in_a_row = before + 1 if failed else 0
            if not failed and self._timed_out:
                self._timed_out.clear()  # the remote answers again
        if failed and before + 1 == READAHEAD_BACKOFF_AFTER:
            log.warning("readahead paused: %d chunk fetches failed in a row (last: %s)", before + 1, data)
        elif not failed and before >= READAHEAD_BACKOFF_AFTER:
            log.info("readahead resumed: a chunk fetch succeeded after %d failures", before)

    def timed_out(self, chunks: Iterable[Hashable], why: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._timed_out) > 4096:
                self._timed_out = {k: v for k, v in self._timed_out.items() if now - v[0] < RECENT_FAILURE_S}
            for chunk in chunks:
                self._timed_out[chunk] = (now, why)

    def recent_timeout(self, chunks: Iterable[Hashable]) -> tuple[Hashable, str] | None:
        """(chunk, why) for one of `chunks` that ran out of time just now, else None."""
        if not self._timed_out:
            return None
        now = time.monotonic()
        with self._lock:
            for chunk in chunks:
                when, why = self._timed_out.get(chunk, (None, ""))
                if when is not None and now - when < RECENT_FAILURE_S:
                    return chunk, f"{why} ({now - when:.1f} s ago)"
        return None
