"""OME-Zarr groups from the real sample metadata: an HCS plate, labels, bioformats2raw series."""

from __future__ import annotations

import json

import numpy as np
import zarr

from conftest import read_all, tiff_array, vfs_for
from zarr_fixtures import SAMPLES, pattern, write_metadata_doc, write_ome_zarr


def write_levels(group_path, attrs: dict, shape, dtype="uint16", seed=0):
    """Arrays for every dataset an image's multiscales lists (y and x halved per level)."""
    root = zarr.open_group(str(group_path), mode="a", zarr_format=2)
    arrays = []
    for i, ds in enumerate(attrs["multiscales"][0]["datasets"]):
        s = tuple(shape[:-2]) + (max(1, shape[-2] >> i), max(1, shape[-1] >> i))
        data = pattern(s, dtype, seed=seed + i)
        root.create_array(ds["path"], shape=s, chunks=s, dtype=dtype,
                          chunk_key_encoding={"name": "v2", "separator": "/"})[...] = data
        arrays.append(data)
    write_metadata_doc(group_path / ".zattrs", attrs)
    return arrays


def test_hcs_plate_rows_columns_fields(tmp_path):
    plate = tmp_path / "plate.zarr"
    zarr.open_group(str(plate), mode="w", zarr_format=2)
    (plate / ".zattrs").write_text((SAMPLES / "ome-zarr-0.4/hcs-fractal-plate.zattrs").read_text())
    zarr.open_group(str(plate / "B" / "03"), mode="w", zarr_format=2)
    (plate / "B" / "03" / ".zattrs").write_text((SAMPLES / "ome-zarr-0.4/hcs-fractal-well-B03.zattrs").read_text())
    image_attrs = json.loads((SAMPLES / "ome-zarr-0.4/hcs-fractal-image-B03-0.zattrs").read_text())
    arrays = write_levels(plate / "B" / "03" / "0", image_attrs, (1, 2, 64, 96))
    fs = vfs_for(str(plate))
    assert fs.readdir("/B") == ["03"] and fs.readdir("/B/03") == ["0"]
    assert "s4.tif" in fs.readdir("/B/03/0")
    info = json.loads(read_all(fs, "/B/03/0/info.json"))
    assert info["channels"][0]["label"] == "DAPI" and info["levels"][0]["voxel_size"]["x"] == 0.1625
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/B/03/0/s1/t00000_c000_z00001.tif")), arrays[1][0, 1])


def test_labels_become_a_subfolder_of_their_image(tmp_path):
    image = tmp_path / "img.zarr"
    data = pattern((1, 3, 32, 32), "uint16")
    write_ome_zarr(image, data, "czyx", levels=1)
    zarr.open_group(str(image / "labels"), mode="w", zarr_format=2)
    (image / "labels" / ".zattrs").write_text((SAMPLES / "ome-zarr-0.4/ngio-czyx-labels-group.zattrs").read_text())
    label_attrs = json.loads((SAMPLES / "ome-zarr-0.4/ngio-czyx-label-image.zattrs").read_text())
    label_arrays = write_levels(image / "labels" / "label", label_attrs, (3, 32, 32), dtype="uint32")
    fs = vfs_for(str(image))
    assert "labels" in fs.readdir("/") and fs.readdir("/labels") == ["label"]
    assert json.loads(read_all(fs, "/info.json"))["labels"] == ["label"]
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/labels/label/s0/z00002.tif")), label_arrays[0][2])


def test_bioformats2raw_series(tmp_path):
    root = tmp_path / "bf2raw.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2)
    (root / ".zattrs").write_text((SAMPLES / "ome-zarr-0.4/ngff-spec-bf2raw-root.zattrs").read_text())
    zarr.open_group(str(root / "OME"), mode="w", zarr_format=2)
    (root / "OME" / ".zattrs").write_text((SAMPLES / "ome-zarr-0.4/ngff-spec-bf2raw-OME-series.zattrs").read_text())
    series = []
    for s in ("0", "1"):
        data = pattern((2, 16, 16), "uint8", seed=int(s))
        write_ome_zarr(root / s, data, "zyx", levels=1)
        series.append(data)
    fs = vfs_for(str(root))
    assert [n for n in fs.readdir("/") if not n.startswith(".")] == ["0", "1"]
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/1/s0.tif")), series[1])
