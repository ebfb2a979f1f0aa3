"""Chunk fetches by priority, on a bounded pool of threads.

A reader's own chunks go first, then the rest of the plane it is reading, then readahead.
A queued fetch that a reader comes to wait for is promoted to the reader's priority, and
readahead that a jump made useless is dropped before it starts.

Readahead cannot be stopped once its request is out, and while the remote does not answer,
each such request holds its thread until its timeout. So readahead may fill at most
`max_threads` threads, and `reserved` more are kept for readers' fetches: a reader never
waits behind readahead, only behind other readers.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
from typing import Callable, Hashable

from ..adapters.retry import deadline_at

DEMAND, PLANE, AHEAD, STAGE = range(4)  # a reader waits / its plane / decoded readahead / readahead to disk


class Cancelled(Exception):
    """A readahead fetch dropped before it started."""


class Task:
    __slots__ = ("key", "run", "drop", "cancelled", "started", "priority", "deadline")

    def __init__(self, key: Hashable, run: Callable[[], None], drop: Callable[[], None],
                 cancelled: threading.Event | None, priority: int, deadline: float | None):
        self.key, self.run, self.drop, self.cancelled = key, run, drop, cancelled
        self.started, self.priority, self.deadline = False, priority, deadline


class FetchQueue:
    def __init__(self, max_threads: int, reserved: int | None = None):
        self.max_threads = max(1, max_threads)
        self.reserved = self.max_threads if reserved is None else max(1, reserved)
        # Workers are only handed tasks they can start at once. They are daemon threads: a
        # fetch waiting on a silent remote must not hold up the exit of a stopped mount.
        self._ready: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._workers = 0
        self._heap: list[tuple[int, int, Task]] = []
        self._queued: dict[Hashable, Task] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._unfinished = 0
        self._running = 0
        self._closed = False

    def submit(self, key: Hashable, priority: int, run: Callable[[], None], drop: Callable[[], None],
               cancelled: threading.Event | None = None, deadline: float | None = None) -> None:
        """Run `run()` on a worker; `drop()` instead when `cancelled` is set before it starts.
        Remote requests made by `run` end by `deadline` (time.monotonic()), if given."""
        task = Task(key, run, drop, cancelled, priority, deadline)
        with self._lock:
            self._unfinished += 1
            self._queued[key] = task
            heapq.heappush(self._heap, (priority, next(self._seq), task))
        self._dispatch()

    def promote(self, key: Hashable, priority: int, deadline: float | None = None) -> None:
        """A reader waits for `key`: move it up if it has not started, never drop it, and end
        it by the reader's deadline."""
        with self._lock:
            task = self._queued.get(key)
            if task is None or task.started:
                return
            task.cancelled = None
            if deadline is not None:
                task.deadline = deadline if task.deadline is None else min(task.deadline, deadline)
            if priority < task.priority:
                task.priority = priority
                heapq.heappush(self._heap, (priority, next(self._seq), task))  # the old entry is skipped
        self._dispatch()

    def _dispatch(self) -> None:
        """Start what may start, most urgent first: readers' fetches while any thread is free,
        readahead only within `max_threads`. Once closed, drop what waits."""
        start, drop, spawn = [], [], 0
        with self._lock:
            while self._heap:
                priority, _, task = self._heap[0]
                if task.started or priority != task.priority:
                    heapq.heappop(self._heap)  # ran already, or promoted since
                    continue
                if self._closed:
                    heapq.heappop(self._heap)
                    self._take(task)
                    drop.append(task)
                    continue
                limit = self.max_threads + (self.reserved if priority < AHEAD else 0)
                if self._running >= limit:
                    break  # the most urgent task must wait, so all others do too
                heapq.heappop(self._heap)
                self._take(task)
                self._running += 1
                if self._workers < self._running:  # every running task has a worker of its own
                    self._workers += 1
                    spawn += 1
                start.append(task)
        for _ in range(spawn):
            threading.Thread(target=self._work, name="fetch", daemon=True).start()
        for task in start:
            self._ready.put(task)
        for task in drop:
            try:
                task.drop()
            finally:
                self._finished(running=False)

    def close(self) -> None:
        """Drop every fetch that has not started, and each one submitted from now on."""
        with self._lock:
            self._closed = True
        self._dispatch()

    def _take(self, task: Task) -> None:
        task.started = True
        if self._queued.get(task.key) is task:
            del self._queued[task.key]

    def _work(self) -> None:
        while True:
            task = self._ready.get()
            try:
                self._run(task)
            except Exception:  # noqa: BLE001 - a task reports its own failures; the worker lives on
                pass

    def _run(self, task: Task) -> None:
        try:
            if task.cancelled is not None and task.cancelled.is_set():
                task.drop()
            else:
                with deadline_at(task.deadline):
                    task.run()
        finally:
            self._finished(running=True)
            self._dispatch()

    def _finished(self, running: bool) -> None:
        with self._lock:
            self._running -= running
            self._unfinished -= 1
            if self._unfinished == 0:
                self._done.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def unfinished(self) -> int:
        """Fetches queued or running."""
        return self._unfinished

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted fetch has run or been dropped (tests, `cache prefetch`)."""
        with self._lock:
            return self._done.wait_for(lambda: self._unfinished == 0, timeout)
