"""crop/: any box of a level as an ImageJ hyperstack, looked up by name, compared with the
source box through tifffile in a real mount; ImageJ reads its size, calibration and origin."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess

import numpy as np
import pytest
import tifffile

from conftest import imagej_order, mounted, read_all, vfs_for
from imagej import describe_image_macro, ij_str, parse_kv, run_macro
from ngffmount.vfs.views.crop_views import parse_box
from zarr_fixtures import pattern, write_ome_zarr, write_sparse_stack

NM = {"z": "nanometer", "y": "nanometer", "x": "nanometer", "t": "second"}
TCZYX = (2, 2, 6, 40, 50)
SCALE = [1.5, 1, 8.0, 4.0, 4.0]
TRANSLATION = [0, 0, 80.0, 40.0, 20.0]


def write_tczyx(path):
    data = pattern(TCZYX, "uint16", seed=5)
    write_ome_zarr(path, data, "tczyx", levels=2, chunks=(1, 1, 4, 16, 16), scale0=SCALE, units=NM,
                   translation=TRANSLATION)
    return data


def write_zyx(path):
    data = pattern((5, 30, 20), "float32", seed=2)
    write_ome_zarr(path, data, "zyx", levels=1, chunks=(2, 16, 16))
    return data


def box_of(data: np.ndarray, axes: str, name: str) -> np.ndarray:
    """The source box a crop name asks for, by numpy slicing of the source."""
    sl = [slice(None)] * data.ndim
    for part in name[:-4].split("_"):
        axis, rng = part[0], part[1:]
        a, b = (int(v) for v in rng.split("-"))
        sl[axes.index(axis)] = slice(a, b)
    return data[tuple(sl)]


def stack_of(arr: np.ndarray, axes: str) -> np.ndarray:
    """A crop's planes as ImageJ stores them (channel fastest, then z, then t)."""
    return imagej_order(arr, axes)


def test_parse_box_rules():
    sizes = {"t": None, "c": 3, "z": 10, "y": 20, "x": 30}
    assert parse_box("c0-1_z2-5_y0-20_x29-30.tif", sizes) == {"c": (0, 1), "z": (2, 5), "y": (0, 20), "x": (29, 30)}
    assert parse_box("y3-4.tif", sizes) == {"y": (3, 4)}
    for bad in ["z0-0.tif", "z5-3.tif", "z0-11.tif", "x0-10_z0-1.tif", "z0-1_z1-2.tif", "t0-1.tif", "q0-1.tif",
                "z0-1", "z0-1.tiff", ".tif", "_z0-1.tif", "z0-1_.tif", "z-1-2.tif", "z01.tif", "Z0-1.tif",
                "z0-1__x0-1.tif", "z 0-1.tif", "z0-1.tif.tif", "z\u0660-\u0661.tif"]:
        assert parse_box(bad, sizes) is None, bad


def test_crop_files_match_the_source_box(tmp_path):
    path = tmp_path / "img.zarr"
    data = write_tczyx(path)
    fs = vfs_for(str(path))
    assert fs.readdir("/crop") == ["README.txt"]
    assert fs.readdir("/crop/s0") == []
    readme = read_all(fs, "/crop/README.txt").decode()
    assert "t, c, z, y, x" in readme and "s1: t=2 c=2 z=6 y=20 x=25" in readme
    views = json.loads(read_all(fs, "/info.json"))["views"]
    assert views["crop/"] == {"levels": ["s0", "s1"], "readme": "README.txt", "example": "crop/s0/y10-30_x12-37.tif"}
    assert "crop/s0/y10-30_x12-37.tif" in readme and fs.getattr("/" + views["crop/"]["example"])["st_size"] > 0
    assert views["s0.xz/"] == {"files": 2 * 2 * 40, "file_size": fs.getattr("/s0.xz/t00000_c000_y00000.tif")["st_size"],
                               "width": 50, "height": 6}
    for name in ["t1-2_c0-1_z2-5_y10-30_x5-45.tif", "z0-1_y0-40_x0-50.tif", "c1-2_y39-40.tif"]:
        got = tifffile.TiffFile(io.BytesIO(read_all(fs, f"/crop/s0/{name}")))
        np.testing.assert_array_equal(got.asarray().reshape(-1, *got.pages[0].shape),
                                      stack_of(box_of(data, "tczyx", name), "tczyx"), err_msg=name)
    # The whole level is sN.tif, byte for byte.
    assert read_all(fs, "/crop/s0/t0-2_c0-2_z0-6_y0-40_x0-50.tif") == read_all(fs, "/s0.tif")
    assert read_all(fs, "/crop/s1/y0-20.tif") == read_all(fs, "/s1.tif")


def test_bad_names_are_not_found(tmp_path):
    path = tmp_path / "img.zarr"
    write_zyx(path)
    fs = vfs_for(str(path))
    for bad in ["/crop/s0/t0-1.tif", "/crop/s0/z0-6.tif", "/crop/s0/z3-3.tif", "/crop/s0/y0-1_z0-1.tif",
                "/crop/s1/z0-1.tif", "/crop/s0/nonsense.tif", "/crop/s0/x0-21.tif"]:
        with pytest.raises(FileNotFoundError):
            fs.getattr(bad)


@pytest.mark.integration
def test_crops_in_a_real_mount(tmp_path, http_server, cache_args):
    tczyx = write_tczyx(http_server.www / "crop5d.zarr")
    zyx = write_zyx(http_server.www / "crop3d.zarr")
    cases = {
        "crop5d.zarr": (tczyx, "tczyx", ["t1-2_c0-1_z2-5_y10-30_x5-45.tif",  # t and c fixed
                                         "z3-6_y30-40_x40-50.tif",  # every t and c, at the far edges
                                         "t1-2_c1-2_z5-6_y39-40_x49-50.tif",  # one voxel, the last
                                         "t0-2_c0-2_z0-6_y0-40_x0-50.tif"]),  # the whole level
        "crop3d.zarr": (zyx, "zyx", ["z1-3_x10-20.tif", "y0-1_x0-1.tif", "z0-5_y0-30_x0-20.tif"]),
    }
    for store, (data, axes, names) in cases.items():
        with mounted(f"{http_server.url}/{store}", tmp_path / store, *cache_args) as mnt:
            http_server.reset_counters()
            assert subprocess.run(["ls", "-l", str(mnt / "crop")], capture_output=True, text=True,
                                  check=True).stdout.split()[-1] == "README.txt"
            assert os.listdir(mnt / "crop") == ["README.txt"]
            assert os.listdir(mnt / "crop" / "s0") == []
            sizes = {n: (mnt / "crop" / "s0" / n).stat().st_size for n in names}
            assert http_server.requests == 0, "ls -l of crop/ and stat of crops fetch no chunk"
            for bad in ["z0-0.tif", "z0-99.tif", "x0-1_z0-1.tif", "w0-1.tif", "z0-1", "../s0.tif"]:
                with pytest.raises(OSError) as exc:
                    os.stat(mnt / "crop" / "s0" / bad)
                assert exc.value.errno == errno.ENOENT, bad
            for name in names:
                path = mnt / "crop" / "s0" / name
                with tifffile.TiffFile(path) as tif:
                    got = tif.asarray().reshape(-1, *tif.pages[0].shape)
                np.testing.assert_array_equal(got, stack_of(box_of(data, axes, name), axes), err_msg=name)
                assert path.stat().st_size == sizes[name]
            assert (mnt / "crop" / "s0" / "z0-1_y0-1_x0-1.tif").exists()


@pytest.mark.integration
def test_imagej_opens_a_crop_with_its_size_calibration_and_origin(tmp_path, http_server, cache_args):
    data = write_tczyx(http_server.www / "crop-ij.zarr")
    name = "t1-2_z2-5_y10-30_x5-45.tif"
    with mounted(f"{http_server.url}/crop-ij.zarr", tmp_path / "mnt", *cache_args) as mnt:
        path = ij_str(str(mnt / "crop" / "s0" / name))
        macro = describe_image_macro(f"open({path});", [(1, 0, 0), (6, 39, 19)]) + "\n".join([
            "x = 0; y = 0; z = 0;",
            "toScaled(x, y, z);",  # (index - origin) * pixel size
            'print("corner_x=" + d2s(x, 9)); print("corner_y=" + d2s(y, 9)); print("corner_z=" + d2s(z, 9));',
        ])
        info = parse_kv(run_macro(macro))
    assert (info["width"], info["height"], info["channels"], info["slices"], info["frames"]) == (40, 20, 2, 3, 1)
    assert info["unit"] == "nm"
    assert (info["pixelWidth"], info["pixelHeight"], info["pixelDepth"]) == (4.0, 4.0, 8.0)
    # The crop's first voxel sits where it sits in the source: index * scale + translation.
    assert info["corner_x"] == pytest.approx(5 * 4.0 + 20.0)
    assert info["corner_y"] == pytest.approx(10 * 4.0 + 40.0)
    assert info["corner_z"] == pytest.approx(2 * 8.0 + 80.0)
    assert info["pixel_1_0_0"] == data[1, 0, 2, 10, 5]
    assert info["pixel_6_39_19"] == data[1, 1, 4, 29, 44]  # slice 6: c = 1, z = 2 of the crop


def test_crops_above_4gib_follow_the_stack_convention(tmp_path):
    """2100 planes of 1024 x 1024 uint16 (4.1 GiB declared; two chunks exist): a crop above
    4 GiB is laid out as sN.tif is, and reads the source's pixels."""
    from conftest import VirtualReader
    from ngffmount.vfs.writers.tiff import CLASSIC_LIMIT

    path = tmp_path / "big.zarr"
    arr = write_sparse_stack(path)
    fs = vfs_for(str(path))
    whole = "/crop/s0/z0-2100.tif"
    assert fs.getattr(whole)["st_size"] == fs.getattr("/s0.tif")["st_size"] > CLASSIC_LIMIT
    assert fs.read(whole, 1 << 16, 0) == fs.read("/s0.tif", 1 << 16, 0)
    name = "/crop/s0/z5-2100_y1-1024_x3-1020.tif"
    plane = 1023 * 1017 * 2
    assert fs.getattr(name)["st_size"] > CLASSIC_LIMIT
    with tifffile.TiffFile(VirtualReader(fs, name)) as tif:
        assert tif.imagej_metadata["images"] == 2095
        series = tif.series[0]
        assert series.shape == (2095, 1023, 1017)
        offset = series.dataoffset
    last = np.frombuffer(fs.read(name, plane, offset + 2094 * plane), "<u2").reshape(1023, 1017)
    np.testing.assert_array_equal(last, arr[2099, 1:, 3:1020])
