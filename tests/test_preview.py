"""preview.png: a PNG that Pillow and libpng's pngcheck accept, sized from metadata alone,
rendered from the right level with the channels' OMERO colours and windows."""

from __future__ import annotations

import io
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import mounted, read_all, vfs_for
from ngffmount.adapters.storage import TRANSFERS
from ngffmount.vfs.views.preview import png_bytes, png_size
from zarr_fixtures import multiscale_meta, pattern, write_ome_zarr


def picture(data: bytes) -> np.ndarray:
    Image.open(io.BytesIO(data)).verify()  # Pillow checks the chunks' CRCs
    img = Image.open(io.BytesIO(data))
    assert img.mode == "RGB"
    return np.asarray(img)


def omero(channels):
    return {"channels": [{"label": f"ch{i}", "active": True, **c} for i, c in enumerate(channels)]}


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (100, 7), (700, 1024), (1024, 31)])
def test_png_size_is_known_from_width_and_height(shape):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert len(data) == png_size(*shape)
    np.testing.assert_array_equal(picture(data), rgb)


def test_size_from_metadata_and_the_picture_from_the_smallest_level_that_is_large_enough(tmp_path):
    data = pattern((3, 1500, 2600), "uint16", seed=6)
    write_ome_zarr(tmp_path / "img.zarr", data, "zyx", levels=3, chunks=(1, 256, 256))
    fs = vfs_for(str(tmp_path / "img.zarr"))
    before = TRANSFERS.requests
    size = fs.getattr("/preview.png")["st_size"]
    info = json.loads(read_all(fs, "/info.json"))["views"]["preview.png"]
    assert TRANSFERS.requests == before, "the size comes without reading pixels"
    # Level 1 is 1300 wide, level 2 only 650: level 1, scaled to 1024 on its long side.
    assert info == {"size": size, "level": "s1", "width": 1024, "height": 591}
    png = read_all(fs, "/preview.png")
    assert len(png) == size
    rgb = picture(png)
    assert rgb.shape == (591, 1024, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all(), "one channel: grey"
    assert rgb.std() > 10, "not constant for a non-constant image"
    # A 0.1-99.9 percentile stretch of the middle z uses the whole range.
    assert rgb.min() == 0 and rgb.max() == 255
    assert read_all(fs, "/preview.png") == png, "rendered once and kept"


def test_channels_take_their_omero_colours_and_windows(tmp_path):
    ny, nx = 60, 80
    data = np.zeros((2, 3, ny, nx), np.uint16)
    data[0] = np.arange(nx, dtype=np.uint16)[None, None, :] * 10  # ramp along x, 0..790
    data[1] = np.arange(ny, dtype=np.uint16)[None, :, None] * 100  # ramp along y, 0..5900
    data[1, 1, 30:] = 5000  # only the middle z has a plateau
    path = tmp_path / "img.zarr"
    write_ome_zarr(path, data, "czyx", levels=1)
    attrs = {"multiscales": multiscale_meta("czyx", 1, [1, 1, 1, 1]),
             "omero": omero([{"color": "FF0000", "window": {"start": 0, "end": 400, "min": 0, "max": 65535}},
                             {"color": "0000FF", "window": {"start": 0, "end": 5000, "min": 0, "max": 65535}}])}
    (path / ".zattrs").write_text(json.dumps(attrs))
    rgb = picture(read_all(vfs_for(str(path)), "/preview.png"))
    assert rgb.shape == (ny, nx, 3)
    assert (rgb[..., 1] == 0).all(), "no channel is green"
    np.testing.assert_array_equal(rgb[0, :, 0], np.round(np.clip(np.arange(nx) * 10 / 400, 0, 1) * 255))
    assert (rgb[:, 40:, 0] == 255).all(), "above the window's end: full red"
    np.testing.assert_array_equal(rgb[:30, 0, 2], np.round(np.arange(30) * 100 / 5000 * 255))
    assert (rgb[30:, :, 2] == 255).all(), "the middle z (1 of 3)"


def test_inactive_channels_are_left_out(tmp_path):
    data = np.zeros((3, 20, 30), np.uint8)
    data[0], data[1], data[2] = 10, 200, 100
    data[:, :, :15] = 0
    path = tmp_path / "img.zarr"
    write_ome_zarr(path, data, "cyx", levels=1)
    window = {"start": 0, "end": 200, "min": 0, "max": 255}
    attrs = {"multiscales": multiscale_meta("cyx", 1, [1, 1, 1]),
             "omero": {"channels": [{"color": "FF0000", "window": window, "active": False},
                                    {"color": "00FF00", "window": window, "active": True},
                                    {"color": "0000FF", "window": window, "active": True}]}}
    (path / ".zattrs").write_text(json.dumps(attrs))
    rgb = picture(read_all(vfs_for(str(path)), "/preview.png"))
    assert (rgb[:, 15:] == [0, 255, 128]).all() and (rgb[:, :15] == 0).all()


def test_without_colours_channels_still_differ(tmp_path):
    data = pattern((2, 40, 50), "uint8", seed=3)
    write_ome_zarr(tmp_path / "img.zarr", data, "cyx", levels=1)
    rgb = picture(read_all(vfs_for(str(tmp_path / "img.zarr")), "/preview.png"))
    assert not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


@pytest.mark.integration
def test_preview_in_a_real_mount_passes_pngcheck(tmp_path, http_server, cache_args):
    data = pattern((5, 300, 200), "float32", seed=9)
    write_ome_zarr(http_server.www / "preview.zarr", data, "zyx", levels=2, chunks=(1, 128, 128))
    with mounted(f"{http_server.url}/preview.zarr", tmp_path / "mnt", *cache_args) as mnt:
        http_server.reset_counters()
        size = os.stat(mnt / "preview.png").st_size
        assert http_server.requests == 0
        png = (mnt / "preview.png").read_bytes()
        assert len(png) == size
        chunk_paths = {p for p in http_server.paths if p.startswith("/preview.zarr/0/")}
        assert chunk_paths == {f"/preview.zarr/0/2/{y}/{x}" for y in range(3) for x in range(2)}, "middle z only"
        check = subprocess.run(["pngcheck", "-v", str(mnt / "preview.png")], capture_output=True, text=True)
        assert check.returncode == 0 and "No errors detected" in check.stdout, check.stdout + check.stderr
        assert picture(png).shape == (300, 200, 3)
