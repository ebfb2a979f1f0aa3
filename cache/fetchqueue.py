"""Chunk fetches by priority, on a bounded pool of threads.

A reader's own chunks go first, then the rest of the plane it is reading, then readahead.
A queued fetch that a reader comes to wait for is promoted to the reader's priority, and
readahead that a jump made useless is dropped before it starts.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable

DEMAND, PLANE, AHEAD, STAGE = range(4)  # a reader waits / its plane / decoded readahead / readahead to disk


class Cancelled(Exception):
    """A readahead fetch dropped before it started."""


class Task:
    __slots__ = ("key", "run", "drop", "cancelled", "started")

    def __init__(self, key: Hashable, run: Callable[[], None], drop: Callable[[], None],
                 cancelled: threading.Event | None):
        self.key, self.run, self.drop, self.cancelled, self.started = key, run, drop, cancelled, False


class FetchQueue:
    def __init__(self, max_threads: int):
        # Every submit also submits one "run the most urgent task" to the pool, so each task
        # runs exactly once, in priority order. The pool's threads end with the interpreter.
        self._pool = ThreadPoolExecutor(max(1, max_threads), thread_name_prefix="fetch")
        self._heap: list[tuple[int, int, Task]] = []
        self._queued: dict[Hashable, Task] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._unfinished = 0

    def submit(self, key: Hashable, priority: int, run: Callable[[], None], drop: Callable[[], None],
               cancelled: threading.Event | None = None) -> None:
        """Run `run()` on a worker; `drop()` instead when `cancelled` is set before it starts."""
        task = Task(key, run, drop, cancelled)
        with self._lock:
            self._unfinished += 1
            self._queued[key] = task
            heapq.heappush(self._heap, (priority, next(self._seq), task))
        self._pool.submit(self._run_most_urgent)

    def promote(self, key: Hashable, priority: int) -> None:
        """A reader waits for `key`: move it up if it has not started, and never drop it."""
        with self._lock:
            task = self._queued.get(key)
            if task is not None and not task.started:
                task.cancelled = None
                heapq.heappush(self._heap, (priority, next(self._seq), task))  # the old entry is skipped

    def _run_most_urgent(self) -> None:
        with self._lock:
            while True:
                _, _, task = heapq.heappop(self._heap)
                if not task.started:
                    break
            task.started = True
            if self._queued.get(task.key) is task:
                del self._queued[task.key]
        try:
            if task.cancelled is not None and task.cancelled.is_set():
                task.drop()
            else:
                task.run()
        finally:
            with self._lock:
                self._unfinished -= 1
                if self._unfinished == 0:
                    self._done.notify_all()

    @property
    def unfinished(self) -> int:
        """Fetches queued or running."""
        return self._unfinished

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted fetch has run or been dropped (tests, `cache prefetch`)."""
        with self._lock:
            return self._done.wait_for(lambda: self._unfinished == 0, timeout)
