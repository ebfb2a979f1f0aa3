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
from ngffmount.vfs.arrays import ArrayView
from ngffmount.vfs.hdf5 import Dataset, hdf5_file
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
        np.testing.assert_allclose(d.attrs["element_size_um"], [1.0, 2.5, 0.325, 0.325])
        assert [dim.label for dim in d.dims] == list("czyx")


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
        assert "/s0                      Dataset {2, 5, 40, 50}" in ls.stdout
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
    with h5py.File(io.BytesIO(vfile.read(0, vfile.size)), "r") as f:
        assert f["g"].attrs["note"] == "hi"
        np.testing.assert_array_equal(f["g/small"][...], np.arange(6).reshape(2, 3))
        np.testing.assert_array_equal(f["g/big"][...], data.transpose(2, 1, 0)[None])
