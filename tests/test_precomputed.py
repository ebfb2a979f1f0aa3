"""Neuroglancer precomputed volumes, written by tensorstore's neuroglancer_precomputed driver
(every encoding, sharded with identity and murmurhash, raw and gzip, and not; one channel and
several) and by cloud-volume. Every plane of every level must equal what the writer itself
reads back, locally, over HTTP without listing, on moto S3 and in real FUSE mounts."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import mounted, ngffmount_cmd, read_all, tiff_array, vfs_for
from faults import FaultyProxy
from imagej import describe_image_macro, ij_str, parse_kv, run_macro
from precomputed_fixtures import (
    CHUNK, DATA_TYPES, SHARDINGS, SIZES, volume_pattern, write_cloudvolume, write_volume,
)
from test_hostile import replace_random_node

from ngffmount.adapters import BadMetadata, ChunkReadError, NgffMountError, NotAnImage, Unsupported, open_source

OFFSET = (6, 4, 2)  # voxel_offset of s0 (x, y, z): chunk names and shard ids count from it
CHANNELS = {"raw": 3, "jpeg": 3, "png": 3, "compressed_segmentation": 2}
MATRIX = [(enc, sh, ch) for enc in DATA_TYPES for sh in (None, "identity", "murmur") for ch in (1, CHANNELS[enc])]
PLANE = re.compile(r"c(\d+)_z(\d+)")


def volume_name(encoding: str, sharding: str | None, channels: int) -> str:
    return f"{encoding}-{sharding or 'unsharded'}-{channels}c.precomputed"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> dict[tuple, tuple[Path, list[np.ndarray]]]:
    """The whole matrix, written once: (encoding, sharding, channels) -> (folder, levels)."""
    root = tmp_path_factory.mktemp("precomputed")
    out = {}
    for i, (enc, sh, ch) in enumerate(MATRIX):
        path = root / volume_name(enc, sh, ch)
        out[enc, sh, ch] = (path, write_volume(path, enc, sh, ch, voxel_offset=OFFSET, seed=i))
    return out


def assert_planes_equal(fs, levels: list[np.ndarray], root: str = "") -> int:
    """Every plane file of every level against the reference; returns how many were read."""
    n = 0
    for i, expected in enumerate(levels):
        names = sorted(fs.readdir(f"{root}/s{i}"))
        assert len(names) == int(np.prod(expected.shape[:-2])), names
        for name in names:
            got = tiff_array(read_all(fs, f"{root}/s{i}/{name}"))
            if expected.ndim == 4:
                c, z = map(int, PLANE.search(name).groups())
                want = expected[c, z]
            else:
                want = expected[int(name[1:6])]
            np.testing.assert_array_equal(got, want, err_msg=f"s{i}/{name}")
            n += 1
    return n


def copy_to_http(http_server, path: Path) -> str:
    dest = http_server.www / path.name
    if not dest.exists():
        shutil.copytree(path, dest)
    return f"{http_server.url}/{path.name}"


# -- the matrix, through VirtualFS --------------------------------------------------------------


@pytest.mark.parametrize("encoding,sharding,channels", MATRIX,
                         ids=[volume_name(*m).removesuffix(".precomputed") for m in MATRIX])
def test_every_plane_of_every_level_matches_tensorstore(volumes, encoding, sharding, channels):
    path, levels = volumes[encoding, sharding, channels]
    fs = vfs_for(str(path))
    assert assert_planes_equal(fs, levels) == sum(int(np.prod(a.shape[:-2])) for a in levels)
    info = json.loads(read_all(fs, "/info.json"))
    kind = "segmentation" if encoding == "compressed_segmentation" else "image"
    assert info["format"] == f"Neuroglancer precomputed {kind}"
    assert [a["name"] for a in info["axes"]] == (["c"] if channels > 1 else []) + ["z", "y", "x"]
    assert [lv["shape"] for lv in info["levels"]] == [list(a.shape) for a in levels]


def test_calibration_from_resolution_and_voxel_offset(volumes):
    path, levels = volumes["raw", None, 3]
    info = json.loads(read_all(vfs_for(str(path)), "/info.json"))
    assert info["axes"] == [{"name": "c", "type": "channel", "unit": None}] + [
        {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    s0, s1 = info["levels"]
    assert s0["scale"] == [1.0, 40.0, 4.0, 4.0] and s1["scale"] == [1.0, 80.0, 8.0, 8.0]
    # voxel_offset (x, y, z) = (6, 4, 2) at 4 x 4 x 40 nm; s1's is (3, 2, 1) at 8 x 8 x 80 nm
    assert s0["translation"] == [0.0, 80.0, 16.0, 24.0] and s1["translation"] == [0.0, 80.0, 16.0, 24.0]
    assert s0["voxel_size"] == {"x": 4.0, "y": 4.0, "z": 40.0, "unit": "nm"}
    assert s0["chunk_shape"] == [3, CHUNK[2], CHUNK[1], CHUNK[0]]


def test_uint64_segmentation_has_planes_and_hdf5_and_says_why_no_imagej_stack(volumes):
    path, levels = volumes["compressed_segmentation", "murmur", 1]
    fs = vfs_for(str(path))
    entries = set(fs.readdir("/"))
    assert {"s0", "s1", "s0.h5", "image.h5"} <= entries and "s0.tif" not in entries
    info = json.loads(read_all(fs, "/info.json"))
    assert "uint64" in info["missing_views"]["s0.tif"]
    assert info["levels"][0]["dtype"] == "uint64"
    with h5py.File(io.BytesIO(read_all(fs, "/s0.h5")), "r") as f:
        np.testing.assert_array_equal(f["data"][...], levels[0])
    assert levels[0].max() > 2**40  # the labels really use the high bits


def test_a_url_whose_info_is_a_volume_mounts_without_the_suffix(volumes, tmp_path):
    path, levels = volumes["png", "identity", 1]
    plain = tmp_path / "volume"
    shutil.copytree(path, plain)
    image = open_source(str(plain))
    assert image.format == "Neuroglancer precomputed image"
    assert assert_planes_equal(vfs_for(str(plain)), levels) > 0


def test_sharded_grid_of_uneven_sides(tmp_path):
    """A grid of 9 x 2 x 5 chunks: the compressed Morton code skips y's bits after the first,
    and z keeps going after x ran out; many shards and minishards, no preshift."""
    sharding = {"@type": "neuroglancer_uint64_sharded_v1", "preshift_bits": 0, "hash": "identity",
                "minishard_bits": 3, "shard_bits": 3, "minishard_index_encoding": "gzip", "data_encoding": "raw"}
    path = tmp_path / "uneven.precomputed"
    levels = write_volume(path, "raw", sharding, 1, sizes=[(70, 9, 19)], chunk=(8, 8, 4))
    assert len(list((path / "4_4_40").iterdir())) > 4
    assert assert_planes_equal(vfs_for(str(path)), levels) == 19


def test_missing_chunks_read_as_zero(volumes, tmp_path):
    for sharding in (None, "identity"):
        path = tmp_path / volume_name("raw", sharding, 1)
        levels = write_volume(path, "raw", sharding, 1)
        if sharding is None:
            os.remove(path / "4_4_40" / "0-16_0-16_0-4")
        else:
            os.remove(path / "4_4_40" / "1.shard")
        fs = vfs_for(str(path))
        got = tiff_array(read_all(fs, "/s0/z00000.tif"))
        if sharding is None:
            assert (got[:16, :16] == 0).all()
            np.testing.assert_array_equal(got[16:], levels[0][0, 16:])
        else:  # a whole shard gone: its chunks are zeros, the other shard's are data
            assert (got == 0).any() and (got == levels[0][0]).any()
            assert np.logical_or(got == 0, got == levels[0][0]).all()


# -- cloud-volume, the other writer: gzip-compressed chunks as <name>.gz on disk -------------------

CLOUDVOLUME = [("raw", 1, None), ("raw", 3, None), ("jpeg", 1, None), ("png", 1, None),
               ("compressed_segmentation", 1, None), ("compressed_segmentation", 1, "uint32")]


@pytest.fixture(scope="module")
def cloudvolumes(tmp_path_factory) -> dict[tuple, tuple[Path, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("cloudvolume")
    return {case: (root / f"{case[0]}-{case[1]}-{case[2]}", write_cloudvolume(root / f"{case[0]}-{case[1]}-{case[2]}",
                                                                              *case[:2], seed=i, dtype=case[2]))
            for i, case in enumerate(CLOUDVOLUME)}


@pytest.mark.parametrize("case", CLOUDVOLUME, ids=[f"{e}-{c}c-{d or 'default'}" for e, c, d in CLOUDVOLUME])
def test_cloudvolume_volumes_match_cloudvolume(cloudvolumes, case):
    path, levels = cloudvolumes[case]
    if case[0] in ("raw", "compressed_segmentation"):
        assert any(p.suffix == ".gz" for p in (path / "4_4_40").iterdir())  # the case this covers
    assert assert_planes_equal(vfs_for(str(path)), levels) > 0


def test_cloudvolume_volumes_over_http_and_s3(cloudvolumes, http_server, s3_server):
    path, levels = cloudvolumes["compressed_segmentation", 1, None]
    assert assert_planes_equal(vfs_for(copy_to_http(http_server, path)), levels) > 0
    path, levels = cloudvolumes["raw", 3, None]
    s3_server.upload_dir(path, "precomputed", f"cv/{path.name}", public=True)
    assert assert_planes_equal(vfs_for(f"s3://precomputed/cv/{path.name}", s3_server.storage_options()), levels) > 0


def test_gzip_content_encoding_on_s3(volumes, s3_server):
    """cloud-volume uploads raw and compressed_segmentation chunks gzipped, with
    Content-Encoding gzip and no .gz suffix; S3 clients hand those bytes over as stored."""
    import gzip

    client = s3_server.client()
    s3_server.create_bucket("precomputed")
    for key in (("raw", None, 1), ("compressed_segmentation", None, 2)):
        path, levels = volumes[key]
        for f in path.rglob("*"):
            if f.is_file():
                body, extra = f.read_bytes(), {}
                if f.name != "info":
                    body, extra = gzip.compress(body), {"ContentEncoding": "gzip"}
                client.put_object(Bucket="precomputed", Key=f"ce/{path.name}/{f.relative_to(path)}", Body=body,
                                  ACL="public-read", **extra)
        fs = vfs_for(f"s3://precomputed/ce/{path.name}", s3_server.storage_options())
        assert assert_planes_equal(fs, levels) > 0


def test_cloudvolume_multichannel_png_matches_what_was_written(tmp_path):
    """cloud-volume's own reader lays several-channel PNG (and JPEG) chunks out channel-last
    where its writer (like Neuroglancer and tensorstore) interleaves them; PNG is lossless, so
    the written array is the reference."""
    path = tmp_path / "png3.precomputed"
    write_cloudvolume(path, "png", 3, seed=5, dtype="uint8")
    written = [np.transpose(volume_pattern(size, 3, "uint8", 5 + i), (3, 2, 1, 0)) for i, size in enumerate(SIZES)]
    assert assert_planes_equal(vfs_for(str(path)), written) > 0


# -- remote: HTTP without listing, moto S3, real FUSE mounts ---------------------------------------

# every encoding, sharded and not
REMOTE = [("raw", "identity", 3), ("raw", None, 1), ("jpeg", None, 1), ("jpeg", "identity", 3), ("png", "murmur", 3),
          ("png", None, 3), ("compressed_segmentation", "murmur", 2), ("compressed_segmentation", None, 1)]


@pytest.mark.parametrize("key", REMOTE, ids=[volume_name(*k) for k in REMOTE])
def test_over_http_without_listing(volumes, http_server, key):
    path, levels = volumes[key]
    assert assert_planes_equal(vfs_for(copy_to_http(http_server, path)), levels) > 0


@pytest.mark.parametrize("key", REMOTE, ids=[volume_name(*k) for k in REMOTE])
def test_on_moto_s3(volumes, s3_server, key):
    path, levels = volumes[key]
    s3_server.upload_dir(path, "precomputed", path.name, public=True)
    fs = vfs_for(f"s3://precomputed/{path.name}", s3_server.storage_options())
    assert assert_planes_equal(fs, levels) > 0


def test_fuse_mount_over_http(volumes, http_server, tmp_path, cache_args):
    path, levels = volumes["jpeg", "murmur", 3]
    with mounted(copy_to_http(http_server, path), tmp_path / "mnt", *cache_args) as mnt:
        for i, expected in enumerate(levels):
            names = sorted(os.listdir(mnt / f"s{i}"))
            assert len(names) == expected.shape[0] * expected.shape[1]
            for name in names:
                c, z = map(int, PLANE.search(name).groups())
                np.testing.assert_array_equal(tifffile.imread(mnt / f"s{i}" / name), expected[c, z], err_msg=name)
        stack = tifffile.imread(mnt / "s0.tif")
        assert stack.size == levels[0].size
        # ImageJ 1.x, as a Fiji user opens it: a 3-channel hyperstack in nanometers
        channels, depth = levels[0].shape[:2]
        positions = [(z * channels + c + 1, x, y) for c, z, x, y in ((0, 0, 0, 0), (2, 5, 30, 20), (1, 10, 44, 36))]
        info = parse_kv(run_macro(describe_image_macro(f"open({ij_str(str(mnt / 's0.tif'))});", positions)))
        assert (info["channels"], info["slices"], info["width"], info["height"]) == (3, depth, 45, 37)
        assert info["unit"] == "nm" and (info["pixelWidth"], info["pixelHeight"], info["pixelDepth"]) == (4, 4, 40)
        for (s, x, y), (c, z) in zip(positions, ((0, 0), (2, 5), (1, 10))):
            assert info[f"pixel_{s}_{x}_{y}"] == levels[0][c, z, y, x]


def test_fuse_mount_on_s3(volumes, s3_server, tmp_path, cache_args):
    path, levels = volumes["compressed_segmentation", "identity", 1]
    s3_server.upload_dir(path, "precomputed", f"fuse/{path.name}", public=True)
    url = f"s3://precomputed/fuse/{path.name}"
    with mounted(url, tmp_path / "mnt", "--anon", "--endpoint-url", s3_server.endpoint_url, *cache_args) as mnt:
        for z in range(levels[0].shape[0]):
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), levels[0][z])
        with h5py.File(mnt / "image.h5", "r") as f:
            for i, expected in enumerate(levels):
                np.testing.assert_array_equal(f[f"s{i}"][...], expected)


# -- requests: one range per chunk, indices once, never a whole shard --------------------------


def test_sharded_reads_one_range_request_per_chunk(volumes, http_server):
    path, levels = volumes["raw", "identity", 3]
    copy_to_http(http_server, path)
    sizes = {f"/{path.name}/4_4_40/{p.name}": p.stat().st_size for p in (path / "4_4_40").iterdir()}
    grid = [-(-s // c) for s, c in zip(SIZES[0], CHUNK)]
    with FaultyProxy(http_server.url) as proxy:
        fs = vfs_for(f"{proxy.url}/{path.name}")
        proxy.reset_counters()
        assert_planes_equal(fs, levels[:1])
        log = [entry for entry in proxy.log if entry[1] in sizes]
        again = len(proxy.log)
        assert_planes_equal(fs, levels[:1])  # cached: no request at all
        assert len(proxy.log) == again
    assert log and all(method == "GET" for method, *_ in log)
    ranges = []
    for _, shard, rng, _ in log:
        assert rng is not None, "a shard was read without a Range"
        start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", rng).groups())
        assert end + 1 - start < sizes[shard], f"{shard} read whole"
        ranges.append((shard, start, end + 1))
    assert len(set(ranges)) == len(ranges), "an index or chunk was read twice"
    index_bytes = 16 << SHARDINGS["identity"]["minishard_bits"]
    entries = [r for r in ranges if r[2] <= index_bytes]
    assert all(end - start == 16 for _, start, end in entries)  # one shard index entry at a time
    chunks = np.prod(grid)
    # each chunk one request, plus one shard index entry and one minishard index per minishard read
    assert len(ranges) == chunks + 2 * len(entries), ranges
    assert len(entries) <= len(sizes) << SHARDINGS["identity"]["minishard_bits"]


def test_unsharded_reads_one_request_per_chunk(volumes, http_server):
    path, levels = volumes["compressed_segmentation", None, 2]
    copy_to_http(http_server, path)
    files = {f"/{path.name}/4_4_40/{p.name}" for p in (path / "4_4_40").iterdir()}
    with FaultyProxy(http_server.url) as proxy:
        fs = vfs_for(f"{proxy.url}/{path.name}")
        proxy.reset_counters()
        assert_planes_equal(fs, levels[:1])
        got = sorted(p for _, p, _, _ in proxy.log if "/4_4_40/" in p)
    assert got == sorted(files)  # every chunk once, and chunk names from voxel_offset on


# -- the adapter contract -------------------------------------------------------------------------
# (tests/test_contract.py runs it on a sharded tensorstore volume)


# -- bad input ------------------------------------------------------------------------------------

GOOD_INFO = {
    "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8", "num_channels": 1,
    "scales": [{"key": "s0", "size": [8, 8, 2], "resolution": [4, 4, 40], "voxel_offset": [0, 0, 0],
                "chunk_sizes": [[8, 8, 2]], "encoding": "raw"}],
}


def _with(change) -> dict:
    doc = json.loads(json.dumps(GOOD_INFO))
    change(doc)
    return doc


BAD_INFOS = [
    ("{not json", BadMetadata, "broken JSON"),
    (_with(lambda d: d["scales"][0].update(encoding="zfpc")), Unsupported, "chunk encoding 'zfpc' is not supported"),
    (_with(lambda d: d.update(type="mesh")), BadMetadata, "type must be 'image' or 'segmentation'"),
    (_with(lambda d: d.update(data_type="complex64")), Unsupported, "data_type 'complex64' is not supported"),
    (_with(lambda d: d.update(num_channels=0)), BadMetadata, "num_channels"),
    (_with(lambda d: d.update(scales=[])), BadMetadata, "scales must be a non-empty list"),
    (_with(lambda d: d["scales"][0].update(size=[8, 8])), BadMetadata, "size must list 3"),
    (_with(lambda d: d["scales"][0].update(chunk_sizes=[[0, 8, 2]])), BadMetadata, "chunk_sizes[0] must list 3"),
    (_with(lambda d: d["scales"][0].update(key="../../etc")), BadMetadata, "outside the source"),
    (_with(lambda d: d["scales"][0].update(encoding="jpeg", key="s0") or d.update(data_type="uint16")),
     BadMetadata, "jpeg chunks hold uint8"),
    (_with(lambda d: d["scales"][0].update(encoding="compressed_segmentation")), BadMetadata,
     "compressed_segmentation chunks hold uint32 or uint64"),
    (_with(lambda d: d["scales"][0].update(sharding={"@type": "neuroglancer_uint64_sharded_v1", "hash": "sha1",
                                                       "preshift_bits": 0, "minishard_bits": 0, "shard_bits": 0})),
     Unsupported, "sharding hash 'sha1'"),
    (_with(lambda d: d["scales"][0].update(sharding={"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity",
                                                       "preshift_bits": 0, "minishard_bits": 40, "shard_bits": 0})),
     BadMetadata, "minishard_bits must be an integer from 0 to 32"),
    (_with(lambda d: d["scales"][0].update(sharding={"@type": "neuroglancer_uint64_sharded_v2"})), Unsupported,
     "sharding 'neuroglancer_uint64_sharded_v2' is not supported"),
    (_with(lambda d: d["scales"][0].update(size=[2**40, 2**40, 2**40])), Unsupported, "larger than ngffmount serves"),
    (_with(lambda d: d.update(scales="s0")), BadMetadata, "scales must be a non-empty list"),
    ({"@type": "neuroglancer_legacy_mesh"}, NotAnImage, "not a multiscale volume"),
]


@pytest.mark.parametrize("doc,error,message", BAD_INFOS, ids=[m for _, _, m in BAD_INFOS])
def test_bad_info_fails_at_mount_with_one_line(tmp_path, doc, error, message):
    root = tmp_path / "bad.precomputed"
    root.mkdir()
    (root / "info").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(error) as exc:
        open_source(str(root))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_info_never_crashes(tmp_path_factory, data):
    """One node anywhere in a sharded volume's info replaced by arbitrary JSON: the mount
    either works (and then each plane reads or fails with ChunkReadError) or fails with one
    of our errors, on one line."""
    root = tmp_path_factory.mktemp("fuzz") / "v.precomputed"
    write_volume(root, "compressed_segmentation", "murmur", 1, sizes=[(20, 18, 3)])
    doc = replace_random_node(json.loads((root / "info").read_text()), data)
    (root / "info").write_text(json.dumps(doc))
    try:
        fs = vfs_for(str(root))
    except NgffMountError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    json.loads(read_all(fs, "/info.json"))
    for name in fs.readdir("/s0")[:3] if "s0" in fs.readdir("/") else []:
        try:
            read_all(fs, f"/s0/{name}")
        except ChunkReadError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(encoding=st.sampled_from(["compressed_segmentation", "raw"]), data=st.data())
def test_fuzzed_shard_bytes_never_crash(tmp_path_factory, encoding, data):
    """Random bytes of a shard (indices, gzip streams, chunk data) overwritten: every plane
    reads, or fails with ChunkReadError on one line; nothing crashes or hangs."""
    root = tmp_path_factory.mktemp("fuzz") / "v.precomputed"
    write_volume(root, encoding, "murmur", 1, sizes=[(20, 18, 6)])
    for shard in sorted((root / "4_4_40").iterdir()):
        raw = bytearray(shard.read_bytes())
        for _ in range(data.draw(st.integers(1, 6))):
            at = data.draw(st.integers(0, len(raw) - 1))
            chunk = data.draw(st.binary(min_size=1, max_size=8))
            raw[at:at + len(chunk)] = chunk
        shard.write_bytes(bytes(raw[:data.draw(st.integers(1, len(raw)))]))
    fs = vfs_for(str(root))
    for name in fs.readdir("/s0"):
        try:
            read_all(fs, f"/s0/{name}")
        except ChunkReadError as exc:
            assert str(exc) and "\n" not in str(exc)


def test_bad_info_through_the_cli(tmp_path):
    root = tmp_path / "bad.precomputed"
    root.mkdir()
    (root / "info").write_text(json.dumps(_with(lambda d: d["scales"][0].update(encoding="zfpc"))))
    (tmp_path / "mnt").mkdir()
    result = ngffmount_cmd("mount", str(root), str(tmp_path / "mnt"), check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "chunk encoding 'zfpc' is not supported" in lines[0], result.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def _first_minishard_entry(shard: Path) -> tuple[int, int, int]:
    """(offset in the file, start, end) of the first non-empty shard index entry."""
    data = shard.read_bytes()
    for m in range(16 << SHARDINGS["identity"]["minishard_bits"] >> 4):
        start, end = struct.unpack_from("<QQ", data, 16 * m)
        if end > start:
            return 16 * m, start, end
    raise AssertionError("no minishard in shard")


def _plane_errors(fs, level_planes: int) -> tuple[list[str], list[str]]:
    failed, ok = [], []
    for z in range(level_planes):
        name = f"/s0/z{z:05d}.tif"
        try:
            read_all(fs, name)
            ok.append(name)
        except ChunkReadError as exc:
            assert "\n" not in str(exc)
            failed.append(str(exc))
    return failed, ok


@pytest.mark.parametrize("damage", ["shard index past the end", "minishard index past the end", "chunk past the end",
                                    "minishard index not 24-byte entries", "chunk of 1 GiB"])
def test_broken_shard_indices_fail_those_reads_only(tmp_path, damage):
    path = tmp_path / "broken.precomputed"
    write_volume(path, "raw", "identity", 1)
    shard = path / "4_4_40" / "0.shard"
    data = bytearray(shard.read_bytes())
    at, start, end = _first_minishard_entry(shard)
    base = 16 << SHARDINGS["identity"]["minishard_bits"]
    if damage == "shard index past the end":
        struct.pack_into("<QQ", data, at, start, len(data) + 4096)
    elif damage == "minishard index not 24-byte entries":
        struct.pack_into("<QQ", data, at, start, end - 1)
    else:
        table = np.frombuffer(bytes(data[base + start:base + end]), "<u8").reshape(3, -1).copy()
        if damage == "minishard index past the end":
            table[1, 0] = 2**40  # the first chunk's offset
        elif damage == "chunk of 1 GiB":
            table[2, -1] = 2**30  # never asked for: the shard may well be that large
        else:
            table[2, -1] = len(data)  # the last chunk's size
        data[base + start:base + end] = table.tobytes()
    shard.write_bytes(bytes(data))
    fs = vfs_for(str(path))
    failed, ok = _plane_errors(fs, SIZES[0][2])
    assert failed and ok, (failed, ok)  # the damage stays in its chunks
    expected = {"chunk of 1 GiB": "more than any encoding", "minishard index not 24-byte entries": "24-byte"}
    assert all(re.search(expected.get(damage, "past the end|corrupt"), m) for m in failed), failed


@pytest.mark.parametrize("encoding,garbage", [
    ("compressed_segmentation", struct.pack("<5I", 1, 0xFFFFFF00, 0x7FFFFFFF, 3, 4)),
    ("compressed_segmentation", struct.pack("<3I", 1, 5, 9)),
    ("compressed_segmentation", b"\x01\x00\x00\x00" + bytes(range(256)) * 8),
    ("jpeg", b"\xff\xd8\xff\xe0 not a jpeg"),
    ("jpeg", "bomb"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + struct.pack(">II", 60000, 60000) + b"\x08\x00\x00\x00\x00"),
    ("raw", b"short"),
])
def test_corrupt_chunks_are_eio_for_that_read_only(tmp_path, encoding, garbage):
    path = tmp_path / f"corrupt-{encoding}.precomputed"
    levels = write_volume(path, encoding, None, 1)
    if garbage == "bomb":  # a whole JPEG whose frame header claims 60000 x 60000 pixels
        jpeg = bytearray((path / "4_4_40" / "0-16_0-16_0-4").read_bytes())
        sof = jpeg.find(b"\xff\xc0")
        struct.pack_into(">HH", jpeg, sof + 5, 60000, 60000)
        garbage = bytes(jpeg)
    (path / "4_4_40" / "0-16_0-16_0-4").write_bytes(garbage)
    fs = vfs_for(str(path))
    for _ in range(2):  # and again: nothing half-decoded stays behind
        with pytest.raises(ChunkReadError, match="cannot decode chunk 0-16_0-16_0-4"):
            read_all(fs, "/s0/z00000.tif")
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0/z00004.tif")), levels[0][4])


def test_broken_shard_is_eio_through_fuse(tmp_path, http_server, cache_args):
    path = http_server.www / "eio.precomputed"
    write_volume(path, "raw", "identity", 1)
    shard = path / "4_4_40" / "0.shard"
    data = bytearray(shard.read_bytes())
    at, start, _ = _first_minishard_entry(shard)
    struct.pack_into("<QQ", data, at, start, 2**50)
    shard.write_bytes(bytes(data))
    log_file = tmp_path / "daemon.log"
    with mounted(f"{http_server.url}/eio.precomputed", tmp_path / "mnt", "--log-file", str(log_file),
                 *cache_args) as mnt:
        results = {}
        for z in range(SIZES[0][2]):
            try:
                tifffile.imread(mnt / "s0" / f"z{z:05d}.tif")
                results[z] = "ok"
            except OSError as exc:
                assert exc.errno == errno.EIO
                results[z] = "eio"
        assert set(results.values()) == {"ok", "eio"}, results
        assert "corrupt" in log_file.read_text() or "past the end" in log_file.read_text()


# -- a Cellmap dataset folder: N5 container beside neuroglancer/em/<name>.precomputed -------------


def write_cellmap_dataset(root: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """jrc_test.n5/em/fibsem-uint16 (z5py, s0 and s1) and neuroglancer/em/fibsem-uint8.precomputed
    (tensorstore, jpeg) as Cellmap lays out a dataset; returns what each writer reads back."""
    import z5py

    f = z5py.File(str(root / "jrc_test.n5"), mode="a", use_zarr_format=False)
    g = f.create_group("em").create_group("fibsem-uint16")
    n5_levels = []
    for i, shape in enumerate([(6, 20, 24), (3, 10, 12)]):
        data = (np.arange(np.prod(shape)).reshape(shape) * (i + 3) % 60000).astype("uint16")
        g.create_dataset(f"s{i}", data=data, chunks=(2, 8, 8), compression="gzip")
        n5_levels.append(z5py.File(str(root / "jrc_test.n5"), mode="r")[f"em/fibsem-uint16/s{i}"][...])
    g.attrs["downsamplingFactors"] = [[1, 1, 1], [2, 2, 2]]
    g.attrs["pixelResolution"] = {"unit": "nm", "dimensions": [4.0, 4.0, 4.0]}
    precomputed_levels = write_volume(root / "neuroglancer" / "em" / "fibsem-uint8.precomputed", "jpeg", "murmur", 1)
    return n5_levels, precomputed_levels


def test_cellmap_dataset_folder_shows_precomputed_beside_n5(tmp_path, s3_server):
    root = tmp_path / "jrc_test"
    n5_levels, pc_levels = write_cellmap_dataset(root)
    s3_server.upload_dir(root, "cellmap", f"{tmp_path.name}/jrc_test", public=True)
    for url, options in ((str(root), None), (f"s3://cellmap/{tmp_path.name}/jrc_test", s3_server.storage_options())):
        fs = vfs_for(url, options)
        assert sorted(fs.readdir("/")) == ["jrc_test.n5", "neuroglancer"]
        assert assert_planes_equal(fs, pc_levels, "/neuroglancer/em/fibsem-uint8.precomputed") > 0
        assert assert_planes_equal(fs, n5_levels, "/jrc_test.n5/em/fibsem-uint16") > 0
        info = json.loads(read_all(fs, "/neuroglancer/em/fibsem-uint8.precomputed/info.json"))
        assert info["format"] == "Neuroglancer precomputed image"


def test_dataset_folder_over_http_needs_listing(tmp_path, http_server):
    root = http_server.www / f"cellmap-{tmp_path.name}"
    write_cellmap_dataset(root)
    with pytest.raises(NotAnImage, match="no image metadata found"):
        open_source(f"{http_server.url}/{root.name}")
    # the volume itself mounts over HTTP
    image = open_source(f"{http_server.url}/{root.name}/neuroglancer/em/fibsem-uint8.precomputed")
    assert image.format == "Neuroglancer precomputed image"
