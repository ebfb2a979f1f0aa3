"""Trouble that repeats is logged once, then counted: no traceback storms in a daemon's log.

    trouble = ThrottledLog(log)
    trouble.report("disk-full", "disk cache %s: the file system is full", path)   # logged
    trouble.report("disk-full", "disk cache %s: the file system is full", path)   # counted
    ...  # every `every` seconds while it goes on: one line with the count
    trouble.ended("disk-full", "disk cache %s: writing again", path)              # logged

A line never carries a traceback: callers put the error's own message in it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable

SUMMARY_EVERY_S = 300.0


class ThrottledLog:
    def __init__(self, logger: logging.Logger, every: float = SUMMARY_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[Hashable, list] = {}  # key -> [repeats since the last line, time of that line]

    def report(self, key: Hashable, message: str, *args, level: int = logging.WARNING) -> bool:
        """Log this trouble if it is new, or if `every` seconds passed since its last line
        (then with the count of repeats in between). True when a line was written."""
        now = self._clock()
        with self._lock:
            state = self._open.get(key)
            if state is None:
                self._open[key] = [0, now]
                repeats = None
            else:
                state[0] += 1
                if now - state[1] < self.every:
                    return False
                repeats, since = state[0], now - state[1]
                state[:] = [0, now]
        if repeats is None:
            self._logger.log(level, message, *args)
        else:
            self._logger.log(level, message + " (%d times in the last %.0f s)", *args, repeats, since)
        return True

    def active(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._open

    def ended(self, key: Hashable, message: str | None = None, *args, level: int = logging.INFO) -> None:
        """The trouble is over: the next report of it is logged at once again. Logs `message`
        (with the repeats not yet logged, if any) only if the trouble was open."""
        with self._lock:
            state = self._open.pop(key, None)
        if state is None or message is None:
            return
        if state[0]:
            self._logger.log(level, message + " (after %d more times)", *args, state[0])
        else:
            self._logger.log(level, message, *args)
