"""The disk cache's bookkeeping across processes: the in-memory index of what is on disk
(misses ask nothing of SQLite, yet another daemon's adds and evictions are seen), and
batched writes (one SQLite transaction per batch) under a real kill -9."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from test_writeback import wait_for

from ngffmount.cache import disk as disk_module
from ngffmount.cache.disk import DiskCache


def payload(key: str, size: int = 200_000) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


# Another daemon on the same folder: a real process that runs the lines it is sent.
OTHER = r"""
import hashlib, sys
from ngffmount.cache.disk import DiskCache

def payload(key, size):
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]

disk = DiskCache(sys.argv[1], int(sys.argv[2]))
print("ready", flush=True)
for line in sys.stdin:
    op, *keys = line.split()
    if op == "put":
        assert disk.put_many([(key, payload(key, 200_000), {"etag": "e"}) for key in keys]) == [True] * len(keys)
    elif op == "delete":
        for key in keys:
            disk.delete(key)
    print("done", flush=True)
"""


class Other:
    def __init__(self, folder, size_limit: int = 10 << 30):
        self.proc = subprocess.Popen([sys.executable, "-c", OTHER, str(folder), str(size_limit)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, *words: str) -> None:
        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "done"

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def rows(folder) -> set[str]:
    con = sqlite3.connect(f"file:{folder}/cache.db?mode=ro", uri=True)
    try:
        return {key for (key,) in con.execute("SELECT key FROM Cache")}
    finally:
        con.close()


def test_a_miss_asks_nothing_of_sqlite(tmp_path, monkeypatch):
    disk = DiskCache(str(tmp_path / "cache"))
    assert disk.put("here", payload("here"))
    assert "elsewhere" not in disk  # the index is read (and refreshed) once
    monkeypatch.setattr(disk_module, "INDEX_REFRESH_S", 3600.0)
    statements = []
    disk._cache._con.set_trace_callback(statements.append)
    for i in range(100):
        assert f"missing/{i}" not in disk
        assert disk.get(f"missing/{i}") is None
    assert statements == []
    assert disk.get("here") == payload("here")
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT"), statements
    disk.close()


def test_hits_keep_least_recently_used_eviction_without_a_write_each(tmp_path, monkeypatch):
    """Hits only read; their access times are written later, in one statement, and the
    size bound still evicts the least recently used entries first."""
    disk = DiskCache(str(tmp_path / "cache"), size_limit=6 << 20)
    for i in range(20):  # diskcache evicts 10 at a time: more than that stay behind k0
        assert disk.put(f"k{i}", payload(f"k{i}"))
    statements = []
    disk._cache._con.set_trace_callback(statements.append)
    assert disk.get("k0") == payload("k0")  # the oldest entry, used again
    assert statements and all(s.split()[0].upper() == "SELECT" for s in statements), statements
    disk._cache._con.set_trace_callback(None)
    i = 20
    while "k1" in rows(tmp_path / "cache"):  # until the bound evicts
        assert disk.put(f"k{i}", payload(f"k{i}"))
        i += 1
        assert i < 100
    assert "k0" in rows(tmp_path / "cache"), "evicted although used more recently than k1"
    disk.close()


def test_lookups_wait_until_the_index_is_read(tmp_path):
    """At a mount's start many fetch threads look up at once: while one reads the index,
    the others wait for it instead of answering "not here" (a fetch from the source)."""
    folder = tmp_path / "cache"
    disk = DiskCache(str(folder))
    assert disk.put("k", payload("k"))
    disk.close()
    disk = DiskCache(str(folder))
    answers = []
    threads = [threading.Thread(target=lambda: answers.append("k" in disk)) for _ in range(4)]
    with disk.index._lock:  # as a thread reading the index holds it
        for thread in threads:
            thread.start()
        time.sleep(0.2)
        assert answers == []
    for thread in threads:
        thread.join()
    assert answers == [True] * 4
    disk.close()


def test_index_sees_another_daemons_adds_and_evictions(tmp_path):
    """Another process on the folder adds entries (seen within INDEX_REFRESH_S, exact), then
    evicts this one's entries through its size bound: a lookup of an evicted entry is a
    clean miss at once, and the index drops them all soon after."""
    folder = tmp_path / "cache"
    disk = DiskCache(str(folder))
    mine = [f"mine/{i}" for i in range(6)]
    assert disk.put_many([(key, payload(key), None) for key in mine]) == [True] * 6
    theirs = [f"theirs/{i}" for i in range(4)]
    assert not any(key in disk for key in theirs)
    other = Other(folder)
    try:
        other.run("put", *theirs)
        assert wait_for(lambda: all(key in disk for key in theirs), 5.0), "the index never saw them"
        assert all(disk.get_entry(key) == (payload(key), {"etag": "e"}) for key in theirs)
        other.close()

        # Room for 8 entries: the other daemon's next puts evict this one's (least recently used).
        other = Other(folder, size_limit=8 * 200_000 + 200_000)
        more = [f"theirs/{i}" for i in range(4, 10)]
        other.run("put", *more)
        evicted = [key for key in mine if key not in rows(folder)]
        assert len(evicted) >= 4, sorted(rows(folder))
        assert all(key in disk for key in evicted), "the index has not been told yet"
        assert disk.get(evicted[0]) is None  # a false hit falls back to a miss
        assert evicted[0] not in disk
        assert wait_for(lambda: not any(key in disk for key in evicted), disk_module.INDEX_RELOAD_S + 5)
        kept = rows(folder)
        assert all(key in disk for key in kept), "a reload of the index keeps what is there"
        assert all(disk.get(key) == payload(key) for key in kept)

        # Deleted by the other daemon: a clean miss, then forgotten.
        other.run("delete", "theirs/9")
        assert disk.get("theirs/9") is None and "theirs/9" not in disk
    finally:
        if other.proc.poll() is None:
            other.close()
        disk.close()


def test_index_sees_another_daemons_put_at_once(tmp_path, monkeypatch):
    """Another daemon's committed entry is known at the very next lookup, with no wait for a
    timed refresh: its daemon may have let go of the chunk's fetch lock an instant ago, and a
    lookup that missed it would fetch the chunk from the source again."""
    folder = tmp_path / "cache"
    disk = DiskCache(str(folder))
    assert "theirs/0" not in disk  # the index is read, and fresh
    monkeypatch.setattr(disk_module, "INDEX_REFRESH_S", 3600.0)
    other = Other(folder)
    try:
        other.run("put", "theirs/0")
        assert "theirs/0" in disk
        assert disk.get_entry("theirs/0") == (payload("theirs/0"), {"etag": "e"})
        statements = []
        disk._cache._con.set_trace_callback(statements.append)
        assert "missing" not in disk  # nothing changed since: a miss asks nothing of SQLite
        assert statements == []
        other.run("put", "theirs/1")
        assert disk.get_entry("theirs/1") == (payload("theirs/1"), {"etag": "e"})
    finally:
        other.close()
        disk.close()


def test_two_processes_claiming_one_key_find_each_others_bytes(tmp_path):
    """The fetch lock held by another daemon: once it lets go, its entry is found at once,
    although the index would only see it at its next refresh."""
    from ngffmount.cache.disktier import DiskTier
    from ngffmount.cache.stats import Stats

    folder = tmp_path / "cache"
    tier = DiskTier(DiskCache(str(folder)))
    tier.attach(Stats(), lambda key, data: False)
    assert not tier.holds("k")  # the index is fresh: the next refresh is INDEX_REFRESH_S away
    holder = subprocess.Popen([sys.executable, "-c", r"""
import sys, time
from ngffmount.cache.disk import DiskCache
disk = DiskCache(sys.argv[1])
slots = disk.locks.slots(["k"])
disk.locks.acquire(slots)
print("holding", flush=True)
time.sleep(0.3)
disk.put("k", b"theirs" * 10_000)
disk.locks.release(slots)
""", str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    disk_module.INDEX_REFRESH_S, saved = 3600.0, disk_module.INDEX_REFRESH_S
    try:
        claim = tier.claim("k")
        assert tier.get("k") == (b"theirs" * 10_000, None)
        tier.release(claim)
    finally:
        disk_module.INDEX_REFRESH_S = saved
    assert holder.wait(30) == 0
    tier.disk.close()


# A daemon writing batches, slowed down inside each batch: it says what of its batch's file
# it has just written (each entry's head and data, then the whole file), so the test can
# kill it while the file is written, or between the file and the commit.
WRITER = r"""
import hashlib, sys, time
from ngffmount.cache import disk as disk_module

def payload(key, size):
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]

pause = float(sys.argv[2])
write_all, write_file = disk_module._write_all, disk_module._write_entry_file

def slow_write_all(fd, data, offset=0):
    write_all(fd, data, offset)
    print("part", flush=True)
    time.sleep(pause)

def slow_write_file(path, parts):
    size = write_file(path, parts)
    print("file", flush=True)
    time.sleep(pause)
    return size

disk_module._write_direct = lambda *args: False  # part by part
disk_module._write_all, disk_module._write_entry_file = slow_write_all, slow_write_file
disk = disk_module.DiskCache(sys.argv[1])
for b in range(1000):  # batch 3 rewrites batch 0's keys, 4 batch 1's...
    print(f"batch {b}", flush=True)
    keys = [f"k{b % 3}/{i}" for i in range(16)]
    assert disk.put_many([(key, payload(f"{key}@{b}", 300_000), {"etag": str(b)}) for key in keys]) == [True] * 16
"""


def batch_of(disk, group: int) -> int | None:
    """The batch whose 16 entries `group` holds, each exact; None when it holds none."""
    entries = [disk.get_entry(f"k{group}/{i}") for i in range(16)]
    if entries == [None] * 16:
        return None
    assert None not in entries, f"group {group}: some entries missing"
    (etag,) = {meta["etag"] for _, meta in entries}
    assert all(data == payload(f"k{group}/{i}@{etag}", 300_000) for i, (data, _) in enumerate(entries))
    return int(etag)


def entry_files(folder) -> list[str]:
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names if name.endswith(".val")]


@pytest.mark.parametrize("kill_at", [("part", 1), ("part", 17), ("file", 1)])
def test_batched_writes_survive_kill_9_mid_batch(tmp_path, kill_at):
    """kill -9 while a batch that rewrites older entries has its file written (part of it,
    or all of it, not yet committed): the older entries stay whole and exact, the folder
    opens and works, and `clear` removes the file the killed batch left."""
    folder = tmp_path / "cache"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), "0.01"], stdout=subprocess.PIPE, text=True)
    what, when = kill_at
    seen = None  # of batch 3
    for line in writer.stdout:
        if line.startswith("batch 3"):
            seen = 0
        elif line.startswith(what) and seen is not None:
            seen += 1
            if seen == when:
                break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    disk = DiskCache(str(folder))
    try:
        assert [batch_of(disk, group) for group in range(3)] == [0, 1, 2], "batch 3 was never committed"
        assert len(rows(folder)) == 48
        assert len(entry_files(folder)) == 3 + 1  # a file per batch, and the killed one's, named by nothing
        assert disk.put("after", payload("after")) and disk.get("after") == payload("after")
        assert disk.clear() == 49
        assert entry_files(folder) == []
    finally:
        disk.close()


def test_batched_writes_killed_at_random_times(tmp_path):
    """kill -9 at any moment, four times over on one folder: every group of entries holds
    one whole batch, exact."""
    folder = tmp_path / "cache"
    for delay in (0.0, 0.013, 0.027, 0.041):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), "0"], stdout=subprocess.PIPE, text=True)
        for line in writer.stdout:
            if line.startswith("batch 2"):
                break
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(30)
    disk = DiskCache(str(folder))
    try:
        assert None not in [batch_of(disk, group) for group in range(3)]
    finally:
        disk.close()


def test_a_folder_laid_out_by_the_previous_version_reads_and_clears(tmp_path):
    """The previous version put entry files two folders deep (diskcache's own layout); rows
    name their files, so those entries read as they are, are replaced and cleared."""
    folder = tmp_path / "cache"
    disk = DiskCache(str(folder))
    keys = [f"old/{i}" for i in range(6)]
    for key in keys:  # a file each, as the previous version wrote them
        disk.put(key, payload(key), {"etag": key})
    disk.close()
    con = sqlite3.connect(folder / "cache.db")
    with con:
        for rowid, name in con.execute("SELECT rowid, filename FROM Cache").fetchall():
            old = os.path.join("ab", "cd", f"{rowid:028x}.val")
            os.makedirs(folder / "ab" / "cd", exist_ok=True)
            os.rename(folder / name, folder / old)
            con.execute("UPDATE Cache SET filename = ? WHERE rowid = ?", (old, rowid))
    con.close()
    disk = DiskCache(str(folder))
    try:
        assert all(key in disk and disk.get_entry(key) == (payload(key), {"etag": key}) for key in keys)
        assert disk.put(keys[0], payload("new"))
        assert disk.get(keys[0]) == payload("new")
        assert len(entry_files(folder / "ab" / "cd")) == 5, "the replaced entry's file is gone"
        assert disk.clear() == 6
        assert entry_files(folder) == [] and not (folder / "ab").exists()
    finally:
        disk.close()


def counted_and_on_disk(folder) -> tuple[int, int]:
    """Bytes the index counts for entries in files, and bytes of entry files on disk."""
    con = sqlite3.connect(f"file:{folder}/cache.db?mode=ro", uri=True)
    try:
        (counted,), = con.execute("SELECT coalesce(sum(size), 0) FROM Cache WHERE filename IS NOT NULL").fetchall()
    finally:
        con.close()
    return counted, sum(os.path.getsize(path) for path in entry_files(folder))


def test_a_batch_shares_one_file_whose_bytes_are_always_counted(tmp_path, monkeypatch):
    """A batch's entries share a file. Replacing one keeps the file's bytes counted; a
    damaged one is a miss (never wrong bytes) and takes its file and file-mates along;
    the size bound holds for the bytes on disk."""
    monkeypatch.setattr(disk_module, "FILE_SHARE", 2)  # files up to 3 MB in this 6 MB cache
    folder = tmp_path / "cache"
    disk = DiskCache(str(folder), size_limit=6 << 20)
    keys = [f"a/{i}" for i in range(8)]
    assert disk.put_many([(key, payload(key), None) for key in keys]) == [True] * 8
    assert len(entry_files(folder)) == 1
    assert disk.put("a/0", payload("new"))
    assert disk.get("a/0") == payload("new") and all(disk.get(key) == payload(key) for key in keys[1:])
    counted, on_disk = counted_and_on_disk(folder)
    assert counted == on_disk and len(entry_files(folder)) == 2

    (shared,) = [path for path in entry_files(folder) if os.path.getsize(path) > 1 << 20]
    with open(shared, "r+b") as f:  # a byte of a/3's data flipped
        f.seek(3 * (len(payload("a/3")) + 5) + 1000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(disk_module.CorruptEntry):
        disk.get("a/3")
    assert all(disk.get(key) is None for key in keys[1:]), "the damaged file's other entries went with it"
    assert not os.path.exists(shared) and disk.get("a/0") == payload("new")
    assert counted_and_on_disk(folder)[0] == counted_and_on_disk(folder)[1]

    for b in range(12):  # 12 batches of 1.6 MB into a 6 MB cache
        batch = [(f"b{b}/{i}", payload(f"b{b}/{i}"), None) for i in range(8)]
        assert disk.put_many(batch) == [True] * 8
        assert disk.put(f"b{b}/0", payload(f"b{b}/0 again"))
        counted, on_disk = counted_and_on_disk(folder)
        assert counted == on_disk <= (6 << 20) + (3 << 20), (b, counted, on_disk)
    disk.close()


def test_a_file_cut_short_is_a_miss_never_wrong_bytes(tmp_path):
    """A batch's file cut in the middle (a torn write the rows were committed for, say):
    an entry before the cut reads exact, one past it is a miss (counted as damaged, and
    its file dropped), and no read gives wrong bytes."""
    from ngffmount.cache.disktier import DiskTier
    from ngffmount.cache.stats import Stats

    folder = tmp_path / "cache"
    tier = DiskTier(DiskCache(str(folder)))
    tier.attach(Stats(), lambda key, data: False)
    keys = [f"t/{i}" for i in range(6)]  # 1.2 MB: one file (the bound is 10 GiB)
    assert tier.disk.put_many([(key, payload(key), None) for key in keys]) == [True] * 6
    (path,) = entry_files(folder)
    os.truncate(path, 4 * (len(payload("t/0")) + 5) + 100)
    assert tier.get("t/0") == (payload("t/0"), None)
    assert tier.get("t/5") is None and tier.stats.snapshot()["disk_corrupt"] == 1
    assert all(tier.get(key) in (None, (payload(key), None)) for key in keys)
    tier.disk.close()


def test_a_file_system_that_refuses_o_direct_still_gets_the_entries(tmp_path, monkeypatch):
    """Where the file system refuses O_DIRECT (tmpfs before Linux 6.6, some FUSE file
    systems), open(O_CREAT | O_EXCL | O_DIRECT) makes the file, then fails with EINVAL.
    The kernel here accepts O_DIRECT everywhere, so that answer is played by a wrapper of
    os.open; the entries must still be written, buffered, and read back exact."""
    real_open = os.open
    refused = []

    def open_without_direct(path, flags, mode=0o777, **kw):
        if flags & disk_module._O_DIRECT and str(path).endswith(".val"):
            os.close(real_open(path, flags & ~disk_module._O_DIRECT, mode, **kw))
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, mode, **kw)

    assert disk_module._O_DIRECT, "O_DIRECT is the point of this test"
    disk = DiskCache(str(tmp_path / "cache"))
    monkeypatch.setattr(os, "open", open_without_direct)
    keys = [f"d/{i}" for i in range(3)]
    assert disk.put_many([(key, payload(key), None) for key in keys]) == [True] * 3
    assert disk.put("d/single", payload("d/single"))
    monkeypatch.undo()
    assert refused, "the wrapper never saw an O_DIRECT open"
    assert all(disk.get(key) == payload(key) for key in keys + ["d/single"])
    assert len(entry_files(tmp_path / "cache")) == 2  # no empty file left behind by the refused opens
    disk.close()


def _switches(tid: int) -> int:
    """Voluntary context switches of one thread of this process so far."""
    for line in open(f"/proc/self/task/{tid}/status"):
        if line.startswith("voluntary_ctxt_switches"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches line")


def test_a_slot_let_go_wakes_only_the_threads_waiting_for_it(tmp_path):
    """A fetch waiting for one chunk's slot sleeps through the hand-offs of all the others
    (during a scroll, every chunk's hand-off woke every waiting fetch thread); it goes on
    as soon as its own slot is let go."""
    from ngffmount.cache.disk import FetchLocks

    locks = FetchLocks(str(tmp_path))
    mine, other = locks.slots(["chunk/0"]), locks.slots(["chunk/1"])
    assert mine != other
    locks.acquire(mine)
    tid, got = [], threading.Event()
    waiter = threading.Thread(target=lambda: (tid.append(threading.get_native_id()), locks.acquire(mine), got.set()),
                              daemon=True)
    waiter.start()
    assert wait_for(lambda: tid, 5)
    time.sleep(0.2)  # asleep in acquire
    before = _switches(tid[0])
    for _ in range(200):  # other chunks fetched, handed to the disk's queue, written
        locks.acquire(other)
        locks.downgrade(other)
        locks.release(other, downgraded=True)
        time.sleep(0.001)  # time for a woken thread to run
    time.sleep(0.05)
    assert _switches(tid[0]) - before < 20, "the waiting thread was woken by other slots' hand-offs"
    assert not got.is_set()
    locks.downgrade(mine)  # queued for the disk: this process's threads may take it
    assert got.wait(5), "the waiting thread was not woken by its own slot"
    locks.release(mine)
    locks.release(mine, downgraded=True)


def test_a_batch_of_new_entries_costs_a_few_sql_statements_not_a_few_per_entry(tmp_path):
    """The disk writer takes the GIL back after every SQL statement, behind the fetch
    threads of a scroll: a batch of 32 newly fetched chunks is one INSERT (and one look for
    keys already there, one eviction pass), not six statements per entry. A key already
    there is replaced as before, and every entry reads back exact."""
    disk = DiskCache(str(tmp_path / "cache"))
    assert disk.put("n/5", payload("old"))
    statements = []
    disk._cache._con.set_trace_callback(statements.append)  # this thread's connection
    keys = [f"n/{i}" for i in range(32)]
    assert disk.put_many([(key, payload(key), None) for key in keys]) == [True] * 32
    disk._cache._con.set_trace_callback(None)
    # (The trace shows an executemany's INSERT once per row.)
    others = [s for s in statements if not s.lstrip().upper().startswith("INSERT INTO CACHE")]
    assert len(others) < 25, f"{len(others)} SQL statements besides the INSERTs for a batch of 32"
    assert all(disk.get(key) == payload(key) for key in keys)
    disk.close()
