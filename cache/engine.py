"""ChunkEngine: decoded chunks from memory, then the cache tiers (tier.py: the disk cache, a
shared cache), then the source, one fetch per chunk.

Concurrent requests for the same chunk share one fetch (an in-flight future per chunk).
Fetches run on a FetchQueue by priority: a reader's chunks before readahead.

With a `timeout`, a read fails within that many seconds of its arrival (the deadline the
FUSE layer sets with `retry.deadline_at`, else the call of `get`), however long its fetches
queue; the fetches carry that deadline down to the remote requests. While fetches keep
failing (the remote is down), readahead stops queueing until one succeeds again.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections import deque
from contextlib import ExitStack
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Iterable, Sequence

import numpy as np

from ..adapters.errors import ChunkReadError, SourceChanged, SourceGaveUp
from ..adapters.retry import current_deadline
from ..adapters.storage import NotModified
from .blocked import MIN_BLOCKS, BlockedChunk
from .disk import DiskCache
from .disktier import DiskTier
from .fetchhealth import FetchHealth
from .fetchqueue import AHEAD, DEMAND, PLANE, STAGE, Cancelled, FetchQueue
from .level import ChunkedLevel
from .memory import MemoryLRU
from .partial import PartialChunk
from .stats import Stats
from .tier import BYTES_LIKE, Parts, Tier, no_reading

log = logging.getLogger("ngffmount")

# Defaults sized so a daemon scrolling any level stays well under 1.5 GiB of RSS.
DEFAULT_MEMORY = 768 << 20
DEFAULT_READAHEAD = 256 << 20
DEADLINE_SLACK_S = 0.25  # a fetch that failed this close to its deadline ran out of time


class ReadTimedOut(ChunkReadError):
    """A read's deadline passed before its chunks arrived."""


class ChunkEngine:
    def __init__(
        self,
        disk: DiskCache | None = None,
        memory_bytes: int = DEFAULT_MEMORY,
        decode_threads: int = 2,
        readahead_bytes: int | None = None,
        fetch_threads: int = 32,
        stage_bytes: int | None = None,
        revalidate: float | None = None,
        timeout: float | None = None,
        tiers: Sequence[Tier] = (),
    ):
        """`disk`: the disk cache, the first tier; `tiers`: the tiers after it, in order.
        `revalidate`: seconds after which a chunk (in memory or in a tier) is checked against
        the source again (a conditional request); None: chunks are immutable while the
        metadata is unchanged."""
        self.tiers: list[Tier] = ([DiskTier(disk)] if disk is not None else []) + list(tiers)
        disk_tier = next((t for t in self.tiers if isinstance(t, DiskTier)), None)
        self.disk = disk_tier.disk if disk_tier is not None else None
        self.revalidate = revalidate
        self._loaded_at: dict[tuple, float] = {}  # with revalidate: when each resident chunk came in
        self._loads = itertools.count()  # with revalidate: names each load's decoded blocks apart
        self._stale: set[str] = set()  # cache tokens of arrays whose metadata changed at the source
        self._layout_read_at: dict[str, float] = {}  # with revalidate: per cache token, see _layout_due
        self.timeout = timeout  # seconds a read may wait for its chunks; None: as long as it takes
        self.memory = MemoryLRU(memory_bytes, on_evict=self._evicted)
        # Prefetched chunks must stay resident until read: at least a quarter of the memory
        # cache, and by default as much as it holds beside what readers use (ahead_room).
        self._room_follows_memory = readahead_bytes is None
        self.readahead_bytes = min(DEFAULT_READAHEAD, memory_bytes // 4) if readahead_bytes is None else readahead_bytes
        self._windows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # readahead -> bytes it keeps ahead
        self._ahead_keys: set[tuple] = set()  # chunks on their way into memory for a readahead, not asked by a reader
        # Beyond that, readahead fetches encoded chunks into the local tiers only (no memory
        # held): deep chunks, whose next slab outgrows the memory budget, arrive in time.
        self._local = [t for t in self.tiers if t.local]
        if not self._local:
            stage_bytes = 0
        self.stage_bytes = 2 * self.readahead_bytes if stage_bytes is None else stage_bytes
        self._queue = FetchQueue(fetch_threads)
        # Readahead's reads of chunks the local tiers hold, each then decoded on the same
        # thread: in order, promoted when a reader waits, dropped on a jump, and no more at
        # once than there are decoders (they cost CPU, not waiting on a remote).
        self._local_reads = FetchQueue(max(1, decode_threads))
        self.stats = Stats()
        for tier in self.tiers:
            self.stats.register(tier.counters)
            tier.attach(self.stats, self._holds_bytes)
        self._writes = disk_tier.writes if disk_tier is not None else None  # made by attach
        self._inflight: dict[tuple, Future] = {}
        self._staging: set[tuple] = set()  # chunks on their way to the disk cache only
        # Of those, the ones a reader or readahead asked into memory since: their staged
        # bytes are decoded for them as they arrive (no second fetch, no read back from disk).
        self._stage_waiters: dict[tuple, Future] = {}
        # Per cache token: [bytes resident chunks hold in all, how many, decoded-block bytes a
        # walk through one keeps] (chunk_footprint).
        self._footprints: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._decoders = ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="decode")
        # Fetched chunks are decoded by the fetch thread that got them while fewer than
        # decode_threads decodes run (blosc lets go of the GIL), else by the decoders: a hop to
        # another thread per chunk cost more CPU in thread switches than the decode itself.
        self._decode_slots = threading.BoundedSemaphore(max(1, decode_threads))
        # Blocks decoded ahead of a reader: queued here and run by at most decode_threads
        # drains on the decoders, one after the other (a task per block, with its future and
        # callbacks, cost a scroll of deep chunks more than its thread switches: 4096 blocks).
        self._ahead_jobs: deque = deque()
        self._ahead_pending = 0  # queued or running (wait_idle)
        self._behind_pending = 0  # chunks read in parts not yet whole (_whole_behind; wait_idle)
        self._ahead_drains = 0  # drains submitted and not finished
        self._max_drains = max(1, decode_threads)
        self._fill: dict[str, np.ndarray] = {}
        self.health = FetchHealth()

    def get(self, level: ChunkedLevel, indices: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], np.ndarray]:
        """The given chunks of a level, each sliceable like a read-only array of the full
        chunk shape: a decoded array, or a BlockedChunk that decodes the blocks a slice needs."""
        if level.cache_token in self._stale:
            raise SourceChanged(f"the array {level.path or '.'} changed at the source: remount to read it")
        if self._queue.closed:
            raise ChunkReadError("the mount is stopping")
        indices = list(dict.fromkeys(indices))
        deadline = self._read_deadline()
        recent = self.health.recent_timeout((level.cache_token, idx) for idx in indices)
        if recent is not None:
            raise ReadTimedOut(f"chunk {level.chunk_key(recent[0][1])} of {level.path or 'the image'}: {recent[1]}")
        with self._reading():
            result, mine, waiting = self._claim(level, indices)
            self.stats.add("memory_hits", len(result))
            self.stats.add("memory_misses", len(mine) + len(waiting))
            for idx, _ in waiting:
                # queued by readahead: now needed, and by this reader's deadline
                self._queue.promote((level.cache_token, idx), DEMAND, deadline)
                self._local_reads.promote((level.cache_token, idx), DEMAND, deadline)
            if mine:
                self._load(level, mine, DEMAND, deadline=deadline)
            dropped = []
            for idx, fut in mine + waiting:
                try:
                    # re-raises a failed fetch in every waiting reader
                    result[idx] = fut.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except Cancelled:
                    dropped.append(idx)  # a readahead dropped just before we promoted it
                except FutureTimeout:
                    why = (f"no answer from the source within {self.timeout:g} s" if self.timeout
                           else "no answer from the source by the read's deadline")
                    self._timed_out(level, idx, mine + waiting, why)
                    raise ReadTimedOut(f"chunk {level.chunk_key(idx)} of {level.path or 'the image'}: {why}") from None
                except Exception as exc:
                    if isinstance(exc, SourceGaveUp) or (deadline is not None
                                                         and time.monotonic() >= deadline - DEADLINE_SLACK_S):
                        # its fetch ran out of time or tries, and so will the others
                        self._timed_out(level, idx, mine + waiting, str(exc))
                    raise
            if dropped:
                result.update(self.get(level, dropped))
            return result

    def _read_deadline(self) -> float | None:
        """When the current read must be answered: set where it arrived, else from now."""
        deadline = current_deadline()
        if deadline is None and self.timeout is not None:
            deadline = time.monotonic() + self.timeout
        return deadline

    def _timed_out(self, level, idx, pending, why: str) -> None:
        """A read ran out of time on chunk `idx`: it, and what else it waited for, fail at once
        for a moment."""
        self.health.timed_out([(level.cache_token, i) for i, f in pending if i == idx or not f.done()], why)

    @property
    def readahead_paused(self) -> bool:
        """Fetches keep failing: queue no readahead until one succeeds."""
        return self.health.readahead_paused

    def prefetch(self, level: ChunkedLevel, indices: Iterable[tuple[int, ...]], urgent: bool = False,
                 cancelled: threading.Event | None = None) -> None:
        """Load chunks into the memory cache in the background. `urgent`: the rest of a plane
        a reader is in, ahead of readahead; `cancelled`: set it to drop what has not started."""
        if level.cache_token in self._stale or (not urgent and self.readahead_paused):
            return
        deadline = self._read_deadline() if urgent else None  # the plane of a read: that read's
        _, mine, waiting = self._claim(level, indices, for_reader=urgent)
        if urgent:
            for idx, _ in waiting:
                self._queue.promote((level.cache_token, idx), PLANE, deadline)
                self._local_reads.promote((level.cache_token, idx), PLANE, deadline)
        if mine:
            self.stats.add("prefetched", len(mine))
            self._load(level, mine, PLANE if urgent else AHEAD, None if urgent else cancelled, deadline)

    def ahead_room(self, readahead, reserve: int, parts: int | None = None) -> int:
        """Bytes of decoded chunks `readahead` may keep in memory ahead of its reader. By
        default what the memory cache holds beside the decoded blocks (`parts` bytes, at most
        their share; None: all of it), the `reserve` its reader uses now and the other
        readaheads' windows (each gets a fair share at least): chunks kept ahead are evicted
        after every chunk already read, so these stay until read. Never less than
        `readahead_bytes`."""
        if not self._room_follows_memory:
            return self.readahead_bytes
        part_room = self.memory.part_share if parts is None else min(parts, self.memory.part_share)
        room = self.memory.max_bytes - part_room - reserve
        with self._lock:
            others = [n for r, n in self._windows.items() if r is not readahead]
        return max(self.readahead_bytes, room // (len(others) + 1), room - sum(others))

    def chunk_footprint(self, level: ChunkedLevel) -> tuple[int, int]:
        """(bytes a resident chunk of `level` holds in the memory cache, bytes of decoded
        blocks a walk in C order through one keeps beside it), from the chunks that came in so
        far. A chunk kept encoded (BlockedChunk) holds its encoded bytes, often a fraction of
        the decoded size: readahead counts in these, so the next slab of deep chunks fits
        where the decoded size would not. Before any came in: the decoded size, no blocks."""
        seen = self._footprints.get(level.cache_token)
        if not seen or not seen[1]:
            return level.chunk_nbytes, 0
        return -(-seen[0] // seen[1]), seen[2]

    def _count_footprint(self, token: str, arr) -> None:
        """A chunk of the array `token` came into memory (under self._lock)."""
        seen = self._footprints.setdefault(token, [0, 0, 0])
        seen[0] += arr.nbytes
        seen[1] += 1
        if isinstance(arr, BlockedChunk):
            seen[2] = max(seen[2], arr.walk_bytes)

    def keep_ahead(self, readahead, nbytes: int) -> None:
        """What `readahead` keeps ahead in memory now (its share in ahead_room)."""
        with self._lock:
            self._windows[readahead] = nbytes

    def forget_ahead(self, level: ChunkedLevel, indices: Iterable[tuple[int, ...]]) -> None:
        """Chunks a readahead asked into memory that its reader will not come to soon (it
        jumped): they age like any chunk from now."""
        keys = [(level.cache_token, idx) for idx in indices]
        with self._lock:
            self._ahead_keys.difference_update(keys)
        for key in keys:
            self.memory.settle_ahead(key)

    def stage(self, level: ChunkedLevel, indices: Iterable[tuple[int, ...]], cancelled: threading.Event | None = None) -> None:
        """Readahead to the local tiers only: fetch chunks that are neither there nor coming."""
        if not self._local or self.readahead_paused or level.cache_token in self._stale:
            return
        token = level.cache_token
        with self._lock:
            todo = {idx: level.chunk_key(idx) for idx in dict.fromkeys(indices)
                    if (token, idx) not in self._inflight and (token, idx) not in self._staging
                    and self.memory.peek((token, idx)) is None}
        todo = {idx: k for idx, k in todo.items() if not self._held_locally(level, k)}
        if not todo:
            return
        with self._lock:
            self._staging.update((token, idx) for idx in todo)

        def staged(idx, data) -> None:
            with self._lock:
                self._staging.discard((token, idx))
                fut = self._stage_waiters.pop((token, idx), None)
            if fut is not None:  # asked into memory meanwhile: decoded from these bytes
                self._settle_fetched(level, idx, fut, data)

        self.stats.add("prefetched", len(todo))
        self._fetch_each(level, todo, staged, STAGE, cancelled, in_parts=False)

    def _claim(self, level, indices, for_reader: bool = True):
        """Split indices into resident arrays, chunks this caller must load (with a new
        in-flight future each), and chunks already coming (with their futures).
        `for_reader` False: a readahead's, whose chunks enter memory as kept ahead (see
        MemoryLRU) and whose look leaves resident chunks as they are (unread)."""
        result: dict[tuple[int, ...], np.ndarray] = {}
        mine: list[tuple[tuple[int, ...], Future]] = []
        waiting: list[tuple[tuple[int, ...], Future]] = []
        with self._lock:
            for idx in dict.fromkeys(indices):
                key = (level.cache_token, idx)
                arr = self.memory.get(key) if for_reader else self.memory.peek(key)
                if arr is not None and self._expired(key):
                    arr = None
                    self.memory.discard(key)
                    self._loaded_at.pop(key, None)
                    self._memory_changed(key)
                if arr is not None:
                    result[idx] = arr
                    continue
                fut = self._inflight.get(key)
                if fut is not None:
                    if for_reader:
                        self._ahead_keys.discard(key)  # read now: an ordinary chunk when it comes
                    waiting.append((idx, fut))
                    continue
                fut = Future()
                self._inflight[key] = fut
                if not for_reader:
                    self._ahead_keys.add(key)
                mine.append((idx, fut))
        return result, mine, waiting

    def fill_disk(self, level: ChunkedLevel, indices: Iterable[tuple[int, ...]]) -> tuple[int, int]:
        """Fetch chunks into the tiers only (no decode): `cache prefetch`. Returns (chunks,
        bytes) fetched from the source or from a lower tier."""
        if not self.tiers:
            raise ValueError("fill_disk needs a cache tier")
        keys = {idx: level.chunk_key(idx) for idx in indices}
        # With only local tiers, what they hold is done; a lower tier may lack it still.
        todo = keys if len(self._local) < len(self.tiers) else \
            {idx: k for idx, k in keys.items() if not self._held_locally(level, k)}
        if not todo:
            return 0, 0
        sizes: list[int] = []
        failures: list[BaseException] = []
        done = threading.Semaphore(0)

        def deliver(idx, data) -> None:
            if isinstance(data, BaseException):
                failures.append(data)
            elif data is not None:
                sizes.append(len(data))
            done.release()

        self._fetch_each(level, todo, deliver, DEMAND, in_parts=False)
        for _ in todo:
            done.acquire()
        if failures:
            raise failures[0]
        return len(sizes), sum(sizes)

    def _load(self, level, owned: list[tuple[tuple[int, ...], Future]], priority: int,
              cancelled: threading.Event | None = None, deadline: float | None = None) -> None:
        """Settle each owned chunk's future as soon as that chunk is decoded: a reader waiting
        for the first chunk row does not wait for the whole batch, and each decoded chunk
        enters the memory cache (evicting old ones) before the next is made. Fetches end by
        `deadline` (time.monotonic()) if given."""
        futures = dict(owned)
        token = level.cache_token
        with self._lock:  # on their way to disk only: their bytes come here as they arrive
            staged = [idx for idx in futures if (token, idx) in self._staging]
            for idx in staged:
                self._stage_waiters[(token, idx)] = futures.pop(idx)
        if priority < AHEAD:
            for idx in staged:
                self._queue.promote((token, idx), priority, deadline)  # a reader's now: first
        try:
            keys = {idx: level.chunk_key(idx) for idx in futures}
            # With revalidate, disk entries are read where their age is checked: in _fetch_one.
            on_disk = set() if self.revalidate else {idx for idx in futures if self._held_locally(level, keys[idx])}
            remote = {idx: keys[idx] for idx in futures if idx not in on_disk}
            if remote:
                if not self.revalidate:
                    for tier in self._local:
                        self.stats.add(f"{tier.name}_misses", len(remote))
                self._fetch_each(level, remote, lambda idx, data: self._settle_fetched(
                    level, idx, futures[idx], data), priority, cancelled, deadline)
        except BaseException as exc:
            for idx, fut in futures.items():
                self._settle(level, idx, fut, lambda: exc)
            return
        for idx in sorted(on_disk):
            read = partial(self._disk_or_remote, level, idx, keys[idx], deadline)
            if priority != DEMAND:
                # Readahead's reads of the disk queue in order: a reader's chunk is promoted
                # past them, where the decoders' queue would keep it behind every chunk of the
                # window.
                self._local_reads.submit((level.cache_token, idx), priority,
                                         partial(self._settle, level, idx, futures[idx], read),
                                         partial(self._settle, level, idx, futures[idx], Cancelled),
                                         cancelled, deadline)
            elif len(futures) == 1:
                self._settle(level, idx, futures[idx], read)
            else:
                self._decoders.submit(self._settle, level, idx, futures[idx], read)

    def _settle_fetched(self, level, idx, fut: Future, data) -> None:
        """_settle a fetched chunk here when a decode slot is free, else on the decoders (which
        wait for one: at most decode_threads decodes at once either way)."""
        if self._decode_slots.acquire(blocking=False):
            try:
                self._settle(level, idx, fut, lambda: data)
            finally:
                self._decode_slots.release()
        else:
            self._decoders.submit(self._settle_in_slot, level, idx, fut, data)

    def _settle_in_slot(self, level, idx, fut: Future, data) -> None:
        with self._decode_slots:
            self._settle(level, idx, fut, lambda: data)

    def _settle(self, level, idx, fut: Future, read) -> None:
        """Decode one chunk from `read()` (its encoded bytes, None if missing, or the exception
        that stopped its fetch) and hand it to the memory cache and every waiting reader."""
        if fut.done():
            return  # settled already, by the failure of its whole batch
        key = (level.cache_token, idx)
        try:
            raw = read()
            frame = None
            if isinstance(raw, PartialChunk):  # its blocks read as they are decoded, else it whole
                frame = raw.frame(level, MIN_BLOCKS)
                raw = raw if frame is not None else raw.whole()
            if isinstance(raw, BaseException):
                raise raw
            if raw is None:
                self.stats.add("chunks_missing")
                arr = self._fill_chunk(level)
            elif (frame := frame or level.blosc_frame(raw)) is not None and frame.nblocks >= MIN_BLOCKS:
                # With revalidate the bytes of a chunk may change: blocks decoded from the old
                # ones must never be taken for blocks of the new.
                blocks_key = (*key, next(self._loads)) if self.revalidate else key
                arr = BlockedChunk(frame, level.chunk_shape, level.dtype, blocks_key, self.memory, self.stats,
                                   self._in_background)
            elif frame is not None:
                # Into the memory of a chunk the cache let go of, where one is free.
                self.stats.add("decodes")
                arr = frame.decode_into(self.memory.pool.take(frame.nbytes)).view(level.dtype)
                arr = arr.reshape(level.chunk_shape)
                arr.flags.writeable = False
                self.stats.add("decoded_bytes", arr.nbytes)
            else:
                self.stats.add("decodes")
                arr = level.decode(idx, raw)
                if arr.shape != tuple(level.chunk_shape):
                    raise ValueError(f"decoded chunk {idx} has shape {arr.shape}, expected {level.chunk_shape}")
                arr.flags.writeable = False
                self.stats.add("decoded_bytes", arr.nbytes)
        except BaseException as exc:
            if not isinstance(exc, Cancelled):
                self.stats.add("errors")
            with self._lock:
                self._inflight.pop(key, None)
                self._ahead_keys.discard(key)
            try:
                fut.set_exception(exc)
            except InvalidStateError:
                pass  # failed by stop_fetching meanwhile
            return
        with self._lock:
            ahead = key in self._ahead_keys  # a readahead's, no reader asked for it yet
            self._ahead_keys.discard(key)
            self.memory.put(key, arr, ahead=ahead)
            if raw is not None:
                self._count_footprint(level.cache_token, arr)
            if self.revalidate and self.memory.peek(key) is arr:  # kept (not larger than the bound)
                self._loaded_at[key] = time.monotonic()
            self._inflight.pop(key, None)
        self._memory_changed(key)
        try:
            fut.set_result(arr)
        except InvalidStateError:
            pass  # failed by stop_fetching meanwhile

    def _in_background(self, fn, *args) -> None:
        """Run fn(*args) on a decode thread, in the order asked; its failure is left to the
        read that needs it."""
        with self._lock:
            self._ahead_jobs.append((fn, args))
            self._ahead_pending += 1
            start = self._ahead_drains < self._max_drains
            self._ahead_drains += start
        if start:
            self._decoders.submit(self._drain_ahead)

    def _drain_ahead(self) -> None:
        while True:
            with self._lock:
                if not self._ahead_jobs:
                    self._ahead_drains -= 1
                    return
                fn, args = self._ahead_jobs.popleft()
            try:
                fn(*args)
            except Exception:
                pass
            finally:
                with self._lock:
                    self._ahead_pending -= 1

    def _disk_or_remote(self, level, idx, chunk_key: str, deadline: float | None = None):
        key = self._tier_key(level, chunk_key)
        for tier in self._local:
            entry = tier.get(key)
            self.stats.add(f"{tier.name}_hits" if entry is not None else f"{tier.name}_misses")
            if entry is not None:
                return entry[0]
        # Evicted or damaged since it was seen on disk: fetch it after all.
        got = []
        done = threading.Event()
        self._fetch_each(level, {idx: chunk_key}, lambda _, d: (got.append(d), done.set()), DEMAND,
                         deadline=deadline)
        done.wait()
        return got[0]

    def _fetch_each(self, level, keys: dict, deliver, priority: int,
                    cancelled: threading.Event | None = None, deadline: float | None = None,
                    in_parts: bool = True) -> None:
        """Queue one fetch per chunk; each calls `deliver(idx, bytes | None | exception)` when
        its chunk arrives (a dropped readahead delivers Cancelled). `in_parts`: a chunk a tier
        reads in parts may be delivered as a PartialChunk (for a decode; else it comes whole)."""
        for idx, key in keys.items():
            qkey = (level.cache_token, idx)
            self._queue.promote(qkey, priority, deadline)  # staged earlier: run that fetch first, then ours
            fetch = partial(self._fetch_one, level, idx, key, deliver, in_parts)
            self._queue.submit(qkey, priority, fetch,
                               partial(deliver, idx, Cancelled()), cancelled, deadline)

    def _fetch_one(self, level, idx, key: str, deliver, in_parts: bool = True) -> None:
        """Each tier in turn is claimed (single-flight: see Tier.claim), then asked; a hit also
        fills the tiers above it. On a miss everywhere the source is asked, and its bytes go
        to every tier behind the read. Claims are held until then, so a thread, daemon or node
        that waited finds the bytes in the tier it waited for."""
        if not self.tiers:
            self.stats.add("chunks_fetched")
            data = self._fetch_source(level, key)[0]
            self.health.fetched(data)
            deliver(idx, data)
            return
        tkey = self._tier_key(level, key)
        held: list[tuple[Tier, object, tuple | None]] = []  # (tier, claim, its entry)
        previous = None  # the first entry found past its age (--revalidate)
        try:
            for tier in self.tiers:
                held.append((tier, tier.claim(tkey), None))
                entry = tier.get(tkey)  # written while we waited? (the disk tier answers a miss from its index)
                if entry is not None and isinstance(entry[0], Parts) and not self._fresh(entry[1]):
                    whole = entry[0].whole()  # past its age: compared with the source's bytes
                    entry = None if whole is None else (whole, entry[1])
                if entry is not None and self._fresh(entry[1]):
                    self.stats.add(f"{tier.name}_hits")
                    data, meta = entry
                    chunk = None
                    if isinstance(data, Parts):
                        chunk = PartialChunk(data, meta, partial(self._refetch, level, key))
                        # Nothing decodes it now (staging, prefetch): whole at once.
                        data = chunk if in_parts else chunk.whole()
                    deliver(idx, data)
                    tier.release(held.pop()[1])
                    if chunk is not None:
                        self._whole_behind(level, idx, tkey, chunk, tier, held)
                    else:
                        self._store(level, idx, tkey, data, meta, held)
                    return
                if entry is None and (self.revalidate or not tier.local):
                    self.stats.add(f"{tier.name}_misses")
                held[-1] = (tier, held[-1][1], entry)
                previous = previous or entry
            self.stats.add("chunks_fetched")
            data, meta = self._fetch_source(level, key, previous)
            self.health.fetched(data)
        except BaseException as exc:
            for tier, claim, _ in held:
                tier.release(claim)
            deliver(idx, exc)
            return
        deliver(idx, data)
        self._store(level, idx, tkey, data, meta, held)

    def _whole_behind(self, level, idx, tkey: str, chunk: PartialChunk, tier: Tier, held) -> None:
        """A chunk read in parts, whole when the tier sees fit (off the reader's way), then into
        the tiers above it; a tier entry that failed is overwritten with the source's bytes.
        The claims above are let go of now, and taken again then."""
        above = [t for t, _, _ in held]
        for t, claim, _ in held:
            t.release(claim)
        with self._lock:
            self._behind_pending += 1

        def whole() -> None:
            try:
                chunk.whole()
                if chunk.refetched and isinstance(chunk.data, BYTES_LIKE):
                    tier.put(tkey, chunk.data, chunk.meta, None, (level.cache_token, idx))
                self._store(level, idx, tkey, chunk.data, chunk.meta, [(t, t.claim(tkey), None) for t in above])
            finally:
                with self._lock:
                    self._behind_pending -= 1

        if chunk.done:
            whole()
        else:
            chunk.parts.later(whole)

    def _refetch(self, level, key: str):
        """A chunk whose tier entry failed part-way through: from the source."""
        self.stats.add("chunks_fetched")
        data, meta = self._fetch_source(level, key)
        self.health.fetched(data)
        return data, meta

    def _store(self, level, idx, tkey: str, data, meta: dict | None, held) -> None:
        """Put bytes into the claimed tiers (a tier with an entry only if they were validated:
        `meta`), or drop their entries when the chunk is gone at the source; each lets go of
        its claim."""
        for tier, claim, entry in held:
            if isinstance(data, BYTES_LIKE) and (meta is not None or entry is None):
                tier.put(tkey, data, meta, claim, (level.cache_token, idx))
            else:
                if data is None and entry is not None:
                    tier.delete(tkey)  # gone at the source since it was cached
                tier.release(claim)

    def _fetch_source(self, level, key: str, previous: tuple[bytes, dict | None] | None = None):
        """(bytes | None | the exception that stopped the fetch, the entry metadata to store).
        With `previous` (a disk entry past its age), the fetch is conditional on its version."""
        old_version = (previous[1] or {}).get("version") if previous is not None else None
        if self.revalidate and self._layout_due(level):
            level.forget_layout()  # shard indices are revalidated too: read again, once per AGE
        try:
            data, version = level.fetch_versioned(key, old_version)
        except NotModified:
            self.stats.add("revalidated")
            return previous[0], {**previous[1], "validated": time.time()}
        except BaseException as exc:
            if previous is not None and isinstance(exc, Exception):
                # The source cannot be asked now: the cached chunk serves, still past its age.
                self.stats.add("revalidation_failures")
                return previous[0], None
            return exc, None
        if previous is not None:
            self.stats.add("revalidated")
            if data != previous[0]:
                self.stats.add("chunks_changed")
                self._log_changed(level, key, old_version, version, data is None)
                if level.layout_fixed:
                    if self.mark_stale([level.cache_token]):
                        log.error("%s: array %s changed at the source; its reads fail with EIO: remount to see "
                                  "the new data", self._source_name(), level.path or ".")
                    return SourceChanged(f"the array {level.path or '.'} changed at the source: remount to read it"), None
                try:
                    if level.forget_layout():  # the bytes came from where the chunk lay before
                        data, version = level.fetch_versioned(key)
                except BaseException as exc:
                    return exc, None
        return data, {"version": version, "validated": time.time()}

    def _layout_due(self, level) -> bool:
        """Whether the level's chunk layout was read AGE ago (the first call starts the clock)."""
        now = time.monotonic()
        with self._lock:
            since = self._layout_read_at.setdefault(level.cache_token, now)
            if now - since < self.revalidate:
                return False
            self._layout_read_at[level.cache_token] = now
            return True

    def _source_name(self) -> str:
        return next((t.source for t in self.tiers if getattr(t, "source", None)), None) or "the source"

    def _log_changed(self, level, key: str, old: dict | None, new: dict | None, gone: bool) -> None:
        what = "is gone" if gone else "changed"
        log.warning("%s: chunk %s of array %s %s at the source (ETag %s -> %s); planes read before may mix "
                    "old and new chunks", self._source_name(), key, level.path or ".", what, _etag_of(old),
                    _etag_of(new))

    def _fresh(self, meta: dict | None) -> bool:
        """Whether a disk entry may be served without asking the source."""
        if not self.revalidate:
            return True
        return meta is not None and time.time() - meta.get("validated", 0) < self.revalidate

    def _expired(self, memory_key) -> bool:
        if not self.revalidate:
            return False
        loaded = self._loaded_at.get(memory_key)
        return loaded is not None and time.monotonic() - loaded >= self.revalidate

    def _evicted(self, memory_key) -> None:
        self._loaded_at.pop(memory_key, None)
        self._memory_changed(memory_key)

    def mark_stale(self, tokens) -> set[str]:
        """Arrays (cache tokens) that changed at the source in a way this mount cannot follow:
        their reads fail from now on. Returns the tokens not marked before (to log once)."""
        with self._lock:
            new = set(tokens) - self._stale
            self._stale.update(new)
        return new

    def _holds_bytes(self, memory_key, data: bytes) -> bool:
        """Whether the memory cache holds these very bytes (a BlockedChunk keeps its frame)."""
        arr = self.memory.peek(memory_key)
        return isinstance(arr, BlockedChunk) and arr.frame.raw is data

    def _memory_changed(self, memory_key) -> None:
        for tier in self.tiers:
            tier.memory_changed(memory_key)

    def _reading(self):
        """Around a reader's request, for each tier (a write-behind waits for reads to pause)."""
        if not self.tiers:
            return no_reading()
        if len(self.tiers) == 1:
            return self.tiers[0].reading()
        stack = ExitStack()
        for tier in self.tiers:
            stack.enter_context(tier.reading())
        return stack

    @property
    def fetches_pending(self) -> int:
        """Chunk fetches queued or running."""
        return self._queue.unfinished

    @property
    def disk_backlog(self) -> int:
        """Bytes fetched but not yet written to the tiers."""
        return sum(tier.backlog for tier in self.tiers)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no fetch is queued or running and no chunk is being decoded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not (self._queue.wait_idle(left) and self._local_reads.wait_idle(left)):
                return False
            with self._lock:
                if not self._inflight and not self._ahead_pending and not self._behind_pending:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)  # chunks or blocks still being decoded

    def flush_disk(self, timeout: float | None = None) -> bool:
        """Write what waits for the tiers now, and wait for it (unmount, prefetch, tests),
        at most `timeout` seconds (for all of them). False if some was left unwritten."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        # Farthest first: a shared tier's reads behind the reader still fill the disk tier.
        for tier in reversed(self.tiers):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = tier.flush(left) and done
        return done

    def stop_fetching(self) -> None:
        """The mount is going away: drop every queued fetch, take no new ones, and fail the
        reads still waiting (a fetch already out runs on until its own deadline)."""
        self._queue.close()
        self._local_reads.close()
        with self._lock:
            waiting = list(self._inflight.values())
        for fut in waiting:
            try:
                fut.set_exception(ChunkReadError("the mount is stopping"))
            except InvalidStateError:
                pass  # settled meanwhile

    def _tier_key(self, level, chunk_key: str) -> str:
        return f"{level.cache_token}/{chunk_key}"

    def _held_locally(self, level, chunk_key: str) -> bool:
        """In a local tier, or on its way there. Never raises: a tier in trouble answers no,
        and the chunk comes from the source."""
        key = self._tier_key(level, chunk_key)
        return any(tier.holds(key) for tier in self._local)

    def _fill_chunk(self, level) -> np.ndarray:
        arr = self._fill.get(level.cache_token)
        if arr is None:
            # Broadcast: a missing chunk costs one element of memory, however large.
            arr = np.broadcast_to(np.array(level.fill_value, dtype=level.dtype), tuple(level.chunk_shape))
            self._fill[level.cache_token] = arr
        return arr


def _etag_of(version: dict | None) -> str:
    if not version:
        return "none"
    return version.get("etag") or version.get("last_modified") or "none"
