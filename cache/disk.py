"""The persistent chunk cache on disk: encoded bytes, shared by every mount using the same folder.

diskcache keeps it process-safe (SQLite) and size-bounded (least-recently-used eviction).
Each entry carries a checksum, so a damaged entry is a miss, never wrong pixels.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import random
import struct
import threading
import time
from typing import NamedTuple

import diskcache
import google_crc32c

# An entry is a format byte, the CRC32C of the data, then the data. CRC32C runs at ~10 GB/s
# (blake2b, tried first, cost 0.16 s per 84 MB warm plane); it catches damage, not attacks.
ENTRY_FORMAT = b"\x01"
HEADER_BYTES = 5
DEFAULT_SIZE = 10 << 30


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ngffmount")


def _checksum(data) -> bytes:
    return struct.pack("<I", google_crc32c.value(data))


class DiskCache:
    def __init__(self, directory: str, size_limit: int | None = DEFAULT_SIZE):
        """`size_limit=None` keeps the bound stored in the folder (for `cache info`)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.directory = directory
        settings = {"eviction_policy": "least-recently-used", "statistics": False}
        if size_limit is not None:
            settings["size_limit"] = int(size_limit)
        self._cache = _SerialCache(directory, disk=_PathDisk, **settings)
        self.locks = FetchLocks(directory)

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None on a miss or a damaged entry (which is then dropped)."""
        try:
            value = self._cache.get(key, default=None, read=True)
            if value is None:
                return None
            if isinstance(value, _EntryPath):
                head, data = _read_entry_file(value.path)
            else:  # small: kept in SQLite itself
                head, data = value[:HEADER_BYTES], value[HEADER_BYTES:]
        except Exception:
            self.delete(key)
            return None
        if len(head) < HEADER_BYTES or head[:1] != ENTRY_FORMAT or _checksum(data) != head[1:]:
            self.delete(key)
            raise CorruptEntry(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        head = ENTRY_FORMAT + _checksum(data)
        if len(data) + HEADER_BYTES < self._cache.disk_min_file_size:
            self._cache.set(key, head + data)
        else:
            # As a file object, so diskcache copies nothing: given bytes, it writes them
            # through io.BytesIO line by line (~20,000 write calls per MB of pixels).
            self._cache.set(key, _EntryReader(head, data), read=True)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def size_limit(self) -> int:
        return int(self._cache.size_limit)

    def delete(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except Exception:
            pass

    def volume(self) -> int:
        return self._cache.volume()

    def clear(self) -> int:
        return self._cache.clear()

    def close(self) -> None:
        self._cache.close()


class _SerialCache(diskcache.Cache):
    """diskcache with its write transactions (an LRU get is one) taken one at a time per process.

    Threads that collide on SQLite's write lock get SQLITE_BUSY, whose handler sleeps 1 ms,
    then 2, 5, 10...: 8 threads reading the 16 chunks of a plane took 65 ms instead of 13.
    A Python lock makes them queue for microseconds instead; other processes still meet the
    busy handler, rarely."""

    def __init__(self, *args, **kwargs):
        self._txn_lock = threading.RLock()  # re-entrant: diskcache nests transactions in a thread
        super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def _transact(self, retry=False, filename=None):
        with self._txn_lock, super()._transact(retry, filename) as txn:
            yield txn


class _EntryPath(NamedTuple):
    path: str


class _PathDisk(diskcache.Disk):
    """Gives the path of a value kept in a file instead of opening it (get with read=True).

    diskcache fetches a value inside its write transaction (an LRU get updates the entry):
    opening, let alone reading, a file there would hold every other thread's lookup up
    behind a cold disk. The caller reads the file after the transaction."""

    def fetch(self, mode, filename, value, read):
        if read and mode == diskcache.core.MODE_BINARY:
            return _EntryPath(os.path.join(self._directory, filename))
        return super().fetch(mode, filename, value, read)


def _read_entry_file(path: str) -> tuple[bytes, bytes]:
    """An entry file's header and data, each read straight into its own bytes object."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEADER_BYTES, 0)
        data = os.pread(fd, max(0, size - HEADER_BYTES), HEADER_BYTES)
    finally:
        os.close(fd)
    return head, data


class _EntryReader:
    """Header then data, as diskcache reads a file object: 4 MiB at a time, no copies."""

    BLOCK = 4 << 20

    def __init__(self, head: bytes, data):
        self._parts = [memoryview(head), memoryview(data)]

    def read(self, size: int):
        while self._parts and not len(self._parts[0]):
            self._parts.pop(0)
        if not self._parts:
            return b""
        part = self._parts[0]
        self._parts[0] = part[min(size, self.BLOCK):]
        return part[:min(size, self.BLOCK)]


class FetchLocks:
    """One fetch per chunk among all threads and processes that share the cache folder: the
    others wait, then read the chunk from disk.

    Across processes: byte-range locks on one file, one slot per chunk key. POSIX locks
    belong to the process (the kernel drops them when it dies, kill -9 included), so threads
    of one process also claim their slots in a shared set. Slots are claimed all at once in
    the process and locked in ascending order across processes: no waiting in a cycle.

    A fetch whose bytes are queued for the disk is downgraded: this process's threads may
    take the slot again (they find the bytes in the queue), other processes wait until the
    bytes are on disk. POSIX locks do not nest, so a count of holders decides when the file
    lock goes."""

    SLOTS = 1 << 24

    def __init__(self, directory: str):
        self._fd = os.open(os.path.join(directory, "fetch.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        self._claimed: set[int] = set()  # slots a thread of ours is fetching
        self._holders: collections.Counter[int] = collections.Counter()  # per slot our file lock stands for
        self._cond = threading.Condition()

    def slots(self, keys) -> list[int]:
        return sorted({int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") % self.SLOTS
                       for k in keys})

    def acquire(self, slots: list[int]) -> None:
        with self._cond:
            while self._claimed.intersection(slots):
                self._cond.wait()
            self._claimed.update(slots)
            # Slots held by a downgraded fetch are ours already: only the others need the file lock.
            need = [slot for slot in slots if not self._holders[slot]]
            self._holders.update(slots)
        for attempt in itertools.count():
            taken = []
            try:
                for slot in need:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, slot, os.SEEK_SET)
                    taken.append(slot)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLK:
                    self.release(slots)  # unlocking a slot we never locked does nothing
                    raise
                # The kernel sees a cycle between processes where their threads have none
                # (ascending order per thread): let go, and try again shortly.
                self._unlock(taken)
                time.sleep(random.uniform(0.001, 0.002 * min(attempt + 1, 50)))
            except BaseException:
                self.release(slots)
                raise

    def downgrade(self, slots: list[int]) -> None:
        """Let this process's threads take these slots again; other processes still wait."""
        with self._cond:
            self._claimed.difference_update(slots)
            self._cond.notify_all()

    def release(self, slots: list[int], downgraded: bool = False) -> None:
        with self._cond:
            if not downgraded:
                self._claimed.difference_update(slots)
            self._holders.subtract(slots)
            last = [slot for slot in slots if self._holders[slot] <= 0]
            self._unlock(last)
            for slot in last:
                del self._holders[slot]
            self._cond.notify_all()

    def _unlock(self, slots: list[int]) -> None:
        for slot in slots:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot, os.SEEK_SET)


class CorruptEntry(Exception):
    """A cache entry failed its digest check; it has been removed."""
