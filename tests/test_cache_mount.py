"""The persistent cache through real mounts: remounts, a killed daemon, shared folders, prefetch."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import tifffile

from conftest import kill_hard, mounted, ngffmount_cmd
from zarr_fixtures import pattern, write_ome_zarr

pytestmark = pytest.mark.integration


@pytest.fixture
def served_store(http_server, request):
    name = f"cache-{request.node.name}.zarr".replace("[", "-").replace("]", "")
    data = pattern((6, 64, 96), "uint16", seed=2)
    write_ome_zarr(http_server.www / name, data, "zyx", levels=1, chunks=(2, 32, 32))
    return f"{http_server.url}/{name}", f"/{name}/0/", data


def chunk_requests(http_server, prefix: str) -> int:
    return sum(1 for p in http_server.paths if p.startswith(prefix) and "/." not in p)  # not metadata


def stats(mnt) -> dict:
    return json.loads((mnt / ".ngffmount" / "stats.json").read_text())


def wait_until_idle(mnt, timeout: float = 20.0) -> None:
    """Until the daemon has no fetch queued or running and no disk write pending (readahead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = stats(mnt)
        if now["fetches_pending"] == 0 and now["disk_write_backlog_bytes"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon still busy: {now}")


def read_planes(mnt, data):
    for z in range(data.shape[0]):
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
    # Disk writes trail the reads; wait for them, as a test that kills the daemon must.
    deadline = time.monotonic() + 10
    while stats(mnt)["disk_write_backlog_bytes"] and time.monotonic() < deadline:
        time.sleep(0.05)


def test_cache_survives_killed_daemon_and_remount(tmp_path, http_server, served_store):
    url, prefix, data = served_store
    cache = ["--cache-dir", str(tmp_path / "cache")]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    http_server.reset_counters()
    ngffmount_cmd("mount", url, str(mnt), *cache)
    try:
        read_planes(mnt, data)
        assert chunk_requests(http_server, prefix) == 3 * 2 * 3
        pid = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]
        kill_hard(pid)
        http_server.reset_counters()
        ngffmount_cmd("mount", url, str(mnt), *cache)  # clears the stale mount itself
        read_planes(mnt, data)
        assert chunk_requests(http_server, prefix) == 0, "every chunk came from the disk cache"
        s = stats(mnt)
        assert s["disk_hits"] == 18 and s["chunks_fetched"] == 0 and s["disk_corrupt"] == 0
    finally:
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)


def test_two_mounts_sharing_a_cache_fetch_each_chunk_once(tmp_path, http_server, served_store):
    url, prefix, data = served_store
    cache = ["--cache-dir", str(tmp_path / "shared")]
    http_server.reset_counters()
    with mounted(url, tmp_path / "a", *cache) as a, mounted(url, tmp_path / "b", *cache) as b:
        read_planes(a, data)
        read_planes(b, data)
        assert stats(a)["chunks_fetched"] == 18 and stats(b)["chunks_fetched"] == 0
        assert stats(b)["disk_hits"] == 18
        assert chunk_requests(http_server, prefix) == 18
        out = ngffmount_cmd("stats", str(b)).stdout
        assert "disk_hits" in out and "18" in out


def test_prefetch_then_mount_reads_nothing_remote(tmp_path, http_server, served_store):
    url, prefix, data = served_store
    cache = ["--cache-dir", str(tmp_path / "warm")]
    result = ngffmount_cmd("cache", "prefetch", url, "--level", "s0", "--region", "0:4,:,:", *cache)
    assert "12 chunks in the cache" in result.stdout and "12 fetched" in result.stdout
    assert "[##############################] 12/12" in result.stderr
    info = ngffmount_cmd("cache", "info", *cache).stdout
    assert "entries    12" in info
    http_server.reset_counters()
    with mounted(url, tmp_path / "mnt", *cache) as mnt:
        for z in range(4):
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
        # Only readahead of the next planes (z chunk 2) may go out; the prefetched chunks do not.
        assert chunk_requests(http_server, prefix + "0/") == chunk_requests(http_server, prefix + "1/") == 0
        wait_until_idle(mnt)
    assert "removed 18 entries" in ngffmount_cmd("cache", "clear", *cache).stdout  # 12 + readahead


def test_no_disk_cache_leaves_no_folder(tmp_path, http_server, served_store):
    url, _, data = served_store
    with mounted(url, tmp_path / "mnt", "--no-disk-cache", "--cache-dir", str(tmp_path / "none")) as mnt:
        read_planes(mnt, data)
        assert stats(mnt)["disk_misses"] == 0
    assert not (tmp_path / "none").exists()
