"""The persistent chunk cache on disk: encoded bytes, shared by every mount using the same folder.

diskcache keeps it process-safe (SQLite) and size-bounded (least-recently-used eviction).
Each entry carries a checksum, so a damaged entry is a miss, never wrong pixels.
The tier's own trouble (a full file system, a folder removed while in use) costs speed,
never a read: see DiskCache.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import random
import sqlite3
import struct
import threading
import time
from typing import NamedTuple

import crc32c
import diskcache
import numpy as np

from .diskfolder import (delete_rows, human, log_bound, oldest_entries, remove_entry_files, remove_oldest,
                         remove_oldest_files)
from .throttledlog import ThrottledLog

log = logging.getLogger("ngffmount")

# An entry is a format byte, the CRC32C of the data, then the data. CRC32C catches damage, not
# attacks (blake2b, tried first, cost 0.16 s per 84 MB warm plane). The crc32c package runs
# at ~25 GB/s here (google-crc32c: ~5), reads any buffer and lets go of the GIL.
ENTRY_FORMAT = b"\x01"
HEADER_BYTES = 5
# Format 2 adds the entry's metadata (JSON: the source version of its bytes, when they were
# last validated): format byte, CRC32C of metadata + data, metadata length (u16), metadata,
# data. Format 1 entries still read (with no metadata).
ENTRY_FORMAT_META = b"\x02"
META_HEADER_BYTES = 7
DEFAULT_SIZE = 10 << 30
# A full file system: the cache is cut to this share of its volume, and stays there.
FULL_SHRINK = 0.8
# Free bytes a write needs beyond its entry (SQLite's log grows by ~20 KB per entry).
FULL_MARGIN = 256 << 10
FULL_PAUSE_S = 30.0  # full with nothing left to evict: writes wait this long
# A removed folder is made again once it is gone entirely (looked at every GONE_CHECK_S),
# or GONE_WAIT_S after only its database went; if that fails, tried again after REOPEN_RETRY_S.
GONE_CHECK_S = 1.0
GONE_WAIT_S = 30.0
REOPEN_RETRY_S = 30.0
# Entries another daemon adds are seen by the in-memory index at once (ChangeToken), else
# within INDEX_REFRESH_S; entries it evicts, at a reload of the whole index (at most every
# INDEX_RELOAD_S) or when looked up.
INDEX_REFRESH_S = 0.1
INDEX_RELOAD_S = 2.0
CHANGE_FILE = "index.gen"  # the folder's ChangeToken
RECENCY_FLUSH_S = 5.0  # hits' access times wait at most this long for their write
# A file holds a batch's entries up to this share of the cache's bound or of its file
# system, whichever is smaller (eviction goes file by file: it must stay fine-grained).
FILE_SHARE = 64
FILE_MAX = 32 << 20
REPLACED_PREFIX = "~replaced/"  # the key of a replaced entry whose bytes stay in a shared file


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ngffmount")


def _checksum(data, meta: bytes | None = None) -> bytes:
    crc = crc32c.crc32c(data) if meta is None else crc32c.crc32c(data, crc32c.crc32c(meta))
    return struct.pack("<I", crc)


def _split_entry(value: bytes) -> tuple[bytes, bytes, bytes]:
    """An entry's header, metadata and data (metadata empty in format 1)."""
    if value[:1] == ENTRY_FORMAT_META and len(value) >= META_HEADER_BYTES:
        end = META_HEADER_BYTES + struct.unpack_from("<H", value, 5)[0]
        return value[:META_HEADER_BYTES], value[META_HEADER_BYTES:end], value[end:]
    return value[:HEADER_BYTES], b"", value[HEADER_BYTES:]


def entry_head(data, meta: dict | None) -> bytes:
    """What goes before an entry's data: its format, checksum and metadata."""
    if meta is None:
        return ENTRY_FORMAT + _checksum(data)
    doc = json.dumps(meta, separators=(",", ":")).encode()
    return ENTRY_FORMAT_META + _checksum(data, doc) + struct.pack("<H", len(doc)) + doc


def checked_entry(head: bytes, meta: bytes, data: bytes) -> tuple[bytes, dict | None] | None:
    """An entry's data and metadata if its checksum holds, else None."""
    if head[:1] == ENTRY_FORMAT and len(head) == HEADER_BYTES and _checksum(data) == head[1:]:
        return data, None
    if head[:1] == ENTRY_FORMAT_META and len(head) == META_HEADER_BYTES and _checksum(data, meta) == head[1:5]:
        try:
            return data, json.loads(meta)
        except ValueError:
            pass
    return None


def read_entry(value: bytes) -> tuple[bytes, dict | None] | None:
    """A whole stored entry (head, then data) as data and metadata; None if damaged."""
    return checked_entry(*_split_entry(value))


class CacheUnavailable(Exception):
    """The cache folder cannot be opened for writing (the message says why)."""


class DiskCache:
    """The disk tier. Its own trouble never fails a read: a full file system makes it evict
    and pause writing, a folder removed while in use is made again, and each kind of
    trouble is logged once, then counted (see throttledlog.py)."""

    def __init__(self, directory: str, size_limit: int | None = DEFAULT_SIZE, source: str | None = None):
        """`size_limit=None` keeps the bound stored in the folder. Raises CacheUnavailable
        when the folder cannot be opened for writing, even after evicting to make room.
        `source` (a URL without credentials) tags the entries put, for `cache clear SOURCE`."""
        self.directory = directory
        self.source = source
        self._size_limit = size_limit
        self._db_path = os.path.join(directory, diskcache.core.DBNAME)
        self._db_id: tuple[int, int] | None = None
        self._lock = threading.RLock()  # reopening and making room: one thread at a time
        self._trouble = ThrottledLog(log)
        self._paused_until = 0.0  # full, and nothing left to evict: no writes until then
        self._review_at: float | None = None  # bounded by a full file system: when to look again
        self._retry_at = 0.0  # gone, and not made again: no new try until then
        self._gone_since = 0.0
        self.evicted_to_open = 0  # entries removed to make room for opening a full folder
        self.changes = ChangeToken()
        self.index = KeyIndex(lambda: self._cache, self.changes)
        self._recency = Recency(self)
        try:
            self._cache: _SerialCache | None = self._open_or_make_room()
            self.locks = FetchLocks(directory)
            self.changes.open(directory)
        except Exception as exc:
            reason = "its file system is full" if self._full(exc) else _reason(exc)
            raise CacheUnavailable(f"cannot open the disk cache at {directory} for writing: {reason}") from None

    # -- entries

    def get(self, key: str) -> bytes | None:
        """The stored bytes, or None on a miss or a damaged entry (which is then dropped)."""
        entry = self.get_entry(key)
        return None if entry is None else entry[0]

    def get_entry(self, key: str) -> tuple[bytes, dict | None] | None:
        """The stored bytes and metadata (None for an entry written without), or None on a
        miss or a damaged entry (which is then dropped). A key the index does not know is a
        miss without asking SQLite."""
        if not self.index.holds(key):
            return None

        def read(cache):
            db_key, raw = cache.disk.put(key)
            # A plain SELECT, not diskcache's get: with least-recently-used eviction that is
            # a write transaction per lookup. Recency is written in batches (touch).
            row = cache._sql("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?",
                             (db_key, raw)).fetchone()
            if row is None:
                self.index.forget(key)  # evicted by another daemon
                return None
            value = cache.disk.fetch(*row, True)
            if isinstance(value, _EntryPath):
                return _read_entry_file(*value)
            return _split_entry(value)  # small: kept in SQLite itself

        got = self._run(read, None, on_entry_error=lambda: self.delete(key))
        if got is None:
            return None
        entry = checked_entry(*got)
        if entry is not None:
            self._recency.touch(key)
            return entry
        self.delete(key)
        raise CorruptEntry(key)

    def put(self, key: str, data: bytes, meta: dict | None = None) -> bool:
        """Store an entry, with `meta` (JSON-able) when given. False when it was not written:
        the file system is full (the oldest entries were evicted, or writes pause), or the
        folder is broken; never raises."""
        return self.put_many([(key, data, meta)]) == [True]

    def put_many(self, entries: list[tuple[str, bytes, dict | None]]) -> list[bool]:
        """Store entries (key, data, metadata) in one SQLite transaction; whether each was
        written. The large ones share a new file (one per FILE_SHARE of the bound; rows name
        it with their offset and length), written first; the rows are committed together: a crash leaves every entry
        of the batch whole or absent. A batch that fails is tried entry by entry, so one
        entry's trouble costs only that entry."""
        if not entries:
            return []
        heads = [entry_head(data, meta) for _, data, meta in entries]

        def write(cache):
            written = cache.disk.written
            written.paths, written.removals = [], []
            try:
                slices = self._write_file(cache, [(head, data) for (_, data, _), head in zip(entries, heads)])
                # A file's slice, or small: the bytes, kept in SQLite itself.
                values = [(key, where or head + data, where is not None)
                          for (key, data, _), head, where in zip(entries, heads, slices)]
                with cache.transact():
                    inserted = _insert_new(cache, values, self.source)
                    for i, (key, value, read) in enumerate(values):
                        if i not in inserted:  # replaces an entry
                            _keep_file_mates(cache, key)
                            cache.set(key, value, read=read, tag=self.source)
                    self._recency.write(cache)
                removals = written.removals
            except BaseException:
                for path in written.paths:  # their rows were not committed: nothing points to them
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                raise
            finally:
                written.paths = written.removals = None
            for name in removals:  # files of rows replaced or evicted, now that this is committed
                cache.disk.remove(name)
            self.changes.bump()
            return True

        need = sum(len(data) + len(head) for (_, data, _), head in zip(entries, heads))
        if self._run(write, False, writing=True, need=need, on_entry_error=lambda: False):
            for key, _, _ in entries:
                self.index.add(key)
            return [True] * len(entries)
        if len(entries) == 1:
            return [False]
        return [self.put_many([entry]) == [True] for entry in entries]

    def _write_file(self, cache, parts: list[tuple[bytes, bytes]]) -> list[_Slice | None]:
        """Write the entries (head, data) too large for SQLite into new files, as few as
        _file_bytes allows; where each went (None: kept in SQLite)."""
        slices: list[_Slice | None] = []
        chunks, offset, filename, path = [], 0, None, None
        most = self._file_bytes(cache)
        for head, data in parts:
            size = len(head) + len(data)
            if size < cache.disk_min_file_size:
                slices.append(None)
                continue
            if filename is None or offset + size > most:
                if chunks:
                    _write_entry_file(path, chunks)
                filename, path = cache.disk.new_file()
                cache.disk.written.paths.append(path)  # before writing: a failed write may leave part of it
                chunks, offset = [], 0
            slices.append(_Slice(filename, offset, size))
            chunks += [head, data]  # not joined: written straight from the caller's bytes
            offset += size
        if chunks:
            _write_entry_file(path, chunks)
        return slices

    def _file_bytes(self, cache) -> int:
        try:
            st = os.statvfs(self.directory)
            room = st.f_blocks * st.f_frsize
        except OSError:
            room = FILE_MAX * FILE_SHARE
        return min(FILE_MAX, min(int(cache.size_limit), room) // FILE_SHARE)

    def __contains__(self, key: str) -> bool:
        """From the index in memory: a miss asks nothing of SQLite. A hit checks that the
        folder is still the one opened (a removed folder's entries are gone)."""
        if not self.index.holds(key):
            return False
        if self._folder_changed():
            return self._reopen() is not None and self.index.holds(key)
        return True

    def __len__(self) -> int:
        cache = self._cache
        return len(cache) if cache is not None else 0

    @property
    def size_limit(self) -> int:
        cache = self._cache
        return int(cache.size_limit) if cache is not None else self._configured_limit

    def delete(self, key: str) -> None:
        self.index.forget(key)
        try:
            self._cache.delete(key)
        except Exception:
            pass
        self.changes.bump()

    def volume(self) -> int:
        cache = self._cache
        return cache.volume() if cache is not None else 0

    def clear(self) -> int:
        """Remove every entry, and entry files that no entry names (left by a crash or by an
        older version). On a full file system the files go first: deleting rows needs room."""
        cache = self._usable()
        if cache is None:
            raise CacheUnavailable(f"the disk cache at {self.directory} is gone")
        # Counted before: a row's removal takes the rows sharing its file along (_PathDisk.remove).
        count = len(cache)
        try:
            cache.clear()
        except Exception as exc:
            if self._recover(exc) is None:
                raise
            cache = self._usable()
            remove_entry_files(self.directory, keep=set())
            cache.clear()
        count -= len(cache)
        self.changes.bump()
        self.index.reset()
        keep = {name for (name,) in cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        remove_entry_files(self.directory, keep)
        return count

    def clear_source(self, source: str) -> int:
        """Remove the entries put for `source` and for sources under it (`source/...`)."""
        cache = self._usable()
        if cache is None:
            raise CacheUnavailable(f"the disk cache at {self.directory} is gone")
        source = source.rstrip("/")
        tags = [tag for (tag,) in cache._sql("SELECT DISTINCT tag FROM Cache WHERE tag IS NOT NULL")]
        removed = 0
        for tag in tags:
            if isinstance(tag, str) and (tag == source or tag.startswith(source + "/")):
                # Counted before: the rows sharing a file (one mount's batch: one source) go together.
                (count,), = cache._sql("SELECT count(*) FROM Cache WHERE tag = ?", (tag,)).fetchall()
                cache.evict(tag)
                removed += count
        self.changes.bump()
        self.index.reset()
        return removed

    def close(self) -> None:
        self.flush_recency()
        cache = self._cache
        if cache is not None:
            cache.close()

    def flush_recency(self) -> None:
        """Write the access times of the hits since the last write (eviction order). Only a
        hint: a folder in trouble is left to the next read or write to see to."""
        cache = self._cache
        try:
            if cache is None or self._folder_changed():
                raise FileNotFoundError(self._db_path)
            with cache.transact():
                self._recency.write(cache)
        except Exception:
            self._recency.drop()

    # -- keeping the tier usable

    def _open(self) -> _SerialCache:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        settings = {"eviction_policy": "least-recently-used", "statistics": False, **log_bound(self.directory)}
        if self._size_limit is not None:
            settings["size_limit"] = int(self._size_limit)
        cache = _SerialCache(self.directory, disk=_PathDisk, **settings)
        cache._sql("CREATE INDEX IF NOT EXISTS Cache_filename ON Cache(filename)")  # entries sharing a file
        self._configured_limit = int(cache.size_limit)
        st = os.stat(self._db_path)
        self._db_id = (st.st_dev, st.st_ino)
        return cache

    def _open_or_make_room(self) -> _SerialCache:
        """Opening writes diskcache's settings (and SQLite's shared-memory file): on a full
        file system, evict the least recently used entry files first, then open."""
        try:
            return self._open()
        except Exception as exc:
            if not self._full(exc):
                raise
            first = exc
        try:
            volume, rows = oldest_entries(self._db_path)
        except Exception:
            volume, rows = 0, []
        target = max(volume * (1 - FULL_SHRINK), FULL_MARGIN)
        # Only files free room here: rows kept in SQLite go with their rows, once it opens.
        victims, freed = remove_oldest([row for row in rows if row[1]], self.directory, target)
        if freed < target:
            # What the main database file names lags its log (a mount that ended on a full
            # disk could not merge it back): the files on disk are the truth.
            freed += remove_oldest_files(self.directory, target - freed)
        if not freed:
            raise first
        cache = self._open()
        # Rows a full disk would not let go are still entries: `clear` counts them then.
        self.evicted_to_open = delete_rows(cache, victims)  # other daemons told by changes.open
        log.warning("disk cache %s: the file system is full: removed the %d oldest entries (%s) to open it",
                    self.directory, len(victims), human(freed))
        return cache

    def _run(self, op, default, writing: bool = False, need: int = 0, on_entry_error=None):
        """op(cache), once more after the tier repaired itself; `default` when it cannot be
        used. An error that is the entry's own (not the tier's) calls `on_entry_error`."""
        for attempt in range(2):
            cache = self._usable(writing)
            if cache is None:
                return default
            try:
                return op(cache)
            except Exception as exc:
                repaired = self._recover(exc, need)
                if repaired is None:
                    if on_entry_error is not None:
                        on_entry_error()
                    if writing:
                        self._trouble.report("write", "disk cache %s: cannot write an entry: %s",
                                             self.directory, _reason(exc))
                    return default
                if not repaired:
                    return default
        return default

    def _usable(self, writing: bool = False) -> _SerialCache | None:
        """The cache to use now, or None (gone and not made again yet, or writing paused).
        Before a write, check the folder is still the one opened: writing into a folder
        made again by someone else's mkdir would leave files nothing tracks."""
        cache = self._cache
        if cache is None:  # gone: not made again yet
            return self._reopen() if time.monotonic() >= self._retry_at else None
        if writing:
            if self._folder_changed():
                return self._reopen()
            self._review_bound(cache)
            if time.monotonic() < self._paused_until:
                self._trouble.report("full", "disk cache %s: the file system is still full: not writing",
                                     self.directory)
                return None
        return cache

    def _recover(self, exc: BaseException, need: int = 0) -> bool | None:
        """After an error: True when the tier was repaired (the folder made again, or room
        made) and the operation may be tried again; False when it is in trouble that was not
        repaired; None when the tier is fine and the error is the entry's own."""
        if self._folder_changed():
            return self._reopen() is not None
        if self._full(exc):
            return self._make_room(need)
        return None

    def _folder_changed(self) -> bool:
        try:
            st = os.stat(self._db_path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._db_id

    def _reopen(self) -> _SerialCache | None:
        """The folder is not the one opened: go on without it, and open the one there now
        (another process made it again), or make it again once it is gone entirely (an
        `rm -rf` still at work must not meet new files), or GONE_WAIT_S after only its
        database went."""
        with self._lock:
            now = time.monotonic()
            if self._cache is not None:
                if not self._folder_changed():
                    return self._cache  # another thread saw to it
                self._cache = None  # the old one's connections close when the last thread lets go
                self.index.reset()
                self._gone_since = now
                self._retry_at = 0.0
                self._trouble.report("gone", "disk cache %s was removed while in use: going on without it "
                                     "(reads come from the source) until it is made again", self.directory)
            if now < self._retry_at:
                return None
            if (os.path.isdir(self.directory) and not os.path.exists(self._db_path)
                    and now - self._gone_since < GONE_WAIT_S):
                self._retry_at = now + GONE_CHECK_S
                return None
            try:
                cache = self._open()
                self.locks.reopen(self.directory)
                self.changes.open(self.directory)
            except Exception as exc:
                self._retry_at = now + REOPEN_RETRY_S
                self._trouble.report("reopen", "disk cache %s cannot be made again (%s): going on without it, "
                                     "trying again every %.0f s", self.directory, _reason(exc), REOPEN_RETRY_S)
                return None
            self._trouble.ended("reopen")
            self._trouble.ended("gone", "disk cache %s: made again, in use", self.directory)
            self._cache = cache
            self.index.reset()
            return cache

    def _full(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.Error):
            # SQLITE_FULL, or an I/O error from a shared-memory file that could not grow
            return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or self._free_bytes() < FULL_MARGIN
        return False

    def _free_bytes(self) -> int:
        try:
            st = os.statvfs(self.directory)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _make_room(self, need: int) -> bool:
        """The file system is full: bound the cache to a fifth under the room it has (its
        volume and what is free), and evict the least recently used entries down to that
        (their files first, as freeing space needs no write). The bound follows the room
        from then on (_review_bound). False when too little room was made: writes pause."""
        with self._lock:
            if self._free_bytes() >= need + FULL_MARGIN:
                return True  # another thread made room meanwhile
            cache = self._cache
            try:
                volume = cache.volume()
                limit = min(int((volume + self._free_bytes()) * FULL_SHRINK), int(cache.size_limit))
                rows = cache._sql("SELECT rowid, filename, size FROM Cache ORDER BY access_time").fetchall()
                victims, freed = remove_oldest(rows, self.directory, volume - limit)
                delete_rows(cache, victims)
                self.changes.bump()
                self.index.reset()
                cache.reset("size_limit", limit, update=False)  # this process only: the folder keeps its own
                cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except Exception:
                victims, freed, limit = [], 0, 0
            self._review_at = time.monotonic() + FULL_PAUSE_S
            free = self._free_bytes()
            room = free >= need + FULL_MARGIN
            if not room:
                self._paused_until = time.monotonic() + FULL_PAUSE_S
            self._trouble.report(
                "full", "disk cache %s: the file system is full: evicted the %d oldest entries (%s, now %s free); "
                "the cache stays under %s while the file system has no more room%s", self.directory, len(victims),
                human(freed), human(free), human(limit), "" if room else f"; not writing for {FULL_PAUSE_S:.0f} s")
            return room

    def _review_bound(self, cache: _SerialCache) -> None:
        """Bounded by a full file system: every FULL_PAUSE_S, let the bound follow the room
        there is, up to the configured bound. The trouble is over once a fifth of that room
        is free again."""
        now = time.monotonic()
        if self._review_at is None or now < self._review_at:
            return
        with self._lock:
            self._review_at = now + FULL_PAUSE_S
            try:
                free = self._free_bytes()
                room = cache.volume() + free
            except Exception:
                return
            limit = min(int(room * FULL_SHRINK), self._configured_limit)
            cache.reset("size_limit", limit, update=False)
            if limit == self._configured_limit:
                self._review_at = None
            if free >= room * (1 - FULL_SHRINK):
                self._trouble.ended("full", "disk cache %s: its file system has room again (%s free); the cache "
                                    "stays under %s", self.directory, human(free), human(limit))


def _insert_new(cache, values: list[tuple[str, object, bool]], tag: str | None) -> set[int]:
    """Inside a transaction: add the entries (key, value, read) whose keys have no row yet
    with one INSERT, then evict as diskcache's `set` would after each; their positions.
    A batch of newly fetched chunks is all new: `set` spent six SQL statements on each
    entry, and the writer took the GIL back after every one of them, behind 30 busy
    threads in a scroll. Keys already there (or twice in the batch) are left to `set`."""
    keys = [key for key, _, _ in values]
    present: set[str] = set()
    for start in range(0, len(keys), 500):  # within SQLite's limit of bound parameters
        part = keys[start:start + 500]
        present.update(key for (key,) in cache._sql(
            f"SELECT key FROM Cache WHERE raw = 1 AND key IN ({','.join('?' * len(part))})", part))
    now = time.time()
    inserted: set[int] = set()
    rows = []
    for i, (key, value, read) in enumerate(values):
        if key in present or not isinstance(key, str):
            continue
        present.add(key)
        size, mode, filename, db_value = cache.disk.store(value, read, key=key)
        rows.append((key, True, now, None, now, 0, tag, size, mode, filename, db_value))
        inserted.add(i)
    if rows:
        cache._con.executemany(
            "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode,"
            " filename, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        with cache._transact() as (sql, cleanup):  # nested: files to remove wait for the commit
            cache._cull(now, sql, cleanup, cache.cull_limit * len(rows))
    return inserted


def _keep_file_mates(cache, key: str) -> None:
    """Before `key` is replaced: if its file holds other entries too, its row stays, under
    a key nothing asks for, so the file's bytes stay counted (and the file whole) until
    eviction takes that row, and the file's other entries with it (see _PathDisk.remove)."""
    db_key, raw = cache.disk.put(key)
    row = cache._sql("SELECT filename FROM Cache WHERE key = ? AND raw = ?", (db_key, raw)).fetchone()
    if row is None or row[0] is None:
        return
    (mates,), = cache._sql("SELECT count(*) FROM Cache WHERE filename = ?", row).fetchall()
    if mates > 1:
        cache._sql("UPDATE Cache SET key = ? WHERE key = ? AND raw = ?",
                   (REPLACED_PREFIX + os.urandom(8).hex(), db_key, raw))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class ChangeToken:
    """A random 64-bit token in a small file of the cache folder (CHANGE_FILE), mapped into
    the memory of every daemon using the folder, and written anew after each commit that
    changes its entries. A daemon whose index saw an older token reads the rows added since
    before its next lookup: reading the token is a memory read, so a miss still asks
    nothing of SQLite while nothing changed, and a chunk another daemon has just put on
    disk (and let go of its fetch lock) is never fetched again. Where the file cannot be
    mapped, the token stays None and the index's timed refresh does the work alone."""

    def __init__(self):
        self._map: mmap.mmap | None = None

    def open(self, directory: str) -> None:
        """Map the folder's token file (made if missing), and announce a change: the folder
        was opened after evictions to make room, or made again. Replaces the map of a
        removed folder's file without closing it (threads may be reading it)."""
        try:
            fd = os.open(os.path.join(directory, CHANGE_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            self._map = None
            return
        try:
            if os.fstat(fd).st_size < 8:
                # Written, not truncated to size: a page with no block behind it would
                # fault (SIGBUS) on a full file system when written through the map.
                os.pwrite(fd, os.urandom(8), 0)
            self._map = mmap.mmap(fd, 8)
        except (OSError, ValueError):
            self._map = None
        finally:
            os.close(fd)
        self.bump()

    def read(self) -> bytes | None:
        shared = self._map
        return None if shared is None else shared[:8]

    def bump(self) -> None:
        """After a commit that changed the folder's entries."""
        shared = self._map
        if shared is not None:
            shared[:8] = os.urandom(8)


class KeyIndex:
    """The keys of the entries on disk, in memory, so that a miss asks nothing of SQLite.

    Keys are kept as their hashes: a collision is a false hit, which the lookup in SQLite
    that follows corrects (as it does an entry another daemon evicted). Entries other
    daemons add are rows past the highest rowid read, looked for as soon as the folder's
    ChangeToken changes, and at most every INDEX_REFRESH_S besides (a token file that
    cannot be shared, a rowid used again); when the folder counts fewer entries than the
    index holds, others evicted some, and the index is read again (at most every
    INDEX_RELOAD_S). A false miss costs a fetch from the source; DiskTier.claim looks the
    key up in SQLite when another daemon held its fetch lock."""

    def __init__(self, cache, changes: ChangeToken):
        self._cache = cache  # the DiskCache's current diskcache, or None
        self._changes = changes
        self._seen: bytes | None = None  # the folder's token when the index was last read
        self._keys: set[int] = set()
        self._mark = -1  # the highest rowid read; -1: read the whole index
        self._checked = float("-inf")
        self._reloaded = float("-inf")
        self._lock = threading.Lock()

    def holds(self, key: str) -> bool:
        token = self._changes.read()
        if self._mark < 0 or token != self._seen:
            # Not read yet (or reset), or the folder changed: every lookup waits for it.
            self.refresh(wait=True, token=token)
        elif time.monotonic() >= self._checked + INDEX_REFRESH_S:
            self.refresh(wait=False, token=token)  # another thread at it: the index as it is will do
        return hash(key) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        with self._lock:
            self._keys.add(hash(key))

    def forget(self, key: str) -> None:
        with self._lock:
            self._keys.discard(hash(key))

    def reset(self) -> None:
        """Read the whole index at the next lookup (the folder changed, rows were removed)."""
        with self._lock:
            self._keys = set()
            self._mark = -1
            self._checked = float("-inf")

    def look(self, key: str) -> bool:
        """Ask SQLite itself (after another daemon's fetch of this key)."""
        self.refresh(wait=True, token=self._changes.read())
        if hash(key) in self._keys:
            return True
        cache = self._cache()
        try:
            found = cache is not None and cache._sql(
                "SELECT rowid FROM Cache WHERE key = ? AND raw = ?", cache.disk.put(key)).fetchone() is not None
        except Exception:
            return False  # the tier's trouble: DiskCache sees to it at its next use
        if found:
            self.add(key)
        return found

    def refresh(self, wait: bool, token: bytes | None = None) -> None:
        """Read the rows added since the last read; `token` is the folder's ChangeToken as
        read before (a change committed meanwhile is then seen at the next lookup)."""
        if not self._lock.acquire(blocking=wait):
            return  # another thread is at it
        try:
            if wait and token is not None and token == self._seen and self._mark >= 0:
                return  # another thread has just read past this change
            now = time.monotonic()
            self._checked = now
            cache = self._cache()
            if cache is None:
                return
            try:
                self._read_rows(cache, now)
            except Exception:
                return  # the tier's trouble: DiskCache sees to it at its next use
            # Only now: a thread that finds this token seen takes the index as it is, so the
            # rows it stands for must be in it.
            self._seen = token
        finally:
            self._lock.release()

    def _read_rows(self, cache, now: float) -> None:
        """The rows added since the last read, or all of them when the folder counts fewer
        entries than the index holds (others evicted some)."""
        if self._mark >= 0:
            rows = cache._sql("SELECT rowid, key FROM Cache WHERE rowid > ?", (self._mark,)).fetchall()
            self._keys.update(hash(key) for _, key in rows)
            self._mark = max([self._mark] + [rowid for rowid, _ in rows])
            (count,), = cache._sql("SELECT value FROM Settings WHERE key = 'count'").fetchall()
            if len(self._keys) <= count or now < self._reloaded + INDEX_RELOAD_S:
                return
        rows = cache._sql("SELECT rowid, key FROM Cache").fetchall()
        self._keys = {hash(key) for _, key in rows}
        self._mark = max([0] + [rowid for rowid, _ in rows])
        self._reloaded = now


class Recency:
    """Least-recently-used eviction without a write per hit: the access times of hits wait in
    memory and are written in one statement with the next batch of entries, or by a timer
    RECENCY_FLUSH_S after the first of them."""

    def __init__(self, disk: DiskCache):
        self._disk = disk
        self._times: dict[str, float] = {}
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def touch(self, key: str) -> None:
        with self._lock:
            self._times[key] = time.time()
            if self._timer is None:
                self._timer = threading.Timer(RECENCY_FLUSH_S, self._disk.flush_recency)
                self._timer.daemon = True
                self._timer.start()

    def write(self, cache) -> None:
        """Inside a transaction of `cache`."""
        times = self.drop()
        if times:
            cache._con.executemany("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1",
                                   [(when, key) for key, when in times.items()])

    def drop(self) -> dict[str, float]:
        """The access times waiting, no longer waiting."""
        with self._lock:
            times, self._times = self._times, {}
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return times


class _SerialCache(diskcache.Cache):
    """diskcache with its write transactions (an LRU get is one) taken one at a time per process.

    Threads that collide on SQLite's write lock get SQLITE_BUSY, whose handler sleeps 1 ms,
    then 2, 5, 10...: 8 threads reading the 16 chunks of a plane took 65 ms instead of 13.
    A Python lock makes them queue for microseconds instead; other processes still meet the
    busy handler, rarely."""

    def __init__(self, *args, **kwargs):
        self._txn_lock = threading.RLock()  # re-entrant: diskcache nests transactions in a thread
        self._made = False
        super().__init__(*args, **kwargs)
        self._disk.cache = self
        self._made = True

    @property
    def _con(self):
        # Each thread connects on first use, and SQLite makes a missing database file: once
        # the folder is removed, that would put a new, empty database in its place (or in the
        # way of an `rm -rf` still at work). Fail instead: DiskCache sees to a removed folder.
        if self._made and getattr(self._local, "con", None) is None and not os.path.exists(
                os.path.join(self._directory, diskcache.core.DBNAME)):
            raise sqlite3.OperationalError("the cache database was removed")
        return super()._con

    @contextlib.contextmanager
    def _transact(self, retry=False, filename=None):
        with self._txn_lock, super()._transact(retry, filename) as txn:
            yield txn


class _EntryPath(NamedTuple):
    path: str
    offset: int = 0
    length: int | None = None  # None: to the end of the file (the previous version's files)


class _Slice(NamedTuple):
    """Where an entry is: a file under the cache folder, shared by the entries of one batch."""

    filename: str
    offset: int
    length: int


class _PathDisk(diskcache.Disk):
    """Gives the path of a value kept in a file instead of opening it (get with read=True),
    and writes entry files past the page cache.

    diskcache fetches a value inside its write transaction (an LRU get updates the entry):
    opening, let alone reading, a file there would hold every other thread's lookup up
    behind a cold disk. The caller reads the file after the transaction.

    `written.paths` (per thread, when set to a list) collects the entry files written, for
    the caller to remove should their rows not be committed; `written.removals` collects the
    files of rows replaced or evicted meanwhile, for the caller to remove once the rows'
    change is committed (diskcache removes them as each nested transaction ends: a crash
    before the commit would leave rows naming removed files).

    The entries of a batch share one file, in one level of 256 folders (diskcache makes a
    file per entry in two levels, 65,536 folders: nearly a new folder per entry). A row
    names its file, and its value is where in the file (offset << 32 | length); rows of
    the previous version's files have none (the whole file). The entries of a file go
    together: when one row goes (evicted, deleted), the others naming its file go with it,
    so no file keeps bytes that nothing counts."""

    def __init__(self, directory, **kwargs):
        super().__init__(directory, **kwargs)
        self.written = threading.local()
        self.cache: _SerialCache | None = None  # the cache this is the disk of (set by it)

    def new_file(self) -> tuple[str, str]:
        name = os.urandom(16).hex()
        filename = os.path.join(name[:2], name[2:] + ".val")
        return filename, os.path.join(self._directory, filename)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not (read and isinstance(value, _Slice)):
            return super().store(value, read, key)
        return value.length, diskcache.core.MODE_BINARY, value.filename, value.offset << 32 | value.length

    def remove(self, file_path):
        removals = getattr(self.written, "removals", None)
        if removals is not None:
            removals.append(file_path)
            return
        cache = self.cache
        if cache is not None:
            # Best effort: rows left naming a removed file are misses, dropped when met.
            with contextlib.suppress(Exception), cache._transact() as (sql, _):
                sql("DELETE FROM Cache WHERE filename = ?", (file_path,))
        super().remove(file_path)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_BINARY:
            where = _EntryPath(os.path.join(self._directory, filename), *_slice_of(value))
            if read:
                return where
            return b"".join(_read_entry_file(*where))
        return super().fetch(mode, filename, value, read)


def _slice_of(value) -> tuple[int, int | None]:
    if value is None:
        return 0, None
    return value >> 32, value & 0xFFFFFFFF


def _read_entry_file(path: str, offset: int = 0, length: int | None = None) -> tuple[bytes, bytes, bytes]:
    """An entry's header, metadata and data, from its place in a file (`length` None: to the
    file's end); the data read straight into its own bytes object. A file cut short (a torn
    write) gives short data, which fails the checksum."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size - offset if length is None else length
        head = os.pread(fd, min(META_HEADER_BYTES, size), offset)
        if head[:1] == ENTRY_FORMAT_META and len(head) == META_HEADER_BYTES:
            start = META_HEADER_BYTES + struct.unpack_from("<H", head, 5)[0]
            meta = os.pread(fd, start - META_HEADER_BYTES, offset + META_HEADER_BYTES)
        else:
            head, meta, start = head[:HEADER_BYTES], b"", HEADER_BYTES
        data = os.pread(fd, max(0, size - start), offset + start)
    finally:
        os.close(fd)
    return head, meta, data


def _write_entry_file(path: str, parts) -> int:
    """Write a new entry file; returns its size. A write that fails (a full file system)
    leaves no file behind. O_DIRECT where the file system allows it: the bytes are in the
    memory cache already, and a third copy in the page cache (670 MB in one cold scroll of
    a 1 GiB level) would cost new memory and push out other files."""
    directory = os.path.dirname(path)
    size = sum(len(p) for p in parts)
    direct = bool(_O_DIRECT)
    for attempt in range(10):  # as diskcache: another thread may remove the folder meanwhile
        # The entry's folder under the cache folder, never the cache folder itself: if it
        # was removed, that is the tier's trouble (FileNotFoundError), not ours to hide.
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (_O_DIRECT if direct else 0), 0o600)
            break
        except FileNotFoundError:
            if attempt == 9:
                raise
        except OSError as exc:
            if exc.errno != errno.EINVAL or not direct:
                raise
            # A file system without O_DIRECT (tmpfs before Linux 6.6) makes the file, then
            # refuses: it is ours (O_EXCL, a new name); once more, buffered.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            direct = False
    try:
        if not (direct and _write_direct(fd, parts, size)):
            if direct:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
            pos = 0
            for part in parts:
                _write_all(fd, part, pos)
                pos += len(part)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
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
            # numpy copies without the GIL (a memoryview copy holds it: 18% of its samples on a
            # cold scroll, every other thread waiting).
            into = np.frombuffer(view, np.uint8)
            try:
                pos = 0
                for part in parts:
                    into[pos:pos + len(part)] = np.frombuffer(part, np.uint8)
                    pos += len(part)
                into[size:padded] = 0
            finally:
                del into  # before view.release()
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
        self._lock = threading.Lock()
        # A thread waiting for a slot of ours waits on that slot's condition (made while
        # anyone waits for it): a slot let go wakes only its own waiters. One condition for
        # all woke every waiting fetch thread at each chunk's hand-off, ~30 thread switches
        # per chunk of a scroll while readahead's fetches waited for staged chunks.
        self._waits: dict[int, threading.Condition] = {}
        self._waiters: collections.Counter[int] = collections.Counter()

    def reopen(self, directory: str) -> None:
        """The folder was made again: lock its new lock file, under the same descriptor
        number (threads may be using it). Locks held on the old, removed file lapse: at
        worst two daemons fetch a chunk that was in flight then."""
        fd = os.open(os.path.join(directory, "fetch.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.dup2(fd, self._fd)
        finally:
            os.close(fd)

    def slots(self, keys) -> list[int]:
        return sorted({int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") % self.SLOTS
                       for k in keys})

    def acquire(self, slots: list[int]) -> None:
        self.claim(slots)

    def claim(self, slots: list[int]) -> bool:
        """Acquire; whether another process held one of the slots (its fetch may have just
        put the chunk on disk)."""
        waited = False
        with self._lock:
            while busy := self._claimed.intersection(slots):
                self._wait_for(min(busy))
            self._claimed.update(slots)
            # Slots held by a downgraded fetch are ours already: only the others need the file lock.
            need = [slot for slot in slots if not self._holders[slot]]
            self._holders.update(slots)
        for attempt in itertools.count():
            taken = []
            try:
                for slot in need:
                    try:
                        fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot, os.SEEK_SET)
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        waited = True
                        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, slot, os.SEEK_SET)
                    taken.append(slot)
                return waited
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
        with self._lock:
            self._claimed.difference_update(slots)
            self._wake(slots)

    def release(self, slots: list[int], downgraded: bool = False) -> None:
        with self._lock:
            if not downgraded:
                self._claimed.difference_update(slots)
            self._holders.subtract(slots)
            last = [slot for slot in slots if self._holders[slot] <= 0]
            self._unlock(last)
            for slot in last:
                del self._holders[slot]
            if not downgraded:
                self._wake(slots)

    def _wait_for(self, slot: int) -> None:
        """Wait (holding self._lock) until `slot` may have been let go."""
        cond = self._waits.get(slot)
        if cond is None:
            cond = self._waits[slot] = threading.Condition(self._lock)
        self._waiters[slot] += 1
        try:
            cond.wait()
        finally:
            self._waiters[slot] -= 1
            if not self._waiters[slot]:
                del self._waiters[slot]
                del self._waits[slot]

    def _wake(self, slots: list[int]) -> None:
        """Wake the threads waiting for these slots (holding self._lock), and only them."""
        for slot in slots:
            cond = self._waits.get(slot)
            if cond is not None:
                cond.notify_all()

    def _unlock(self, slots: list[int]) -> None:
        for slot in slots:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot, os.SEEK_SET)


class CorruptEntry(Exception):
    """A cache entry failed its digest check; it has been removed."""
