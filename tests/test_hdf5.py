"""HDF5 views: h5py and the HDF5 1.10 tools (h5ls, h5dump) read what we synthesize."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import tracemalloc

import h5py
import numpy as np
import pytest
import zarr

from conftest import VirtualReader, mounted, read_all, vfs_for
from ngffmount.cache.engine import ChunkEngine
from ngffmount.vfs.views.arrays import ArrayView
from ngffmount.vfs.writers.hdf5 import Dataset, hdf5_file
from ngffmount.vfs.tree.virtualfile import read_bytes
from zarr_fixtures import pattern, write_ome_zarr

UM = {"z": "micrometer", "y": "micrometer", "x": "nanometer"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("h5") / "img.zarr"
    data = pattern((2, 5, 40, 50), "int16", seed=3)
    write_ome_zarr(path, data, "czyx", levels=3, chunks=(1, 2, 16, 16), scale0=[1, 2.5, 0.1625, 162.5], units=UM)
    return path, data


def test_level_h5_with_h5py(store):
    path, data = store
    fs = vfs_for(str(path))
    with h5py.File(io.BytesIO(read_all(fs, "/s1.h5")), "r") as f:
        d = f["data"]
        assert d.shape == (2, 5, 20, 25) and d.dtype == np.dtype("int16")
        np.testing.assert_array_equal(d[...], data[:, :, ::2, ::2])
        assert d.attrs["axes"] == "czyx"
        np.testing.assert_allclose(d.attrs["element_size_um"], [2.5, 0.325, 0.325])  # z, y, x: no c
        assert [dim.label for dim in d.dims] == list("czyx")


def test_calibration_attributes_for_the_imagej_hdf5_plugin_and_ilastik(tmp_path):
    data = pattern((2, 3, 4, 10, 12), "uint8")
    write_ome_zarr(tmp_path / "img.zarr", data, "tczyx", levels=1, scale0=[30.0, 1, 2.0, 0.5, 250.0],
                   units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "nanometer"})
    write_ome_zarr(tmp_path / "2d.zarr", data[0, 0, 0], "yx", levels=1, scale0=[0.5, 0.25],
                   units={"y": "micrometer", "x": "micrometer"})
    fs = vfs_for(str(tmp_path / "img.zarr"))
    with h5py.File(io.BytesIO(read_all(fs, "/s0.h5")), "r") as f:
        attrs = f["data"].attrs
        # The ImageJ HDF5 plugin reads [z, y, x] whatever the rank: t and c are left out.
        np.testing.assert_allclose(attrs["element_size_um"], [2.0, 0.5, 0.25])
        # ilastik reads the axis order and pixel sizes from vigra axistags, units from JSON.
        tags = json.loads(attrs["axistags"])["axes"]
        assert [(a["key"], a["typeFlags"]) for a in tags] == [("t", 8), ("c", 1), ("z", 2), ("y", 2), ("x", 2)]
        assert [a["resolution"] for a in tags] == [30.0, 0.0, 2.0, 0.5, 250.0]
        assert json.loads(attrs["axis_units"]) == {"t": "second", "z": "micrometer", "y": "micrometer",
                                                   "x": "nanometer"}
    with h5py.File(io.BytesIO(read_all(vfs_for(str(tmp_path / "2d.zarr")), "/s0.h5")), "r") as f:
        np.testing.assert_allclose(f["data"].attrs["element_size_um"], [0.5, 0.25])  # [y, x]: the plugin adds z = 1


def test_image_h5_holds_every_level(store):
    path, data = store
    fs = vfs_for(str(path))
    with h5py.File(VirtualReader(fs, "/image.h5"), "r") as f:
        assert sorted(f) == ["s0", "s1", "s2"]
        for i in range(3):
            np.testing.assert_array_equal(f[f"s{i}"][...], data[:, :, :: 2**i, :: 2**i])
        ms = json.loads(f.attrs["multiscales"])
        assert [d["path"] for d in ms[0]["datasets"]] == ["s0", "s1", "s2"]
        assert ms[0]["datasets"][2]["coordinateTransformations"][0]["scale"] == [1, 2.5, 0.65, 650.0]


@pytest.mark.integration
def test_hdf5_tools_read_mounted_files(tmp_path, store, cache_args):
    path, data = store
    with mounted(str(path), tmp_path / "mnt", *cache_args) as mnt:
        ls = subprocess.run(["h5ls", "-r", str(mnt / "image.h5")], capture_output=True, text=True)
        assert ls.returncode == 0, ls.stderr
        assert re.search(r"/s0\s+Dataset \{2, 5, 40, 50\}", ls.stdout), ls.stdout
        head = subprocess.run(["h5dump", "-H", str(mnt / "s0.h5")], capture_output=True, text=True)
        assert head.returncode == 0 and "H5T_STD_I16LE" in head.stdout and "( 2, 5, 40, 50 )" in head.stdout
        for c, z, y, x in [(0, 0, 0, 0), (1, 4, 39, 49), (1, 2, 17, 33)]:
            out = subprocess.run(["h5dump", "-d", "/data", "-s", f"{c},{z},{y},{x}", "-c", "1,1,1,1", str(mnt / "s0.h5")],
                                 capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            value = int(re.search(r"\(\d+,\d+,\d+,\d+\): (-?\d+)", out.stdout).group(1))
            assert value == data[c, z, y, x]
        with h5py.File(mnt / "s2.h5", "r") as f:
            np.testing.assert_array_equal(f["data"][...], data[:, :, ::4, ::4])
        bdv = subprocess.run(["h5ls", "-r", str(mnt / "bdv.h5")], capture_output=True, text=True)
        assert bdv.returncode == 0 and re.search(r"/t00000/s01/2/cells\s+Dataset \{5, 10, 13\}", bdv.stdout), bdv.stdout


def test_header_of_a_1_tib_level_is_fast_and_small(tmp_path):
    path = tmp_path / "huge.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(64, 2, 2048, 2048, 1024), dtype="uint16", chunks=(1, 1, 64, 256, 256))
    arr[63, 1, 2047, 2000:2048, 1000:1024] = 7
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
                                  + [{"name": a, "type": "space"} for a in "zyx"], "datasets": [{"path": "0"}]}]
    fs = vfs_for(str(path))
    tracemalloc.start()
    started = time.perf_counter()
    size = fs.getattr("/s0.h5")["st_size"]
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert size >= 2**40
    assert elapsed < 1.0 and peak < 32 << 20  # a bound for the test, not a benchmark
    with h5py.File(VirtualReader(fs, "/s0.h5"), "r") as f:
        d = f["data"]
        assert d.shape == (64, 2, 2048, 2048, 1024)
        assert d[63, 1, 2047, 2047, 1023] == 7 and d[0, 0, 0, 0, 0] == 0


def test_small_and_big_datasets_in_one_file(tmp_path):
    path = tmp_path / "mix.zarr"
    data = pattern((3, 4, 5), "float32")
    write_ome_zarr(path, data, "zyx", levels=1)
    from ngffmount.adapters import open_source

    level = open_source(str(path)).levels[0]
    view = ArrayView(ChunkEngine(), level, [None, 2, 1, 0])  # a singleton axis, then x, y, z
    vfile = hdf5_file([Dataset("g/small", data=np.arange(6, dtype="int32").reshape(2, 3)),
                       Dataset("g/big", view=view, dtype=np.dtype("<f4"))], {"g": {"note": "hi"}})
    with h5py.File(io.BytesIO(read_bytes(vfile, 0, vfile.size)), "r") as f:
        assert f["g"].attrs["note"] == "hi"
        np.testing.assert_array_equal(f["g/small"][...], np.arange(6).reshape(2, 3))
        np.testing.assert_array_equal(f["g/big"][...], data.transpose(2, 1, 0)[None])


# -- BigDataViewer ------------------------------------------------------------------------


def bdv_store(tmp_path, dtype):
    path = tmp_path / f"bdv-{dtype}.zarr"
    data = pattern((2, 3, 6, 40, 50), dtype, seed=8)
    if dtype == "uint16":  # values above 32767 show whether int16 storage keeps the bits
        data = ((data.astype(np.int64) + 40000) % 65536).astype(np.uint16)
    write_ome_zarr(path, data, "tczyx", levels=2, chunks=(1, 1, 4, 16, 32), scale0=[1, 1, 2.5, 0.5, 0.5],
                   units={"z": "micrometer", "y": "micrometer", "x": "micrometer"}, translation=[0, 0, 10, 20, 30])
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["omero"] = {"channels": [{"label": "DAPI"}, {"label": "GFP"}, {"label": "RFP"}]}
    (path / ".zattrs").write_text(json.dumps(attrs))
    return path, data


def test_bdv_xml_describes_setups_timepoints_and_registration(tmp_path):
    import xml.etree.ElementTree as ET

    path, _ = bdv_store(tmp_path, "uint16")
    root = ET.fromstring(read_all(vfs_for(str(path)), "/bdv.xml"))
    loader = root.find("SequenceDescription/ImageLoader")
    assert loader.get("format") == "bdv.hdf5" and loader.find("hdf5").text == "bdv.h5"
    assert loader.find("hdf5").get("type") == "relative"
    setups = root.findall("SequenceDescription/ViewSetups/ViewSetup")
    assert [s.find("name").text for s in setups] == ["DAPI", "GFP", "RFP"]
    assert setups[0].find("size").text == "50 40 6"
    assert setups[0].find("voxelSize/size").text == "0.5 0.5 2.5"
    tp = root.find("SequenceDescription/Timepoints")
    assert (tp.get("type"), tp.find("first").text, tp.find("last").text) == ("range", "0", "1")
    regs = root.findall("ViewRegistrations/ViewRegistration")
    assert len(regs) == 6
    affine = [float(v) for v in regs[0].find("ViewTransform/affine").text.split()]
    assert affine == [0.5, 0, 0, 30, 0, 0.5, 0, 20, 0, 0, 2.5, 10]


@pytest.mark.parametrize("dtype", ["uint16", "float32", "uint8"])
def test_bdv_h5_layout_and_values(tmp_path, dtype):
    path, data = bdv_store(tmp_path, dtype)
    fs = vfs_for(str(path))
    with h5py.File(VirtualReader(fs, "/bdv.h5"), "r") as f:
        for s in range(3):
            np.testing.assert_array_equal(f[f"s{s:02d}/resolutions"][...], [[1, 1, 1], [2, 2, 1]])
            np.testing.assert_array_equal(f[f"s{s:02d}/subdivisions"][...], [[32, 16, 4], [25, 16, 4]])
            if dtype == "uint16":
                assert "dataType" not in f[f"s{s:02d}"].attrs
            else:
                assert f[f"s{s:02d}"].attrs["dataType"] == dtype
        for t, s, lvl in [(0, 0, 0), (1, 2, 0), (1, 1, 1)]:
            cells = f[f"t{t:05d}/s{s:02d}/{lvl}/cells"]
            expected = data[t, s, :, :: 2**lvl, :: 2**lvl]
            if dtype == "uint16":
                assert cells.dtype == np.dtype("int16")  # same bits, as BDV reads them
                np.testing.assert_array_equal(cells[...].view("uint16"), expected)
            else:
                assert cells.dtype == np.dtype(dtype)
                np.testing.assert_array_equal(cells[...], expected)
    assert (data > 32767).any() if dtype == "uint16" else True


def test_bdv_left_out_for_int64(tmp_path):
    path = tmp_path / "i64.zarr"
    write_ome_zarr(path, pattern((3, 8, 8), "int64"), "zyx", levels=1)
    info = json.loads(read_all(vfs_for(str(path)), "/info.json"))
    assert "BigDataViewer cannot hold dtype int64" in info["missing_views"]["bdv.xml"]
