"""Chunk fetches by priority, on a bounded set of worker threads.

A reader's own chunks go first, then the rest of the plane it is reading, then readahead.
A queued fetch that a reader comes to wait for is promoted to the reader's priority, and
readahead that a jump made useless is dropped before it starts.
"""

from __future__ import annotations

import heapq
import itertools
import threading
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
        self.max_threads = max(1, max_threads)
        self._heap: list[tuple[int, int, Task]] = []
        self._queued: dict[Hashable, Task] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # work for idle workers
        self._done = threading.Condition(self._lock)  # everything finished
        self._threads = 0
        self._idle = 0
        self._unfinished = 0

    def submit(self, key: Hashable, priority: int, run: Callable[[], None], drop: Callable[[], None],
               cancelled: threading.Event | None = None) -> None:
        """Run `run()` on a worker; `drop()` instead when `cancelled` is set before it starts."""
        task = Task(key, run, drop, cancelled)
        with self._cond:
            self._unfinished += 1
            self._queued[key] = task
            heapq.heappush(self._heap, (priority, next(self._seq), task))
            if self._idle:
                self._idle -= 1  # counted here, so a burst of submits wakes as many workers
                self._cond.notify()
            elif self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name="fetch", daemon=True).start()

    def promote(self, key: Hashable, priority: int) -> None:
        """A reader waits for `key`: move it up if it has not started, and never drop it."""
        with self._cond:
            task = self._queued.get(key)
            if task is not None and not task.started:
                task.cancelled = None
                heapq.heappush(self._heap, (priority, next(self._seq), task))  # the old entry is skipped

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].started:
                        heapq.heappop(self._heap)
                    if self._heap:
                        break
                    self._idle += 1
                    self._cond.wait()
                _, _, task = heapq.heappop(self._heap)
                task.started = True
                if self._queued.get(task.key) is task:
                    del self._queued[task.key]
            try:
                if task.cancelled is not None and task.cancelled.is_set():
                    task.drop()
                else:
                    task.run()
            except BaseException:  # noqa: BLE001 - a task reports its own failures; the worker lives on
                pass
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
