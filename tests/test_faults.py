"""Remote faults: reads through a fault-injecting loopback proxy (tests/faults.py) are
byte-identical, or fail cleanly (ChunkReadError, EIO) within the timeout once the retries
are spent. Nothing partial is ever returned or cached."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import diskcache
import numpy as np
import pytest
import tifffile
import zarr

from conftest import mounted
from faults import FaultyProxy
from zarr_fixtures import pattern, write_ome_zarr

from ngffmount.adapters.errors import ChunkReadError
from ngffmount.adapters.storage import TRANSFERS, RangeRequest, Store, storage_options_for
from ngffmount.cache.disk import DiskCache

pytestmark = pytest.mark.integration

MIXED = dict(error=0.07, reset=0.06, truncate=0.05, short=0.04, delay_rate=0.03)  # 25% of requests


@pytest.fixture(scope="module")
def blobs(http_server):
    """Objects of many sizes under /blobs on the origin."""
    rng = random.Random(7)
    root = http_server.www / "blobs"
    root.mkdir(exist_ok=True)
    out = {}
    for i in range(60):
        data = rng.randbytes(rng.choice([1, 17, 300, 4096, 20_000, 70_000]) + i)
        (root / f"k{i}").write_bytes(data)
        out[f"k{i}"] = data
    return out


def ranges_for(data: bytes) -> list[tuple[RangeRequest, bytes]]:
    """Ranges inside the object, a suffix, and one that runs past its end (a legal short answer)."""
    n = len(data)
    return [(RangeRequest("", n // 3, n // 3 + max(1, n // 4)), data[n // 3:n // 3 + max(1, n // 4)]),
            (RangeRequest("", -min(n, 40)), data[-min(n, 40):]),
            (RangeRequest("", max(0, n - 5), n + 100), data[max(0, n - 5):])]


def read_everything(store: Store, blobs: dict, workers: int = 8) -> dict[str, str]:
    """Read every object whole and in ranges, concurrently. Returns {key: error} for the failures;
    anything returned must be exact."""

    def one(key):
        data = blobs[key]
        try:
            assert store.get(key) == data
            reqs = ranges_for(data)
            got = store.get_ranges([RangeRequest(key, r.start, r.end) for r, _ in reqs])
            assert got == [want for _, want in reqs], f"{key}: wrong bytes {[len(g) for g in got]}"
        except ChunkReadError as exc:
            return key, str(exc)
        return key, None

    with ThreadPoolExecutor(workers) as pool:
        return {k: e for k, e in pool.map(one, blobs) if e is not None}


def assert_clean_failures(failed: dict, total: int):
    # At 25% faults, 5 attempts all fail for about 1 request in 1000: allow a few, only "spent".
    assert len(failed) <= max(2, total // 50), failed
    for msg in failed.values():
        assert "gave up" in msg or "no complete answer" in msg, msg


def test_http_store_through_25_percent_faults(http_server, blobs):
    with FaultyProxy(http_server.url, seed=11, delay=1.0, **MIXED) as proxy:
        url = proxy.url + "/blobs"
        store = Store(url, storage_options_for(url, timeout=3.0))
        assert (store.timeout, store.retries, store.attempt_timeout) == (3.0, 5, 0.75)
        before = TRANSFERS.retries
        failed = read_everything(store, blobs)
        assert_clean_failures(failed, 4 * len(blobs))
        assert proxy.faults >= 0.15 * proxy.requests
        assert all(proxy.counts[k] > 0 for k in ("error", "reset", "truncate", "short", "delay")), proxy.counts
        # aiohttp silently resends once when a kept-alive connection drops: fewer retries than faults.
        assert 0.3 * proxy.faults <= TRANSFERS.retries - before <= proxy.faults


def test_s3_store_through_25_percent_faults(tmp_path, s3_server, blobs):
    keys = dict(list(blobs.items())[:16])
    for key, data in keys.items():
        (tmp_path / "up" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "up" / key).write_bytes(data)
    s3_server.upload_dir(tmp_path / "up", "faulty", "blobs", public=True)
    with FaultyProxy(s3_server.endpoint_url, seed=5, delay=1.5, **MIXED) as proxy:
        url = "s3://faulty/blobs"
        store = Store(url, storage_options_for(url, anon=True, endpoint_url=proxy.url, timeout=5.0))
        assert store.fs.retries == 1, "s3fs's own retry loop is off"
        before = TRANSFERS.retries
        failed = read_everything(store, keys, workers=5)
        assert_clean_failures(failed, 4 * len(keys))
        assert proxy.faults >= 0.15 * proxy.requests and TRANSFERS.retries > before
        # Not found is an answer, not a fault: one HEAD (+ a listing probe by s3fs), no retries.
        proxy.set_rates()
        proxy.reset_counters()
        assert store.get("nope") is None and proxy.counts["requests"] <= 2
        # botocore's and s3fs's own retries are off: a 503 costs exactly our 5 attempts.
        proxy.fail_permanently("/faulty/blobs/k1", 503)
        with pytest.raises(ChunkReadError, match=r"gave up \(5 attempts"):
            store.get_ranges([RangeRequest("k1", 0, 10)])
        assert proxy.requests_for("/faulty/blobs/k1") == 5


def test_permanent_faults_fail_within_the_timeout(http_server, blobs):
    """One path per fault kind fails for good: each read ends in ChunkReadError, after the
    retry budget (5 attempts) or at the deadline (delays), never later than the timeout."""
    timeout = 2.0
    kinds = {"error": "k40", "reset": "k41", "truncate": "k42", "short": "k43", "delay": "k44"}
    with FaultyProxy(http_server.url, seed=1, delay=timeout * 2) as proxy:
        url = proxy.url + "/blobs"
        store = Store(url, storage_options_for(url, timeout=timeout))
        for kind, key in kinds.items():
            proxy.fail_permanently(f"/blobs/{key}", kind)

        def read(kind):
            key = kinds[kind]
            started = time.monotonic()
            with pytest.raises(ChunkReadError) as exc:
                # "short" only bites on ranges; the batch's healthy request must not hide the failure
                store.get_ranges([RangeRequest("k1", 0, 10), RangeRequest(key, 10, 1000)])
            return kind, str(exc.value), time.monotonic() - started

        before = TRANSFERS.retries
        with ThreadPoolExecutor(len(kinds)) as pool:
            results = list(pool.map(read, kinds))
        for kind, message, elapsed in results:
            assert kinds[kind] in message, message
            assert elapsed < timeout + 0.5, f"{kind}: failed after {elapsed:.1f} s"
            if kind == "delay":
                assert "no complete answer within 2 s" in message or "gave up" in message, message
            else:
                assert "gave up (5 attempts" in message, message
        assert TRANSFERS.retries - before >= 4 * 4 + 1
        # healed, the same store reads them exactly
        proxy.heal()
        got = store.get_ranges([RangeRequest(key, 10, 1000) for key in kinds.values()])
        assert got == [blobs[key][10:1000] for key in kinds.values()]


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(http_server, blobs, status):
    with FaultyProxy(http_server.url) as proxy:
        url = proxy.url + "/blobs"
        store = Store(url, storage_options_for(url, timeout=5.0))
        proxy.fail_permanently("/blobs/k3", status)
        started = time.monotonic()
        if status == 404:
            assert store.get("k3") is None
        else:
            with pytest.raises(ChunkReadError, match=str(status)):
                store.get("k3")
        assert proxy.requests_for("/blobs/k3") == 1 and time.monotonic() - started < 1


def test_truncated_bodies_never_yield_short_data(http_server, blobs):
    """A third of all answers cut short, both ways (broken connection, and a well-formed but
    short 206): every read is still exact, given attempts enough."""
    with FaultyProxy(http_server.url, seed=5, truncate=0.17, short=0.17) as proxy:
        url = proxy.url + "/blobs"
        store = Store(url, storage_options_for(url, timeout=20.0), retries=20)
        keys = dict(list(blobs.items())[:30])
        assert read_everything(store, keys) == {}
        assert proxy.counts["truncate"] > 10 and proxy.counts["short"] > 10
        with_short = Store(url, storage_options_for(url, timeout=2.0), retries=3)
        proxy.set_rates()
        proxy.fail_permanently("/blobs/k30", "short")
        with pytest.raises(ChunkReadError, match="IncompleteBody"):
            with_short.get_ranges([RangeRequest("k30", 0, 1000)])


def test_blocking_filesystem_path_retries_too(http_server, blobs):
    """A filesystem without async support (fsspec's requests-based HTTP) goes through the
    thread pool (`Store._fetch_sync`) under the same policy."""
    import fsspec.implementations.http_sync as http_sync

    http_sync.unregister()  # importing it took over http://; keep only sync-http:// for it
    try:
        with FaultyProxy(http_server.url, seed=2, delay=1.5, **MIXED) as proxy:
            url = "sync-" + proxy.url + "/blobs"
            store = Store(url, storage_options_for(url, timeout=4.0), concurrency=8)
            assert not store._is_async
            keys = dict(list(blobs.items())[:20])
            failed = read_everything(store, keys, workers=4)
            assert_clean_failures(failed, 4 * len(keys))
            assert proxy.faults >= 0.15 * proxy.requests
            proxy.set_rates()
            proxy.fail_permanently("/blobs/k2", "reset")
            started = time.monotonic()
            with pytest.raises(ChunkReadError, match="gave up"):
                store.get("k2")
            assert time.monotonic() - started < 4.5
    finally:
        http_sync.unregister()


# -- a real mount ----------------------------------------------------------------------

PLANE = re.compile(r"(?:t\d+_)?c(\d+)_z(\d+)\.tif$")


def read_planes(mnt, ref, levels) -> int:
    n = 0
    for lvl in range(levels):
        arr = ref[str(lvl)][...]
        names = sorted(os.listdir(mnt / f"s{lvl}"))
        assert len(names) == arr.shape[0] * arr.shape[1]
        for name in names:
            c, z = map(int, PLANE.search(name).groups())
            np.testing.assert_array_equal(tifffile.imread(mnt / f"s{lvl}" / name), arr[c, z], err_msg=name)
            n += 1
    return n


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_mount_through_faulty_proxy(tmp_path, http_server, cache_args, version):
    """Whole chunks (0.4) and byte ranges of shards (0.5), through >= 10% faults."""
    name = f"faulty-{version}.zarr"
    data = pattern((2, 6, 96, 96), "uint16", seed=4)
    write_ome_zarr(tmp_path / name, data, "czyx", version=version, levels=2, chunks=(1, 1, 32, 32),
                   shards=(1, 2, 64, 64) if version == "0.5" else None)
    shutil.copytree(tmp_path / name, http_server.www / name)
    ref = zarr.open_group(f"{http_server.url}/{name}", mode="r")  # zarr-python, from the origin
    timeout = 3.0
    with FaultyProxy(http_server.url, seed=9, delay=1.2, error=0.05, reset=0.03, truncate=0.03,
                     short=0.02, delay_rate=0.02) as proxy:
        url = f"{proxy.url}/{name}"
        # The chunk (0.4) or shard (0.5) holding plane c=1, z=2 of level 0 fails for good.
        broken = f"/{name}/0/1/2/0/0" if version == "0.4" else f"/{name}/0/c/1/1/0/0"
        proxy.fail_permanently(broken, "error")
        with mounted(url, tmp_path / "mnt", "--timeout", str(timeout), *cache_args) as mnt:
            started = time.monotonic()
            with pytest.raises(OSError) as exc:
                (mnt / "s0" / "t00000_c001_z00002.tif").read_bytes()
            elapsed = time.monotonic() - started
            assert exc.value.errno == errno.EIO
            # The kernel may retry a failed page once: at most two request budgets.
            assert elapsed < 2 * timeout, f"EIO after {elapsed:.1f} s"
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / "t00000_c001_z00004.tif"), data[1, 4])
            proxy.heal()
            assert read_planes(mnt, ref, 2) == 24
            pid = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]
        wait_gone(pid)  # the daemon writes the disk cache in the background, finishing before exit
        assert proxy.counts["permanent"] >= 5
        assert proxy.faults - proxy.counts["permanent"] >= 0.10 * proxy.requests, proxy.counts

        # Nothing partial was cached: every entry is a whole chunk of the origin ...
        assert_cache_holds_whole_chunks(cache_args[1], http_server.www / name, version)
        # ... and a remount reads every plane again, from the disk cache alone.
        proxy.set_rates()
        proxy.reset_counters()
        with mounted(url, tmp_path / "mnt", "--timeout", str(timeout), *cache_args) as mnt:
            assert read_planes(mnt, ref, 2) == 24
        metadata = (".", "zarr.json", "attributes.json")
        # The store's own URL is probed too: a BigDataViewer server answers it with its XML.
        chunk_requests = [p for _, p, _, _ in proxy.log
                          if not p.rsplit("/", 1)[-1].startswith(metadata) and p.rstrip("/") != f"/{name}"]
        assert chunk_requests == []


def wait_gone(pid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"daemon {pid} still running after unmount"


def assert_cache_holds_whole_chunks(cache_dir, origin, version):
    with diskcache.Cache(cache_dir) as raw:
        keys = list(raw.iterkeys())
    assert len(keys) == 2 * 6 * 9 + 2 * 6 * 4  # every chunk of both levels, once
    cache = DiskCache(cache_dir, size_limit=None)
    for key in keys:
        data = cache.get(key)  # checks the entry's checksum
        chunk_key = key.split("/", 1)[1]
        candidates = [whole_chunk(origin / level, chunk_key, version) for level in ("0", "1")]
        assert data in candidates, f"{key}: {len(data)} bytes match no chunk of the origin"
    cache.close()


def whole_chunk(level_dir, chunk_key: str, version: str) -> bytes | None:
    """The encoded bytes of one chunk at the origin (an inner chunk of a shard for 0.5)."""
    if version == "0.4":
        path = level_dir / chunk_key
        return path.read_bytes() if path.exists() else None
    shard_key, inner = chunk_key.split("#")
    path = level_dir / shard_key
    if not path.exists():
        return None
    shard = path.read_bytes()
    arr = zarr.open_array(str(level_dir), mode="r")
    per = [s // c for s, c in zip(arr.shards, arr.chunks)]
    n = int(np.prod(per))
    index = np.frombuffer(shard[-(16 * n + 4):-4], "<u8").reshape(n, 2)
    offset, nbytes = index[np.ravel_multi_index(tuple(int(i) for i in inner.split(".")), per)]
    return shard[int(offset):int(offset + nbytes)]
