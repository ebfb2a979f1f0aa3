"""Work kept off the readers' way: it waits until reads pause (writeback.py's disk writes,
redis_tier.py's whole entries read behind the reader)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class ReadPauses:
    """Counts reader requests under way (`_readers`) and when the last one ended (`_last_read`),
    under `_cond`."""

    def __init__(self, cond: threading.Condition | None = None):
        self._cond = cond or threading.Condition()
        self._readers = 0
        self._last_read = float("-inf")

    @contextmanager
    def reading(self):
        """Around a reader's request: the work waits until it is over, and a while after."""
        with self._cond:
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._last_read = time.monotonic()
