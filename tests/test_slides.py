"""Whole-slide scale: planes past 4 GiB and past ImageJ's reach, tiled plane TIFFs, tables made
on demand, and image.ome.tif (every level in one pyramidal OME-TIFF, reduced levels as
SubIFDs). Unit tests drive VirtualFS; the rest mount sparse stores of slide size (declared
at full size by zarr-python, a few chunks written) over loopback HTTP and read them with
tifffile, libvips and GDAL.

GDAL 3.6 (Debian 12) reads the SubIFDs of image.ome.tif as the overviews of its first
image: `gdalinfo` lists them under "Overviews", `gdallocationinfo -overview N` reads them.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import VirtualReader, mounted, read_all, vfs_for
from ngffmount.adapters.storage import TRANSFERS
from ngffmount.vfs.writers.tiff import LONG, LONG8, Table, Tag, tile_side
from ngffmount.vfs.views.tiff_views import imagej_max_pixels
from ngffmount.vfs.tree.virtualfile import TableSegment
from zarr_fixtures import pattern
from slide_fixtures import (COURSE_HEIGHT, COURSE_WIDTH, course_slide, daemon_rss_mib, run, sparse_pyramid,
                            tiff_end, tiff_levels, windows)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from latency_proxy import LatencyProxy  # noqa: E402

RSS_LIMIT_MIB = 300
HANG_S = 30  # mounts take about a second: this bound only catches a hang


# -- units --------------------------------------------------------------------------------


def test_tile_side_covers_whole_chunks_or_lies_within_one():
    assert tile_side(1024, 10**6) == 1024  # one tile, one chunk
    assert tile_side(256, 10**6) == 256
    assert tile_side(64, 10**6) == 256  # four whole chunks
    assert tile_side(8192, 10**6) == 4096  # half a chunk
    assert tile_side(1000, 10**6) == 512  # TIFF needs multiples of 16
    assert tile_side(1024, 100) == 112  # never much larger than the plane


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 5000), start=st.integers(0, 2**40), step=st.integers(0, 2**20),
       last=st.one_of(st.none(), st.integers(0, 2**30)), big=st.booleans(), data=st.data())
def test_table_bytes_read_in_any_piece_match_the_whole(count, start, step, last, big, data):
    if not big:  # classic TIFF: every value fits 32 bits
        start, step = start % 2**20, step % 2**10
    values = [start + i * step for i in range(count)]
    if last is not None:
        values[-1] = last
    tag = Tag(324, LONG8 if big else LONG, Table(count, start, step, last), at=100)
    whole = np.array(values, "<u8" if big else "<u4").tobytes()
    assert tag.payload() == whole
    seg = TableSegment(100, 1, len(whole) + 8, lambda _i: [tag])
    rel = data.draw(st.integers(0, len(whole) + 7))
    size = data.draw(st.integers(1, len(whole) + 8 - rel))
    assert bytes(seg.read(rel, size)) == (whole + bytes(8))[rel:rel + size]


@pytest.fixture(scope="module")
def small_pyramid(tmp_path_factory):
    """c, z, y, x uint16 with levels divided by 1, 3 and 7 (not powers of two) and chunks
    of 128 x 256: every level written in full with its own pixels."""
    path = tmp_path_factory.mktemp("pyr") / "pyr.zarr"
    arrays = sparse_pyramid(path, (2, 3, 300, 500), "uint16", "czyx", (1, 1, 128, 256), factors=[1, 3, 7])
    for k, arr in enumerate(arrays):
        arr[...] = np.random.default_rng(k).integers(0, 65535, arr.shape, dtype="uint16")
    return path, arrays


def page_at(tif: tifffile.TiffFile, offset: int) -> tifffile.TiffPage:
    tif.filehandle.seek(offset)
    return tifffile.TiffPage(tif, index=0)


def next_ifd(raw: bytes, page: tifffile.TiffPage) -> int:
    """The next-IFD offset of a classic TIFF IFD."""
    return int(np.frombuffer(raw, "<u4", 1, page.offset + 2 + 12 * len(page.tags))[0])


def test_image_ome_tif_holds_every_level_as_subifds(small_pyramid):
    path, arrays = small_pyramid
    fs = vfs_for(str(path))
    assert "image.ome.tif" in fs.readdir("/")
    raw = read_all(fs, "/image.ome.tif")
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        assert tif.is_ome and not tif.is_bigtiff and len(tif.series) == 1
        series = tif.series[0]
        assert series.axes == "ZCYX" and len(series.levels) == len(arrays)
        for level, arr in zip(series.levels, arrays):
            # Planes in the OME-XML's XYCZT order: channel fastest.
            np.testing.assert_array_equal(level.asarray(), arr[...].transpose(1, 0, 2, 3))
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        tif.pages.useframes = False  # every IFD with all its tags
        pages = list(tif.pages)
        assert len(pages) == 6, "the main chain holds level 0's planes only"
        first = pages[0]
        assert first.tags["NewSubfileType"].value == 0 and first.tags["SubfileType"].value == 1
        assert len(first.subifds) == 2 and first.tags["SubIFDs"].dtype == 13  # TIFF's IFD type
        assert first.is_tiled and (first.tilelength, first.tilewidth) == (256, 256)  # 128-row chunks: 2 per tile
        assert first.tags["PlanarConfiguration"].value == 1 and first.tags["Software"].value == "ngffmount"
        assert first.tags["ResolutionUnit"].value == 3
        assert first.tags["XResolution"].value == (40000, 1), "0.25 µm pixels, in pixels per cm"
        assert 'TiffData IFD="0" PlaneCount="6"' in first.description
        assert all("ImageDescription" not in p.tags and len(p.subifds) == 2 for p in pages[1:])
        # Each plane's SubIFDs: largest first, chained to one another, NewSubfileType 1.
        for page in pages:
            subs = [page_at(tif, offset) for offset in page.subifds]
            assert [(p.imagelength, p.imagewidth) for p in subs] == [a.shape[2:] for a in arrays[1:]]
            for sub in subs:
                assert sub.tags["NewSubfileType"].value == 1 and sub.tags["SubfileType"].value == 2
                assert sub.is_tiled and "SubIFDs" not in sub.tags
            assert [next_ifd(raw, sub) for sub in subs] == [page.subifds[1], 0]
    info = json.loads(read_all(fs, "/info.json"))
    assert info["views"]["image.ome.tif"] == {"size": len(raw), "levels": 3, "planes": 6}


def test_image_ome_tif_levels_with_fewer_planes_show_the_nearest(tmp_path):
    """A pyramid downsampled in z too: under each plane of level 0, a reduced level shows its
    nearest plane (OME-TIFF reduces only x and y)."""
    path = tmp_path / "z.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    shapes = [(6, 64, 96), (3, 32, 48), (1, 16, 24)]
    arrays = []
    for k, shape in enumerate(shapes):
        arr = root.create_array(str(k), shape=shape, dtype="uint8", chunks=(1, 32, 32))
        arr[...] = np.random.default_rng(k).integers(0, 255, shape, dtype="uint8")
        arrays.append(arr[...])
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                  "datasets": [{"path": str(k)} for k in range(3)]}]
    fs = vfs_for(str(path))
    with tifffile.TiffFile(io.BytesIO(read_all(fs, "/image.ome.tif"))) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(6, 64, 96), (6, 32, 48), (6, 16, 24)]
        for level, arr in zip(levels, arrays):
            np.testing.assert_array_equal(level.asarray(), arr[[z * len(arr) // 6 for z in range(6)]])


def test_image_ome_tif_of_a_type_ome_cannot_hold_is_missing(tmp_path):
    path = tmp_path / "i64.zarr"
    sparse_pyramid(path, (40, 50), "int64", "yx", (16, 16), factors=[1, 2])
    fs = vfs_for(str(path))
    assert "image.ome.tif" not in fs.readdir("/")
    info = json.loads(read_all(fs, "/info.json"))
    assert "OME-TIFF cannot hold dtype int64" in info["missing_views"]["image.ome.tif"]


@pytest.mark.parametrize("dtype, side, tiled", [("uint8", 45440, False), ("uint8", 45456, True),
                                               ("uint16", 46336, False), ("uint16", 46341, True)])
def test_planes_past_imagejs_reach_are_tiled_and_get_no_stack(tmp_path, dtype, side, tiled):
    """Up to 2^31 - 1 pixels (about 2.06e9 for 8-bit, see imagej_max_pixels): strips, classic
    TIFF and an ImageJ stack; past that: tiles only."""
    assert (side * side > imagej_max_pixels(np.dtype(dtype).itemsize)) == tiled
    path = tmp_path / "edge.zarr"
    arrays = sparse_pyramid(path, (side, side), dtype, "yx", (1024, 1024), factors=[1, 4],
                            written=[(0, 0, 0), (0, side - 1024, side - 1024), (0, side // 2, side // 2)])
    fs = vfs_for(str(path))
    before = TRANSFERS.requests
    names = fs.readdir("/")
    size = fs.getattr("/s0/z00000.tif")["st_size"]
    assert TRANSFERS.requests == before, "listing and stat read no chunk"
    info = json.loads(read_all(fs, "/info.json"))
    assert ("s0.tif" in names) != tiled and "s1.tif" in names and "s0.ome.tif" in names
    if tiled:
        assert "more than ImageJ 1.x reads" in info["missing_views"]["s0.tif"]
    with tifffile.TiffFile(VirtualReader(fs, "/s0/z00000.tif")) as tif:
        page = tif.pages[0]
        assert page.is_tiled == tiled and tif.is_bigtiff == (side * side * np.dtype(dtype).itemsize > 2**32)
        if tiled:
            assert (page.tilelength, page.tilewidth) == (1024, 1024)
        assert size == max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
    got = tiff_levels(VirtualReader(fs, "/s0/z00000.tif"))[0]
    for y, x in windows(side, side):
        np.testing.assert_array_equal(got[y:y + 1024, x:x + 1024], arrays[0][y:y + 1024, x:x + 1024])


def test_image_ome_tif_resolution_tags_are_those_of_each_sn_ome_tif(small_pyramid, tmp_path):
    """Each level of image.ome.tif states its pixel size as sN.ome.tif does: pixels per cm with
    ResolutionUnit 3 when x and y have a length unit, else pixels per unit with none."""
    half = tmp_path / "x-unit-only.zarr"  # y has no unit: no centimeters for either axis
    root = zarr.open_group(str(half), mode="w", zarr_format=2)
    for k in range(2):
        root.create_array(str(k), shape=(40 >> k, 50 >> k), dtype="uint8", chunks=(16, 16))
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [0.5 * 2**k, 0.25 * 2**k]}]}
        for k in range(2)]}]
    for path, unit, x_res in ((small_pyramid[0], 3, [(40000, 1), (40000, 3), (40000, 7)]), (half, 1, [(4, 1), (2, 1)])):
        fs = vfs_for(str(path))
        with tifffile.TiffFile(VirtualReader(fs, "/image.ome.tif")) as tif:
            pyramid = [level.pages[0].tags for level in tif.series[0].levels]
        assert [tags["ResolutionUnit"].value for tags in pyramid] == [unit] * len(x_res)
        assert [tags["XResolution"].value for tags in pyramid] == x_res
        for k, tags in enumerate(pyramid):
            with tifffile.TiffFile(VirtualReader(fs, f"/s{k}.ome.tif")) as tif:
                own = tif.pages[0].tags
            for name in ("XResolution", "YResolution", "ResolutionUnit"):
                assert tags[name].value == own[name].value, (path.name, k, name)


def test_orthogonal_planes_past_imagejs_reach_are_tiled_by_z_and_x_chunks(tmp_path):
    """An XZ plane of 46000 z x 46000 x (uint8, more than ImageJ reads) is a tiled plane
    file, in tiles of the z and x chunk sides; a YZ plane of 3 y stays in strips."""
    depth = width = 46000
    path = tmp_path / "deep.zarr"
    arr = sparse_pyramid(path, (depth, 3, width), "uint8", "zyx", (1024, 1, 1024), factors=[1])[0]
    for seed, (z, x) in enumerate([(0, 0), (depth // 2 - 512, width // 2 + 100), (depth - 1024, width - 1024)]):
        arr[z:z + 1024, 1, x:x + 1024] = pattern((1024, 1024), "uint8", seed=seed + 1)
    fs = vfs_for(str(path))
    before = TRANSFERS.requests
    info = json.loads(read_all(fs, "/info.json"))
    size = fs.getattr("/s0.xz/y00001.tif")["st_size"]
    assert TRANSFERS.requests == before, "listing and stat read no chunk"
    assert info["views"]["s0.xz/"]["file_size"] == size and "s0.tif" in info["views"]
    with tifffile.TiffFile(VirtualReader(fs, "/s0.xz/y00001.tif")) as tif:
        page = tif.pages[0]
        assert page.shape == (depth, width) and page.is_tiled and (page.tilelength, page.tilewidth) == (1024, 1024)
        assert size == max(o + n for o, n in zip(page.dataoffsets, page.databytecounts))
    got = tiff_levels(VirtualReader(fs, "/s0.xz/y00001.tif"))[0]
    for z, x in windows(depth, width):
        np.testing.assert_array_equal(got[z:z + 1024, x:x + 1024], arr[z:z + 1024, 1, x:x + 1024])
    with tifffile.TiffFile(VirtualReader(fs, "/s0.yz/x23100.tif")) as tif:
        assert not tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.pages[0].asarray(), arr[:, :, 23100])


def test_crops_of_a_tiled_level_within_imagejs_reach_are_stacks(tmp_path):
    """A level past ImageJ's reach has no sN.tif, but its crops whose planes ImageJ reads are
    ImageJ stacks of the box; a box past that reach is not found."""
    side = 46000
    path = tmp_path / "slide.zarr"
    arr = sparse_pyramid(path, (side, side), "uint8", "yx", (1024, 1024), factors=[1],
                         written=[(0, side // 2, side // 2)])[0]
    fs = vfs_for(str(path))
    assert "s0.tif" not in fs.readdir("/") and "crop" in fs.readdir("/")
    box = f"y{side // 2 - 100}-{side // 2 + 900}_x{side // 2 + 24}-{side // 2 + 1024}"
    with tifffile.TiffFile(io.BytesIO(read_all(fs, f"/crop/s0/{box}.tif"))) as tif:
        assert tif.is_imagej and not tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), arr[side // 2 - 100:side // 2 + 900, side // 2 + 24:side // 2 + 1024])
    assert fs.getattr("/crop/s0/y0-45000_x0-45000.tif")["st_size"] > 45000 * 45000  # 2.025e9 pixels: ImageJ's
    for past in ("y0-45500_x0-45500", f"y0-{side}_x0-{side}"):
        with pytest.raises(FileNotFoundError):
            fs.getattr(f"/crop/s0/{past}.tif")


# -- real mounts of slide-size stores ---------------------------------------------------------


@pytest.fixture(scope="module")
def course(http_server, tmp_path_factory):
    """The course example served over HTTP and mounted once; (mountpoint, arrays, seconds
    the mount command took, its own start-up included)."""
    arrays = course_slide(http_server.www / "course.zarr")
    mnt = tmp_path_factory.mktemp("course") / "mnt"
    cache = tmp_path_factory.mktemp("course-cache")
    started = time.monotonic()
    with mounted(f"{http_server.url}/course.zarr", mnt, "--cache-dir", str(cache)) as m:
        yield m, arrays, time.monotonic() - started


@pytest.mark.integration
def test_course_slide_mounts_small_and_stats_without_reading(course, http_server):
    mnt, arrays, seconds = course
    assert seconds < HANG_S
    assert daemon_rss_mib(mnt) < RSS_LIMIT_MIB
    before = http_server.requests
    names = set(os.listdir(mnt))
    assert {"s0", "s0.ome.tif", "image.ome.tif", "s10.tif"} <= names and "s0.tif" not in names
    plane = mnt / "s0" / "t00000_c000_z00000.tif"
    sizes = {name: (mnt / name).stat().st_size for name in ("s0/t00000_c000_z00000.tif", "s0.ome.tif", "image.ome.tif")}
    assert http_server.requests == before, "listing and stat read no chunk"
    assert sizes["s0/t00000_c000_z00000.tif"] > COURSE_HEIGHT * COURSE_WIDTH
    for name, size in sizes.items():
        assert size == tiff_end(mnt / name), name
    info = json.loads((mnt / "info.json").read_text())
    assert "more than ImageJ 1.x reads" in info["missing_views"]["s0.tif"] and "s0/" in info["views"]
    assert info["views"]["image.ome.tif"]["levels"] == len(arrays) == 11
    with tifffile.TiffFile(plane) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        assert (tif.pages[0].tilelength, tif.pages[0].tilewidth) == (1024, 1024)


@pytest.mark.integration
def test_course_slide_tiles_match_the_source(course):
    mnt, arrays, _ = course
    level0 = arrays[0]
    plane = tiff_levels(mnt / "s0" / "t00000_c000_z00000.tif")[0]
    pyramid = tiff_levels(mnt / "image.ome.tif")
    assert [lv.shape for lv in pyramid] == [a.shape[3:] for a in arrays]
    for y, x in windows(COURSE_HEIGHT, COURSE_WIDTH):
        expected = level0[0, 0, 0, y:y + 1024, x:x + 1024]
        np.testing.assert_array_equal(plane[y:y + 1024, x:x + 1024], expected)
        np.testing.assert_array_equal(pyramid[0][y:y + 1024, x:x + 1024], expected)
    for k in (1, 4, 10):
        h, w = arrays[k].shape[3:]
        for y, x in windows(h, w, 700):
            np.testing.assert_array_equal(pyramid[k][y:y + 700, x:x + 700], arrays[k][0, 0, 0, y:y + 700, x:x + 700])
    assert pyramid[1][COURSE_HEIGHT // 4:COURSE_HEIGHT // 4 + 8, COURSE_WIDTH // 4:COURSE_WIDTH // 4 + 8].any()
    assert daemon_rss_mib(mnt) < RSS_LIMIT_MIB


@pytest.mark.integration
def test_course_slide_in_libvips(course, tmp_path):
    mnt, arrays, _ = course
    path = str(mnt / "image.ome.tif")
    assert run("vipsheader", path).split(":", 1)[1].split(",")[0].strip() == f"{COURSE_WIDTH}x{COURSE_HEIGHT} uchar"
    assert run("vipsheader", "-f", "n-subifds", path).strip() == "10"
    assert run("vipsheader", path + "[subifd=0]").split(":", 1)[1].startswith(f" {COURSE_WIDTH // 2}x{COURSE_HEIGHT // 2}")
    # A region across the middle's chunk seams from level 0, and one from SubIFDs 0 and 3.
    for subifd, (x, y, w, h) in ((None, (COURSE_WIDTH // 2 - 700, COURSE_HEIGHT // 2 - 500, 1500, 1200)),
                                 (0, (COURSE_WIDTH // 4 - 100, COURSE_HEIGHT // 4 - 50, 1300, 1100)),
                                 (3, (0, 0, 900, 700))):
        out = tmp_path / f"crop{subifd}.tif"
        run("vips", "crop", path if subifd is None else f"{path}[subifd={subifd}]", str(out), *map(str, (x, y, w, h)))
        with tifffile.TiffFile(out) as tif:
            got = tif.pages[0].asarray()
        expected = arrays[0 if subifd is None else subifd + 1][0, 0, 0, y:y + h, x:x + w]
        assert expected.any()
        np.testing.assert_array_equal(got, expected)


@pytest.mark.integration
def test_course_slide_in_gdal(course):
    mnt, arrays, _ = course
    for name in ("s0/t00000_c000_z00000.tif", "image.ome.tif"):
        out = run("gdalinfo", str(mnt / name))
        assert f"Size is {COURSE_WIDTH}, {COURSE_HEIGHT}" in out and "Block=1024x1024 Type=Byte" in out, out
        # GDAL reads image.ome.tif's SubIFDs as the overviews of its first image.
        overviews = next((ln for ln in out.splitlines() if "Overviews:" in ln), "")
        expected = ", ".join(f"{a.shape[4]}x{a.shape[3]}" for a in arrays[1:]) if name == "image.ome.tif" else ""
        assert overviews.split("Overviews:")[-1].strip() == expected
    y, x = COURSE_HEIGHT // 2 + 5, COURSE_WIDTH // 2 + 9
    value = run("gdallocationinfo", "-valonly", str(mnt / "image.ome.tif"), str(x), str(y))
    assert int(value) == int(arrays[0][0, 0, 0, y, x]) != 0
    # An overview is addressed in level-0 pixels (level 1 is exactly half of it).
    y, x = COURSE_HEIGHT // 4 + 3, COURSE_WIDTH // 4 + 7
    value = run("gdallocationinfo", "-valonly", "-overview", "1", str(mnt / "image.ome.tif"), str(2 * x), str(2 * y))
    assert int(value) == int(arrays[1][0, 0, 0, y, x]) != 0


@pytest.mark.integration
def test_first_tile_of_a_fresh_remote_mount_fetches_only_its_chunk(course, http_server, tmp_path, cache_args):
    """Through a 30 ms-per-request proxy: opening image.ome.tif or a plane and reading one
    tile fetches that tile's chunk and nothing else (the metadata came with the mount). The
    tile next to it in the file then fetches only its own chunk too: the kernel does not read
    the one after it ahead."""
    _, arrays, _ = course
    cols = -(-COURSE_WIDTH // 1024)
    with LatencyProxy(http_server.url, latency_s=0.03) as proxy:
        with mounted(f"{proxy.url}/course.zarr", tmp_path / "mnt", *cache_args) as mnt:
            for name, (ty, tx) in (("image.ome.tif", (186, 449)), ("s0/t00000_c000_z00000.tif", (0, 0))):
                http_server.reset_counters()
                started = time.monotonic()
                with tifffile.TiffFile(mnt / name) as tif:
                    page = tif.pages[0]
                    for x in (tx, tx + 1):
                        tif.filehandle.seek(page.dataoffsets[ty * cols + x])
                        tile = np.frombuffer(tif.filehandle.read(page.databytecounts[ty * cols + x]), "uint8")
                        if x == tx:
                            assert time.monotonic() - started < HANG_S
                        np.testing.assert_array_equal(tile.reshape(1024, 1024), arrays[0][
                            0, 0, 0, ty * 1024:(ty + 1) * 1024, x * 1024:(x + 1) * 1024])
                        time.sleep(0.5)  # room for a readahead to show
                        assert http_server.paths == [f"/course.zarr/0/0/0/0/{ty}/{c}" for c in range(tx, x + 1)], name


@pytest.mark.integration
def test_three_channel_uint16_slide_over_4gib_per_plane(tmp_path, http_server, cache_args):
    h, w = 40000, 60000  # 4.8 GB per plane
    arrays = sparse_pyramid(http_server.www / "rgb16.zarr", (3, h, w), "uint16", "cyx", (1, 1024, 1024),
                            written=[(0, 0, 0), (0, h - 1024, w - 1024), (0, h // 2, w // 2), (2, 1024, 2048)])
    with mounted(f"{http_server.url}/rgb16.zarr", tmp_path / "mnt", *cache_args) as mnt:
        assert daemon_rss_mib(mnt) < RSS_LIMIT_MIB
        info = json.loads((mnt / "info.json").read_text())
        assert "more than ImageJ 1.x reads" in info["missing_views"]["s0.tif"]
        assert sorted(os.listdir(mnt / "s0")) == [f"t00000_c{c:03d}_z00000.tif" for c in range(3)]
        plane = mnt / "s0" / "t00000_c002_z00000.tif"
        assert plane.stat().st_size == tiff_end(plane) > 2 * h * w
        with tifffile.TiffFile(plane) as tif:
            assert tif.is_bigtiff and tif.pages[0].is_tiled
        got = tiff_levels(plane)[0]
        for y, x in windows(h, w):
            np.testing.assert_array_equal(got[y:y + 1024, x:x + 1024], arrays[0][2, y:y + 1024, x:x + 1024])
        pyramid = mnt / "image.ome.tif"
        assert pyramid.stat().st_size == tiff_end(pyramid)
        with tifffile.TiffFile(pyramid) as tif:
            assert tif.is_bigtiff and tif.is_ome and len(tif.pages) == 3
            assert tif.series[0].shape == (3, h, w) and len(tif.series[0].levels) == len(arrays)
        levels = tiff_levels(pyramid)
        for c in range(3):
            for y, x in windows(h, w)[:5]:
                np.testing.assert_array_equal(levels[0][c, y:y + 1024, x:x + 1024], arrays[0][c, y:y + 1024, x:x + 1024])
            np.testing.assert_array_equal(levels[2][c, 1000:2100, 2000:3100], arrays[2][c, 1000:2100, 2000:3100])
        assert levels[2][1, 1024:1030, 2048:2054].any()


@pytest.mark.integration
def test_stack_of_planes_just_over_4gib(tmp_path, http_server, cache_args):
    """Planes of 65600 x 65600 uint8 (just over 4 GiB) are past ImageJ's reach: tiled BigTIFF
    plane files; the next level (32800 x 32800) is stripped and has its ImageJ stack."""
    side = 65600
    arrays = sparse_pyramid(http_server.www / "stack4g.zarr", (3, side, side), "uint8", "zyx", (1, 1024, 1024),
                            written=[(0, 0, 0), (0, side - 1024, side - 1024), (0, side // 2, side // 2)])
    with mounted(f"{http_server.url}/stack4g.zarr", tmp_path / "mnt", *cache_args) as mnt:
        assert daemon_rss_mib(mnt) < RSS_LIMIT_MIB
        names = set(os.listdir(mnt))
        assert "s0.tif" not in names and "s1.tif" in names
        plane = mnt / "s0" / "z00002.tif"
        assert plane.stat().st_size == tiff_end(plane) > 2**32
        with tifffile.TiffFile(plane) as tif:
            assert tif.is_bigtiff and tif.pages[0].is_tiled
        with tifffile.TiffFile(mnt / "s1" / "z00002.tif") as tif:
            assert not tif.is_bigtiff and not tif.pages[0].is_tiled
        got = tiff_levels(plane)[0]
        for y, x in windows(side, side):
            np.testing.assert_array_equal(got[y:y + 1024, x:x + 1024], arrays[0][2, y:y + 1024, x:x + 1024])
        levels = tiff_levels(mnt / "image.ome.tif")
        assert [lv.shape for lv in levels] == [a.shape for a in arrays]
        for z in range(3):
            for y, x in windows(side, side)[3:5]:
                np.testing.assert_array_equal(levels[0][z, y:y + 1024, x:x + 1024], arrays[0][z, y:y + 1024, x:x + 1024])
