"""The shared chunk tier on real Redis servers (tests/redis_servers.py): one server, a
three-node Redis Cluster, TLS; engines as nodes (each with its own disk cache), then real
mounts as nodes in front of a counting proxy and moto."""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest
import tifffile

from conftest import mounted, ngffmount_cmd
from faults import FaultyProxy
from ngffmount.adapters import open_source
from ngffmount.cache.disk import DiskCache
from ngffmount.cache.engine import ChunkEngine
from ngffmount.cache.redis_tier import RedisTier, parse_url
from ngffmount.cache.region import read_region
from redis_servers import PASSWORD, RedisCluster, RedisServer, TLSFiles, password_file
from servers import free_port
from zarr_fixtures import pattern, write_ome_zarr

EVERYTHING = (0, 0, 0), (32, 64, 64)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("shared") / "deep.zarr"
    data = pattern((32, 64, 64), "uint16", seed=4)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(16, 32, 32))  # 8 chunks
    return path, data


@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def counted_level(path, fetched: list, delay: float = 0.0):
    """A level whose source fetches are listed in `fetched` (and take `delay` seconds)."""
    level = open_source(str(path)).levels[0]
    fetch = level.fetch_versioned

    def counting(key, condition=None):
        fetched.append(key)
        time.sleep(delay)
        return fetch(key, condition)

    level.fetch_versioned = counting
    return level


def shared(url: str, prefix: str, **options) -> RedisTier:
    return RedisTier(url, PASSWORD, prefix, **options)


def node(tmp_path, url: str, prefix: str, disk: bool = True, **options) -> ChunkEngine:
    cache = DiskCache(str(tmp_path / f"disk-{uuid.uuid4().hex[:6]}")) if disk else None
    return ChunkEngine(disk=cache, memory_bytes=0, tiers=[shared(url, prefix, **options)])


def test_a_second_node_reads_every_chunk_from_the_shared_tier_and_fills_its_disk(tmp_path, store, redis_server):
    path, data = store
    fetched: list = []
    first = node(tmp_path, redis_server.url, "a")
    np.testing.assert_array_equal(read_region(first, counted_level(path, fetched), *EVERYTHING), data)
    assert first.flush_disk(10)
    assert len(fetched) == 8 and first.stats.snapshot()["shared_misses"] == 8
    assert first.stats.snapshot()["shared_bytes_written"] > 0
    fetched.clear()
    second = node(tmp_path, redis_server.url, "a")
    np.testing.assert_array_equal(read_region(second, counted_level(path, fetched), *EVERYTHING), data)
    second.flush_disk(10)
    s = second.stats.snapshot()
    assert fetched == [] and s["shared_hits"] == 8 and s["disk_misses"] == 8 and s["chunks_fetched"] == 0
    assert len(second.disk) == 8, "a shared hit fills the disk cache"
    # Without a disk cache, the shared tier still serves.
    alone = node(tmp_path, redis_server.url, "a", disk=False)
    np.testing.assert_array_equal(read_region(alone, counted_level(path, fetched), *EVERYTHING), data)
    assert fetched == [] and alone.stats.snapshot()["shared_hits"] == 8
    # A prefix is a namespace of its own.
    other = node(tmp_path, redis_server.url, "b", disk=False)
    read_region(other, counted_level(path, fetched), *EVERYTHING)
    assert len(fetched) == 8
    assert not any(k.startswith(b"a:lock:") for k in redis_server.client().keys("*")), "every lock let go"


def test_nodes_missing_the_same_chunks_at_once_fetch_each_once(tmp_path, store, redis_server):
    path, data = store
    fetched: list = []
    nodes = [node(tmp_path, redis_server.url, "flight") for _ in range(4)]
    levels = [counted_level(path, fetched, delay=0.3) for _ in nodes]
    results: list = [None] * 4
    start = threading.Barrier(4)

    def scroll(i):
        start.wait()
        results[i] = read_region(nodes[i], levels[i], *EVERYTHING)

    threads = [threading.Thread(target=scroll, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for got in results:
        np.testing.assert_array_equal(got, data)
    assert sorted(fetched) == sorted(set(fetched)) and len(fetched) == 8, "each chunk fetched once in the cluster"
    snaps = [n.stats.snapshot() for n in nodes]
    assert sum(s["shared_lock_waits"] for s in snaps) > 0
    assert sum(s["shared_hits"] for s in snaps) == 3 * 8


def stored_entry(client, key):
    """A shared entry's data and its disk cache head (format, checksum, metadata): the string
    holds LAYOUT (whose last field says where the data starts), then that head, then the data."""
    value = client.get(key)
    data_at = struct.unpack_from("<I", value, 16)[0]
    disk_head_at = 20
    return value[data_at:], value[disk_head_at:]


@pytest.mark.parametrize("damage", ["bytes", "another layout"])
def test_a_corrupt_shared_entry_is_fetched_again_and_overwritten(tmp_path, store, redis_server, damage):
    path, data = store
    fetched: list = []
    first = node(tmp_path, redis_server.url, "c", disk=False)
    read_region(first, counted_level(path, fetched), *EVERYTHING)
    first.flush_disk(10)
    client = redis_server.client()
    key = sorted(k for k in client.keys("c:chunk:*"))[0]
    good = stored_entry(client, key)[0]
    if damage == "bytes":
        client.setrange(key, client.strlen(key) - 3, bytes(3 - i for i in range(3)))  # a few bytes damaged
    else:  # the entry as a hash of head and data: another layout than this tier's
        client.delete(key)
        client.hset(key, mapping={"head": b"\x01\x00\x00\x00\x00", "data": good})
    fetched.clear()
    second = node(tmp_path, redis_server.url, "c", disk=False)
    np.testing.assert_array_equal(read_region(second, counted_level(path, fetched), *EVERYTHING), data)
    second.flush_disk(10)
    s = second.stats.snapshot()
    assert len(fetched) == 1 and s["shared_corrupt"] == 1 and s["shared_hits"] == 7
    rewritten = stored_entry(client, key)[0]
    assert rewritten == good, "overwritten with the right bytes"


def test_chunks_above_the_value_cap_pass_by_the_tier(tmp_path, store, redis_server):
    path, data = store
    engine = node(tmp_path, redis_server.url, "big", disk=False, max_value=100)
    np.testing.assert_array_equal(read_region(engine, counted_level(path, []), *EVERYTHING), data)
    engine.flush_disk(10)
    assert engine.stats.snapshot()["shared_too_large"] == 8
    assert redis_server.client().keys("big:chunk:*") == []


def test_redis_down_at_start_then_back_resumes_shared_hits(tmp_path, store, caplog):
    """Nothing listens: every read falls back to the source at once, one log line; once a
    server answers (after the backoff), the tier fills and serves again."""
    path, data = store
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    fetched: list = []
    engine = node(tmp_path, url, "down", disk=False)
    caplog.set_level(logging.WARNING, logger="ngffmount")
    started = time.monotonic()
    for _ in range(3):
        np.testing.assert_array_equal(read_region(engine, counted_level(path, fetched), *EVERYTHING), data)
    assert time.monotonic() - started < 10, "an unreachable shared cache costs no time to speak of"
    assert len(fetched) == 24 and engine.stats.snapshot()["shared_errors"] >= 1
    lines = [r for r in caplog.records if "shared cache" in r.getMessage()]
    assert len(lines) == 1 and PASSWORD not in lines[0].getMessage()
    with RedisServer(tmp_path / "late", port=port) as server:
        time.sleep(1.5)  # past the first backoff
        read_region(engine, counted_level(path, []), *EVERYTHING)
        engine.flush_disk(10)
        assert len(server.client().keys("down:chunk:*")) == 8
        fetched.clear()
        again = node(tmp_path, url, "down", disk=False)
        np.testing.assert_array_equal(read_region(again, counted_level(path, fetched), *EVERYTHING), data)
        assert fetched == [] and again.stats.snapshot()["shared_hits"] == 8


def test_redis_killed_mid_scroll_then_restarted(tmp_path, store):
    path, data = store
    server = RedisServer(tmp_path / "killed").start()
    try:
        engine = node(tmp_path, server.url, "k", disk=False)
        level = counted_level(path, [])
        for z in range(0, 16):
            np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, 64, 64)), data[z:z + 1])
        server.kill()
        started = time.monotonic()
        for z in range(16, 32):  # every read succeeds, every byte right
            np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, 64, 64)), data[z:z + 1])
        assert time.monotonic() - started < 10
        assert engine.stats.snapshot()["shared_errors"] >= 1
        server = RedisServer(tmp_path / "killed2", port=server.port).start()  # empty again
        time.sleep(1.5)
        read_region(engine, level, *EVERYTHING)
        engine.flush_disk(10)
        fetched: list = []
        again = node(tmp_path, server.url, "k", disk=False)
        np.testing.assert_array_equal(read_region(again, counted_level(path, fetched), *EVERYTHING), data)
        assert fetched == [] and again.stats.snapshot()["shared_hits"] == 8, "shared hits resume"
    finally:
        server.stop()


def test_a_stalled_redis_costs_a_timeout_not_a_read(tmp_path, store, redis_server, caplog):
    """SIGSTOP: the server's socket still accepts, nothing answers (a slow or hung Redis)."""
    path, data = store
    caplog.set_level(logging.WARNING, logger="ngffmount")
    engine = node(tmp_path, redis_server.url, "slow", disk=False)
    level = counted_level(path, [])
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 64, 64)), data[:1])
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for z in range(1, 32):
            np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, 64, 64)), data[z:z + 1])
        assert time.monotonic() - started < 10, "operations time out, then the tier is skipped"
        assert engine.stats.snapshot()["shared_errors"] >= 1
        assert len([r for r in caplog.records if "shared cache" in r.getMessage()]) == 1, "logged once"
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)


def test_a_server_without_eviction_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ngffmount")
    with RedisServer(tmp_path / "noevict", policy="noeviction") as server:
        shared(server.url, "w").check()
    assert any("noeviction" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with RedisServer(tmp_path / "lru") as server:
        shared(server.url, "w").check()
    assert not any("noeviction" in r.getMessage() for r in caplog.records)


def test_a_three_node_redis_cluster(tmp_path, store):
    path, data = store
    with RedisCluster(tmp_path / "cluster") as cluster:
        fetched: list = []
        first = node(tmp_path, cluster.url, "cl")
        np.testing.assert_array_equal(read_region(first, counted_level(path, fetched), *EVERYTHING), data)
        first.flush_disk(10)
        assert len(fetched) == 8
        second = node(tmp_path, cluster.url, "cl", disk=False)
        np.testing.assert_array_equal(read_region(second, counted_level(path, fetched), *EVERYTHING), data)
        assert len(fetched) == 8 and second.stats.snapshot()["shared_hits"] == 8
        held = sum(n.client().dbsize() for n in cluster.nodes if n.client().dbsize())
        assert held == 8 and sum(1 for n in cluster.nodes if n.client().dbsize()) >= 2, "spread over the nodes"


def test_a_redis_cluster_node_lost_mid_scroll(tmp_path, store):
    """One of three primaries SIGKILLed between planes (its slots have no replica): every read
    succeeds with the right bytes, within a bounded time, and a new node still reads right."""
    path, data = store
    with RedisCluster(tmp_path / "lost") as cluster:
        engine = node(tmp_path, cluster.url, "lost", disk=False)
        level = counted_level(path, [])
        for z in range(0, 16):
            np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, 64, 64)), data[z:z + 1])
        engine.flush_disk(10)
        assert sum(n.client().dbsize() for n in cluster.nodes) == 4, "the first half's chunks are in the cluster"
        cluster.nodes[1].kill()
        started = time.monotonic()
        for z in range(16, 32):
            np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, 64, 64)), data[z:z + 1])
        assert time.monotonic() - started < 20, "a lost node costs timeouts, not hung reads"
        assert engine.stats.snapshot()["shared_errors"] >= 1
        fresh = node(tmp_path, cluster.url, "lost", disk=False)
        np.testing.assert_array_equal(read_region(fresh, counted_level(path, []), *EVERYTHING), data)


def test_revalidate_with_the_shared_tier(tmp_path, redis_server):
    """A shared entry carries when it was last validated: within --revalidate's age a node
    serves it as it is; past it, a node asks the source again, serves the rewritten chunks'
    new bytes and overwrites the entries, so a node without --revalidate then reads the new
    bytes from Redis."""
    import zarr

    path = tmp_path / "r.zarr"
    data = pattern((16, 64, 64), "uint16", seed=13)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(16, 32, 32))  # 4 chunks
    everything = (0, 0, 0), (16, 64, 64)
    age = 2.0

    def revalidating():
        return ChunkEngine(memory_bytes=0, revalidate=age, tiers=[shared(redis_server.url, "rv")])

    first = revalidating()
    np.testing.assert_array_equal(read_region(first, open_source(str(path)).levels[0], *everything), data)
    first.flush_disk(10)
    zarr.open_array(str(path / "0"), mode="r+")[...] = 65535 - data
    within = revalidating()
    np.testing.assert_array_equal(read_region(within, open_source(str(path)).levels[0], *everything), data)
    assert within.stats.snapshot()["shared_hits"] == 4, "within the age: the shared entries, unasked"
    time.sleep(age + 0.2)
    past = revalidating()
    np.testing.assert_array_equal(read_region(past, open_source(str(path)).levels[0], *everything), 65535 - data)
    s = past.stats.snapshot()
    assert s["revalidated"] == 4 and s["chunks_changed"] == 4
    past.flush_disk(10)
    fetched: list = []
    plain = node(tmp_path, redis_server.url, "rv", disk=False)
    np.testing.assert_array_equal(read_region(plain, counted_level(path, fetched), *everything), 65535 - data)
    assert fetched == [] and plain.stats.snapshot()["shared_hits"] == 4, "the entries were overwritten"


def test_tls_with_a_self_signed_certificate(tmp_path, store):
    path, data = store
    tls = TLSFiles(tmp_path / "tls")
    with RedisServer(tmp_path / "tlsredis", tls=tls) as server:
        url = f"{server.url}?ssl_ca_certs={tls.cert}"
        fetched: list = []
        first = node(tmp_path, url, "tls", disk=False)
        read_region(first, counted_level(path, fetched), *EVERYTHING)
        first.flush_disk(10)
        second = node(tmp_path, url, "tls", disk=False)
        np.testing.assert_array_equal(read_region(second, counted_level(path, fetched), *EVERYTHING), data)
        assert len(fetched) == 8 and second.stats.snapshot()["shared_hits"] == 8
        # Without the CA the certificate is refused: the source serves, nothing breaks.
        untrusting = node(tmp_path, server.url, "tls", disk=False)
        np.testing.assert_array_equal(read_region(untrusting, counted_level(path, fetched), *EVERYTHING), data)
        assert untrusting.stats.snapshot()["shared_errors"] >= 1 and len(fetched) == 16


def test_urls_and_their_redaction():
    u = parse_url("redis://alice:pw@host:7000/3")
    assert (u.nodes, u.db, u.username, u.password, u.tls, u.cluster) == ([("host", 7000)], 3, "alice", "pw", False, False)
    assert "pw" not in u.redacted and u.redacted == "redis://alice@host:7000/3"
    c = parse_url("redis+cluster://a:1;b:2")  # ';' between hosts: fstab splits options on ','
    assert c.cluster and c.nodes == [("a", 1), ("b", 2)] == parse_url("redis+cluster://a:1,b:2").nodes
    assert parse_url("rediss://h:6380").tls
    for bad in ("http://h:1", "redis://", "redis://a:1,b:2", "redis://h:x", "redis://h:1/x",
                "redis://h:1/0?socket_timeout=x", "redis://h:1/0?socket_timeout=0"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_timeouts_are_tens_of_ms_unless_the_url_says_otherwise():
    default = RedisTier("redis://h:1/0")
    assert default.connect_timeout <= 0.05 and default.op_timeout <= 0.05
    # An entry's reads and writes get time for its bytes on top (a 64 MiB one: a quarter second).
    assert default.op_timeout < default.entry_timeout <= default.op_timeout + 0.3
    assert RedisTier("redis://h:1/0", max_value=1 << 20).entry_timeout < 0.06
    busy = RedisTier("redis://h:1/0?socket_timeout=0.5&socket_connect_timeout=0.2")
    assert (busy.op_timeout, busy.connect_timeout) == (0.5, 0.2)


# -- real mounts as nodes -----------------------------------------------------------------

def _chunk_paths(proxy, prefix: str) -> list[str]:
    return [p for m, p, *_ in proxy.log if m == "GET" and p.startswith(prefix) and "/." not in p
            and not p.endswith("zarr.json")]


@pytest.mark.integration
def test_four_daemons_share_one_redis_and_the_remote_sees_each_chunk_once(tmp_path, s3_server, redis_server):
    data = pattern((8, 128, 128), "uint16", seed=9)
    write_ome_zarr(tmp_path / "up" / "img.zarr", data, "zyx", levels=1, chunks=(2, 32, 32))  # 64 chunks
    s3_server.upload_dir(tmp_path / "up", "shared", "", public=True)
    secret = password_file(tmp_path)
    mounts = [tmp_path / f"mnt{i}" for i in range(4)]
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        options = ["--anon", "--endpoint-url", proxy.url, "--shared-cache", redis_server.url,
                   "--shared-cache-password-file", str(secret), "--shared-cache-prefix", "four"]
        logs = [tmp_path / f"log{i}.txt" for i in range(4)]
        stack = [mounted("s3://shared/img.zarr", m, *options, "--cache-dir", str(tmp_path / f"cache{i}"),
                         "--log-file", str(logs[i])) for i, m in enumerate(mounts)]
        for cm in stack:
            cm.__enter__()
        try:
            proxy.reset_counters()
            failures: list = []

            def scroll(mnt, order):
                try:
                    for z in order:
                        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)

            threads = [threading.Thread(target=scroll, args=(m, list(range(8)) if i % 2 == 0 else list(range(7, -1, -1))))
                       for i, m in enumerate(mounts)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert not failures, failures[0]
            chunks = _chunk_paths(proxy, "/shared/img.zarr/0/")
            stats = [json.loads((m / ".ngffmount" / "stats.json").read_text()) for m in mounts]
            twice = sorted(p for p in set(chunks) if chunks.count(p) > 1)
            assert len(set(chunks)) == 64 and len(chunks) == 64, f"the remote store sees each chunk once: {twice} {stats}"
            assert sum(s["shared_hits"] for s in stats) >= 3 * 64
            assert all(set(s) >= {"shared_hits", "shared_misses", "shared_errors", "shared_bytes_read",
                                  "shared_bytes_written", "shared_lock_waits"} for s in stats)
            # The password: never in a process title, a log, stats.json, info.json, /proc/mounts.
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            texts = [ps, open("/proc/mounts").read()] + [p.read_text() for p in logs]
            texts += [(m / ".ngffmount" / "stats.json").read_text() for m in mounts]
            texts += [p.read_text() for m in mounts for p in m.rglob("info.json")]
            shown = ngffmount_cmd("stats", str(mounts[0])).stdout
            assert "shared_hits" in shown
            assert not any(PASSWORD in t for t in texts + [shown])
        finally:
            for cm in stack:
                cm.__exit__(None, None, None)


@pytest.mark.integration
def test_a_mount_survives_redis_killed_mid_scroll(tmp_path, s3_server):
    data = pattern((12, 64, 64), "uint16", seed=10)
    write_ome_zarr(tmp_path / "up" / "k.zarr", data, "zyx", levels=1, chunks=(1, 32, 32))
    s3_server.upload_dir(tmp_path / "up", "killed", "", public=True)
    server = RedisServer(tmp_path / "redis").start()
    options = ["--anon", "--endpoint-url", s3_server.endpoint_url, "--shared-cache", server.url,
               "--shared-cache-password-file", str(password_file(tmp_path)), "--no-disk-cache",
               "--memory-cache", "8K"]  # about a plane: readahead cannot take the planes after the kill in before it
    try:
        with mounted("s3://killed/k.zarr", tmp_path / "mnt", *options) as mnt:
            for z in range(6):
                np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
            server.kill()
            for z in range(6, 12):
                np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
            s = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
            assert s["shared_errors"] >= 1 and s["errors"] == 0
    finally:
        server.stop()


@pytest.mark.integration
def test_prefetch_warms_the_shared_cache(tmp_path, http_server, redis_server):
    data = pattern((4, 64, 64), "uint16", seed=11)
    name = f"warm-{uuid.uuid4().hex[:6]}.zarr"
    write_ome_zarr(http_server.www / name, data, "zyx", levels=1, chunks=(2, 32, 32))  # 8 chunks
    url = f"{http_server.url}/{name}"
    out = ngffmount_cmd("cache", "prefetch", url, "--shared-cache", redis_server.url, "--shared-cache-password-file",
                        str(password_file(tmp_path)), "--shared-cache-prefix", "warm").stdout
    assert "8 chunks in the shared cache redis://127.0.0.1" in out and PASSWORD not in out
    assert len(redis_server.client().keys("warm:chunk:*")) == 8
    http_server.reset_counters()
    with mounted(url, tmp_path / "mnt", "--no-disk-cache", "--shared-cache", redis_server.url,
                 "--shared-cache-password-file", str(password_file(tmp_path)), "--shared-cache-prefix", "warm") as mnt:
        for z in range(4):
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
        s = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
    assert s["shared_hits"] == 8 and s["chunks_fetched"] == 0
    assert not any(p.startswith(f"/{name}/0/") and "/." not in p for p in http_server.paths)


def test_fstab_options_name_the_shared_cache():
    from ngffmount.vfs.command.service import helper_arguments

    args = helper_arguments(["s3://b/i.zarr", "/mnt/i", "-o", "ro,shared_cache=redis+cluster://h1:7000;h2:7000,"
                             "shared_cache_password_file=/etc/ngffmount/redis.pw,shared_cache_prefix=lab"])
    assert args[3:] == ["--shared-cache", "redis+cluster://h1:7000;h2:7000", "--shared-cache-password-file",
                        "/etc/ngffmount/redis.pw", "--shared-cache-prefix", "lab"]
    assert parse_url(args[4]).nodes == [("h1", 7000), ("h2", 7000)]


# -- large blosc entries read in parts ----------------------------------------------------

PLANE_SHAPE = (512, 256)
DEEP_CHUNKS = (16, 256, 256)  # 2 chunks a plane, 2 MiB each: 8 lz4 blocks of 2 planes


@pytest.fixture(scope="module")
def deep_store(tmp_path_factory):
    """Chunks well above the tier's PARTS_FROM once encoded (noisy low bits)."""
    import numcodecs

    path = tmp_path_factory.mktemp("parts") / "deep.zarr"
    data = np.random.default_rng(24).integers(0, 1024, (32, *PLANE_SHAPE), dtype=np.uint16)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=DEEP_CHUNKS,
                   compressors=numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE))
    return path, data


def blosc_blocks(raw: bytes) -> list[tuple[int, int]]:
    """Where each block of a c-blosc 1.x frame lies: from its start in the block table to the
    next block's start, or the frame's end."""
    _, _, flags, _, nbytes, blocksize, cbytes = struct.unpack_from("<BBBBIII", raw)
    assert not flags & 0x02 and cbytes == len(raw)
    starts = struct.unpack_from(f"<{-(-nbytes // blocksize)}i", raw, 16)
    ends = sorted(starts) + [cbytes]
    return [(s, ends[ends.index(s) + 1]) for s in starts]


def chunk_files(path, z: int) -> list[bytes]:
    """The encoded chunks a plane z lies in, from the store's files (zarr v2, '/' keys)."""
    return [(path / "0" / str(z // DEEP_CHUNKS[0]) / str(y) / "0").read_bytes()
            for y in range(PLANE_SHAPE[0] // DEEP_CHUNKS[1])]


def engine_with_memory(tmp_path, url: str, prefix: str, disk: bool = True) -> ChunkEngine:
    cache = DiskCache(str(tmp_path / f"disk-{uuid.uuid4().hex[:6]}")) if disk else None
    return ChunkEngine(disk=cache, memory_bytes=256 << 20, tiers=[shared(url, prefix)])


def warm(url: str, prefix: str, path) -> None:
    first = ChunkEngine(memory_bytes=0, tiers=[shared(url, prefix)])
    read_region(first, open_source(str(path)).levels[0], (0, 0, 0), (32, *PLANE_SHAPE))
    assert first.flush_disk(30)
    assert first.stats.snapshot()["shared_bytes_written"] == sum(
        len(b) for z in (0, 16) for b in chunk_files(path, z))


def held_back(monkeypatch) -> threading.Event:
    """The whole entries read behind the reader wait until the event is set: what the reader
    itself read from Redis is counted alone."""
    from ngffmount.cache.redis_tier import RedisParts

    gate = threading.Event()
    whole = RedisParts.whole
    monkeypatch.setattr(RedisParts, "whole", lambda self: (gate.wait(60), whole(self))[1])
    return gate


@pytest.mark.parametrize("servers", ["one server", "cluster"])
def test_a_shared_warm_plane_reads_only_the_blocks_it_needs(tmp_path, deep_store, monkeypatch, servers):
    import zarr

    from ngffmount.cache.redis_tier import FIRST_READ, PAGE_BYTES

    path, data = deep_store
    with (RedisServer(tmp_path / "one") if servers == "one server" else RedisCluster(tmp_path / "cl")) as server:
        warm(server.url, "parts", path)
        gate = held_back(monkeypatch)
        engine = engine_with_memory(tmp_path, server.url, "parts")
        fetched: list = []
        level = counted_level(path, fetched)
        z = 5
        got = read_region(engine, level, (z, 0, 0), (z + 1, *PLANE_SHAPE))
        np.testing.assert_array_equal(got[0], zarr.open_array(str(path / "0"), mode="r")[z])
        s = engine.stats.snapshot()
        assert fetched == [] and s["shared_hits"] == 2 and s["shared_partial_hits"] == 2
        # Each chunk: its first read (head, header, block table), then the pages of plane z's block.
        blocks = [blosc_blocks(raw)[(z % 16) // 2] for raw in chunk_files(path, z)]
        needed = sum(b - a for a, b in blocks)
        part = s["shared_part_bytes_read"] - 2 * FIRST_READ
        assert needed <= part <= needed + 2 * 2 * PAGE_BYTES, (part, needed)
        assert s["shared_bytes_read"] == s["shared_part_bytes_read"], "nothing else read yet"
        assert s["shared_bytes_read"] < sum(map(len, chunk_files(path, z))) / 4
        # Behind the reader: each entry whole, checked, into the disk cache and the frame.
        gate.set()
        assert engine.wait_idle(30) and engine.flush_disk(30)
        assert len(engine.disk) == 2, "a shared hit fills the disk cache"
        before = engine.stats.snapshot()
        got = read_region(engine, level, (0, 0, 0), (16, *PLANE_SHAPE))
        np.testing.assert_array_equal(got, data[:16])
        after = engine.stats.snapshot()
        assert after["shared_part_bytes_read"] == before["shared_part_bytes_read"], "no round trip a block once whole"
        assert after["shared_hits"] == 2 and fetched == []


def test_an_unmount_right_after_a_shared_warm_read_still_fills_the_disk(tmp_path, deep_store, redis_server,
                                                                      monkeypatch):
    """The whole entries behind a reader wait for reads to pause; a flush (unmount, cache
    prefetch) runs them at once, so the disk cache still gets what was read in parts."""
    import ngffmount.cache.redis_tier as redis_tier

    path, data = deep_store
    warm(redis_server.url, "unmount", path)
    monkeypatch.setattr(redis_tier, "QUIET_S", 600.0)
    monkeypatch.setattr(redis_tier, "BEHIND_MAX_WAIT_S", 600.0)
    engine = engine_with_memory(tmp_path, redis_server.url, "unmount")
    fetched: list = []
    got = read_region(engine, counted_level(path, fetched), (3, 0, 0), (4, *PLANE_SHAPE))
    np.testing.assert_array_equal(got, data[3:4])
    assert engine.stats.snapshot()["shared_partial_hits"] == 2 and len(engine.disk) == 0
    assert engine.flush_disk(30)
    assert len(engine.disk) == 2 and fetched == []


def test_a_damaged_block_in_redis_is_never_served(tmp_path, deep_store, redis_server, monkeypatch):
    import zarr

    path, data = deep_store
    warm(redis_server.url, "bad", path)
    client = redis_server.client()
    z = 9
    raw = chunk_files(path, z)[1]
    start, stop = blosc_blocks(raw)[(z % 16) // 2]
    key = next(k for k in client.keys("bad:chunk:*") if k.endswith(b"/0/1/0"))
    data_at = struct.unpack_from("<I", client.getrange(key, 0, 19), 16)[0]
    assert client.getrange(key, data_at, data_at + len(raw) - 1) == raw
    middle = data_at + (start + stop) // 2
    client.setrange(key, middle, bytes(b ^ 0x5A for b in client.getrange(key, middle, middle + 7)))
    gate = held_back(monkeypatch)  # the damage is met by the reader's own block read
    engine = engine_with_memory(tmp_path, redis_server.url, "bad", disk=False)
    fetched: list = []
    threading.Timer(5, gate.set).start()  # should the read wait for the whole behind it, it does not wait long
    got = read_region(engine, counted_level(path, fetched), (z, 0, 0), (z + 1, *PLANE_SHAPE))
    gate.set()
    np.testing.assert_array_equal(got[0], zarr.open_array(str(path / "0"), mode="r")[z])
    s = engine.stats.snapshot()
    assert s["shared_corrupt"] >= 1 and fetched == ["0/1/0"], "the damaged chunk alone from the source"
    assert engine.wait_idle(30) and engine.flush_disk(30)
    assert stored_entry(client, key)[0] == raw, "the entry is overwritten with the right bytes"


@pytest.mark.parametrize("fault", ["killed", "stalled", "deleted"])
def test_redis_lost_between_head_and_blocks(tmp_path, deep_store, monkeypatch, fault):
    """The head is read, then Redis dies, stops answering (SIGSTOP), or the entry goes
    (evicted, deleted) before the blocks: every read succeeds with the right bytes, from the
    source, in bounded time."""
    from ngffmount.cache.redis_tier import RedisParts

    path, data = deep_store
    server = RedisServer(tmp_path / "lost").start()
    try:
        warm(server.url, "lost", path)
        read = RedisParts.read

        def fault_then_read(self, start, stop):
            if fault == "killed":
                server.kill()
            elif fault == "stalled":
                if server.proc.poll() is None:
                    os.kill(server.proc.pid, signal.SIGSTOP)
            else:
                for key in server.client().keys("lost:chunk:*"):
                    server.client().delete(key)
            return read(self, start, stop)

        monkeypatch.setattr(RedisParts, "read", fault_then_read)
        engine = engine_with_memory(tmp_path, server.url, "lost")
        fetched: list = []
        level = counted_level(path, fetched)
        started = time.monotonic()
        for z in (3, 20):
            np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, *PLANE_SHAPE))[0], data[z])
        assert time.monotonic() - started < 20
        s = engine.stats.snapshot()
        assert s["shared_errors"] >= 1 and s["errors"] == 0
        assert sorted(fetched) == sorted(set(fetched)) and len(fetched) >= 2, "each chunk at most once from the source"
        assert engine.wait_idle(30) and engine.flush_disk(30)
        assert len(engine.disk) == len(set(fetched)), "what came from the source is on the disk"
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_a_large_entry_past_its_revalidate_age_is_checked_whole(tmp_path, deep_store, redis_server):
    """--revalidate: an entry past its age is compared with the source's version, so it is
    read whole (not in parts), and served when unchanged."""
    path, data = deep_store
    warm(redis_server.url, "age", path)
    time.sleep(0.6)
    engine = ChunkEngine(memory_bytes=256 << 20, revalidate=0.5, tiers=[shared(redis_server.url, "age")])
    fetched: list = []
    got = read_region(engine, counted_level(path, fetched), (7, 0, 0), (8, *PLANE_SHAPE))
    np.testing.assert_array_equal(got[0], data[7])
    s = engine.stats.snapshot()
    assert s["revalidated"] == 2 and s["chunks_changed"] == 0 and s["shared_partial_hits"] == 0 and s["errors"] == 0


def test_a_scroll_through_a_chunk_read_in_parts_reads_the_rest_at_its_second_block(tmp_path, deep_store,
                                                                                  redis_server, monkeypatch):
    """Planes one after the other walk a chunk's blocks: past the first block, the rest of the
    entry comes in one read, not a round trip a block (8 blocks a chunk here)."""
    from ngffmount.cache.redis_tier import RedisTier as Tier

    path, data = deep_store
    warm(redis_server.url, "walk", path)
    held_back(monkeypatch)  # nothing read whole behind the reader: what it reads is counted alone
    reads: list = []
    getrange = Tier._getrange
    monkeypatch.setattr(Tier, "_getrange", lambda self, key, ranges: (reads.append(key), getrange(self, key, ranges))[1])
    engine = engine_with_memory(tmp_path, redis_server.url, "walk", disk=False)
    level = counted_level(path, [])
    for z in range(16):
        np.testing.assert_array_equal(read_region(engine, level, (z, 0, 0), (z + 1, *PLANE_SHAPE))[0], data[z])
    s = engine.stats.snapshot()
    assert s["shared_hits"] == 2 and s["shared_partial_hits"] == 2
    # Each of the 2 chunks: its head, its first block, the rest (a read ahead may race the rest once).
    assert len(reads) <= 2 * 4, reads
    assert s["shared_part_bytes_read"] <= sum(len(raw) + 32 * 1024 for raw in chunk_files(path, 0))
