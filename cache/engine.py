"""ChunkEngine: decoded chunks from memory, then disk, then one concurrent remote batch.

Concurrent requests for the same chunk share one fetch (an in-flight future per chunk).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
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
        fetch_threads: int = 32,
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
        # One chunk per task, so each is decoded as soon as it arrives (blocking fetches).
        self._fetchers = ThreadPoolExecutor(max(1, fetch_threads), thread_name_prefix="fetch")
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
        got: dict[tuple[int, ...], bytes | None] = {}
        failures: list[BaseException] = []
        done = threading.Semaphore(0)

        def deliver(idx, data) -> None:
            if isinstance(data, BaseException):
                failures.append(data)
            else:
                got[idx] = data
            done.release()

        self._fetch_each(level, todo, deliver)
        for _ in todo:
            done.acquire()
        if failures:
            raise failures[0]
        return len(got), sum(len(d) for d in got.values() if d is not None)

    def _load(self, level, owned: list[tuple[tuple[int, ...], Future]]) -> None:
        """Settle each owned chunk's future as soon as that chunk is decoded: a reader waiting
        for the first chunk row does not wait for the whole batch, and each decoded chunk
        enters the memory cache (evicting old ones) before the next is made."""
        futures = dict(owned)
        try:
            keys = {idx: level.chunk_key(idx) for idx in futures}
            on_disk = {idx for idx in futures if self.disk is not None and self._disk_key(level, keys[idx]) in self.disk}
            remote = {idx: keys[idx] for idx in futures if idx not in on_disk}
            if remote:
                if self.disk is not None:
                    self.stats.add("disk_misses", len(remote))
                self._fetch_each(level, remote, lambda idx, data: self._decoders.submit(
                    self._settle, level, idx, futures[idx], lambda: data))
        except BaseException as exc:
            for idx, fut in futures.items():
                self._settle(level, idx, fut, lambda: exc)
            return
        for idx in sorted(on_disk):
            read = partial(self._disk_or_remote, level, idx, keys[idx])
            if len(futures) == 1:
                self._settle(level, idx, futures[idx], read)
            else:
                self._decoders.submit(self._settle, level, idx, futures[idx], read)

    def _settle(self, level, idx, fut: Future, read) -> None:
        """Decode one chunk from `read()` (its encoded bytes, None if missing, or the exception
        that stopped its fetch) and hand it to the memory cache and every waiting reader."""
        if fut.done():
            return  # settled already, by the failure of its whole batch
        key = (level.cache_token, idx)
        try:
            raw = read()
            if isinstance(raw, BaseException):
                raise raw
            if raw is None:
                self.stats.add("chunks_missing")
                arr = self._fill_chunk(level)
            else:
                self.stats.add("decodes")
                arr = level.decode(idx, raw)
                if arr.shape != tuple(level.chunk_shape):
                    raise ValueError(f"decoded chunk {idx} has shape {arr.shape}, expected {level.chunk_shape}")
                arr.flags.writeable = False
        except BaseException as exc:
            self.stats.add("errors")
            with self._lock:
                self._inflight.pop(key, None)
            fut.set_exception(exc)
            return
        with self._lock:
            self.memory.put(key, arr)
            self._inflight.pop(key, None)
        fut.set_result(arr)

    def _disk_or_remote(self, level, idx, chunk_key: str):
        data = self._disk_get(level, chunk_key)
        if data is not None:
            return data
        # Evicted or damaged since it was seen on disk: fetch it after all.
        got = []
        done = threading.Event()
        self._fetch_each(level, {idx: chunk_key}, lambda _, d: (got.append(d), done.set()))
        done.wait()
        return got[0]

    def _fetch_each(self, level, keys: dict, deliver) -> None:
        """Fetch chunks concurrently, one request each, calling `deliver(idx, bytes | None |
        exception)` as each arrives. Without a disk cache that is all. With one, the chunks'
        cross-process slots are held from before the fetch until their bytes are on disk, so
        another daemon on this cache folder waits and then finds them there."""
        if self.disk is None:
            self.stats.add("chunks_fetched", len(keys))
            for idx, key in keys.items():
                self._fetchers.submit(self._fetch_one, level, idx, key, deliver, None)
            return
        slots = self.disk.locks.slots(self._disk_key(level, k) for k in keys.values())
        self.disk.locks.acquire(slots)
        try:
            todo = {}
            for idx, key in keys.items():
                data = self._disk_get(level, key, count=False)  # written while we waited?
                if data is not None:
                    self.stats.add("disk_hits")
                    deliver(idx, data)
                else:
                    todo[idx] = key
        except BaseException:
            self.disk.locks.release(slots)
            raise
        self.stats.add("chunks_fetched", len(todo))
        if not todo:
            self.disk.locks.release(slots)
            return
        writes_left = [len(todo)]

        def written() -> None:
            with self._lock:
                writes_left[0] -= 1
                last = writes_left[0] == 0
            if last:
                self.disk.locks.release(slots)

        for idx, key in todo.items():
            self._fetchers.submit(self._fetch_one, level, idx, key, deliver, written)

    def _fetch_one(self, level, idx, key: str, deliver, written) -> None:
        try:
            data = level.fetch_many([key])[key]
        except BaseException as exc:
            data = exc
        deliver(idx, data)
        if written is None:
            return
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._disk_put([(self._disk_key(level, key), data)], on_done=written)
        else:
            written()

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
