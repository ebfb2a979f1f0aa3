"""Named counters, safe across threads, read as one snapshot: the one counter system behind
MOUNT/.ngffmount/stats.json (storage.TRANSFERS for remote requests, cache.stats for the engine)."""

from __future__ import annotations

import threading
from typing import Iterable


class Counters:
    def __init__(self, names: Iterable[str]):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def register(self, names: Iterable[str]) -> None:
        """Counters a part brings later (a cache tier): after these; known ones stay where they are."""
        with self._lock:
            for name in names:
                self._values.setdefault(name, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] += amount

    def add_each(self, **amounts: int) -> None:
        """Several counters in one step: a snapshot sees all of them changed or none."""
        with self._lock:
            for name, amount in amounts.items():
                self._values[name] += amount

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict:
        """{name: value} in the order the names were given."""
        with self._lock:
            return dict(self._values)
