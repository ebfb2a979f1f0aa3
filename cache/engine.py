"""ChunkEngine: decoded chunks from memory, then disk, then one concurrent remote batch.

Concurrent requests for the same chunk share one fetch (an in-flight future per chunk).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable

import numpy as np

from .disk import CorruptEntry, DiskCache
from .memory import MemoryLRU
from .stats import Stats

# Defaults sized so a daemon scrolling any level stays well under 1.5 GiB of RSS.
DEFAULT_MEMORY = 768 << 20
DEFAULT_READAHEAD = 256 << 20
DISK_BACKLOG_BYTES = 64 << 20


class ChunkEngine:
    def __init__(
        self,
        disk: DiskCache | None = None,
        memory_bytes: int = DEFAULT_MEMORY,
        decode_threads: int = 2,
        readahead_bytes: int | None = None,
    ):
        self.disk = disk
        self.memory = MemoryLRU(memory_bytes)
        # Prefetched chunks must stay resident until read: a quarter of the memory cache at most.
        # (Readahead of encoded bytes to disk, tried to run further ahead, held more memory in
        # fetched bytes and was slower: docs/benchmarks.md.)
        self.readahead_bytes = min(DEFAULT_READAHEAD, memory_bytes // 4) if readahead_bytes is None else readahead_bytes
        self._prefetcher = ThreadPoolExecutor(2, thread_name_prefix="readahead")
        self._urgent = ThreadPoolExecutor(2, thread_name_prefix="plane-fetch")
        # Disk writes happen after the read is answered; past a backlog bound, inline (backpressure).
        self._disk_writer = ThreadPoolExecutor(1, thread_name_prefix="disk-write")
        self._disk_backlog = 0
        self.stats = Stats()
        self._inflight: dict[tuple, Future] = {}
        self._lock = threading.Lock()
        self._decoders = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="decode")
        self._fill: dict[str, np.ndarray] = {}

    def get(self, level, indices: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
        """Decoded chunks (read-only, full chunk shape) for the given chunk indices of a level."""
        result: dict[tuple[int, ...], np.ndarray] = {}
        mine: list[tuple[tuple[int, ...], Future]] = []
        waiting: list[tuple[tuple[int, ...], Future]] = []
        with self._lock:
            for idx in dict.fromkeys(indices):
                key = (level.cache_token, idx)
                arr = self.memory.get(key)
                if arr is not None:
                    result[idx] = arr
                    continue
                fut = self._inflight.get(key)
                if fut is not None:
                    waiting.append((idx, fut))
                    continue
                fut = Future()
                self._inflight[key] = fut
                mine.append((idx, fut))
        self.stats.add("memory_hits", len(result))
        self.stats.add("memory_misses", len(mine) + len(waiting))
        if mine:
            self._load(level, mine)
        for idx, fut in mine + waiting:
            result[idx] = fut.result()  # re-raises a failed fetch in every waiting reader
        return result

    def prefetch(self, level, indices: Iterable[tuple[int, ...]], urgent: bool = False) -> Future | None:
        """Load chunks in the background (readahead); None when all are resident or coming.
        `urgent`: chunks a reader is about to need, on their own threads ahead of readahead."""
        with self._lock:
            todo = [
                idx for idx in dict.fromkeys(indices)
                if (level.cache_token, idx) not in self._inflight and self.memory.get((level.cache_token, idx)) is None
            ]
        if not todo:
            return None
        self.stats.add("prefetched", len(todo))
        return (self._urgent if urgent else self._prefetcher).submit(self._quietly, self.get, level, todo)

    @staticmethod
    def _quietly(load, level, indices) -> None:
        try:
            load(level, indices)
        except Exception:
            pass  # a failed prefetch is retried, and reported, by the read that needs the chunk

    def fill_disk(self, level, indices: Iterable[tuple[int, ...]]) -> tuple[int, int]:
        """Fetch chunks into the disk cache only (no decode): `cache prefetch`. Returns (chunks, bytes)."""
        if self.disk is None:
            raise ValueError("fill_disk needs a disk cache")
        keys = {idx: level.chunk_key(idx) for idx in indices}
        todo = {idx: k for idx, k in keys.items() if self._disk_key(level, k) not in self.disk}
        if not todo:
            return 0, 0
        raw = self._fetch_locked(level, todo)
        return len(raw), sum(len(d) for d in raw.values() if d is not None)

    def _load(self, level, owned: list[tuple[tuple[int, ...], Future]]) -> None:
        try:
            arrays = self._fetch_and_decode(level, [idx for idx, _ in owned])
        except BaseException as exc:
            self.stats.add("errors")
            with self._lock:
                for idx, fut in owned:
                    self._inflight.pop((level.cache_token, idx), None)
                    fut.set_exception(exc)
            return
        with self._lock:
            for idx, fut in owned:
                self.memory.put((level.cache_token, idx), arrays[idx])
                self._inflight.pop((level.cache_token, idx), None)
                fut.set_result(arrays[idx])

    def _fetch_and_decode(self, level, indices: list[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
        keys = {idx: level.chunk_key(idx) for idx in indices}
        raw: dict[tuple[int, ...], bytes | None] = {}
        remote = []
        for idx in indices:
            data = self._disk_get(level, keys[idx])
            if data is None:
                remote.append(idx)
            else:
                raw[idx] = data
        if remote and self.disk is None:
            self.stats.add("chunks_fetched", len(remote))
            fetched = level.fetch_many([keys[idx] for idx in remote])
            raw.update((idx, fetched[keys[idx]]) for idx in remote)
        elif remote:
            raw.update(self._fetch_locked(level, {idx: keys[idx] for idx in remote}))
        present = [idx for idx in indices if raw[idx] is not None]
        self.stats.add("chunks_missing", len(indices) - len(present))
        self.stats.add("decodes", len(present))
        if len(present) > 1:
            decoded = list(self._decoders.map(lambda i: level.decode(i, raw[i]), present))
        else:
            decoded = [level.decode(i, raw[i]) for i in present]
        out = {idx: self._fill_chunk(level) for idx in indices}
        for idx, arr in zip(present, decoded):
            if arr.shape != tuple(level.chunk_shape):
                raise ValueError(f"decoded chunk {idx} has shape {arr.shape}, expected {level.chunk_shape}")
            arr.flags.writeable = False
            out[idx] = arr
        return out

    def _fetch_locked(self, level, keys: dict) -> dict:
        """Fetch chunks missing on disk while holding their cross-process slots, so another
        daemon on this cache folder waits and then finds them on disk instead of refetching."""
        slots = self.disk.locks.slots(self._disk_key(level, k) for k in keys.values())
        self.disk.locks.acquire(slots)
        try:
            raw = {}
            for idx, key in list(keys.items()):
                data = self._disk_get(level, key, count=False)  # written while we waited?
                if data is not None:
                    raw[idx] = data
                    del keys[idx]
            self.stats.add("disk_hits", len(raw))
            self.stats.add("chunks_fetched", len(keys))
            fetched = level.fetch_many(list(keys.values())) if keys else {}
            entries = []
            for idx, key in keys.items():
                raw[idx] = fetched[key]
                if fetched[key] is not None:
                    entries.append((self._disk_key(level, key), fetched[key]))
        except BaseException:
            self.disk.locks.release(slots)
            raise
        # The slots are released once the entries are on disk, by the writer.
        self._disk_put(entries, on_done=lambda: self.disk.locks.release(slots))
        return raw

    def _disk_put(self, entries: list[tuple[str, bytes]], on_done) -> None:
        nbytes = sum(len(d) for _, d in entries)
        with self._lock:
            inline = self._disk_backlog + nbytes > DISK_BACKLOG_BYTES
            if not inline:
                self._disk_backlog += nbytes

        def write() -> None:
            try:
                for key, data in entries:
                    self.disk.put(key, data)
            except Exception:
                self.stats.add("errors")  # a full or broken cache disk costs speed, never a read
            finally:
                on_done()
                if not inline:
                    with self._lock:
                        self._disk_backlog -= nbytes

        if inline:
            write()
        else:
            self._disk_writer.submit(write)

    @property
    def disk_backlog(self) -> int:
        """Bytes fetched but not yet written to the disk cache."""
        return self._disk_backlog

    def flush_disk(self) -> None:
        """Wait for queued disk writes (tests, prefetch)."""
        self._disk_writer.submit(lambda: None).result()

    def _disk_key(self, level, chunk_key: str) -> str:
        return f"{level.cache_token}/{chunk_key}"

    def _disk_get(self, level, chunk_key: str, count: bool = True) -> bytes | None:
        if self.disk is None:
            return None
        try:
            data = self.disk.get(self._disk_key(level, chunk_key))
        except CorruptEntry:
            self.stats.add("disk_corrupt")
            data = None
        if count:
            self.stats.add("disk_hits" if data is not None else "disk_misses")
        return data

    def _fill_chunk(self, level) -> np.ndarray:
        arr = self._fill.get(level.cache_token)
        if arr is None:
            # Broadcast: a missing chunk costs one element of memory, however large.
            arr = np.broadcast_to(np.array(level.fill_value, dtype=level.dtype), tuple(level.chunk_shape))
            self._fill[level.cache_token] = arr
        return arr
