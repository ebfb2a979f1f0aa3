"""N5 sources: every compression, edge blocks, missing blocks, and the multiscale conventions,
with data written by z5py (an independent N5 writer) and metadata from real samples."""

from __future__ import annotations

import json
import struct
import zlib

import numcodecs
import numpy as np
import pytest
import z5py

from conftest import imagej_order, read_all, tiff_array, vfs_for
from ngffmount.adapters import NotAnImage, Unsupported, open_source
from zarr_fixtures import pattern, sample


@pytest.mark.parametrize("compression", ["raw", "gzip", "bzip2", "xz", "lz4", "blosc"])
def test_z5py_dataset_every_compression(tmp_path, compression):
    data = pattern((3, 50, 70), "uint16", seed=2)
    f = z5py.File(str(tmp_path / "d.n5"), mode="a", use_zarr_format=False)
    ds = f.create_dataset("img", shape=data.shape, chunks=(2, 32, 32), dtype="uint16", compression=compression)
    ds[:] = data  # edge blocks are stored short, as the N5 spec allows
    fs = vfs_for(str(tmp_path / "d.n5" / "img"))
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0.tif")), ds[:])
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "N5 dataset" and [a["name"] for a in info["axes"]] == ["z", "y", "x"]


def write_blocks(root, attrs, data, encode):
    """An N5 dataset written block by block (for codecs z5py lacks): header + encode(payload)."""
    root.mkdir(parents=True)
    (root / "attributes.json").write_text(json.dumps(attrs))
    bz, by, bx = attrs["blockSize"][::-1]
    for k in range(0, data.shape[0], bz):
        for j in range(0, data.shape[1], by):
            for i in range(0, data.shape[2], bx):
                block = data[k:k + bz, j:j + by, i:i + bx]
                head = struct.pack(">HH3I", 0, 3, *block.shape[::-1])
                path = root / str(i // bx) / str(j // by)
                path.mkdir(parents=True, exist_ok=True)
                (path / str(k // bz)).write_bytes(head + encode(block.astype(">u2").tobytes()))


def lz4_java(raw: bytes) -> bytes:
    """lz4-java's LZ4BlockOutputStream framing (docs/formats.md): magic, token, lengths, checksum."""
    body = numcodecs.LZ4().encode(raw)[4:]  # numcodecs prefixes the size; the block follows
    head = b"LZ4Block" + bytes([0x20 | 6]) + struct.pack("<iii", len(body), len(raw), 0)
    return head + body + b"LZ4Block" + bytes([0x10 | 6]) + struct.pack("<iii", 0, 0, 0)


@pytest.mark.parametrize("codec, encode", [
    ({"type": "zstd", "level": 3}, lambda raw: numcodecs.Zstd(level=3).encode(raw)),
    ({"type": "lz4", "blockSize": 65536}, lz4_java),
    ({"type": "gzip", "useZlib": True}, zlib.compress),
])
def test_hand_framed_codecs(tmp_path, codec, encode):
    data = pattern((2, 20, 30), "uint16", seed=4)
    attrs = {"dimensions": [30, 20, 2], "blockSize": [16, 16, 1], "dataType": "uint16", "compression": codec}
    write_blocks(tmp_path / "x.n5", attrs, data, encode)
    fs = vfs_for(str(tmp_path / "x.n5"))
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0.tif")), data)


def test_missing_blocks_read_as_zero_and_unknown_compression_is_named(tmp_path):
    f = z5py.File(str(tmp_path / "m.n5"), mode="a", use_zarr_format=False)
    ds = f.create_dataset("img", shape=(2, 64, 64), chunks=(1, 32, 32), dtype="uint8", compression="gzip")
    ds[1, :32, :32] = 9
    fs = vfs_for(str(tmp_path / "m.n5" / "img"))
    plane = tiff_array(read_all(fs, "/s0/z00001.tif"))
    assert (plane[:32, :32] == 9).all() and not plane[32:].any()
    attrs = json.loads((tmp_path / "m.n5" / "img" / "attributes.json").read_text())
    attrs["compression"] = {"type": "foo"}
    (tmp_path / "m.n5" / "img" / "attributes.json").write_text(json.dumps(attrs))
    with pytest.raises(Unsupported, match="N5 compression 'foo' is not supported"):
        open_source(str(tmp_path / "m.n5" / "img"))


def test_cosem_multiscale_from_the_real_group_attributes(tmp_path):
    group = sample("n5/cosem-fibsem-uint8-multiscale-group-attributes.json")
    root = tmp_path / "jrc.n5" / "em" / "fibsem-uint8"
    f = z5py.File(str(tmp_path / "jrc.n5"), mode="a", use_zarr_format=False)
    arrays = []
    for i, ds in enumerate(group["multiscales"][0]["datasets"]):
        shape = (max(1, 16 >> i), max(1, 40 >> i), max(1, 48 >> i))
        data = pattern(shape, "uint8", seed=i)
        f.create_dataset(f"em/fibsem-uint8/{ds['path']}", data=data, chunks=(8, 16, 16), compression="gzip")
        arrays.append(data)
    (root / "attributes.json").write_text(json.dumps(group))  # the sample's exact metadata
    fs = vfs_for(str(root))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "N5 multiscale (COSEM)" and len(info["levels"]) == 6
    assert info["levels"][1]["scale"] == [10.48, 8.0, 8.0] and info["levels"][1]["translation"] == [2.62, 2.0, 2.0]
    assert info["axes"][2]["unit"] == "nanometer" and info["levels"][0]["voxel_size"]["unit"] == "nm"
    for i, data in enumerate(arrays):
        np.testing.assert_array_equal(tiff_array(read_all(fs, f"/s{i}.tif")).reshape(data.shape), data)


def test_neuroglancer_multiscale_from_the_real_sample(tmp_path):
    """2D x/y with per-axis units (nm, s), resolution [10, 20] and s1 downsamplingFactors [2, 2]."""
    root = tmp_path / "ng.n5"
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    s0 = pattern((20, 10), "uint16", seed=1)
    s1_attrs = sample("n5/neuroglancer-n5viewer-multiscale-modern-s1-attributes.json")
    s1 = pattern(tuple(s1_attrs["dimensions"][::-1]), "uint16", seed=2)
    f.create_dataset("s0", data=s0, chunks=(10, 5), compression="raw")
    f.create_dataset("s1", data=s1, chunks=tuple(s1_attrs["blockSize"][::-1]), compression="blosc")
    (root / "s1" / "attributes.json").write_text(json.dumps(s1_attrs))
    (root / "attributes.json").write_text(json.dumps(sample("n5/neuroglancer-n5viewer-multiscale-modern-group-attributes.json")))
    fs = vfs_for(str(root))
    info = json.loads(read_all(fs, "/info.json"))
    assert [a["name"] for a in info["axes"]] == ["y", "x"]
    assert [a["unit"] for a in info["axes"]] == ["second", "nanometer"]
    assert info["levels"][0]["scale"] == [20.0, 10.0] and info["levels"][1]["scale"] == [40.0, 20.0]
    assert info["levels"][1]["translation"] == [10.0, 5.0]  # half a downsampled voxel
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0.tif")), s0)
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s1.tif")), s1)


def test_bare_s0_sn_group_without_metadata(tmp_path):
    root = tmp_path / "bare.n5"
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    data = pattern((2, 3, 8, 12), "uint16")
    for i in range(3):
        f.create_dataset(f"s{i}", data=data[..., :: 2**i, :: 2**i], chunks=(1, 1, 4, 4), compression="raw")
    fs = vfs_for(str(root))
    info = json.loads(read_all(fs, "/info.json"))
    assert len(info["levels"]) == 3 and [a["name"] for a in info["axes"]] == list("czyx")
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s2.tif")).reshape(-1, 2, 3),
                                  imagej_order(data[..., ::4, ::4], "czyx"))


def test_cellmap_root_shows_every_image_at_its_group_path(tmp_path, http_server, s3_server):
    """A Cellmap-style <dataset>.n5 root: em/fibsem-uint8 and labels/<name> (COSEM metadata
    from the real sample). Local and S3 stores can be listed; plain HTTP cannot, and says so."""
    cosem = sample("n5/cosem-fibsem-uint8-multiscale-group-attributes.json")
    two_levels = dict(cosem, multiscales=[dict(cosem["multiscales"][0], datasets=cosem["multiscales"][0]["datasets"][:2])])
    root = tmp_path / "jrc_test.n5"
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    expected = {}
    for seed, group in enumerate(("em/fibsem-uint8", "labels/mito_seg", "labels/er_seg")):
        for i, ds in enumerate(two_levels["multiscales"][0]["datasets"]):
            data = pattern((4 >> i, 24 >> i, 20 >> i), "uint8", seed=seed * 10 + i)
            f.create_dataset(f"{group}/{ds['path']}", data=data, chunks=(2, 8, 8), compression="gzip")
            expected[(group, i)] = data
        (root / group / "attributes.json").write_text(json.dumps(two_levels))
    s3_server.upload_dir(root, "cellmap", "jrc_test.n5", public=True)
    for fs in (vfs_for(str(root)), vfs_for("s3://cellmap/jrc_test.n5", s3_server.storage_options())):
        assert sorted(fs.readdir("/")) == ["em", "labels"] and sorted(fs.readdir("/labels")) == ["er_seg", "mito_seg"]
        for (group, i), data in expected.items():
            stack = tiff_array(read_all(fs, f"/{group}/s{i}.tif")).reshape(data.shape)
            np.testing.assert_array_equal(stack, data)
    import shutil

    shutil.copytree(root, http_server.www / "jrc_test.n5")
    with pytest.raises(NotAnImage, match="cannot be listed; mount an image group inside it"):
        open_source(f"{http_server.url}/jrc_test.n5")
    assert open_source(f"{http_server.url}/jrc_test.n5/labels/er_seg").format == "N5 multiscale (COSEM)"
