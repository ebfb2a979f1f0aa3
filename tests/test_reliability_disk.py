"""The disk tier in an operator's world: a full cache file system, a cache folder that cannot
be opened for writing, and a cache folder removed while mounted. Its trouble costs speed,
never a read: every read is checked byte for byte, and each kind of trouble is logged once.

Small file systems are real tmpfs mounts of a few MB (the tests run as root)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import mounted, ngffmount_cmd
from test_faults import wait_gone
from zarr_fixtures import write_ome_zarr

from ngffmount.adapters import open_source
from ngffmount.cache import disk as disk_module
from ngffmount.cache.disk import CacheUnavailable, DiskCache
from ngffmount.cache.engine import ChunkEngine
from ngffmount.cache.region import read_region
from ngffmount.cache.throttledlog import ThrottledLog

FULL_LINE = "file system is full"


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs, always unmounted afterwards."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path, name: str = "filler") -> None:
    """Take every free byte of the file system under `directory`."""
    with open(directory / name, "ab", buffering=0) as f:
        block = bytes(4096)
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    assert os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize < 64 << 10


def entry_files(directory) -> set[str]:
    return {os.path.relpath(os.path.join(root, name), directory)
            for root, _, files in os.walk(directory) for name in files if name.endswith(".val")}


def index_query(directory, sql: str) -> list:
    """Rows of the cache's index, read without writing (on a full file system, from the
    main database file alone)."""
    for mode in ("mode=ro", "immutable=1"):
        try:
            con = sqlite3.connect(f"file:{directory}/cache.db?{mode}", uri=True)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError:
            if mode != "mode=ro":
                raise
    raise AssertionError("unreachable")


def indexed_files(directory) -> dict[str, int]:
    """{filename: size} of the files the cache's index names (the entries of a batch share a
    file: its size is theirs together)."""
    return dict(index_query(directory, "SELECT filename, sum(size) FROM Cache WHERE filename IS NOT NULL "
                                       "GROUP BY filename"))


def indexed_entries(directory) -> int:
    """How many entries the cache's index names in files."""
    return index_query(directory, "SELECT count(*) FROM Cache WHERE filename IS NOT NULL")[0][0]


def assert_no_stray_files(directory) -> None:
    """Every entry file is named by the index and whole: no partial or orphaned files."""
    indexed = indexed_files(directory)
    on_disk = entry_files(directory)
    assert on_disk == set(indexed), f"files nothing names: {sorted(on_disk - set(indexed))[:5]}"
    for name, size in indexed.items():
        assert os.path.getsize(os.path.join(directory, name)) == size, name


def log_lines(log_file: Path, text: str) -> list[str]:
    return [line for line in log_file.read_text().splitlines() if text in line]


@pytest.fixture(scope="module")
def noise_store(http_server, tmp_path_factory):
    """A 48 x 256 x 256 uint16 level of noise (6 MiB, more than the small tmpfs), in 64 KiB
    chunks that the disk cache keeps as files, plus a smaller level whose chunks it keeps in
    SQLite; served over HTTP."""
    rng = np.random.default_rng(27)
    data = rng.integers(0, 65535, (48, 256, 256), dtype=np.uint16)
    path = tmp_path_factory.mktemp("noise") / "noise.zarr"
    levels = write_ome_zarr(path, data, "zyx", levels=2, chunks=(1, 128, 256))
    shutil.copytree(path, http_server.www / "noise.zarr", dirs_exist_ok=True)
    return f"{http_server.url}/noise.zarr", levels, http_server.www / "noise.zarr"


def scroll(mnt: Path, levels, workers: int = 4, planes=None, level: int = 0) -> int:
    """Read planes through the mount, each checked against the source's pixels. The kernel's
    cached pages of each file are dropped first: every read reaches the daemon."""
    arr = levels[level]
    planes = range(arr.shape[0]) if planes is None else planes

    def one(z):
        with open(mnt / f"s{level}" / f"z{z:05d}.tif", "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            data = f.read()
        np.testing.assert_array_equal(tifffile.imread(io.BytesIO(data)), arr[z], err_msg=str(z))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, planes))
    return len(planes)


def daemon_pid(mnt: Path) -> int:
    return json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]


def stats(mnt: Path) -> dict:
    return json.loads((mnt / ".ngffmount" / "stats.json").read_text())


# -- real mounts --------------------------------------------------------------------------


@pytest.mark.integration
def test_full_cache_file_system(tmp_path, small_tmpfs, noise_store):
    """Scroll 6 MiB through a mount whose cache sits on a 4 MiB tmpfs (--cache-size 10G):
    reads stay exact, the full disk is logged once, no partial file is left. Then, with the
    tmpfs full: a remount works, and `cache info` and `cache clear` answer."""
    url, levels, origin = noise_store
    cache = small_tmpfs / "cache"
    log_file = tmp_path / "daemon.log"
    args = ("--cache-dir", str(cache), "--log-file", str(log_file))
    with mounted(url, tmp_path / "mnt", *args) as mnt:
        assert scroll(mnt, levels) == 48
        assert scroll(mnt, levels, level=1) == 48
        pid = daemon_pid(mnt)
    wait_gone(pid)  # the write-behind queue is flushed at unmount
    full = log_lines(log_file, FULL_LINE)
    assert len(full) == 1, full
    assert "evicted the" in full[0] and str(cache) in full[0]
    assert "Traceback" not in log_file.read_text()
    assert_no_stray_files(cache)
    assert indexed_entries(cache) > 10, "the cache kept working within the file system"
    # Every entry left is a whole chunk of the source.
    disk = DiskCache(str(cache), size_limit=None)
    try:
        for (key,) in index_query(cache, "SELECT key FROM Cache"):
            chunk_key = key.split("/", 1)[1]
            candidates = [(origin / lvl / chunk_key).read_bytes() for lvl in ("0", "1")
                          if (origin / lvl / chunk_key).exists()]
            assert disk.get(key) in candidates, key
    finally:
        disk.close()

    # Full to the last byte: the remount opens the cache by evicting, and reads stay exact.
    fill(small_tmpfs)
    with mounted(url, tmp_path / "mnt", *args) as mnt:
        assert scroll(mnt, levels, planes=range(0, 48, 3)) == 16
        assert stats(mnt)["disk_hits"] > 0, "the disk tier serves again"
        pid = daemon_pid(mnt)
    wait_gone(pid)
    assert len(log_lines(log_file, "oldest entries")) <= 3  # this mount: one to open, one while serving
    assert "to open it" in log_lines(log_file, FULL_LINE)[1]

    fill(small_tmpfs, "filler2")
    (entries,), = index_query(cache, "SELECT count(*) FROM Cache")
    assert entries > 0
    info = ngffmount_cmd("cache", "info", "--cache-dir", str(cache))
    assert f"entries    {entries}" in info.stdout and "full" in info.stdout, info.stdout
    assert info.stderr == ""
    cleared = ngffmount_cmd("cache", "clear", "--cache-dir", str(cache))
    assert f"removed {entries} entries" in cleared.stdout, (cleared.stdout, cleared.stderr)
    assert "Traceback" not in cleared.stderr
    assert entry_files(cache) == set()
    after = ngffmount_cmd("cache", "info", "--cache-dir", str(cache)).stdout
    assert "entries    0" in after, (after, cleared.stdout, cleared.stderr)


@pytest.mark.integration
def test_cache_that_cannot_be_opened_for_writing(tmp_path, small_tmpfs, noise_store):
    """A cache folder on a file system full before the mount: the mount serves without the
    disk tier and says so once."""
    url, levels, _ = noise_store
    fill(small_tmpfs)
    log_file = tmp_path / "daemon.log"
    with mounted(url, tmp_path / "mnt", "--cache-dir", str(small_tmpfs / "cache"),
                 "--log-file", str(log_file)) as mnt:
        assert scroll(mnt, levels, planes=range(0, 48, 2)) == 24
        counters = stats(mnt)
        assert counters["disk_hits"] == counters["disk_misses"] == 0, "no disk tier"
        assert counters["disk_write_failures"] == 0 and counters["errors"] == 0
    lines = log_lines(log_file, "serving without a disk cache")
    assert len(lines) == 1, log_file.read_text()
    assert "for writing: its file system is full" in lines[0]
    assert "Traceback" not in log_file.read_text()


@pytest.mark.integration
def test_cache_folder_removed_mid_scroll(tmp_path, noise_store):
    """`rm -rf` of the cache folder while four readers scroll from it: every read succeeds
    and is exact, the tier makes the folder again (logged once) and fills it anew, and the
    log stays a few lines long."""
    url, levels, _ = noise_store
    cache = tmp_path / "cache"
    log_file = tmp_path / "daemon.log"
    args = ("--cache-dir", str(cache), "--log-file", str(log_file), "--memory-cache", "1M")
    with mounted(url, tmp_path / "mnt", *args) as mnt:  # warm the disk cache
        scroll(mnt, levels)
        pid = daemon_pid(mnt)
    wait_gone(pid)
    warm = indexed_entries(cache)
    assert warm >= 96
    with mounted(url, tmp_path / "mnt", *args) as mnt:
        scroll(mnt, levels, planes=range(0, 16))
        assert stats(mnt)["disk_hits"] > 0
        # Readers keep going while the folder goes.
        removed = threading.Event()

        def remove():
            time.sleep(0.05)
            # A write already under way may land in a folder rm has emptied ("Directory not
            # empty"): as an operator would, run rm again; the daemon must not refill it.
            for _ in range(3):
                result = subprocess.run(["rm", "-rf", str(cache)], capture_output=True, text=True)
                if result.returncode == 0:
                    break
            assert result.returncode == 0, result.stderr
            removed.set()

        remover = threading.Thread(target=remove)
        remover.start()
        scroll(mnt, levels, planes=range(16, 48))
        remover.join()
        assert removed.is_set()
        deadline = time.monotonic() + 30
        while not (cache / "cache.db").exists() and time.monotonic() < deadline:
            scroll(mnt, levels, planes=range(0, 48))  # after the removal, all of it again
        scroll(mnt, levels, planes=range(0, 48))
        counters = stats(mnt)
        assert counters["errors"] == 0
        pid = daemon_pid(mnt)
    wait_gone(pid)
    text = log_file.read_text()
    assert "Traceback" not in text and "EIO" not in text
    assert len(log_lines(log_file, "was removed while in use: going on without it")) == 1, text
    assert len(log_lines(log_file, "made again, in use")) == 1, text
    assert len(text.splitlines()) < 20, text
    # Made again, and written again: the chunks read since are in the new folder.
    assert cache.is_dir()
    assert_no_stray_files(cache)
    assert indexed_entries(cache) > 0


# -- without FUSE ---------------------------------------------------------------------------


def test_throttled_log_logs_once_then_counts(caplog):
    now = [0.0]
    trouble = ThrottledLog(logging.getLogger("ngffmount.test"), every=300, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ngffmount.test"):
        assert trouble.report("full", "disk %s is full", "/c")
        for _ in range(500):
            now[0] += 0.1
            assert not trouble.report("full", "disk %s is full", "/c")
        assert trouble.report("other", "something else")
        now[0] = 301.0
        assert trouble.report("full", "disk %s is full", "/c")
        now[0] = 302.0
        trouble.report("full", "disk %s is full", "/c")
        trouble.ended("full", "disk %s has room", "/c")
        assert not trouble.active("full")
        assert trouble.report("full", "disk %s is full", "/c")
    assert [r.getMessage() for r in caplog.records] == [
        "disk /c is full",
        "something else",
        "disk /c is full (501 times in the last 301 s)",
        "disk /c has room (after 1 more times)",
        "disk /c is full",
    ]


def test_failed_entry_write_leaves_no_file(tmp_path, monkeypatch):
    disk = DiskCache(str(tmp_path / "cache"))
    calls = []

    def no_space(fd, data, offset=0):
        calls.append(offset)
        if len(calls) > 1:  # the first part lands, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        os.pwrite(fd, bytes(data), offset)

    monkeypatch.setattr(disk_module, "_write_all", no_space)
    monkeypatch.setattr(disk_module, "_write_direct", lambda *a: False)
    assert disk.put("k", bytes(1 << 20)) is False
    assert entry_files(tmp_path / "cache") == set()
    assert "k" not in disk


def test_full_file_system_evicts_and_keeps_serving(small_tmpfs, caplog):
    """Entries bigger than the file system can hold, small ones (in SQLite) and large ones
    (files): every put answers, every get is exact or a miss, one line is logged."""
    disk = DiskCache(str(small_tmpfs / "cache"), size_limit=10 << 30)
    rng = np.random.default_rng(3)
    written = {}
    with caplog.at_level(logging.INFO, logger="ngffmount"):
        for i in range(200):
            data = rng.integers(0, 256, 100_000 if i % 3 else 20_000, dtype=np.uint8).tobytes()
            if disk.put(f"k{i}", data):
                written[f"k{i}"] = data
            assert disk.get(f"k{i}") in (None, data)
    assert len(written) > 150, "eviction made room for most writes"
    kept = {k for k, v in written.items() if disk.get(k) == v}
    assert len(kept) > 10 and all(disk.get(k) in (None, written[k]) for k in written)
    assert disk.volume() < 4 << 20
    full = [r.getMessage() for r in caplog.records if FULL_LINE in r.getMessage()]
    assert len(full) == 1, full
    disk.close()
    assert_no_stray_files(small_tmpfs / "cache")


def test_full_file_system_with_nothing_to_evict_pauses_writes(small_tmpfs, caplog, monkeypatch):
    disk = DiskCache(str(small_tmpfs / "cache"))
    fill(small_tmpfs)
    with caplog.at_level(logging.INFO, logger="ngffmount"):
        assert disk.put("a", bytes(200_000)) is False
        assert disk._paused_until > time.monotonic() + 20
        for i in range(50):
            assert disk.put(f"b{i}", bytes(200_000)) is False  # paused: not even tried
        (small_tmpfs / "filler").unlink()
        monkeypatch.setattr(disk, "_paused_until", 0.0)  # 30 s later:
        monkeypatch.setattr(disk, "_review_at", 0.0)
        assert disk.put("c", bytes(200_000)) is True
        assert disk.get("c") == bytes(200_000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert FULL_LINE in lines[0] and "not writing for 30 s" in lines[0]
    assert "has room again" in lines[1] and lines[1].endswith("(after 50 more times)"), lines[1]
    assert_no_stray_files(small_tmpfs / "cache")


def test_cache_on_a_full_file_system_cannot_be_opened(small_tmpfs):
    fill(small_tmpfs)
    with pytest.raises(CacheUnavailable, match="for writing: its file system is full"):
        DiskCache(str(small_tmpfs / "cache"))


def test_cache_commands_on_a_full_folder_with_nothing_to_evict(small_tmpfs):
    """Entries kept inside SQLite only, and the file system full of other files: nothing to
    evict, the database cannot be opened; `cache info` still reads it, `cache clear` removes it."""
    cache = small_tmpfs / "cache"
    disk = DiskCache(str(cache))
    for i in range(60):
        disk.put(f"k{i}", bytes([i]) * 20_000)
    assert len(disk) == 60
    disk.close()
    fill(small_tmpfs)
    info = ngffmount_cmd("cache", "info", "--cache-dir", str(cache))
    assert "entries    60" in info.stdout and "full" in info.stdout, info.stdout
    cleared = ngffmount_cmd("cache", "clear", "--cache-dir", str(cache))
    assert cleared.stdout.startswith(f"removed 60 entries from {cache} (cannot open"), cleared.stdout
    assert "removed its database and files" in cleared.stdout and cleared.stderr == ""
    assert not (cache / "cache.db").exists()
    (small_tmpfs / "filler").unlink()
    fresh = DiskCache(str(cache))  # a mount makes it again
    assert len(fresh) == 0 and fresh.put("k", b"x")


def test_removed_folder_is_made_again(tmp_path, caplog):
    """Lookups from threads that never used the cache (new SQLite connections) and from the
    thread that did: no exception, misses, then the folder made again and written."""
    cache = tmp_path / "cache"
    disk = DiskCache(str(cache))
    disk.put("a", bytes(100_000))
    disk.put("s", b"small")
    assert disk.get("a") == bytes(100_000)
    shutil.rmtree(cache)
    answers = []
    with caplog.at_level(logging.INFO, logger="ngffmount"):
        def lookup():
            answers.append(("a" in disk, disk.get("a"), "s" in disk))

        for _ in range(3):
            t = threading.Thread(target=lookup)
            t.start()
            t.join()
        lookup()
        assert disk.put("b", bytes(100_000)) is True
    assert answers == [(False, None, False)] * 4
    assert disk.get("b") == bytes(100_000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "was removed while in use: going on without it" in lines[0] and "made again, in use" in lines[1]
    assert (cache / "fetch.lock").exists()
    assert_no_stray_files(cache)


def test_folder_still_there_without_its_database_waits_before_it_is_made_again(tmp_path, caplog):
    """Only the database gone (an `rm -rf` at work, say): no new files meet it for a while."""
    cache = tmp_path / "cache"
    disk = DiskCache(str(cache))
    disk.put("a", bytes(100_000))
    for name in os.listdir(cache):
        if name.startswith("cache.db"):
            os.unlink(cache / name)
    with caplog.at_level(logging.INFO, logger="ngffmount"):
        for i in range(10):
            assert disk.put(f"k{i}", bytes(100_000)) is False and disk.get("a") is None
        assert not (cache / "cache.db").exists() and len(entry_files(cache)) == 1
        disk._gone_since -= disk_module.GONE_WAIT_S
        disk._retry_at = 0.0
        assert disk.put("b", bytes(100_000)) is True
    assert disk.get("b") == bytes(100_000)
    assert len(caplog.records) == 2, [r.getMessage() for r in caplog.records]


def test_folder_that_cannot_be_made_again_is_gone_without(tmp_path, caplog):
    parent = tmp_path / "parent"
    cache = parent / "cache"
    disk = DiskCache(str(cache))
    disk.put("a", bytes(100_000))
    shutil.rmtree(parent)
    parent.write_text("a file where the folder was")
    with caplog.at_level(logging.INFO, logger="ngffmount"):
        for i in range(20):
            assert disk.put(f"k{i}", bytes(100)) is False
            assert disk.get("a") is None and "a" not in disk
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # removed, then cannot be made again: once each
    assert "cannot be made again" in lines[1] and "going on without it" in lines[1]


def test_engine_reads_on_after_the_folder_goes(tmp_path):
    """Chunks the engine saw on disk, then gone with their folder: fetched from the source."""
    path = tmp_path / "noise.zarr"
    data = np.random.default_rng(1).integers(0, 65535, (8, 128, 128), dtype=np.uint16)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 128, 128))
    level = open_source(str(path)).levels[0]
    cache = tmp_path / "cache"
    warm = ChunkEngine(disk=DiskCache(str(cache)), memory_bytes=0)
    read_region(warm, level, (0, 0, 0), (8, 128, 128))
    warm.flush_disk()
    engine = ChunkEngine(disk=DiskCache(str(cache)), memory_bytes=0, decode_threads=4)
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (4, 128, 128)), data[:4])
    shutil.rmtree(cache)
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (8, 128, 128)), data)
    engine.flush_disk()
    assert engine.stats.snapshot()["errors"] == 0
    assert indexed_entries(cache) == 8
