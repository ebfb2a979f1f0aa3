"""The chunk engine without FUSE: decode once, fetch once, readahead, disk cache integrity and bounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time

import numcodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import read_all, tiff_array, vfs_for
from ngffmount.adapters import open_source
from ngffmount.adapters.blosc_frames import BloscFrame
from ngffmount.adapters.errors import ChunkReadError
from ngffmount.adapters.storage import TRANSFERS
from ngffmount.cache.disk import CorruptEntry, DiskCache
from ngffmount.cache import writeback
from ngffmount.cache.engine import ChunkEngine
from ngffmount.cache.region import chunks_touching, read_region
from zarr_fixtures import pattern, write_ome_zarr


@pytest.fixture(scope="module")
def deep_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("deep") / "deep.zarr"
    data = pattern((32, 64, 64), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(16, 32, 32))
    return path, data


def pixel_offset(store) -> int:
    """Where s0.tif's pixels start, found through a separate engine so the tests' counts stay clean."""
    import io

    import tifffile

    head = vfs_for(str(store)).read("/s0.tif", 65536, 0)
    with tifffile.TiffFile(io.BytesIO(head)) as tif:
        offset = tif.pages[0].dataoffsets[0]
    return offset


def wait_idle(engine, timeout=10.0):
    assert engine.wait_idle(timeout), "the engine went idle"


def test_z_scroll_fetches_and_decodes_each_chunk_once(deep_store):
    path, data = deep_store
    engine = ChunkEngine()
    offset = pixel_offset(path)
    fs = vfs_for(str(path), engine=engine)
    before = TRANSFERS.requests
    plane = 64 * 64 * 2
    for z in range(32):
        # 128 KiB pieces, as the kernel asks
        got = b"".join(fs.read("/s0.tif", 4096, offset + z * plane + k) for k in range(0, plane, 4096))
        assert got == data[z].astype("<u2").tobytes()
    wait_idle(engine)
    chunks = 2 * 2 * 2
    stats = engine.stats.snapshot()
    assert stats["decodes"] == chunks
    assert stats["chunks_fetched"] == chunks
    assert TRANSFERS.requests - before == chunks



def test_readahead_beyond_the_memory_budget_goes_to_disk_then_memory(tmp_path):
    """Deep chunks: the next slab outgrows the decoded budget, so its other chunks are
    fetched into the disk cache while the reader is still in this slab; each chunk is
    still fetched once and decoded once."""
    path = tmp_path / "slabs.zarr"
    data = pattern((24, 64, 64), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(8, 32, 32))  # 3 slabs of 4 chunks, 16 KiB each
    chunk = 8 * 32 * 32 * 2
    engine = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")), readahead_bytes=chunk, stage_bytes=8 * chunk)
    fs = vfs_for(str(path), engine=engine)
    offset = pixel_offset(path)
    plane = 64 * 64 * 2
    token = open_source(str(path)).levels[0].cache_token
    before = TRANSFERS.requests
    for z in range(3):
        assert fs.read("/s0.tif", plane, offset + z * plane) == data[z].astype("<u2").tobytes()
    wait_idle(engine)
    engine.flush_disk()
    on_disk = sum(1 for k in engine.disk._cache.iterkeys() if k.startswith(token))
    in_memory = {idx for (tok, idx) in engine.memory._items if tok == token}
    assert in_memory == {(s, y, x) for s in (0,) for y in (0, 1) for x in (0, 1)} | {(1, 0, 0)}, \
        "this slab, and one chunk of the next (the decoded budget)"
    assert on_disk == 12, "the rest of the next slab and the one after it, on disk"
    for z in range(3, 24):
        assert fs.read("/s0.tif", plane, offset + z * plane) == data[z].astype("<u2").tobytes()
    wait_idle(engine)
    stats = engine.stats.snapshot()
    assert TRANSFERS.requests - before == 12 and stats["chunks_fetched"] == 12
    assert stats["decodes"] == 12

def test_readahead_prefetches_next_planes_and_resets_on_jumps(tmp_path):
    path = tmp_path / "thin.zarr"
    data = pattern((40, 32, 32), "uint8")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 32, 32))
    engine = ChunkEngine(readahead_bytes=8 * 32 * 32)  # 8 planes ahead
    fs = vfs_for(str(path), engine=engine)
    offset = pixel_offset(path)
    for z in (0, 1):
        fs.read("/s0.tif", 1024, offset + z * 1024)
    wait_idle(engine)
    token = open_source(str(path)).levels[0].cache_token
    resident = {idx[0] for (tok, idx) in engine.memory._items if tok == token}
    assert resident == set(range(0, 10)), "planes 2..9 were read ahead within the budget"
    # (Not chunks_fetched: this read moves the window on, and plane 10 may arrive meanwhile.)
    misses = engine.stats.snapshot()["memory_misses"]
    fs.read("/s0.tif", 1024, offset + 2 * 1024)
    assert engine.stats.snapshot()["memory_misses"] == misses, "the next plane came from readahead"
    # A jump is random access: nothing more is queued.
    prefetched = engine.stats.snapshot()["prefetched"]
    fs.read("/s0.tif", 1024, offset + 30 * 1024)
    wait_idle(engine)
    assert engine.stats.snapshot()["prefetched"] == prefetched



def test_every_new_plane_is_fetched_whole_also_backwards_and_out_of_order(tmp_path):
    """Kernel reads of neighbouring planes finish out of order, and users scroll back: each
    plane's first read still fetches all of its chunks at once, and a lag of a plane or
    two does not reset the readahead window."""
    path = tmp_path / "tiles.zarr"
    data = pattern((12, 64, 64), "uint8")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 16, 16))  # 16 chunks per plane
    engine = ChunkEngine(readahead_bytes=16 * 16)  # one chunk ahead at most
    fs = vfs_for(str(path), engine=engine)
    offset = pixel_offset(path)
    for z in (11, 10, 9, 8):
        fs.read("/s0.tif", 64, offset + z * 64 * 64)  # the first row only
        wait_idle(engine)
        token = open_source(str(path)).levels[0].cache_token
        assert sum(1 for (tok, idx) in engine.memory._items if tok == token and idx[0] == z) == 16, z
    ahead = ChunkEngine(readahead_bytes=4 * 16 * 16)  # 4 chunks: a quarter of a plane
    fs = vfs_for(str(path), engine=ahead)
    for z in (0, 1, 2, 1, 3):
        fs.read("/s0.tif", 64, offset + z * 64 * 64)
    wait_idle(ahead)
    assert ahead.stats.snapshot()["prefetched"] == 4 * 16 + 4, "planes 0-3 whole, and 4 chunks ahead of plane 3"

def test_readahead_across_plane_files_in_name_order(tmp_path):
    path = tmp_path / "seq.zarr"
    data = pattern((12, 16, 16), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 16, 16))
    engine = ChunkEngine(readahead_bytes=4 * 16 * 16 * 2)
    fs = vfs_for(str(path), engine=engine)
    for z in (0, 1):
        np.testing.assert_array_equal(tiff_array(read_all(fs, f"/s0/z{z:05d}.tif")), data[z])
    wait_idle(engine)
    assert engine.stats.snapshot()["prefetched"] == 4


def test_concurrent_readers_share_one_fetch(deep_store):
    path, data = deep_store
    engine = ChunkEngine()
    level = open_source(str(path)).levels[0]
    before = TRANSFERS.requests
    results = []
    threads = [threading.Thread(target=lambda: results.append(read_region(engine, level, (0, 0, 0), (32, 64, 64))))
               for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(np.array_equal(r, data) for r in results)
    assert TRANSFERS.requests - before == 8  # 8 chunks, each fetched once for 8 readers


def test_disk_cache_shared_by_two_engines(tmp_path, deep_store):
    path, data = deep_store
    level = open_source(str(path)).levels[0]
    first = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")))
    read_region(first, level, (0, 0, 0), (32, 64, 64))
    first.flush_disk()
    second = ChunkEngine(disk=DiskCache(str(tmp_path / "cache")))
    before = TRANSFERS.requests
    np.testing.assert_array_equal(read_region(second, level, (0, 0, 0), (32, 64, 64)), data)
    assert TRANSFERS.requests == before
    assert second.stats.snapshot()["disk_hits"] == 8
    assert oct(os.stat(tmp_path / "cache").st_mode & 0o777) == "0o700"


def test_corrupt_disk_entry_is_refetched(tmp_path, deep_store):
    path, data = deep_store
    level = open_source(str(path)).levels[0]
    disk = DiskCache(str(tmp_path / "cache"))
    filler = ChunkEngine(disk=disk)
    read_region(filler, level, (0, 0, 0), (32, 64, 64))
    filler.flush_disk()
    key = f"{level.cache_token}/{level.chunk_key((1, 1, 0))}"
    stored = disk._cache.get(key, read=False)
    disk._cache.set(key, stored[:-7] + b"garbage")  # flipped bytes on disk
    engine = ChunkEngine(disk=disk)
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (32, 64, 64)), data)
    stats = engine.stats.snapshot()
    assert stats["disk_corrupt"] == 1 and stats["chunks_fetched"] == 1 and stats["disk_hits"] == 7


def test_chunks_waiting_for_their_disk_write_are_read_from_memory(tmp_path, deep_store, monkeypatch):
    """Disk writes wait while a reader reads: until written, a chunk's bytes are read from the
    write queue, never fetched again (nor waited for: its fetch slot is held until written)."""
    monkeypatch.setattr(writeback, "MAX_WAIT_S", 60.0)
    path, data = deep_store
    level = open_source(str(path)).levels[0]
    disk = DiskCache(str(tmp_path / "cache"))
    engine = ChunkEngine(disk=disk, memory_bytes=0)
    box = (0, 0, 0), (32, 64, 64)
    with engine._writes.reading():  # another reader, all along: every write waits
        np.testing.assert_array_equal(read_region(engine, level, *box), data)
        assert len(disk) == 0 and engine.disk_backlog > 0
        again = []
        reader = threading.Thread(target=lambda: again.append(read_region(engine, level, *box)))
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the second read waited for the disk writes"
        assert len(disk) == 0
    np.testing.assert_array_equal(again[0], data)
    stats = engine.stats.snapshot()
    assert stats["chunks_fetched"] == 8 and stats["disk_hits"] == 8
    engine.flush_disk()
    assert len(disk) == 8 and engine.disk_backlog == 0


def test_a_reader_gets_a_staged_chunk_once_fetched_not_once_written(tmp_path, deep_store, monkeypatch):
    """A staged chunk is not decoded: a reader that comes for it while it is fetched waits
    for the fetch, then takes the bytes from the write queue. Its disk write waits for the
    readers (here 30 s); the reader must not wait for that (1x512x512 scroll: 13 s became 56 s)."""
    monkeypatch.setattr(writeback, "MAX_WAIT_S", 30.0)
    path, _ = deep_store
    level = open_source(str(path)).levels[0]
    fetch_many = level.fetch_many

    def slow_fetch(keys):
        time.sleep(0.5)  # the reader comes while this runs
        return fetch_many(keys)

    monkeypatch.setattr(level, "fetch_many", slow_fetch)
    disk = DiskCache(str(tmp_path / "cache"))
    engine = ChunkEngine(disk=disk)
    with engine._writes.reading():  # another reader reads all along: writes wait
        engine.stage(level, [(0, 0, 0)])
        time.sleep(0.1)
        started = time.monotonic()
        got = engine.get(level, [(0, 0, 0)])[(0, 0, 0)]
        assert time.monotonic() - started < 5, "the reader waited for the deferred disk write"
        assert len(disk) == 0, "the write waits for the readers"
    np.testing.assert_array_equal(got, level.decode((0, 0, 0), fetch_many([level.chunk_key((0, 0, 0))])[level.chunk_key((0, 0, 0))]))
    assert engine.stats.snapshot()["chunks_fetched"] == 1
    engine.flush_disk()
    assert len(disk) == 1


def test_downgraded_fetch_slot_lets_this_process_in_and_keeps_others_out(tmp_path):
    """Once a fetch's bytes are queued for the disk, threads of this process take its slot
    again; another process waits until the bytes are on disk (the slot released)."""
    import subprocess
    import sys

    from ngffmount.cache.disk import FetchLocks

    locks = FetchLocks(str(tmp_path))
    locks.acquire([5])
    locks.downgrade([5])
    taken = threading.Event()
    threading.Thread(target=lambda: (locks.acquire([5]), taken.set()), daemon=True).start()
    assert taken.wait(5), "a thread of this process waits for a downgraded slot"
    locks.release([5])  # that thread's turn is over; the downgraded fetch still holds the slot
    other = subprocess.Popen([sys.executable, "-c", "import sys\nfrom ngffmount.cache.disk import FetchLocks\n"
                              "FetchLocks(sys.argv[1]).acquire([5]); print('got it', flush=True)", str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert other.poll() is None, "another process took a slot whose bytes are not on disk yet"
    locks.release([5], downgraded=True)
    assert other.stdout.readline().strip() == "got it"
    assert other.wait(10) == 0


def test_disk_cache_size_bound(tmp_path):
    path = tmp_path / "noise.zarr"
    rng = np.random.default_rng(0)
    data = rng.integers(0, 65535, (64, 64, 64), dtype=np.uint16)  # incompressible: 8 KiB per chunk
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 64, 64))
    level = open_source(str(path)).levels[0]
    limit = 256 << 10
    disk = DiskCache(str(tmp_path / "cache"), size_limit=limit)
    engine = ChunkEngine(disk=disk, memory_bytes=0)
    for z in range(64):
        read_region(engine, level, (z, 0, 0), (z + 1, 64, 64))
        engine.flush_disk()
        assert disk.volume() <= limit + 64 * 64 * 2 + 4096 * 8, "at most about one chunk over the bound"
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (64, 64, 64)), data)


@pytest.mark.parametrize("size", [0, 100, (32 << 10) - 6, 32 << 10, (4 << 20) - 5, 9 << 20])
def test_disk_entries_round_trip_in_sqlite_and_in_files(tmp_path, size):
    disk = DiskCache(str(tmp_path / "cache"))
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()  # newlines included
    disk.put("k", data)
    assert disk.get("k") == data
    stored = disk._cache.get("k", read=False)
    disk._cache.set("k", stored[:-1] + bytes([stored[-1] ^ 1]) if size else stored[:-1])
    with pytest.raises(CorruptEntry):
        disk.get("k")
    assert "k" not in disk


def _entry_files(directory) -> list[str]:
    return [os.path.join(root, name) for root, _, files in os.walk(directory) for name in files
            if name.endswith(".val")]


@pytest.fixture
def on_disk_dir():
    """A folder on a disk file system (pytest's tmp_path may be on tmpfs, which has no O_DIRECT)."""
    directory = tempfile.mkdtemp(dir="/var/tmp")
    try:
        probe = os.path.join(directory, "probe")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        os.unlink(probe)
        yield directory
    finally:
        shutil.rmtree(directory)


def test_disk_entry_files_bypass_the_page_cache(on_disk_dir):
    """The chunk bytes are in the memory cache already: written through the page cache,
    a cold scroll would hold a third copy of them there."""
    disk = DiskCache(os.path.join(on_disk_dir, "cache"))
    data = np.random.default_rng(1).integers(0, 256, (3 << 20) + 123, dtype=np.uint8).tobytes()
    disk.put("k", data)
    (path,) = _entry_files(os.path.join(on_disk_dir, "cache"))
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", path],
                         capture_output=True, text=True, check=True).stdout
    assert int(out.split()[0]) == 0, "entry file pages left in the page cache"
    assert os.path.getsize(path) == len(data) + 5
    assert disk.get("k") == data


def test_disk_entries_on_a_file_system_without_o_direct():
    directory = tempfile.mkdtemp(dir="/dev/shm")  # tmpfs
    try:
        disk = DiskCache(os.path.join(directory, "cache"))
        for size in (1 << 20, (2 << 20) + 7):
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            disk.put(f"k{size}", data)
            assert disk.get(f"k{size}") == data
    finally:
        shutil.rmtree(directory)


def test_disk_entry_file_removed_behind_the_index_is_a_miss(tmp_path):
    disk = DiskCache(str(tmp_path / "cache"))
    disk.put("k", bytes(1 << 20))
    for path in _entry_files(tmp_path / "cache"):
        os.unlink(path)
    assert disk.get("k") is None
    assert "k" not in disk


def test_disk_cache_from_many_threads_at_once(tmp_path):
    """Lookups, writes and evictions from 8 threads: every read is the bytes written."""
    disk = DiskCache(str(tmp_path / "cache"), size_limit=4 << 20)
    errors = []

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        try:
            for i in range(40):
                key, data = f"{t}/{i}", rng.integers(0, 256, int(rng.integers(1, 200_000)), dtype=np.uint8).tobytes()
                disk.put(key, data)
                got = disk.get(key)
                if got is not None and got != data:  # None: evicted by another thread's write
                    errors.append(key)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert errors == []
    assert disk.volume() <= (4 << 20) + 200_000 + 4096


LOCK_HOLDER = """
import sys, time
from ngffmount.cache.disk import FetchLocks
locks = FetchLocks(sys.argv[1])
locks.acquire([3]); print("holding", flush=True)
time.sleep(float(sys.argv[2]))
# Another thread of this process now waits for a slot the test process holds: at the
# process level the two processes wait on each other; no thread waits in a cycle.
import threading
result = []
t = threading.Thread(target=lambda: result.append(locks.acquire([2, 4]) or "ok"))
t.start(); time.sleep(0.3)
locks.release([3])
t.join(10)
print(result[0] if result else "stuck", flush=True)
"""


def test_fetch_locks_survive_the_kernels_false_deadlock_report(tmp_path):
    """POSIX locks belong to processes, so the kernel reports EDEADLK for waits that only
    form a cycle when threads are lumped together; the lock must wait, not fail."""
    import subprocess
    import sys

    from ngffmount.cache.disk import FetchLocks

    locks = FetchLocks(str(tmp_path))
    locks.acquire([4])
    other = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path), "0.5"],
                             stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "holding"
    errors = []

    def wait_for_slot_3():
        try:
            locks.acquire([1, 3])  # held by the other process until its second thread is done
            locks.release([1, 3])
        except OSError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait_for_slot_3)
    waiter.start()
    time.sleep(1.0)  # the other process's thread now waits for slot 4, which we hold
    locks.release([4])
    waiter.join(10)
    assert other.stdout.readline().strip() == "ok"
    assert other.wait(10) == 0 and not errors


def test_chunks_of_one_shard_fetched_at_once_read_its_index_once(tmp_path):
    """Every chunk is its own fetch, all at the same time: the shard index they all need
    must still be one request."""
    import zarr

    path = tmp_path / "sharded.zarr"
    data = pattern((4, 256, 256), "uint16")
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("0", shape=data.shape, chunks=(1, 32, 32), shards=(2, 256, 256), dtype="uint16")[...] = data
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]}})
    level = open_source(str(path)).levels[0]
    before = TRANSFERS.requests
    np.testing.assert_array_equal(read_region(ChunkEngine(), level, (0, 0, 0), (1, 256, 256))[0], data[0])
    assert TRANSFERS.requests - before == 1 + 64, "the shard index once, then one request per chunk"


# -- chunks kept encoded, decoded a Blosc block at a time ------------------------------------

BLOSC_BLOCKED = {
    # zarr v2, lz4 at c-blosc's own block size (256 KiB): 8 blocks of 2 planes per chunk
    "v2-lz4": ("0.4", numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE), (16, 256, 256)),
    # zarr v3, zstd + bitshuffle, blocks that end mid-row and a short last block
    "v3-zstd": ("0.5", {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle",
                                                        "typesize": 2, "blocksize": 1000}}, (8, 32, 48)),
}


@pytest.fixture(scope="module", params=sorted(BLOSC_BLOCKED))
def blocked_store(request, tmp_path_factory):
    version, compressor, chunks = BLOSC_BLOCKED[request.param]
    path = tmp_path_factory.mktemp("blocked") / "blocked.zarr"
    shape = (2 * chunks[0], chunks[1] + 7, 2 * chunks[2] - 5)  # edge chunks on y and x
    data = pattern(shape, "uint16")
    write_ome_zarr(path, data, "zyx", version=version, levels=1, chunks=chunks, compressors=compressor)
    return path, data


def test_blosc_frame_blocks_match_the_whole_chunk_decode(blocked_store):
    path, _ = blocked_store
    level = open_source(str(path)).levels[0]
    raw = level.fetch_many([level.chunk_key((0, 0, 0))])[level.chunk_key((0, 0, 0))]
    frame = level.blosc_frame(raw)
    assert frame is not None and frame.nblocks >= 8
    whole = level.decode((0, 0, 0), raw).tobytes()
    assert b"".join(frame.decode_block(b).tobytes() for b in range(frame.nblocks)) == whole
    # A client's read-only buffer (obstore's memory, see fetch_versioned) decodes where it lies.
    view = memoryview(raw)
    frame = level.blosc_frame(view)
    assert frame.raw is view
    assert b"".join(frame.decode_block(b).tobytes() for b in reversed(range(frame.nblocks))) == b"".join(
        whole[b * frame.block_bytes:(b + 1) * frame.block_bytes] for b in reversed(range(frame.nblocks)))
    assert level.decode((0, 0, 0), view).tobytes() == whole


def test_blosc_frame_refuses_what_is_not_one_whole_frame(blocked_store):
    path, _ = blocked_store
    level = open_source(str(path)).levels[0]
    raw = level.fetch_many([level.chunk_key((0, 0, 0))])[level.chunk_key((0, 0, 0))]
    assert level.blosc_frame(raw[:-1]) is None, "truncated"
    assert level.blosc_frame(raw + b"\0") is None, "trailing bytes"
    assert BloscFrame.parse(raw, level.chunk_nbytes * 2, 2) is None, "holds another size"
    assert BloscFrame.parse(raw, level.chunk_nbytes, 2) is not None
    assert BloscFrame.parse(b"\x89PNG" + bytes(60), level.chunk_nbytes, 2) is None


def test_a_plane_decodes_only_its_blocks_and_a_scroll_each_block_once(blocked_store, monkeypatch):
    path, data = blocked_store
    offset = pixel_offset(path)
    decoded = []  # (frame, block) of every block decode; holding the frames keeps their ids apart
    whole_block = BloscFrame.decode_block
    monkeypatch.setattr(BloscFrame, "decode_block", lambda f, b: decoded.append((f, b)) or whole_block(f, b))
    engine = ChunkEngine()
    fs = vfs_for(str(path), engine=engine)
    nz, ny, nx = data.shape
    plane = ny * nx * 2
    level = open_source(str(path)).levels[0]
    cz, cy, cx = level.chunk_shape
    chunks_per_plane = -(-ny // cy) * -(-nx // cx)
    assert fs.read("/s0.tif", plane, offset + 5 * plane) == data[5].tobytes()
    wait_idle(engine)
    stats = engine.stats.snapshot()
    assert stats["decodes"] == 0
    # One plane of a chunk spans at most two blocks (or a few 1000-byte ones): far less than the chunk.
    assert stats["decoded_bytes"] <= chunks_per_plane * 2 * cy * cx * 2 + chunks_per_plane * 2000
    assert stats["decoded_bytes"] < chunks_per_plane * level.chunk_nbytes / 2
    raw = level.fetch_many([level.chunk_key((0, 0, 0))])[level.chunk_key((0, 0, 0))]
    block_bytes = level.blosc_frame(raw).block_bytes
    held = []
    for z in range(nz):
        # 4 KiB pieces: many reads land in one block
        got = b"".join(fs.read("/s0.tif", min(4096, plane - k), offset + z * plane + k) for k in range(0, plane, 4096))
        assert got == data[z].tobytes()
        wait_idle(engine)
        held.append(engine.memory.part_bytes)
    # Blocks the scroll has left behind are let go: through the first chunks, per chunk the
    # blocks of its plane, the two before them, and one decoded ahead are held.
    plane_blocks = -(-cy * cx * 2 // block_bytes) + 1
    assert max(held[:cz]) <= chunks_per_plane * (plane_blocks + 3) * block_bytes, held
    stats = engine.stats.snapshot()
    chunks = chunks_per_plane * (nz // cz)
    assert stats["decodes"] == 0
    assert len(decoded) == len({(id(f), b) for f, b in decoded}), "no block decoded twice"
    # Every block with pixels, and at most one block of padding per chunk (decoded ahead).
    assert blocks_holding_pixels(level, data.shape) <= stats["decoded_bytes"] <= chunks * level.chunk_nbytes
    assert stats["chunks_fetched"] == chunks


def test_blocks_of_a_scroll_are_decoded_ahead_of_the_reader(tmp_path):
    path = tmp_path / "ahead.zarr"
    data = pattern((16, 256, 256), "uint16")  # one chunk of 8 blocks, 2 planes each
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(16, 256, 256),
                   compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE))
    engine = ChunkEngine()
    level = open_source(str(path)).levels[0]
    block = lambda b: engine.memory.get((level.cache_token, (0, 0, 0), b))  # noqa: E731
    read_region(engine, level, (0, 0, 0), (1, 256, 256))
    wait_idle(engine)
    assert block(0) is not None and block(1) is None, "one plane read: nothing guessed"
    read_region(engine, level, (2, 0, 0), (3, 256, 256))  # moved on to block 1
    wait_idle(engine)
    assert block(2) is not None and block(3) is None, "the next block, decoded before it is read"
    assert engine.stats.snapshot()["block_decodes"] == 3


def blocks_holding_pixels(level, shape) -> int:
    """Bytes of the Blosc blocks that hold at least one pixel of the image (edge chunks hold
    padding, and a block of padding alone is never read)."""
    total = 0
    for idx in chunks_touching(level, [0] * len(shape), shape):
        raw = level.fetch_many([level.chunk_key(idx)])[level.chunk_key(idx)]
        frame = level.blosc_frame(raw)
        inside = np.zeros(level.chunk_shape, bool)
        inside[tuple(slice(0, min(c, n - i * c)) for c, n, i in zip(level.chunk_shape, shape, idx))] = True
        per_block = frame.block_bytes // level.dtype.itemsize
        total += sum(frame.block_size(b) for b in np.unique(np.flatnonzero(inside) // per_block))
    return total


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(box=st.data())
def test_any_box_of_blocked_chunks_matches_the_source(blocked_store, box):
    path, data = blocked_store
    engine = ChunkEngine(memory_bytes=4 << 20)  # small: blocks and chunks come and go
    level = open_source(str(path)).levels[0]
    start = [box.draw(st.integers(0, n - 1)) for n in data.shape]
    stop = [box.draw(st.integers(a + 1, n)) for a, n in zip(start, data.shape)]
    got = read_region(engine, level, start, stop)
    assert np.array_equal(got, data[tuple(slice(a, b) for a, b in zip(start, stop))])
    assert engine.stats.snapshot()["decodes"] == 0


def test_a_broken_block_fails_its_reads_and_not_the_others(tmp_path):
    path = tmp_path / "broken.zarr"
    data = pattern((16, 256, 256), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(16, 256, 256),
                   compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE))
    chunk_file = path / "0" / "0" / "0" / "0"
    raw = bytearray(chunk_file.read_bytes())
    frame = BloscFrame.parse(bytes(raw), data.nbytes, 2)
    # Block 3's stream: overwrite its body (after its 4-byte size) with garbage.
    body = int.from_bytes(raw[16 + 4 * 3:16 + 4 * 4], "little")
    raw[body + 4:body + 68] = b"\xff" * 64
    chunk_file.write_bytes(bytes(raw))
    engine = ChunkEngine()
    level = open_source(str(path)).levels[0]
    per_block = frame.block_bytes // (256 * 256 * 2)  # planes per block
    with pytest.raises(ChunkReadError):
        read_region(engine, level, (3 * per_block, 0, 0), (3 * per_block + 1, 256, 256))
    assert engine.stats.snapshot()["errors"] == 1
    assert np.array_equal(read_region(engine, level, (0, 0, 0), (1, 256, 256)), data[:1])


def test_memory_cache_lets_decoded_blocks_go_before_chunks_beyond_their_share():
    from ngffmount.cache.memory import MemoryLRU

    lru = MemoryLRU(1000)  # parts keep 250 bytes before chunks give way
    item = lambda n: np.zeros(n, np.uint8)  # noqa: E731
    lru.put("chunk-a", item(400))
    for b in range(6):
        lru.put(("block", b), item(100), part=True)  # 400 + 600: full
    lru.put("chunk-b", item(300))  # the oldest parts beyond the share go, not chunk-a
    assert lru.get("chunk-a") is not None and lru.get("chunk-b") is not None
    assert [lru.get(("block", b)) is not None for b in range(6)] == [False] * 3 + [True] * 3
    assert lru.nbytes == 1000 and lru.part_bytes == 300
    lru.put("chunk-c", item(250))  # parts down to their share (250: two left), then the oldest chunk
    assert lru.get("chunk-a") is None and lru.get("chunk-b") is not None and lru.get("chunk-c") is not None
    assert lru.part_bytes == 200 and lru.nbytes == 750


def test_waiting_disk_writes_count_only_the_bytes_the_memory_cache_does_not_hold(tmp_path, blocked_store, monkeypatch):
    """A chunk kept encoded in the memory cache is the very bytes its disk write waits with:
    they cost nothing against the write-behind's bound until the memory cache lets them go."""
    monkeypatch.setattr(writeback, "MAX_WAIT_S", 60.0)
    path, data = blocked_store
    level = open_source(str(path)).levels[0]
    disk = DiskCache(str(tmp_path / "cache"))
    engine = ChunkEngine(disk=disk, memory_bytes=64 << 20)
    everything = (0, 0, 0), data.shape
    with engine._writes.reading():
        np.testing.assert_array_equal(read_region(engine, level, *everything), data)
        wait_idle(engine)
        chunks = chunks_touching(level, *everything)
        encoded = sum(len(level.fetch_many([level.chunk_key(c)])[level.chunk_key(c)]) for c in chunks)
        assert engine.disk_backlog == encoded and len(disk) == 0
        assert engine._writes.alone_bytes == 0, "every waiting chunk is resident, as the same bytes"
        engine.memory.put("filler", np.zeros(engine.memory.max_bytes - 1, np.uint8))  # evicts every chunk
        assert engine._writes.alone_bytes == encoded
    engine.flush_disk()
    assert len(disk) == len(chunks) and engine.disk_backlog == 0 and engine._writes.alone_bytes == 0
