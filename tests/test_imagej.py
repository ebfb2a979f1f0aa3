"""ImageJ 1.x (Debian `imagej`, under Xvfb) opening the mounted files, as Fiji users do."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import mounted
from imagej import describe_image_macro, ij_str, parse_kv, run_macro
from zarr_fixtures import pattern, write_ome_zarr

pytestmark = pytest.mark.integration

UM = {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
SHAPE = (2, 5, 60, 90)  # c, z, y, x
POSITIONS = [(1, 0, 0), (2, 17, 33), (7, 89, 59), (10, 45, 12)]


@pytest.fixture(scope="module")
def mount(tmp_path_factory, http_server):
    path = http_server.www / "ij.zarr"
    data = pattern(SHAPE, "uint16", seed=11)
    write_ome_zarr(path, data, "czyx", levels=2, chunks=(1, 2, 32, 32), scale0=[1, 2.5, 0.1625, 0.1625], units=UM)
    mnt = tmp_path_factory.mktemp("ij") / "mnt"
    cache = tmp_path_factory.mktemp("ij-cache")
    with mounted(f"{http_server.url}/ij.zarr", mnt, "--cache-dir", str(cache)) as m:
        yield m, data


def expected_pixels(data: np.ndarray, positions, order: str = "czt") -> dict:
    """ImageJ slice n (1-based) of a c, z stack: channel fastest (CZT), or z fastest for sequences."""
    nc, nz = data.shape[:2]
    out = {}
    for s, x, y in positions:
        i = s - 1
        c, z = (i % nc, i // nc) if order == "czt" else (i // nz, i % nz)
        out[f"pixel_{s}_{x}_{y}"] = int(data[c, z, y, x])
    return out


def check_calibration(info: dict) -> None:
    assert info["unit"] in ("micron", "microns", "µm")  # getPixelSize gives the plural
    assert info["pixelWidth"] == pytest.approx(0.1625, rel=1e-6)
    assert info["pixelHeight"] == pytest.approx(0.1625, rel=1e-6)
    assert info["pixelDepth"] == pytest.approx(2.5, rel=1e-6)


@pytest.mark.parametrize("how", ["open", "virtual"])
def test_stack_opens_as_hyperstack(mount, how):
    mnt, data = mount
    path = ij_str(str(mnt / "s0.tif"))
    statement = f"open({path});" if how == "open" else f'run("TIFF Virtual Stack...", "open=[" + {path} + "]");'
    info = parse_kv(run_macro(describe_image_macro(statement, POSITIONS)))
    assert (info["width"], info["height"], info["nSlices"]) == (90, 60, 10)
    assert (info["channels"], info["slices"], info["frames"]) == (2, 5, 1)
    assert info["bitDepth"] == 16
    assert info["virtual"] == (1 if how == "virtual" else 0)
    check_calibration(info)
    for key, value in expected_pixels(data, POSITIONS).items():
        assert info[key] == value, key


def test_plane_folder_opens_as_virtual_image_sequence(mount):
    mnt, data = mount
    statement = f'File.openSequence({ij_str(str(mnt / "s0"))}, "virtual");'
    info = parse_kv(run_macro(describe_image_macro(statement, POSITIONS)))
    assert (info["width"], info["height"], info["nSlices"]) == (90, 60, 10)
    assert info["virtual"] == 1
    check_calibration(info)
    # Files sort as t, c, z: all z of channel 0 first.
    for key, value in expected_pixels(data, POSITIONS, order="tcz").items():
        assert info[key] == value, key


@pytest.mark.parametrize("how", ["open", "virtual"])
def test_stack_with_pixels_on_a_1mib_boundary_opens(tmp_path, http_server, cache_args, how):
    """Stacks of 64 MiB or more pad their header so pixels start where FUSE reads start."""
    path = http_server.www / "padded.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(70, 1024, 1024), dtype="uint16", chunks=(1, 1024, 1024),
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[0] = pattern((1024, 1024), "uint16", seed=3)
    arr[69] = pattern((1024, 1024), "uint16", seed=4)
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.5, 0.1625, 0.1625]}]}]}]
    with mounted(f"{http_server.url}/padded.zarr", tmp_path / "mnt", *cache_args) as mnt:
        assert (mnt / "s0.tif").stat().st_size % (1 << 20) == 0, "pixels end, and so start, on a 1 MiB boundary"
        p = ij_str(str(mnt / "s0.tif"))
        statement = f"open({p});" if how == "open" else f'run("TIFF Virtual Stack...", "open=[" + {p} + "]");'
        positions = [(1, 0, 0), (1, 1023, 5), (35, 8, 9), (70, 700, 300)]
        info = parse_kv(run_macro(describe_image_macro(statement, positions)))
        assert (info["width"], info["nSlices"], info["virtual"]) == (1024, 70, 1 if how == "virtual" else 0)
        assert info["pixel_1_0_0"] == int(arr[0, 0, 0])
        assert info["pixel_1_1023_5"] == int(arr[0, 5, 1023])
        assert info["pixel_35_8_9"] == 0
        assert info["pixel_70_700_300"] == int(arr[69, 300, 700])


def test_stack_over_4gib_opens_as_virtual_stack(tmp_path, http_server, cache_args):
    """ImageJ 1.x reads no BigTIFF: above 4 GiB the stack uses ImageJ's own images= convention."""
    path = http_server.www / "big4g.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(2100, 1024, 1024), dtype="uint16", chunks=(1, 1024, 1024),
                            chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[2099] = pattern((1024, 1024), "uint16", seed=5)
    arr[1] = 321
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                                  "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.5, 0.1625, 0.1625]}]}]}]
    with mounted(f"{http_server.url}/big4g.zarr", tmp_path / "mnt", *cache_args) as mnt:
        assert (mnt / "s0.tif").stat().st_size > 2**32
        p = ij_str(str(mnt / "s0.tif"))
        positions = [(2, 10, 10), (2100, 1023, 1023), (2100, 300, 700)]
        info = parse_kv(run_macro(describe_image_macro(f'run("TIFF Virtual Stack...", "open=[" + {p} + "]");', positions)))
        assert (info["width"], info["nSlices"], info["virtual"]) == (1024, 2100, 1)
        check_calibration(info)
        last = arr[2099]
        assert info["pixel_2_10_10"] == 321
        assert info["pixel_2100_1023_1023"] == int(last[1023, 1023])
        assert info["pixel_2100_300_700"] == int(last[700, 300])


def test_plane_just_below_imagejs_limit_opens(tmp_path, http_server, cache_args):
    """45440 x 45440 uint8 is just under what ImageJ's 8-bit reader reads (imagej_max_pixels):
    a stripped classic TIFF ImageJ opens (16 pixels more on each side and it is tiled)."""
    from slide_fixtures import sparse_pyramid

    side = 45440
    arrays = sparse_pyramid(http_server.www / "edge.zarr", (side, side), "uint8", "yx", (1024, 1024), factors=[1],
                            written=[(0, 0, 0), (0, side - 1024, side - 1024), (0, side // 2, side // 2)])
    with mounted(f"{http_server.url}/edge.zarr", tmp_path / "mnt", *cache_args) as mnt:
        positions = [(1, 3, 5), (1, side - 1, side - 2), (1, side // 2 + 100, side // 2 + 7), (1, 5000, 9000)]
        info = parse_kv(run_macro(describe_image_macro(f"open({ij_str(str(mnt / 's0' / 'z00000.tif'))});", positions),
                                  heap="5g", timeout=600))
        assert (info["width"], info["height"], info["bitDepth"]) == (side, side, 8)
        level = arrays[0]
        for _, x, y in positions:
            assert info[f"pixel_1_{x}_{y}"] == int(level[y, x]), (x, y)
        assert info[f"pixel_1_{side - 1}_{side - 2}"] != 0
