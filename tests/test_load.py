"""Load and crashes: many readers on two mounts sharing a cache, and a daemon killed mid-read."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile
import zarr

from conftest import kill_hard, mounted, ngffmount_cmd
from zarr_fixtures import pattern, write_ome_zarr

pytestmark = pytest.mark.integration

READER = """
import sys, numpy as np, tifffile
mnt, ref, names = sys.argv[1], np.load(sys.argv[2]), sys.argv[3:]
for name in names:
    z = int(name[1:6])
    got = tifffile.imread(f"{mnt}/s0/{name}")
    assert np.array_equal(got, ref[z]), name
print("ok", len(names))
"""


def chunk_paths(http_server, prefix):
    return [p for p in http_server.paths if p.startswith(prefix) and "/." not in p]


def test_eight_readers_two_mounts_one_cache_fetch_each_chunk_once(tmp_path, http_server):
    name = "load.zarr"
    data = pattern((24, 96, 128), "uint16", seed=6)
    write_ome_zarr(http_server.www / name, data, "zyx", levels=1, chunks=(2, 32, 64))
    np.save(tmp_path / "ref.npy", data)
    url, cache = f"{http_server.url}/{name}", ["--cache-dir", str(tmp_path / "shared")]
    http_server.reset_counters()
    with mounted(url, tmp_path / "a", *cache) as a, mounted(url, tmp_path / "b", *cache) as b:
        names = [f"z{z:05d}.tif" for z in range(24)]
        procs = []
        for i in range(8):
            mnt = a if i % 2 else b
            mine = names[i % 3::2] + names[:4]  # overlapping sets, in different orders
            procs.append(subprocess.Popen([sys.executable, "-c", READER, str(mnt), str(tmp_path / "ref.npy"),
                                           *(mine if i < 4 else mine[::-1])],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out.startswith("ok"), err
        paths = chunk_paths(http_server, f"/{name}/0/")
        total_chunks = 12 * 3 * 2
        assert len(paths) == len(set(paths)) == total_chunks, "every chunk fetched exactly once"
        fetched = sum(json.loads((m / ".ngffmount" / "stats.json").read_text())["chunks_fetched"] for m in (a, b))
        assert fetched == total_chunks


def test_kill_9_mid_reads_then_remount_serves_correct_bytes(tmp_path, http_server):
    name = "crash.zarr"
    data = pattern((40, 128, 128), "uint16", seed=9)
    write_ome_zarr(http_server.www / name, data, "zyx", levels=1, chunks=(1, 64, 64))
    url, cache = f"{http_server.url}/{name}", ["--cache-dir", str(tmp_path / "cache")]
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ngffmount_cmd("mount", url, str(mnt), *cache)
    try:
        pid = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["pid"]
        errors = []

        def reader():
            for z in range(40):
                try:
                    (mnt / "s0" / f"z{z:05d}.tif").read_bytes()
                except OSError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        [t.start() for t in threads]
        kill_hard(pid)
        [t.join(timeout=60) for t in threads]
        # The daemon is gone mid-read: the readers saw errors, never wrong bytes (checked below).
        ngffmount_cmd("mount", url, str(mnt), *cache)
        ref = zarr.open_array(url + "/0", mode="r")[...]
        for z in range(40):
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), ref[z])
        stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
        assert stats["disk_corrupt"] == 0 and stats["errors"] == 0
    finally:
        subprocess.run(["fusermount", "-uz", str(mnt)], capture_output=True)
