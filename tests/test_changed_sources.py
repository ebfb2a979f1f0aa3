"""Chunks rewritten at the source: the policy (immutable while the metadata is unchanged),
--revalidate AGE (conditional requests, 304 keeps an entry, a change is logged), metadata
changed under a mount (EIO and one log line until a remount), and `cache clear SOURCE`."""

from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest
import tifffile
import zarr

from conftest import mounted, ngffmount_cmd
from test_cache_mount import stats
from test_cache_mount import wait_until_idle as idle
from zarr_fixtures import pattern, write_ome_zarr

from ngffmount.adapters.storage import NotModified, SourceVersion, Store, observe
from ngffmount.cache.disk import DiskCache

pytestmark = pytest.mark.integration

SHAPE, CHUNKS = (3, 64, 64), (1, 32, 32)  # 4 chunks per plane


def write_store(root, name: str, seed: int = 3):
    data = pattern(SHAPE, "uint16", seed=seed)
    write_ome_zarr(root / name, data, "zyx", levels=1, chunks=CHUNKS)
    return data


def rewrite_chunk(path, data: np.ndarray) -> np.ndarray:
    """Rewrite chunk (0, 0, 0) of level 0 in place, metadata untouched; returns the new pixels."""
    meta = (path / "0" / ".zarray").read_bytes()
    new = data.copy()
    new[0, :32, :32] = 65535 - data[0, :32, :32]
    zarr.open_array(str(path / "0"), mode="r+")[0:1, 0:32, 0:32] = new[0:1, :32, :32]
    assert (path / "0" / ".zarray").read_bytes() == meta
    return new


def http_etag(path) -> str:
    st = os.stat(path)
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # as tests/servers.py sends it


def plane(mnt, z: int) -> np.ndarray:
    return tifffile.imread(mnt / "s0" / f"z{z:05d}.tif")


def chunk_gets(server, prefix: str) -> list[str]:
    return [p for p in server.paths if p.startswith(prefix) and "/." not in p]


def conditional(server, paths: list[str]) -> bool:
    return sorted(paths) == sorted(p for p in server.conditional_paths if p in paths)


def test_rewritten_chunk_is_served_from_cache_until_revalidated(tmp_path, http_server):
    name = "changed-http.zarr"
    data = write_store(http_server.www, name)
    url, prefix = f"{http_server.url}/{name}", f"/{name}/0/"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with mounted(url, tmp_path / "m1", *cache) as mnt:
        for z in range(SHAPE[0]):
            np.testing.assert_array_equal(plane(mnt, z), data[z])
        idle(mnt)
    chunk_file = http_server.www / name / "0" / "0" / "0" / "0"
    old_etag = http_etag(chunk_file)
    time.sleep(0.01)  # a new mtime, hence a new ETag
    new = rewrite_chunk(http_server.www / name, data)
    new_etag = http_etag(chunk_file)
    assert new_etag != old_etag

    # The policy: chunks are immutable while the metadata is unchanged, across remounts too.
    http_server.reset_counters()
    with mounted(url, tmp_path / "m2", *cache) as mnt:
        np.testing.assert_array_equal(plane(mnt, 0), data[0])
        assert chunk_gets(http_server, prefix) == []

    # --revalidate 1s: past the age, every entry is asked about with If-None-Match.
    log_file = tmp_path / "revalidate.log"
    with mounted(url, tmp_path / "m3", *cache, "--revalidate", "1s", "--log-file", str(log_file)) as mnt:
        time.sleep(1.2)
        http_server.reset_counters()
        np.testing.assert_array_equal(plane(mnt, 0), new[0])
        gets = chunk_gets(http_server, f"{prefix}0/")
        assert len(gets) == 4 and conditional(http_server, gets), gets  # one conditional GET per chunk
        assert http_server.not_modified == 3, "the three unchanged chunks answered 304"
        s = stats(mnt)
        assert s["revalidated"] == 4 and s["chunks_changed"] == 1
        idle(mnt)
        log = log_file.read_text()
        changed = [line for line in log.splitlines() if "changed at the source" in line]
        assert len(changed) == 1, log
        assert "chunk 0/0/0" in changed[0] and old_etag in changed[0] and new_etag in changed[0]
        assert url in changed[0]

        # 304: the entry is kept and its age refreshed; nothing is fetched again.
        def cache_info() -> list[str]:
            """`cache info` without its free-space line (the disk is shared with other work)."""
            lines = ngffmount_cmd("cache", "info", *cache).stdout.splitlines()
            return [line for line in lines if not line.startswith("free ")]

        entries = cache_info()
        time.sleep(1.2)
        http_server.reset_counters()
        np.testing.assert_array_equal(plane(mnt, 1), data[1])
        gets = chunk_gets(http_server, f"{prefix}1/")
        assert len(gets) == 4 and conditional(http_server, gets), gets
        assert http_server.not_modified >= 4  # and readahead's chunks of the next plane
        assert stats(mnt)["chunks_changed"] == 1
        idle(mnt)
        assert cache_info() == entries

    # A remount without --revalidate now serves the new bytes from the disk cache.
    http_server.reset_counters()
    with mounted(url, tmp_path / "m4", *cache) as mnt:
        np.testing.assert_array_equal(plane(mnt, 0), new[0])
        assert chunk_gets(http_server, prefix) == []


def test_rewritten_chunk_on_s3_is_revalidated(tmp_path, s3_server):
    # Noise: each chunk's bytes outweigh the metadata read again meanwhile.
    data = np.random.default_rng(4).integers(0, 65535, (3, 128, 128), dtype=np.uint16)
    write_ome_zarr(tmp_path / "s3.zarr", data, "zyx", levels=1, chunks=(1, 64, 64))
    s3_server.upload_dir(tmp_path / "s3.zarr", "changed", "img.zarr")
    url = "s3://changed/img.zarr"
    opts = ["--anon", "--endpoint-url", s3_server.endpoint_url, "--cache-dir", str(tmp_path / "cache")]
    client = s3_server.client()
    old_etag = client.head_object(Bucket="changed", Key="img.zarr/0/0/0/0")["ETag"]
    log_file = tmp_path / "s3.log"
    with mounted(url, tmp_path / "mnt", *opts, "--revalidate", "1s", "--log-file", str(log_file)) as mnt:
        np.testing.assert_array_equal(plane(mnt, 0), data[0])
        idle(mnt)
        new = rewrite_chunk(tmp_path / "s3.zarr", data)
        client.put_object(Bucket="changed", Key="img.zarr/0/0/0/0", ACL="public-read",
                          Body=(tmp_path / "s3.zarr" / "0" / "0" / "0" / "0").read_bytes())
        new_etag = client.head_object(Bucket="changed", Key="img.zarr/0/0/0/0")["ETag"]
        assert new_etag != old_etag
        np.testing.assert_array_equal(plane(mnt, 0), data[0])  # within the age: the cached chunk
        time.sleep(1.2)
        before = stats(mnt)
        np.testing.assert_array_equal(plane(mnt, 0), new[0])
        after = stats(mnt)
        assert after["revalidated"] - before["revalidated"] == 4
        assert after["chunks_changed"] - before["chunks_changed"] == 1
        chunk_bytes = len((tmp_path / "s3.zarr" / "0" / "0" / "0" / "0").read_bytes())
        idle(mnt)
        changed = [line for line in log_file.read_text().splitlines() if "changed at the source" in line]
        assert len(changed) == 1 and "chunk 0/0/0" in changed[0]
        assert old_etag in changed[0] and new_etag in changed[0] and url in changed[0]
        # Three chunks answered 304: about one chunk's bytes came back, not four.
        assert after["bytes_fetched"] - before["bytes_fetched"] < 2 * chunk_bytes + 4096


def test_changed_metadata_fails_reads_until_remount(tmp_path, http_server):
    name = "reshaped.zarr"
    data = write_store(http_server.www, name, seed=5)
    url = f"{http_server.url}/{name}"
    log_file = tmp_path / "meta.log"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    with mounted(url, tmp_path / "mnt", *cache, "--revalidate", "1s", "--log-file", str(log_file)) as mnt:
        np.testing.assert_array_equal(plane(mnt, 0), data[0])
        bigger = pattern((3, 64, 96), "uint16", seed=6)  # a new shape, same chunking
        write_ome_zarr(http_server.www / name, bigger, "zyx", levels=1, chunks=CHUNKS)
        deadline = time.monotonic() + 15
        while "remount" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        for z in (0, 1, 0):
            with pytest.raises(OSError) as err:
                plane(mnt, z)
            assert err.value.errno == errno.EIO
        time.sleep(2.5)  # more metadata re-reads: still one line
        lines = [line for line in log_file.read_text().splitlines() if "remount" in line]
        assert len(lines) == 1, lines
        assert "shape [3, 64, 64] -> [3, 64, 96]" in lines[0]
    with mounted(url, tmp_path / "again", *cache) as mnt:
        for z in range(3):
            np.testing.assert_array_equal(plane(mnt, z), bigger[z])


def test_cache_clear_source_leaves_other_sources(tmp_path, http_server):
    urls, prefixes = [], []
    for name, seed in (("clear-a.zarr", 7), ("clear-b.zarr", 8)):
        write_store(http_server.www, name, seed)
        urls.append(f"{http_server.url}/{name}")
        prefixes.append(f"/{name}/0/")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    for i, url in enumerate(urls):
        with mounted(url, tmp_path / f"m{i}", *cache) as mnt:
            for z in range(SHAPE[0]):
                plane(mnt, z)
            idle(mnt)
    assert "entries    24" in ngffmount_cmd("cache", "info", *cache).stdout
    out = ngffmount_cmd("cache", "clear", urls[0] + "/", *cache).stdout
    assert f"removed 12 entries of {urls[0]}" in out
    assert "entries    12" in ngffmount_cmd("cache", "info", *cache).stdout
    http_server.reset_counters()
    for i, url in enumerate(urls):
        with mounted(url, tmp_path / f"n{i}", *cache) as mnt:
            for z in range(SHAPE[0]):
                plane(mnt, z)
    assert len(chunk_gets(http_server, prefixes[0])) == 12
    assert chunk_gets(http_server, prefixes[1]) == []


# -- parts, without FUSE ----------------------------------------------------------------


def test_store_records_versions_and_sends_conditions(tmp_path, http_server, s3_server):
    (http_server.www / "versions").mkdir(exist_ok=True)
    (http_server.www / "versions" / "obj").write_bytes(b"0123456789")
    s3_server.create_bucket("versions")
    s3_server.client().put_object(Bucket="versions", Key="obj", Body=b"0123456789", ACL="public-read")
    stores = [Store(f"{http_server.url}/versions"),
              Store("s3://versions", {"anon": True, "client_kwargs": {"endpoint_url": s3_server.endpoint_url}})]
    for store in stores:
        with observe() as seen:
            assert store.get_ranges([_range("obj", 2, 6)]) == [b"2345"]
        version = seen.version
        assert version is not None and version.etag and version.last_modified, version
        with observe(version):
            with pytest.raises(NotModified):
                store.get_ranges([_range("obj", 2, 6)])
            # Only the request the version names is conditional.
            assert store.get_ranges([_range("obj", 0, 2)]) == [b"01"]
        stale = SourceVersion("obj", 2, 6, etag='"not-this-one"')
        with observe(stale) as seen:
            assert store.get_ranges([_range("obj", 2, 6)]) == [b"2345"]
        assert seen.version.etag == version.etag


def _range(key, start, end):
    from ngffmount.adapters.storage import RangeRequest

    return RangeRequest(key, start, end)


def test_disk_entries_of_the_old_format_still_read(tmp_path):
    disk = DiskCache(str(tmp_path / "c"), 1 << 30, source="https://host/a.zarr")
    disk.put("old", b"x" * 100)  # format 1: no metadata
    disk.put("new", b"y" * 100, {"validated": 1.0})
    disk.put("big", b"z" * 100_000, {"validated": 2.0})  # kept in a file
    assert disk.get_entry("old") == (b"x" * 100, None)
    assert disk.get_entry("new") == (b"y" * 100, {"validated": 1.0})
    assert disk.get("big") == b"z" * 100_000 and disk.get_entry("big")[1] == {"validated": 2.0}
    assert disk.clear_source("https://host/a.zarr") == 3
    disk.close()


def settle(engine) -> None:
    """Fetches done (each hands its bytes to the disk after the reader), then written."""
    assert engine.wait_idle(10)
    engine.flush_disk()


def test_decoded_blocks_of_a_changed_chunk_are_not_reused(tmp_path, caplog):
    """A chunk kept encoded (Blosc blocks decoded as read) and rewritten at the source: past
    the age, the reader gets blocks of the new bytes, never blocks decoded from the old."""
    import numcodecs

    from ngffmount.adapters import open_source
    from ngffmount.cache.engine import ChunkEngine
    from ngffmount.cache.region import read_region

    path = tmp_path / "blocked.zarr"
    data = pattern((16, 256, 256), "uint16")  # one chunk of 8 blocks
    blosc = numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(16, 256, 256), compressors=blosc)
    engine = ChunkEngine(DiskCache(str(tmp_path / "cache"), source="file://" + str(path)), revalidate=0.3)
    level = open_source(str(path)).levels[0]
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 256, 256))[0], data[0])
    assert engine.stats.snapshot()["block_decodes"] >= 1
    settle(engine)
    zarr.open_array(str(path / "0"), mode="r+")[...] = 65535 - data
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 256, 256))[0], data[0])  # within age
    time.sleep(0.4)
    with caplog.at_level("WARNING", logger="ngffmount"):
        np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 256, 256))[0], 65535 - data[0])
    s = engine.stats.snapshot()
    assert s["chunks_changed"] == 1 and s["revalidated"] == 1
    assert "chunk 0/0/0 of array 0 changed at the source (ETag none -> none)" in caplog.text
    settle(engine)
    assert engine.disk.get(f"{level.cache_token}/0/0/0") == level.fetch_many(["0/0/0"])["0/0/0"]


def test_revalidation_that_cannot_reach_the_source_serves_the_cached_chunk(tmp_path, http_server):
    from ngffmount.adapters import open_source
    from ngffmount.cache.engine import ChunkEngine
    from ngffmount.cache.region import read_region

    name = "unreachable.zarr"
    data = write_store(http_server.www, name, seed=9)
    engine = ChunkEngine(DiskCache(str(tmp_path / "cache")), revalidate=0.2)
    level = open_source(f"{http_server.url}/{name}").levels[0]
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 32, 32))[0], data[0, :32, :32])
    settle(engine)
    time.sleep(0.3)
    http_server.fail_paths[f"/{name}/0/0/0/0"] = 403
    try:
        np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 32, 32))[0], data[0, :32, :32])
    finally:
        del http_server.fail_paths[f"/{name}/0/0/0/0"]
    s = engine.stats.snapshot()
    assert s["revalidation_failures"] == 1 and s["errors"] == 0
    time.sleep(0.3)  # reachable again: revalidated, 304
    before = http_server.not_modified
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (1, 32, 32))[0], data[0, :32, :32])
    assert http_server.not_modified == before + 1


def test_revalidate_option_from_fstab_and_cli():
    from ngffmount.vfs.command.cli import build_parser, parse_age
    from ngffmount.vfs.command.service import helper_arguments

    assert helper_arguments(["s3://b/i.zarr", "/mnt/i", "-o", "ro,revalidate=1h"]) == [
        "mount", "s3://b/i.zarr", "/mnt/i", "--revalidate", "1h"]
    assert [parse_age(t) for t in ("30s", "10m", "1h", "1d", "90")] == [30, 600, 3600, 86400, 90]
    args = build_parser().parse_args(["mount", "src", "mnt", "--revalidate", "1h"])
    assert args.revalidate == 3600
    assert build_parser().parse_args(["mount", "src", "mnt"]).revalidate is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mount", "src", "mnt", "--revalidate", "soon"])


def test_changed_chunk_of_a_shard_is_read_from_the_new_shard_index(tmp_path, caplog):
    """A rewritten shard moves its inner chunks: past the age, the changed chunk is read
    through the new shard index, never from where it lay in the old shard."""
    from ngffmount.adapters import open_source
    from ngffmount.cache.engine import ChunkEngine
    from ngffmount.cache.region import read_region

    path = tmp_path / "sharded.zarr"
    data = np.full((2, 64, 64), 5, np.uint16)  # one shard of 8 inner chunks, all compressing small
    write_ome_zarr(path, data, "zyx", version="0.5", levels=1, chunks=(1, 32, 32), shards=(2, 64, 64))
    engine = ChunkEngine(DiskCache(str(tmp_path / "cache")), revalidate=0.3)
    level = open_source(str(path)).levels[0]
    np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (2, 64, 64)), data)
    settle(engine)
    new = data.copy()
    new[0, :32, :32] = np.random.default_rng(1).integers(0, 65535, (32, 32), dtype=np.uint16)  # grows: the rest move
    new[1, 32:, 32:] = 7
    zarr.open_array(str(path / "0"), mode="r+")[...] = new
    time.sleep(0.4)
    with caplog.at_level("WARNING", logger="ngffmount"):
        np.testing.assert_array_equal(read_region(engine, level, (0, 0, 0), (2, 64, 64)), new)
    assert engine.stats.snapshot()["chunks_changed"] >= 2


def test_rewritten_bigdataviewer_hdf5_fails_reads_until_remount(tmp_path, http_server, caplog):
    """A BigDataViewer HDF5 file's chunk index is read once per mount: when --revalidate finds
    its chunks changed, the level's reads fail with EIO and the log says to remount."""
    import h5py

    from bdv_fixtures import write_bdv_hdf5
    from conftest import read_all, tiff_array, vfs_for
    from ngffmount.adapters.errors import SourceChanged
    from ngffmount.cache.engine import ChunkEngine

    name = f"bdv-{tmp_path.name}"
    xml, expected = write_bdv_hdf5(http_server.www / name, (4, 64, 64), setups=1, timepoints=1, chunks=(2, 32, 32),
                                   levels=1, compression=None)
    engine = ChunkEngine(DiskCache(str(tmp_path / "cache")), revalidate=0.3)
    fs = vfs_for(f"{http_server.url}/{name}/{xml.name}", engine=engine)
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0/z00001.tif")), expected[(0, 0, 0)][1])
    settle(engine)
    time.sleep(0.01)
    h5 = next((http_server.www / name).glob("*.h5"))
    with h5py.File(h5, "a") as f:
        cells = f["t00000/s00/0/cells"]
        cells[...] = cells[...] + 1  # in place: same layout, new bytes (and a new ETag)
    # Later than the write it replaces, as a real rewrite is: Last-Modified counts seconds, and
    # the remount below names the file by its size and Last-Modified.
    os.utime(h5, (h5.stat().st_atime, h5.stat().st_mtime + 5))
    time.sleep(0.4)
    with caplog.at_level("ERROR", logger="ngffmount"), pytest.raises(SourceChanged):
        read_all(fs, "/s0/z00001.tif")
    with pytest.raises(SourceChanged):
        read_all(fs, "/s0/z00003.tif")
    assert len([r for r in caplog.records if "remount" in r.getMessage()]) == 1, caplog.text
    fresh = vfs_for(f"{http_server.url}/{name}/{xml.name}", engine=ChunkEngine(DiskCache(str(tmp_path / "cache"))))
    plane = tiff_array(read_all(fresh, "/s0/z00001.tif"))
    np.testing.assert_array_equal(plane, expected[(0, 0, 0)][1] + 1)


def test_rewritten_precomputed_shard_is_read_through_its_new_index(tmp_path):
    """A sharded Neuroglancer precomputed volume rewritten by tensorstore (gzip data: the
    chunks move in the shard): past the age, planes come from the new shards."""
    from precomputed_fixtures import write_volume

    from ngffmount.adapters import open_source
    from ngffmount.cache.engine import ChunkEngine
    from ngffmount.cache.region import read_region

    root = tmp_path / "vol.precomputed"
    before = write_volume(root, "raw", "murmur", seed=0)[0]
    engine = ChunkEngine(DiskCache(str(tmp_path / "cache")), revalidate=0.3)
    level = open_source(str(root)).levels[0]
    whole = ((0,) * len(level.shape), level.shape)
    np.testing.assert_array_equal(read_region(engine, level, *whole), before)
    settle(engine)
    after = write_volume(root, "raw", "murmur", seed=1000)[0]
    assert not np.array_equal(before, after)
    time.sleep(0.4)
    np.testing.assert_array_equal(read_region(engine, level, *whole), after)
    assert engine.stats.snapshot()["chunks_changed"] >= 1
