"""The engine's memory without FUSE: decodes into the memory of evicted chunks (never into
memory someone still reads), and readahead kept in memory while the memory cache holds it."""

from __future__ import annotations

import json
import threading

import numcodecs
import numpy as np
import pytest

from conftest import vfs_for
from ngffmount.adapters import open_source
from ngffmount.cache.blocked import BlockedChunk
from ngffmount.cache.disk import DiskCache
from ngffmount.cache.engine import ChunkEngine
from ngffmount.cache.memory import BufferPool, MemoryLRU
from test_engine import pixel_offset, wait_idle
from zarr_fixtures import pattern, write_ome_zarr

LZ4 = numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)
# Small blocks (zarr v3): a 128 KiB chunk of 16 blocks stays encoded, decoded block by block.
BLOCKS = {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 1, "shuffle": "shuffle",
                                             "typesize": 2, "blocksize": 8192}}


def test_pool_takes_back_only_buffers_nobody_else_holds():
    pool = BufferPool(1 << 20)
    arr = pool.take(64).view(np.uint16)
    view = arr[3:9]
    # (Each give's answer is kept before it is asserted: pytest's assertion holds its operands.)
    held = [arr]
    del arr
    taken = pool.give(held.pop())
    assert not taken, "a view of it is still read"
    arr = view.base.view(np.uint16)  # the buffer again, through the view's base
    del view
    held = [arr]
    also = arr
    taken = pool.give(held.pop())
    assert not taken, "the array itself is still held"
    held = [also]
    del also, arr
    taken = pool.give(held.pop())
    assert taken and pool.nbytes == 64
    again = pool.take(64)
    assert pool.reused == 1 and pool.nbytes == 0 and again.nbytes == 64 and again.flags.writeable
    taken = pool.give(np.broadcast_to(np.zeros(1, np.uint8), (64,)))
    assert not taken, "not an owned buffer"
    taken = BufferPool(32).give(np.empty(64, np.uint8).view(np.uint16))
    assert not taken, "beyond the pool's bound"


@pytest.fixture(scope="module", params=["whole", "blocks"])
def scroll_store(request, tmp_path_factory):
    """40 planes, one chunk each: decoded whole (one Blosc block) or kept encoded (8 blocks)."""
    path = tmp_path_factory.mktemp("pool") / "pool.zarr"
    side = 64 if request.param == "whole" else 256
    data = pattern((40, side, side), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, side, side), version="0.4" if side == 64 else "0.5",
                   compressors=LZ4 if side == 64 else BLOCKS)
    return request.param, path, data


def test_a_reader_holding_an_evicted_chunk_keeps_its_bytes_while_the_pool_reuses_memory(scroll_store):
    kind, path, data = scroll_store
    level = open_source(str(path)).levels[0]
    engine = ChunkEngine(memory_bytes=4 * level.chunk_nbytes)  # room for 4 chunks (or blocks of them)
    # Whole chunks, or the rows of one block: either way a view of the cache's memory.
    rows = level.chunk_shape[1] if kind == "whole" else 8
    box = (slice(0, 1), slice(0, rows), slice(0, level.chunk_shape[2]))
    first = engine.get(level, [(0, 0, 0)])[(0, 0, 0)]
    assert isinstance(first, BlockedChunk) == (kind == "blocks")
    held_chunk = first[box]  # a reader's read-only array of chunk 0
    held_view = engine.get(level, [(1, 0, 0)])[(1, 0, 0)][box][0, 5:7]  # and a slice of chunk 1
    del first
    assert not held_chunk.flags.writeable and not held_view.flags.writeable
    before = engine.memory.pool.reused
    for z in range(2, 40):
        arr = engine.get(level, [(z, 0, 0)])[(z, 0, 0)][box]
        np.testing.assert_array_equal(arr[0], data[z, :rows])
        assert not np.shares_memory(arr, held_chunk) and not np.shares_memory(arr, held_view)
        del arr
    assert engine.memory.pool.reused - before >= (30 if kind == "whole" else 10), "evicted memory was decoded into again"
    np.testing.assert_array_equal(held_chunk[0], data[0, :rows])
    np.testing.assert_array_equal(held_view, data[1, 5:7])
    stats = engine.stats.snapshot()
    assert stats["decodes" if kind == "whole" else "block_decodes"] >= 40


def scroll(engine, path, data, planes) -> None:
    """Read s0.tif's planes in this order through the views (no FUSE), checking each."""
    fs = vfs_for(str(path), engine=engine)
    offset = pixel_offset(path)
    plane = data[0].nbytes
    for z in planes:
        assert fs.read("/s0.tif", plane, offset + z * plane) == data[z].tobytes(), z


def test_a_scroll_through_a_level_larger_than_memory_reads_every_byte_right(scroll_store):
    """Through the views, with readahead decoding into reused memory beside the reader."""
    _, path, data = scroll_store
    level = open_source(str(path)).levels[0]
    engine = ChunkEngine(memory_bytes=6 * level.chunk_nbytes)
    scroll(engine, path, data, range(40))
    wait_idle(engine)
    assert engine.memory.pool.reused > 0


def test_chunks_read_ahead_are_evicted_after_the_chunks_already_read():
    chunk = np.zeros(1024, np.uint8)
    gone = []
    memory = MemoryLRU(4 * 1024, on_evict=gone.append)
    memory.put("read1", chunk.copy())
    memory.put("ahead1", chunk.copy(), ahead=True)
    memory.put("ahead2", chunk.copy(), ahead=True)
    memory.put("read2", chunk.copy())
    assert memory.ahead_bytes == 2048
    memory.put("read3", chunk.copy())
    memory.put("read4", chunk.copy())
    assert gone == ["read1", "read2"], "the oldest chunks already read, not the older ones read ahead"
    assert memory.get("ahead1") is not None and memory.ahead_bytes == 1024  # read now: ordinary
    memory.put("read5", chunk.copy())
    memory.put("read6", chunk.copy())
    assert gone == ["read1", "read2", "read3", "read4"]
    memory.settle_ahead("ahead2")  # its readahead moved away: it ages as it is
    assert memory.ahead_bytes == 0
    memory.put("read7", chunk.copy())
    assert gone[-1] == "ahead2"
    only_ahead = MemoryLRU(2 * 1024, on_evict=gone.append)
    for name in ("a", "b", "c"):
        only_ahead.put(name, chunk.copy(), ahead=True)
    assert gone[-1] == "a" and len(only_ahead) == 2, "nothing read: the oldest read ahead goes"


@pytest.fixture(scope="module")
def thin_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("thin") / "thin.zarr"
    data = pattern((48, 64, 64), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 32, 32), compressors=LZ4)  # 4 chunks a plane
    return path, data


def test_readahead_stages_nothing_to_disk_that_the_memory_cache_holds(tmp_path, thin_store):
    """The level (384 KiB) fits the memory cache (576 KiB) beside what the reader uses: every
    chunk ahead is decoded into memory, none is staged to disk and read back."""
    path, data = thin_store
    engine = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")), memory_bytes=576 << 10)
    assert engine.readahead_bytes < data.nbytes, "a quarter of memory would not hold the level"
    scroll(engine, path, data, range(48))
    wait_idle(engine)
    stats = engine.stats.snapshot()
    chunks = 48 * 4
    assert stats["chunks_fetched"] == chunks and stats["decodes"] == chunks
    assert stats["prefetched"] == chunks, "each chunk asked once: none staged, then asked again"
    assert stats["disk_hits"] == 0, "nothing read back from the disk cache"


def test_the_next_slab_is_in_memory_before_the_reader_leaves_this_one(tmp_path):
    """64-deep chunks in small: 8-deep chunks, 3 slabs. Two planes into the first slab, the
    next slabs' chunks have been fetched into memory (they fit), not only onto disk."""
    path = tmp_path / "slabs.zarr"
    data = pattern((24, 64, 64), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(8, 32, 32), compressors=LZ4)
    engine = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")), memory_bytes=384 << 10)
    assert engine.readahead_bytes < 8 * 8 * 32 * 32 * 2, "a quarter of memory would not hold the next slabs"
    fs = vfs_for(str(path), engine=engine)
    offset = pixel_offset(path)
    plane = data[0].nbytes
    for z in (0, 1):
        assert fs.read("/s0.tif", plane, offset + z * plane) == data[z].tobytes()
    wait_idle(engine)
    token = open_source(str(path)).levels[0].cache_token
    resident = {idx for (tok, idx) in engine.memory._items if tok == token}
    assert resident == {(s, y, x) for s in range(3) for y in range(2) for x in range(2)}
    assert engine.memory.ahead_bytes > 0, "the next slabs wait, unread, where eviction takes them last"
    for z in range(2, 24):
        assert fs.read("/s0.tif", plane, offset + z * plane) == data[z].tobytes()
    wait_idle(engine)
    stats = engine.stats.snapshot()
    assert stats["chunks_fetched"] == 12 and stats["decodes"] == 12 and stats["disk_hits"] == 0


def test_deep_chunks_kept_encoded_count_as_their_encoded_bytes_ahead(tmp_path):
    """Deep chunks decoded block by block hold their encoded bytes in memory, a fraction of
    the decoded size: readahead counts those (and the blocks a walk keeps decoded), so the
    next slabs come into memory whole, where counted decoded they would not fit and most
    would go to disk and be read back."""
    path = tmp_path / "encoded.zarr"
    data = pattern((24, 128, 128), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(8, 64, 64), version="0.5", compressors=BLOCKS)
    level = open_source(str(path)).levels[0]
    engine = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")), memory_bytes=8 * level.chunk_nbytes)
    assert engine.chunk_footprint(level) == (level.chunk_nbytes, 0), "nothing seen yet: the decoded size"
    first = engine.get(level, [(0, 0, 0)])[(0, 0, 0)]
    assert isinstance(first, BlockedChunk) and first.frame.nblocks == 8
    encoded, walk = engine.chunk_footprint(level)
    assert encoded == first.nbytes < level.chunk_nbytes // 3 and walk == 3 * first.frame.block_bytes
    # Decoded, the 4 chunks of a slab in use leave room for no more than 2 chunks ahead.
    assert (engine.memory.max_bytes - engine.memory.part_share - 4 * level.chunk_nbytes) // level.chunk_nbytes < 4
    scroll(engine, path, data, (0, 1))
    wait_idle(engine)
    resident = {idx for (tok, idx) in engine.memory._items if tok == level.cache_token}
    assert resident == {(s, y, x) for s in range(3) for y in range(2) for x in range(2)}, "both next slabs, in memory"
    scroll(engine, path, data, range(2, 24))
    wait_idle(engine)
    stats = engine.stats.snapshot()
    assert stats["chunks_fetched"] == 12 and stats["disk_hits"] == 0, "nothing staged to disk and read back"
    assert stats["decoded_bytes"] <= data.nbytes


def test_a_staged_chunk_asked_into_memory_is_decoded_from_its_staged_fetch(tmp_path, monkeypatch):
    """Readahead staged chunks to disk, then (room found) asks them into memory while they are
    still fetched: each is fetched once and decoded from those bytes, not read back from disk."""
    path = tmp_path / "staged.zarr"
    data = pattern((8, 64, 64), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(8, 32, 32), compressors=LZ4)
    level = open_source(str(path)).levels[0]
    gate = threading.Event()
    fetch_versioned = level.fetch_versioned

    def held_fetch(*args, **kwargs):
        assert gate.wait(10), "the test opens the gate"
        return fetch_versioned(*args, **kwargs)

    monkeypatch.setattr(level, "fetch_versioned", held_fetch)
    engine = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")))
    chunks = [(0, y, x) for y in range(2) for x in range(2)]
    engine.stage(level, chunks)
    engine.prefetch(level, chunks)
    gate.set()
    wait_idle(engine)
    stats = engine.stats.snapshot()
    assert stats["chunks_fetched"] == 4 and stats["decodes"] == 4
    assert stats["disk_hits"] == 0, "decoded from the staged bytes, not read back"
    for idx in chunks:
        arr = engine.memory.peek((level.cache_token, idx))
        np.testing.assert_array_equal(arr, data[:, idx[1] * 32:(idx[1] + 1) * 32, idx[2] * 32:(idx[2] + 1) * 32])


def test_blocks_decoded_ahead_run_in_order_on_the_decode_threads_and_count_as_busy():
    """Decodes ahead of a reader queue in the engine and are drained by at most
    decode_threads threads, oldest first; wait_idle waits for them; one that fails does not
    stop the others."""
    engine = ChunkEngine(decode_threads=2)
    gate = threading.Event()
    lock = threading.Lock()
    started, done, running, peak = [], [], [0], [0]

    def job(i):
        with lock:
            started.append(i)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        assert gate.wait(10)
        with lock:
            running[0] -= 1
            done.append(i)
        if i == 3:
            raise ValueError("a broken block fails its reader's read, not the others'")

    for i in range(12):
        engine._in_background(job, i)
    assert not engine.wait_idle(0.3), "queued decodes keep the engine busy"
    assert sorted(started) == [0, 1], "two decode threads: the oldest two run, the rest wait"
    gate.set()
    wait_idle(engine)
    assert sorted(done) == list(range(12)) and peak[0] == 2
    assert started[2:] == list(range(2, 12)), "oldest first"


def test_readaheads_share_the_memory_they_keep_ahead():
    engine = ChunkEngine(memory_bytes=64 << 20)
    first, second = object.__new__(type("R", (), {})), object.__new__(type("R", (), {}))
    room = engine.memory.max_bytes - engine.memory.part_share - (1 << 20)
    assert engine.ahead_room(first, 1 << 20) == room, "alone: all the memory holds beside its reader"
    engine.keep_ahead(first, room)
    assert engine.ahead_room(second, 1 << 20) == room // 2, "a second one: a fair share at least"
    engine.keep_ahead(first, 4 << 20)
    assert engine.ahead_room(second, 1 << 20) == room - (4 << 20), "what the first leaves"
    fixed = ChunkEngine(memory_bytes=64 << 20, readahead_bytes=1 << 20)
    assert fixed.ahead_room(first, 0) == 1 << 20, "an explicit budget stays the budget"


@pytest.mark.integration
def test_a_cold_scroll_through_a_mount_reads_ahead_into_memory_only(tmp_path, http_server, cache_args):
    """A real mount, s0.tif read plane after plane through the kernel: every byte right, each
    chunk fetched once and decoded once, and with the level fitting the memory cache,
    nothing staged to disk and read back."""
    from conftest import mounted

    name = "scroll.zarr"
    data = pattern((40, 256, 256), "uint16", seed=3)
    write_ome_zarr(http_server.www / name, data, "zyx", levels=1, chunks=(1, 128, 128), compressors=LZ4)
    http_server.reset_counters()
    with mounted(f"{http_server.url}/{name}", tmp_path / "mnt", "--memory-cache", "16M", *cache_args) as mnt:
        with open(mnt / "s0.tif", "rb") as f:
            import tifffile

            with tifffile.TiffFile(f) as tif:
                offsets = [page.dataoffsets[0] for page in tif.pages]
            plane = data[0].nbytes
            for z in range(40):
                f.seek(offsets[z])
                assert f.read(plane) == data[z].tobytes(), z
        stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
    chunks = 40 * 4
    paths = [p for p in http_server.paths if p.startswith(f"/{name}/0/") and "/." not in p]
    assert len(paths) == len(set(paths)) == chunks, "each chunk requested once"
    assert stats["chunks_fetched"] == chunks and stats["decodes"] == chunks
    assert stats["disk_hits"] == 0, "no chunk staged to disk and read back"


def test_a_reader_goes_before_readahead_queued_on_the_disk_cache(tmp_path, thin_store):
    """Readahead of chunks the disk cache holds reads them in order, as many at a time as
    there are decoders: a reader's chunk is promoted past the window's other chunks (it
    waited behind all of them in the decoders' queue), and a jump drops what has not
    started."""
    path, data = thin_store
    level = open_source(str(path)).levels[0]
    chunks = [(z, 0, 0) for z in range(12)]
    filler = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")))
    filler.fill_disk(level, chunks)
    assert filler.flush_disk(10)
    engine = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")), decode_threads=1)  # one readahead read at a time
    tier = engine.tiers[0]
    read, gate = [], threading.Event()
    tier_get = tier.get

    def slow_first_get(key):
        read.append(key)
        if len(read) == 1:
            assert gate.wait(10)
        return tier_get(key)

    tier.get = slow_first_get
    jumped = threading.Event()
    engine.prefetch(level, chunks[:10], cancelled=jumped)  # the first read holds the only readahead thread
    got = {}
    reader = threading.Thread(target=lambda: got.update(engine.get(level, [chunks[9]])))
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "the reader's chunk was read while readahead's first one still waited"
    np.testing.assert_array_equal(got[chunks[9]][0], data[9, :32, :32])
    assert read[1].endswith(level.chunk_key(chunks[9])), read
    jumped.set()  # the reader jumped away: the window's chunks not started are dropped
    gate.set()
    wait_idle(engine)
    assert len(read) == 2, "only the chunk under way and the reader's were read from disk"
    np.testing.assert_array_equal(engine.get(level, [chunks[4]])[chunks[4]][0], data[4, :32, :32])
