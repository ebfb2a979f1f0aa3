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
import json
import mmap
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
# Format 2 adds the entry's metadata (JSON: the source version of its bytes, when they were
# last validated): format byte, CRC32C of metadata + data, metadata length (u16), metadata,
# data. Format 1 entries still read (with no metadata).
ENTRY_FORMAT_META = b"\x02"
META_HEADER_BYTES = 7
DEFAULT_SIZE = 10 << 30


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ngffmount")


def _checksum(data, meta: bytes | None = None) -> bytes:
    crc = google_crc32c.value(data) if meta is None else google_crc32c.extend(google_crc32c.value(meta), data)
    return struct.pack("<I", crc)


def _split_entry(value: bytes) -> tuple[bytes, bytes, bytes]:
    """An entry's header, metadata and data (metadata empty in format 1)."""
    if value[:1] == ENTRY_FORMAT_META and len(value) >= META_HEADER_BYTES:
        end = META_HEADER_BYTES + struct.unpack_from("<H", value, 5)[0]
        return value[:META_HEADER_BYTES], value[META_HEADER_BYTES:end], value[end:]
    return value[:HEADER_BYTES], b"", value[HEADER_BYTES:]


class DiskCache:
    def __init__(self, directory: str, size_limit: int | None = DEFAULT_SIZE, source: str | None = None):
        """`size_limit=None` keeps the bound stored in the folder (for `cache info`). `source`
        (a URL without credentials) tags the entries put, for `cache clear SOURCE`."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.directory = directory
        self.source = source
        settings = {"eviction_policy": "least-recently-used", "statistics": False}
        if size_limit is not None:
            settings["size_limit"] = int(size_limit)
        self._cache = _SerialCache(directory, disk=_PathDisk, **settings)
        self.locks = FetchLocks(directory)

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None on a miss or a damaged entry (which is then dropped)."""
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: str) -> tuple[bytes, dict | None] | None:
        """The stored bytes and metadata (None for an entry written without), or None on a
        miss or a damaged entry (which is then dropped)."""
        try:
            value = self._cache.get(key, default=None, read=True)
            if value is None:
                return None
            if isinstance(value, _EntryPath):
                head, meta, data = _read_entry_file(value.path)
            else:  # small: kept in SQLite itself
                head, meta, data = _split_entry(value)
        except Exception:
            self.delete(key)
            return None
        if head[:1] == ENTRY_FORMAT and len(head) == HEADER_BYTES and _checksum(data) == head[1:]:
            return data, None
        if head[:1] == ENTRY_FORMAT_META and len(head) == META_HEADER_BYTES and _checksum(data, meta) == head[1:5]:
            try:
                return data, json.loads(meta)
            except ValueError:
                pass
        self.delete(key)
        raise CorruptEntry(key)

    def put(self, key: str, data: bytes, meta: dict | None = None) -> None:
        if meta is None:
            head = ENTRY_FORMAT + _checksum(data)
        else:
            doc = json.dumps(meta, separators=(",", ":")).encode()
            head = ENTRY_FORMAT_META + _checksum(data, doc) + struct.pack("<H", len(doc)) + doc
        if len(data) + len(head) < self._cache.disk_min_file_size:
            self._cache.set(key, head + data, tag=self.source)
        else:
            # Not as bytes: diskcache would join them first, then write them through
            # io.BytesIO line by line (~20,000 write calls per MB of pixels).
            self._cache.set(key, _Entry(head, data), read=True, tag=self.source)

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

    def clear_source(self, source: str) -> int:
        """Remove the entries put for `source` and for sources under it (`source/...`)."""
        prefix = source.rstrip("/") + "/"
        tags = [row[0] for row in self._cache._sql("SELECT DISTINCT tag FROM Cache WHERE tag IS NOT NULL")]
        return sum(self._cache.evict(tag) for tag in tags
                   if isinstance(tag, str) and (tag == source.rstrip("/") or tag.startswith(prefix)))

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
    """Gives the path of a value kept in a file instead of opening it (get with read=True),
    and writes entry files past the page cache.

    diskcache fetches a value inside its write transaction (an LRU get updates the entry):
    opening, let alone reading, a file there would hold every other thread's lookup up
    behind a cold disk. The caller reads the file after the transaction."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not (read and isinstance(value, _Entry)):
            return super().store(value, read, key)
        filename, full_path = self.filename(key, value)
        return _write_entry_file(full_path, value), diskcache.core.MODE_BINARY, filename, None

    def fetch(self, mode, filename, value, read):
        if read and mode == diskcache.core.MODE_BINARY:
            return _EntryPath(os.path.join(self._directory, filename))
        return super().fetch(mode, filename, value, read)


def _read_entry_file(path: str) -> tuple[bytes, bytes, bytes]:
    """An entry file's header, metadata and data, the data read straight into its own bytes object."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, META_HEADER_BYTES, 0)
        if head[:1] == ENTRY_FORMAT_META and len(head) == META_HEADER_BYTES:
            start = META_HEADER_BYTES + struct.unpack_from("<H", head, 5)[0]
            meta = os.pread(fd, start - META_HEADER_BYTES, META_HEADER_BYTES)
        else:
            head, meta, start = head[:HEADER_BYTES], b"", HEADER_BYTES
        data = os.pread(fd, max(0, size - start), start)
    finally:
        os.close(fd)
    return head, meta, data


def _write_entry_file(path: str, parts) -> int:
    """Write a new entry file; returns its size. O_DIRECT where the file system allows it:
    the bytes are in the memory cache already, and a third copy in the page cache (670 MB
    in one cold scroll of a 1 GiB level) would cost new memory and push out other files."""
    directory = os.path.dirname(path)
    size = sum(len(p) for p in parts)
    direct = bool(_O_DIRECT)
    for attempt in range(10):  # as diskcache: another thread may remove the folder meanwhile
        with contextlib.suppress(OSError):
            os.makedirs(directory)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (_O_DIRECT if direct else 0), 0o600)
            break
        except FileNotFoundError:
            if attempt == 9:
                raise
        except OSError as exc:
            if exc.errno != errno.EINVAL or not direct:
                raise
            direct = False  # a file system without O_DIRECT (tmpfs): once more, buffered
    try:
        if not (direct and _write_direct(fd, parts, size)):
            if direct:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
            pos = 0
            for part in parts:
                _write_all(fd, part, pos)
                pos += len(part)
    finally:
        os.close(fd)
    return size


_O_DIRECT = getattr(os, "O_DIRECT", 0)
_DIRECT_ALIGN = 4096  # covers every logical block size in use
_DIRECT_MAX = 64 << 20  # larger entries go through the page cache


class _AlignedBuffers:
    """Page-aligned buffers that O_DIRECT writes copy into; kept for reuse (no new memory)."""

    KEEP = 2

    def __init__(self):
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self, size: int):
        with self._lock:
            fits = [b for b in self._free if len(b) >= size]
            buf = min(fits, key=len) if fits else None
            if buf is not None:
                self._free.remove(buf)
        if buf is None:
            buf = mmap.mmap(-1, max(size, 8 << 20))
        try:
            yield buf
        finally:
            with self._lock:
                self._free.append(buf)
                self._free.sort(key=len, reverse=True)
                for extra in self._free[self.KEEP:]:
                    extra.close()
                del self._free[self.KEEP:]


_ALIGNED = _AlignedBuffers()


def _write_direct(fd: int, parts, size: int) -> bool:
    """One aligned write of the parts (zero-padded to a block), then the file cut to size.
    False when the file system refuses the write (the caller writes it buffered)."""
    padded = -(-size // _DIRECT_ALIGN) * _DIRECT_ALIGN
    if padded > _DIRECT_MAX:
        return False
    with _ALIGNED.take(padded) as buf:
        view = memoryview(buf)
        try:
            pos = 0
            for part in parts:
                view[pos:pos + len(part)] = part
                pos += len(part)
            view[size:padded] = bytes(padded - size)
            try:
                _write_all(fd, view[:padded])
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    return False
                raise
        finally:
            view.release()
    os.ftruncate(fd, size)
    return True


def _write_all(fd: int, data, offset: int = 0) -> None:
    view, pos = memoryview(data), 0
    while pos < len(view):
        pos += os.pwrite(fd, view[pos:], offset + pos)


class _Entry(NamedTuple):
    """An entry to write as a file: header, then data (diskcache hands it to _PathDisk.store)."""

    head: bytes
    data: bytes


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
