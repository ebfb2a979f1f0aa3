"""VirtualFS and the TIFF views, without FUSE: stores on local disk written by zarr-python."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import VirtualReader, imagej_order, read_all, tiff_array, vfs_for
from ngffmount.adapters import open_source
from ngffmount.adapters.storage import TRANSFERS
from ngffmount.cache.engine import ChunkEngine
from ngffmount.vfs.views import registry
from ngffmount.vfs.views.arrays import ArrayView
from ngffmount.vfs.tree.nodes import DirNode, static_file
from ngffmount.vfs.writers.tiff import CLASSIC_LIMIT
from ngffmount.vfs.views.view import LEVEL, View
from zarr_fixtures import pattern, write_ome_zarr, write_sparse_stack

UM = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}


@pytest.fixture(scope="module")
def czyx_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("czyx") / "img.zarr"
    data = pattern((2, 3, 45, 70), "uint16")
    write_ome_zarr(path, data, "czyx", chunks=(1, 2, 16, 32), scale0=[1, 2.5, 0.1625, 0.1625], units=UM,
                   translation=[0, 5.0, 1.625, 3.25])
    return path, data


def test_tree_names_and_sizes_come_from_metadata(czyx_store):
    path, data = czyx_store
    fs = vfs_for(str(path))
    before = TRANSFERS.requests
    assert fs.readdir("/") == ["info.json", "s0", "s0.tif", "s0.ome.tif", "s0.h5", "s0.xz", "s0.yz", "s1", "s1.tif",
                               "s1.ome.tif", "s1.h5", "s1.xz", "s1.yz", "image.ome.tif", "image.h5", "bdv.xml", "bdv.h5",
                               "crop", "preview.png"]
    names = fs.readdir("/s0")
    assert names == sorted(names) and len(names) == 6
    assert names[0] == "t00000_c000_z00000.tif" and names[-1] == "t00000_c001_z00002.tif"
    sizes = {fs.getattr(f"/s0/{n}")["st_size"] for n in names}
    assert len(sizes) == 1
    fs.getattr("/s0.tif")
    fs.getattr("/s1.tif")
    assert TRANSFERS.requests == before, "listing and stat must not read chunks"


def test_info_json(czyx_store):
    path, _ = czyx_store
    info = json.loads(read_all(vfs_for(str(path)), "/info.json"))
    assert info["format"] == "OME-Zarr 0.4"
    assert info["source"] == "file://" + str(path)
    assert [a["name"] for a in info["axes"]] == list("czyx")
    s0, s1 = info["levels"]
    assert s0["path"] == "0" and s0["shape"] == [2, 3, 45, 70] and s0["chunk_shape"] == [1, 2, 16, 32]
    assert s0["dtype"] == "uint16"
    assert s0["voxel_size"] == {"x": 0.1625, "y": 0.1625, "z": 2.5, "unit": "micron"}
    assert s1["voxel_size"]["x"] == 0.325
    assert "s0.tif" in info["views"] and "s0/" in info["views"]
    assert {"s0/", "s0.tif", "s0.ome.tif", "s0.h5", "image.h5", "bdv.xml"} <= set(info["views"])
    assert info["missing_views"] == {}



def test_a_registered_view_appears_in_the_tree_and_info_json(czyx_store, monkeypatch):
    """A new view is a View plus one line in registry.VIEWS: the tree and info.json follow."""
    path, _ = czyx_store
    per_level = View(f"{LEVEL}.txt", lambda ctx: None if ctx.index == 0 else "only the first level",
                     lambda ctx: static_file(f"{ctx.name}: {ctx.src.plane_count} planes".encode(), ctx.mtime),
                     lambda node, ctx: {"size": node.size})
    per_image = View("note/", lambda ctx: None, lambda ctx: DirNode(ctx.mtime),
                     lambda node, ctx: {"levels": len(ctx.sources)})
    views = registry.VIEWS
    monkeypatch.setattr(registry, "VIEWS", [*views[:1], per_level, *views[1:], per_image])
    fs = vfs_for(str(path))
    names = fs.readdir("/")
    assert names[:4] == ["info.json", "s0", "s0.txt", "s0.tif"] and "s1.txt" not in names
    assert names[-2:] == ["preview.png", "note"]
    assert read_all(fs, "/s0.txt") == b"s0: 6 planes"
    info = json.loads(read_all(fs, "/info.json"))
    assert list(info["views"])[:3] == ["s0/", "s0.txt", "s0.tif"]
    assert info["views"]["s0.txt"] == {"size": 12} and info["views"]["note/"] == {"levels": 2}
    assert info["missing_views"] == {"s1.txt": "only the first level"}


def test_every_plane_matches_zarr(czyx_store):
    path, data = czyx_store
    fs = vfs_for(str(path))
    ref = zarr.open_group(str(path), mode="r")
    for lvl in ("0", "1"):
        arr = ref[lvl][...]
        for c in range(arr.shape[0]):
            for z in range(arr.shape[1]):
                got = tiff_array(read_all(fs, f"/s{lvl}/t00000_c{c:03d}_z{z:05d}.tif"))
                np.testing.assert_array_equal(got, arr[c, z])


def test_stack_is_imagej_hyperstack(czyx_store):
    path, data = czyx_store
    fs = vfs_for(str(path))
    raw = read_all(fs, "/s0.tif")
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        meta = tif.imagej_metadata
        assert tif.is_imagej and len(tif.pages) == 6
        assert (meta["images"], meta["channels"], meta["slices"]) == (6, 2, 3)
        assert meta["unit"] == "micron" and meta["spacing"] == 2.5
        assert meta["xorigin"] == pytest.approx(-20.0) and meta["zorigin"] == pytest.approx(-2.0)
        page = tif.pages[0]
        assert page.tags["XResolution"].value[1] / page.tags["XResolution"].value[0] == pytest.approx(0.1625)
        stack = tif.asarray()
    np.testing.assert_array_equal(stack.reshape(-1, 45, 70), imagej_order(data, "czyx"))


def test_missing_chunks_read_as_fill_value(tmp_path):
    path = tmp_path / "sparse.zarr"
    data = pattern((4, 32, 32), "uint16")
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 16, 16))
    arr = zarr.open_array(str(path / "0"), mode="r+")
    # Drop one chunk file: zarr-python reads it as the fill value, and so must we.
    (path / "0" / "2" / "1" / "0").unlink()
    expected = arr[...]
    assert (expected[2, 16:, :16] == 0).all()
    fs = vfs_for(str(path))
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0/z00002.tif")), expected[2])
    assert fs.readdir("/s0") == [f"z{z:05d}.tif" for z in range(4)]


@pytest.mark.parametrize(
    "dtype, imagej",
    [
        ("uint8", True), ("uint16", True), ("int16", True), ("float32", True), ("int32", True), ("uint32", False),
        ("int8", False), ("float64", False), ("int64", False), ("uint64", False),
    ],
)
def test_dtypes_keep_source_values(tmp_path, dtype, imagej):
    path = tmp_path / f"{dtype}.zarr"
    data = pattern((3, 20, 24), dtype)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(2, 8, 16))
    fs = vfs_for(str(path))
    plane = tiff_array(read_all(fs, "/s0/z00001.tif"))
    assert plane.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(plane, data[1])
    info = json.loads(read_all(fs, "/info.json"))
    if imagej:
        np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0.tif")), data)
    else:
        assert "s0.tif" not in fs.readdir("/")
        assert "ImageJ" in info["missing_views"]["s0.tif"]


@pytest.mark.parametrize("separator", [".", "/"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_zarr_v2_variants(tmp_path, separator, order):
    path = tmp_path / "v2.zarr"
    data = pattern((3, 33, 41), ">u2")
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.create_array("0", shape=data.shape, dtype=">u2", chunks=(2, 16, 16), order=order,
                      chunk_key_encoding={"name": "v2", "separator": separator})[...] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]
    fs = vfs_for(str(path))
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0.tif")), data)


def test_zarr_v3_sharded_with_missing_inner_chunks(tmp_path):
    path = tmp_path / "v3.zarr"
    data = pattern((1, 2, 6, 64, 80), "uint16")
    data[0, 1, 3:] = 0  # whole inner chunks of fill value: zarr-python leaves them out of the shard
    write_ome_zarr(path, data, "tczyx", version="0.5", levels=2, chunks=(1, 1, 3, 16, 16), shards=(1, 1, 6, 32, 48))
    engine = ChunkEngine()
    fs = vfs_for(str(path), engine=engine)
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "OME-Zarr 0.5"
    assert info["levels"][0]["chunk_shape"] == [1, 1, 3, 16, 16]
    ref = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0.tif")).reshape(12, 64, 80), imagej_order(ref["0"][...], "tczyx"))
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s1/t00000_c001_z00004.tif")), ref["1"][0, 1, 4])
    assert engine.stats.snapshot()["chunks_missing"] > 0


def test_y_before_x_and_2d(tmp_path):
    path = tmp_path / "yx.zarr"
    data = pattern((50, 30), "uint8")
    write_ome_zarr(path, data, "yx", levels=3, chunks=(16, 16))
    fs = vfs_for(str(path))
    assert fs.readdir("/s2") == ["z00000.tif"]
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s2.tif")), data[::4, ::4])


def test_stack_over_4gib_uses_single_ifd(tmp_path):
    # 2100 planes of 1024 x 1024 uint16 = 4.1 GiB declared; only two chunks exist.
    path = tmp_path / "big.zarr"
    arr = write_sparse_stack(path, axes=[{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                             datasets=[{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}])
    fs = vfs_for(str(path))
    size = fs.getattr("/s0.tif")["st_size"]
    plane = 1024 * 1024 * 2
    assert size > CLASSIC_LIMIT
    head = fs.read("/s0.tif", 4096, 0)
    with tifffile.TiffFile(io.BytesIO(head + bytes(plane))) as tif:
        assert tif.imagej_metadata["images"] == 2100
        assert tif.pages[0].tags.get("NewSubfileType") is not None
        offset = tif.pages[0].dataoffsets[0]
        assert len(tif.pages) == 1, "above 4 GiB only the first IFD exists"
    assert size == offset + 2100 * plane
    last = np.frombuffer(fs.read("/s0.tif", plane, offset + 2099 * plane), "<u2").reshape(1024, 1024)
    np.testing.assert_array_equal(last, arr[2099])
    assert np.frombuffer(fs.read("/s0.tif", 64, offset), "<u2").tolist() == [7] * 32


def test_large_files_start_pixels_where_fuse_reads_start(tmp_path):
    # 64 planes of 1024 x 1024 uint16 (128 MiB), chunks of 512 rows: one 1 MiB read of the
    # stack is one row of chunks once its pixels start on a 1 MiB boundary.
    path = tmp_path / "aligned.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(64, 1024, 1024), dtype="uint16", chunks=(1, 512, 512),
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[3, 512:] = pattern((512, 1024), "uint16")
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]
    engine = ChunkEngine(memory_bytes=64 << 20)
    fs = vfs_for(str(path), engine=engine)
    plane = 1024 * 1024 * 2
    offsets = {}
    for name in ("/s0.tif", "/s0.ome.tif", "/s0/z00003.tif"):
        with tifffile.TiffFile(VirtualReader(fs, name)) as tif:
            offsets[name] = tif.pages[0].dataoffsets[0]
    assert offsets["/s0.tif"] % (1 << 20) == 0 and offsets["/s0.ome.tif"] % (1 << 20) == 0
    assert offsets["/s0/z00003.tif"] < 4096, "a 2 MiB plane file is not padded"
    asked = []
    get = engine.get
    engine.get = lambda level, indices: get(level, asked.extend(indices) or indices)
    got = fs.read("/s0.tif", 1 << 20, offsets["/s0.tif"] + 3 * plane + (1 << 20))
    assert np.frombuffer(got, "<u2").reshape(512, 1024).tolist() == arr[3, 512:].tolist()
    assert sorted(asked) == [(3, 1, 0), (3, 1, 1)], "one read, one row of chunks"


# -- byte-exact reads at any offset ------------------------------------------------------


@pytest.fixture(scope="module")
def reference_files(czyx_store):
    """Each file as independent parts: our header bytes, then zarr-python's pixels."""
    path, data = czyx_store
    fs = vfs_for(str(path))
    refs = {}
    for name, pixels in (("/s0.tif", imagej_order(data, "czyx")), ("/s0/t00000_c001_z00002.tif", data[1, 2])):
        raw = read_all(fs, name)
        with tifffile.TiffFile(io.BytesIO(raw)) as tif:
            offset = tif.pages[0].dataoffsets[0]
        refs[name] = raw[:offset] + np.ascontiguousarray(pixels, "<u2").tobytes(), offset, pixels.shape[-1] * 2
        assert len(refs[name][0]) == len(raw)
    return fs, refs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_read_matches_reference(reference_files, data):
    """Reads of whole rows are assembled in the caller's buffer in place: drawn often."""
    fs, refs = reference_files
    name = data.draw(st.sampled_from(sorted(refs)))
    ref, pixels_at, row = refs[name]
    rows = (len(ref) - pixels_at) // row
    offset = data.draw(st.one_of(st.integers(0, len(ref) + 10),
                                 st.integers(0, rows).map(lambda r: pixels_at + r * row)))
    size = data.draw(st.one_of(st.integers(0, 70000), st.integers(1, 80).map(lambda n: n * row)))
    assert fs.read(name, size, offset) == ref[offset:offset + size]


# -- OME-TIFF -----------------------------------------------------------------------------


def test_ome_tiff_metadata_and_pixels(tmp_path):
    path = tmp_path / "ome.zarr"
    data = pattern((2, 3, 4, 30, 40), "uint16", seed=4)
    units = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    write_ome_zarr(path, data, "tczyx", levels=2, chunks=(1, 1, 2, 16, 16), scale0=[5, 1, 2.0, 0.5, 0.5], units=units)
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["omero"] = {"channels": [{"label": "DAPI", "color": "0000FF"}, {"label": "GFP & co", "color": "00FF00"},
                                   {"label": "RFP"}]}
    (path / ".zattrs").write_text(json.dumps(attrs))
    fs = vfs_for(str(path))
    raw = read_all(fs, "/s0.ome.tif")
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        assert tif.is_ome and not tif.is_bigtiff
        series = tif.series[0]
        assert series.axes == "TZCYX"
        np.testing.assert_array_equal(series.asarray(), data.transpose(0, 2, 1, 3, 4))
        xml = tif.ome_metadata
    assert 'DimensionOrder="XYCZT"' in xml and 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeZ="2.0"' in xml
    assert 'PhysicalSizeXUnit="µm"' in xml and 'TimeIncrement="5.0"' in xml and 'TimeIncrementUnit="s"' in xml
    assert 'Name="DAPI"' in xml and 'Name="GFP &amp; co"' in xml and 'Color="65535"' in xml


def test_ome_tiff_resolution_tags_give_nanometre_pixel_sizes(tmp_path):
    """A reader of the TIFF tags alone (no OME-XML) gets the pixel size right: pixels per
    centimeter with ResolutionUnit CENTIMETER, as Bio-Formats writes them."""
    import subprocess

    path = tmp_path / "nm.zarr"
    data = pattern((2, 30, 40), "uint8", seed=1)
    write_ome_zarr(path, data, "zyx", levels=1, scale0=[40.0, 6.0, 4.0],
                   units={"z": "nanometer", "y": "nanometer", "x": "nanometer"})
    fs = vfs_for(str(path))
    raw = read_all(fs, "/s0.ome.tif")
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        for page in tif.pages:
            tags = page.tags
            assert tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
            assert 1e-2 / (xn / xd) * 1e9 == pytest.approx(4.0) and 1e-2 / (yn / yd) * 1e9 == pytest.approx(6.0)
        assert 'PhysicalSizeX="4.0"' in tif.ome_metadata and 'PhysicalSizeXUnit="nm"' in tif.ome_metadata
    (tmp_path / "nm.ome.tif").write_bytes(raw)
    gdal = subprocess.run(["gdalinfo", str(tmp_path / "nm.ome.tif")], capture_output=True, text=True,
                          env={"GDAL_PAM_ENABLED": "NO", "PATH": "/usr/bin:/bin"})
    assert "TIFFTAG_RESOLUTIONUNIT=3 (pixels/cm)" in gdal.stdout, gdal.stdout + gdal.stderr
    assert "TIFFTAG_XRESOLUTION=2500000" in gdal.stdout and "TIFFTAG_YRESOLUTION=1666666.6" in gdal.stdout
    # ImageJ's files keep ResolutionUnit NONE: ImageJ takes the unit from their description.
    with tifffile.TiffFile(io.BytesIO(read_all(fs, "/s0.tif"))) as tif:
        assert tif.pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE
        assert tif.imagej_metadata["unit"] == "nm"
    # Without a length unit there is nothing to convert: NONE, as before.
    write_ome_zarr(tmp_path / "px.zarr", data, "zyx", levels=1, scale0=[1.0, 2.0, 2.0])
    with tifffile.TiffFile(io.BytesIO(read_all(vfs_for(str(tmp_path / "px.zarr")), "/s0.ome.tif"))) as tif:
        assert tif.pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.NONE


def test_ome_tiff_tiles_wide_planes(tmp_path):
    path = tmp_path / "wide.zarr"
    data = pattern((2, 100, 9000), "uint16", seed=9)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(1, 64, 1024))
    fs = vfs_for(str(path))
    raw = read_all(fs, "/s0.ome.tif")
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        np.testing.assert_array_equal(tif.series[0].asarray(), data)


def test_ome_tiff_is_bigtiff_over_4gib_and_leaves_out_int64(tmp_path):
    path = tmp_path / "big.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(1100, 1024, 2048), dtype="uint16", chunks=(1, 1024, 2048),
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[1099] = pattern((1024, 2048), "uint16")
    root.create_array("1", shape=(2, 4, 4), dtype="int64", chunks=(1, 4, 4))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space"} for a in "zyx"],
                                  "datasets": [{"path": "0"}, {"path": "1"}]}]
    fs = vfs_for(str(path))
    size = fs.getattr("/s0.ome.tif")["st_size"]
    assert size > CLASSIC_LIMIT and fs.read("/s0.ome.tif", 4, 0) == b"II+\0"
    with tifffile.TiffFile(VirtualReader(fs, "/s0.ome.tif")) as tif:
        assert tif.is_bigtiff and tif.is_ome and len(tif.pages) == 1100
        np.testing.assert_array_equal(tif.pages[1099].asarray(), arr[1099])
        assert not tif.pages[5].asarray().any()
    info = json.loads(read_all(fs, "/info.json"))
    assert "OME-TIFF cannot hold dtype int64" in info["missing_views"]["s1.ome.tif"]


@pytest.fixture(scope="module")
def tczyx_level(tmp_path_factory):
    path = tmp_path_factory.mktemp("tczyx") / "img.zarr"
    data = pattern((2, 3, 5, 9, 11), "uint16")
    write_ome_zarr(path, data, "tczyx", levels=1, chunks=(1, 2, 2, 4, 4))
    return open_source(str(path)).levels[0], data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_array_views_read_any_byte_range_into_the_callers_buffer(tczyx_level, data):
    """Planes (y, x with t, c, z fixed), crops and reordered N-D views share one byte-range
    reader: any range, with or without `out=`, is numpy's C-order bytes of the same view."""
    level, ref = tczyx_level
    ndim = 5
    order = data.draw(st.permutations(range(ndim)))
    kept = sorted(data.draw(st.sets(st.sampled_from(order), min_size=1)), key=order.index)
    fixed = {a: data.draw(st.integers(0, ref.shape[a] - 1)) for a in range(ndim) if a not in kept}
    box = []
    for a in kept:
        lo = data.draw(st.integers(0, ref.shape[a] - 1))
        box.append((lo, data.draw(st.integers(lo + 1, ref.shape[a]))))
    axes = list(kept)
    if data.draw(st.booleans()):
        axes.insert(data.draw(st.integers(0, len(axes))), None)  # a singleton axis
        box.insert(axes.index(None), None)
    dtype = data.draw(st.sampled_from(["<u2", ">u2"]))
    view = ArrayView(ChunkEngine(), level, axes, fixed, np.dtype(dtype), box)
    index = tuple(fixed.get(a, slice(None)) for a in range(ndim))
    sub = ref[index]  # the kept axes in level order
    sub = sub[tuple(slice(*box[axes.index(a)]) for a in sorted(kept))]
    expected = np.ascontiguousarray(sub.transpose([sorted(kept).index(a) for a in kept])).astype(dtype).tobytes()
    assert view.nbytes == len(expected)
    start = data.draw(st.integers(0, len(expected)))
    stop = data.draw(st.integers(start, len(expected)))
    assert bytes(view.read(start, stop)) == expected[start:stop]
    out = memoryview(bytearray(stop - start))
    assert view.read(start, stop, out) is None
    assert bytes(out) == expected[start:stop]
