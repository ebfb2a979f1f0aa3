"""sN.xz/ and sN.yz/: orthogonal planes equal the source slices, carry the right calibration
for ImageJ, and a scroll decodes each chunk at most once."""

from __future__ import annotations

import io

import numcodecs
import numpy as np
import pytest
import tifffile

from conftest import mounted, read_all, vfs_for
from imagej import describe_image_macro, ij_str, parse_kv, run_macro
from ngffmount.adapters import open_source
from ngffmount.cache.engine import ChunkEngine
from zarr_fixtures import pattern, write_ome_zarr

UM = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
# Chunk compressions: whole-chunk decodes, and Blosc frames whose blocks decode alone
# (blocks of two z planes; and 1000-byte blocks that end mid-row, a few per z plane).
COMPRESSORS = {
    "zstd": ("0.4", numcodecs.Zstd(3)),
    "blosc-lz4": ("0.4", numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE)),
    "blosc-small-blocks": ("0.5", {"name": "blosc", "configuration": {
        "cname": "zstd", "clevel": 3, "shuffle": "bitshuffle", "typesize": 2, "blocksize": 1000}}),
}


def plane(fs, path: str) -> np.ndarray:
    return tifffile.imread(io.BytesIO(read_all(fs, path)))


def test_xz_and_yz_planes_equal_source_slices(tmp_path):
    data = pattern((2, 3, 7, 20, 30), "int16", seed=4)
    write_ome_zarr(tmp_path / "img.zarr", data, "tczyx", levels=2, chunks=(1, 1, 4, 8, 8), scale0=[1, 1, 3, 0.5, 0.25],
                   units=UM)
    fs = vfs_for(str(tmp_path / "img.zarr"))
    xz, yz = fs.readdir("/s0.xz"), fs.readdir("/s0.yz")
    assert len(xz) == 2 * 3 * 20 and xz[0] == "t00000_c000_y00000.tif" and xz[-1] == "t00001_c002_y00019.tif"
    assert len(yz) == 2 * 3 * 30 and yz[-1] == "t00001_c002_x00029.tif"
    for t in range(2):
        for c in range(3):
            for y in range(20):
                np.testing.assert_array_equal(plane(fs, f"/s0.xz/t{t:05d}_c{c:03d}_y{y:05d}.tif"), data[t, c, :, y, :])
            for x in range(30):
                np.testing.assert_array_equal(plane(fs, f"/s0.yz/t{t:05d}_c{c:03d}_x{x:05d}.tif"), data[t, c, :, :, x])
    np.testing.assert_array_equal(plane(fs, "/s1.xz/t00001_c002_y00009.tif"), data[1, 2, :, 18, ::2])
    with tifffile.TiffFile(io.BytesIO(read_all(fs, "/s0.xz/t00000_c000_y00003.tif"))) as tif:
        page = tif.pages[0]
        assert page.shape == (7, 30)
        assert page.tags["XResolution"].value == (4, 1) and page.tags["YResolution"].value == (1, 3)
    with pytest.raises(FileNotFoundError):
        fs.getattr("/s0.xz/t00000_c000_y00020.tif")
    with pytest.raises(FileNotFoundError):
        fs.getattr("/s0.yz/t00000_c000_y00000.tif")


def test_2d_images_have_no_orthogonal_planes(tmp_path):
    import json

    write_ome_zarr(tmp_path / "img.zarr", pattern((20, 30), "uint8"), "yx", levels=1)
    fs = vfs_for(str(tmp_path / "img.zarr"))
    assert "s0.xz" not in fs.readdir("/") and "s0.yz" not in fs.readdir("/")
    info = json.loads(read_all(fs, "/info.json"))
    assert "no z axis" in info["missing_views"]["s0.xz/"]


@pytest.mark.parametrize("kind", ["xz", "yz"])
@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_orthogonal_scroll_decodes_each_chunk_at_most_once(tmp_path, compression, kind):
    version, compressor = COMPRESSORS[compression]
    data = pattern((64, 40, 91), "uint16", seed=1)  # edge chunks on y and x; planes of several 4 KiB reads
    chunks = (8, 32, 48)
    write_ome_zarr(tmp_path / "img.zarr", data, "zyx", version=version, levels=1, chunks=chunks, compressors=compressor)
    level = open_source(str(tmp_path / "img.zarr")).levels[0]
    n_chunks = 8 * 2 * 2
    engine = ChunkEngine()
    fs = vfs_for(str(tmp_path / "img.zarr"), engine=engine)
    for y in range(40 if kind == "xz" else 91):
        path = f"/s0.xz/y{y:05d}.tif" if kind == "xz" else f"/s0.yz/x{y:05d}.tif"
        if y == 1 and compression == "blosc-small-blocks" and kind == "xz":
            # One plane takes a row of each z of the 8 x 2 chunks it crosses: at most the
            # two blocks that row lies in, not the blocks between the rows.
            assert engine.wait_idle(10)
            assert engine.stats.snapshot()["decoded_bytes"] <= 64 * 2 * 2 * 1000
        size = fs.getattr(path)["st_size"]
        # 4 KiB reads, as a reader that pages through each file would make
        got = b"".join(fs.read(path, 4096, k) for k in range(0, size, 4096))
        np.testing.assert_array_equal(tifffile.imread(io.BytesIO(got)), data[:, y, :] if kind == "xz" else data[:, :, y])
    assert engine.wait_idle(10)
    stats = engine.stats.snapshot()
    assert stats["chunks_fetched"] == n_chunks, "each chunk fetched once"
    assert stats["decoded_bytes"] <= n_chunks * level.chunk_nbytes, "each chunk decoded at most once"
    assert stats["decoded_bytes"] >= data.nbytes, "every pixel was decoded"


@pytest.mark.integration
def test_imagej_shows_orthogonal_planes_with_their_pixel_sizes(tmp_path, http_server, cache_args):
    data = pattern((9, 24, 36), "uint16", seed=8)
    write_ome_zarr(http_server.www / "ortho.zarr", data, "zyx", levels=1, chunks=(4, 16, 16),
                   scale0=[2.0, 0.5, 0.25], units=UM)
    with mounted(f"{http_server.url}/ortho.zarr", tmp_path / "mnt", *cache_args) as mnt:
        xz = parse_kv(run_macro(describe_image_macro(f'open({ij_str(str(mnt / "s0.xz" / "y00005.tif"))});',
                                                     [(1, 0, 0), (1, 35, 8), (1, 17, 3)])))
        yz = parse_kv(run_macro(describe_image_macro(f'open({ij_str(str(mnt / "s0.yz" / "x00030.tif"))});',
                                                     [(1, 23, 8), (1, 2, 1)])))
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0.xz" / "y00023.tif"), data[:, 23, :])
        np.testing.assert_array_equal(tifffile.imread(mnt / "s0.yz" / "x00000.tif"), data[:, :, 0])
    assert (xz["width"], xz["height"]) == (36, 9) and xz["unit"] in ("micron", "microns")
    assert (xz["pixelWidth"], xz["pixelHeight"]) == (0.25, 2.0)
    assert xz["pixel_1_35_8"] == data[8, 5, 35] and xz["pixel_1_17_3"] == data[3, 5, 17]
    assert (yz["width"], yz["height"]) == (24, 9)
    assert (yz["pixelWidth"], yz["pixelHeight"]) == (0.5, 2.0)
    assert yz["pixel_1_23_8"] == data[8, 23, 30] and yz["pixel_1_2_1"] == data[1, 2, 30]


@pytest.mark.integration
def test_xz_scroll_in_a_real_mount_fetches_and_decodes_each_chunk_once(tmp_path, http_server, cache_args):
    import json

    data = pattern((20, 50, 70), "uint16", seed=12)
    write_ome_zarr(http_server.www / "xz-scroll.zarr", data, "zyx", levels=1, chunks=(8, 16, 32))
    n_chunks, chunk_bytes = 3 * 4 * 3, 8 * 16 * 32 * 2
    with mounted(f"{http_server.url}/xz-scroll.zarr", tmp_path / "mnt", *cache_args) as mnt:
        http_server.reset_counters()
        for y in range(50):
            np.testing.assert_array_equal(tifffile.imread(mnt / "s0.xz" / f"y{y:05d}.tif"), data[:, y, :])
        stats = json.loads((mnt / ".ngffmount" / "stats.json").read_text())
        chunk_requests = [p for p in http_server.paths if p.startswith("/xz-scroll.zarr/0/")]
    assert stats["chunks_fetched"] == n_chunks and len(chunk_requests) == n_chunks, "one request per chunk"
    assert data.nbytes <= stats["decoded_bytes"] <= n_chunks * chunk_bytes, "each chunk decoded at most once"
