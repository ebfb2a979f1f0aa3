"""N5 calibration in the two cases a multiscale group does not cover: a single dataset mounted
on its own (COSEM `transform`, `pixelResolution`, `resolution` + `units`), and an N5 Viewer
container whose root attributes are every channel's defaults.

Pixels are written by z5py or tensorstore (independent N5 writers) and compared with the
writer's own read.
Metadata comes byte for byte from real documents (tests/data/samples/n5):
- n5ij-*-dataset-attributes.json: saalfeldlab/n5-ij @ 24856955 : src/test/resources/test.n5/
  (cosem_ms/s1, cosem_F, n5v_pr-ds, n5v_pra), the datasets n5-ij's own metadata tests read.
- n5viewer-readme-root-attributes.json: saalfeldlab/n5-viewer @ 92757fc2 : README.md, the
  example root attributes.json of "Container structure" (scales for 6 levels, pixelResolution
  in um, a shearing affineTransform).
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import tensorstore as ts
import tifffile
import z5py

from conftest import read_all, tiff_array, vfs_for
from zarr_fixtures import SAMPLES, pattern


def _z5_dataset(root, path: str, sample: str | None, data: np.ndarray, chunks, attrs: dict | None = None) -> np.ndarray:
    """A z5py dataset; its attributes.json is then replaced by the sample's exact bytes (or
    extended by `attrs`). Returns what z5py reads back."""
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    f.create_dataset(path, data=data, chunks=chunks, compression="gzip")
    doc = root / path / "attributes.json"
    if sample is not None:
        doc.write_bytes((SAMPLES / "n5" / sample).read_bytes())
    if attrs:
        doc.write_text(json.dumps({**json.loads(doc.read_text()), **attrs}))
    return z5py.File(str(root), mode="r")[path][...]


def _sample_shape(sample: str) -> tuple[int, ...]:
    return tuple(json.loads((SAMPLES / "n5" / sample).read_text())["dimensions"][::-1])


def _imagej(fs, path: str):
    with tifffile.TiffFile(io.BytesIO(read_all(fs, path))) as tif:
        page = tif.pages[0]
        x_res = page.tags["XResolution"].value
        return tif.imagej_metadata, x_res[1] / x_res[0], tif.asarray()


def _sparse(shape, dtype, seed: int) -> np.ndarray:
    """Mostly zero (cheap to write at the samples' real sizes), with a patterned corner and a
    patterned far edge so misplaced blocks show."""
    data = np.zeros(shape, dtype)
    data[:9, :40, :36] = pattern((9, 40, 36), dtype, seed)
    data[-3:, -20:, -24:] = pattern((3, 20, 24), dtype, seed + 1)
    return data


def _every_plane(fs, expected: np.ndarray) -> None:
    planes = sorted(fs.readdir("/s0"))
    assert len(planes) == expected.shape[0]
    for z, name in enumerate(planes):
        np.testing.assert_array_equal(tiff_array(read_all(fs, f"/s0/{name}")), expected[z], err_msg=name)


def test_lone_cosem_dataset_keeps_its_transform(tmp_path):
    sample = "n5ij-cosem-dataset-attributes.json"  # zyx, scale 64 nm, translate 28 nm
    expected = _z5_dataset(tmp_path / "c.n5", "s1", sample, _sparse(_sample_shape(sample), "uint16", 1), (16, 16, 16))
    fs = vfs_for(str(tmp_path / "c.n5" / "s1"))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "N5 dataset"
    assert [a["name"] for a in info["axes"]] == ["z", "y", "x"]
    assert [a["unit"] for a in info["axes"]] == ["nanometer"] * 3
    assert info["levels"][0]["scale"] == [64.0, 64.0, 64.0]
    assert info["levels"][0]["translation"] == [28.0, 28.0, 28.0]
    meta, pixel_width, stack = _imagej(fs, "/s0.tif")
    assert meta["unit"] == "nm" and meta["spacing"] == 64.0 and pixel_width == pytest.approx(64.0)
    assert meta["xorigin"] == pytest.approx(-28 / 64) and meta["zorigin"] == pytest.approx(-28 / 64)
    np.testing.assert_array_equal(stack.reshape(expected.shape), expected)
    _every_plane(fs, expected)


def test_lone_cosem_dataset_in_f_order(tmp_path):
    sample = "n5ij-cosem-forder-dataset-attributes.json"  # order F: x, y, z = 32, 64, 128 nm
    expected = _z5_dataset(tmp_path / "f.n5", "cosem_F", sample, _sparse(_sample_shape(sample), "uint16", 2), (16, 16, 16))
    fs = vfs_for(str(tmp_path / "f.n5" / "cosem_F"))
    info = json.loads(read_all(fs, "/info.json"))
    assert [a["name"] for a in info["axes"]] == ["z", "y", "x"]
    assert info["levels"][0]["scale"] == [128.0, 64.0, 32.0]
    assert info["levels"][0]["translation"] == [30.0, 29.0, 28.0]
    meta, pixel_width, _ = _imagej(fs, "/s0.tif")
    assert meta["spacing"] == 128.0 and pixel_width == pytest.approx(32.0) and meta["unit"] == "nm"
    _every_plane(fs, expected)


def test_lone_dataset_with_pixel_resolution_and_downsampling_factors(tmp_path):
    sample = "n5ij-pixelresolution-downsampled-dataset-attributes.json"  # 1.5 mm, factors 2
    expected = _z5_dataset(tmp_path / "p.n5", "n5v_pr-ds", sample, _sparse(_sample_shape(sample), "uint16", 3), (16, 16, 16))
    fs = vfs_for(str(tmp_path / "p.n5" / "n5v_pr-ds"))
    info = json.loads(read_all(fs, "/info.json"))
    # n5-ij's own test of this dataset: scale 3.0 and offset 0.75
    assert info["levels"][0]["scale"] == [3.0, 3.0, 3.0] and info["levels"][0]["translation"] == [0.75, 0.75, 0.75]
    assert info["axes"][-1]["unit"] == "millimeter"
    meta, pixel_width, _ = _imagej(fs, "/s0.tif")
    assert meta["unit"] == "mm" and meta["spacing"] == 3.0 and pixel_width == pytest.approx(3.0)
    _every_plane(fs, expected)


def test_lone_dataset_with_a_bare_pixel_resolution_list(tmp_path):
    sample = "n5ij-pixelresolution-list-dataset-attributes.json"  # [1.5, 1.5, 1.5], no unit
    expected = _z5_dataset(tmp_path / "l.n5", "n5v_pra", sample, _sparse(_sample_shape(sample), "uint16", 4), (16, 16, 16))
    fs = vfs_for(str(tmp_path / "l.n5" / "n5v_pra"))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["levels"][0]["scale"] == [1.5, 1.5, 1.5] and info["axes"][-1].get("unit") is None
    _every_plane(fs, expected)


def test_lone_dataset_with_resolution_and_units_written_by_tensorstore(tmp_path):
    """tensorstore's n5 driver writes dimension units as Neuroglancer's per-dataset `axes`,
    `resolution` and `units` (N5 order: x, y, z)."""
    store = ts.open({
        "driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / "r.n5" / "img")},
        "metadata": {"dimensions": [20, 30, 5], "blockSize": [16, 16, 2], "dataType": "uint16",
                     "compression": {"type": "gzip"}},
        "schema": {"dimension_units": [[4, "nm"], [6, "nm"], [40, "um"]], "domain": {"labels": ["x", "y", "z"]}},
        "create": True}).result()
    store[...] = pattern((20, 30, 5), "uint16", seed=5)
    expected = np.asarray(store.read().result()).transpose()  # x, y, z -> z, y, x
    fs = vfs_for(str(tmp_path / "r.n5" / "img"))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["levels"][0]["scale"] == [40.0, 6.0, 4.0]
    assert [a["unit"] for a in info["axes"]] == ["micrometer", "nanometer", "nanometer"]
    _every_plane(fs, expected)


def _n5_viewer_root(root, channels: int, levels: int, c1_attrs: dict | None = None):
    """The README's root attributes (6 levels named) over channels that hold fewer levels."""
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    sample = (SAMPLES / "n5" / "n5viewer-readme-root-attributes.json").read_bytes()
    scales = json.loads(sample)["scales"]
    expected = {}
    for c in range(channels):
        for i in range(levels):
            fx, fy, fz = scales[i]
            shape = (-(-9 // fz), -(-40 // fy), -(-36 // fx))
            f.create_dataset(f"c{c}/s{i}", data=pattern(shape, "uint16", 10 * c + i), chunks=(4, 16, 16), compression="gzip")
            expected[(c, i)] = z5py.File(str(root), mode="r")[f"c{c}/s{i}"][...]
    (root / "attributes.json").write_bytes(sample)  # last: z5py wants its own root document while writing
    if c1_attrs is not None:
        (root / "c1" / "attributes.json").write_text(json.dumps(c1_attrs))
    return expected


def test_n5_viewer_root_shows_each_channel_with_the_inherited_calibration(tmp_path, http_server, caplog):
    root = tmp_path / "viewer.n5"
    expected = _n5_viewer_root(root, channels=2, levels=3, c1_attrs={"pixelResolution": {"unit": "nm", "dimensions": [50, 50, 200]}})
    import shutil

    shutil.copytree(root, http_server.www / f"viewer-{tmp_path.name}.n5")
    for url in (str(root), f"{http_server.url}/viewer-{tmp_path.name}.n5"):  # HTTP: found without listing
        with caplog.at_level(logging.WARNING, logger="ngffmount"):
            fs = vfs_for(url)
        assert sorted(fs.readdir("/")) == ["c0", "c1"]
        assert any("shears" in r.getMessage() for r in caplog.records)  # the README's affine is left out, said so
        c0 = json.loads(read_all(fs, "/c0/info.json"))
        assert c0["format"] == "N5 multiscale (N5 Viewer)" and len(c0["levels"]) == 3  # 6 named, 3 held
        assert c0["levels"][0]["scale"] == pytest.approx([0.18, 0.097, 0.097])
        assert c0["levels"][2]["scale"] == pytest.approx([0.36, 0.388, 0.388])  # scales[2] = 4, 4, 2
        assert c0["levels"][2]["translation"] == pytest.approx([0.09, 0.1455, 0.1455])
        assert c0["axes"][-1]["unit"] == "micrometer"
        c1 = json.loads(read_all(fs, "/c1/info.json"))  # its own pixelResolution overrides the root's
        assert c1["levels"][1]["scale"] == pytest.approx([200.0, 100.0, 100.0]) and c1["axes"][-1]["unit"] == "nanometer"
        meta, pixel_width, _ = _imagej(fs, "/c0/s1.tif")
        assert meta["unit"] == "micron" and meta["spacing"] == pytest.approx(0.18)
        assert pixel_width == pytest.approx(0.194)
        for (c, i), data in expected.items():
            planes = sorted(fs.readdir(f"/c{c}/s{i}"))
            assert len(planes) == data.shape[0]
            for z, name in enumerate(planes):
                np.testing.assert_array_equal(tiff_array(read_all(fs, f"/c{c}/s{i}/{name}")), data[z])


def test_a_channel_group_without_attributes_mounts_on_its_own(tmp_path):
    """z5py, like n5-spark, writes no attributes.json for the groups it makes (c0/ here)."""
    root = tmp_path / "viewer.n5"
    expected = _n5_viewer_root(root, channels=1, levels=2)
    assert not (root / "c0" / "attributes.json").exists()
    fs = vfs_for(str(root / "c0"))
    info = json.loads(read_all(fs, "/info.json"))
    assert len(info["levels"]) == 2
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s1.tif")).reshape(expected[(0, 1)].shape), expected[(0, 1)])


def test_n5_viewer_axis_aligned_affine_is_applied(tmp_path):
    root = tmp_path / "aligned.n5"
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    data = pattern((4, 20, 24), "uint8", 7)
    f.create_dataset("c0/s0", data=data, chunks=(2, 16, 16), compression="raw")
    data = z5py.File(str(root), mode="r")["c0/s0"][...]
    (root / "attributes.json").write_text(json.dumps({
        "pixelResolution": {"unit": "um", "dimensions": [0.5, 0.5, 2.0]},
        "affineTransform": [[2, 0, 0, 10], [0, 1, 0, 20], [0, 0, 1, 30]]}))
    fs = vfs_for(str(root))
    info = json.loads(read_all(fs, "/c0/info.json"))
    assert info["levels"][0]["scale"] == [2.0, 0.5, 1.0] and info["levels"][0]["translation"] == [30.0, 20.0, 10.0]
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/c0/s0.tif")).reshape(data.shape), data)
