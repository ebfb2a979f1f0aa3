"""Imaris .ims sources: local files and remote ones over a Range-honouring HTTP server without
listing, every plane of every level equal to the independent reader imaris-ims-file-reader,
one real FUSE mount, the shared adapter contract, and broken files.

Fixtures follow the Imaris 5.5 file format description (tests/imaris_fixtures.py).
"""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
import tifffile

from bdv_fixtures import write_bdv_hdf5
from conftest import mounted, ngffmount_cmd, read_all, tiff_array, vfs_for
from imaris_fixtures import read_with_reference, write_ims
from ngffmount.adapters import BadMetadata, ChunkReadError, NotAnImage, SourceNotFound, open_source
from test_contract import AdapterContract, Expected


def _check_every_plane(fs, volumes: dict, timepoints: int, channels: int) -> None:
    levels = sorted({r for r, _, _ in volumes})
    for r in levels:
        names = sorted(fs.readdir(f"/s{r}"))
        z_count = volumes[(r, 0, 0)].shape[0]
        assert len(names) == timepoints * channels * z_count
        for t in range(timepoints):
            for c in range(channels):
                for z in range(z_count):
                    name = f"t{t:05d}_c{c:03d}_z{z:05d}.tif" if timepoints > 1 or channels > 1 else f"z{z:05d}.tif"
                    got = tiff_array(read_all(fs, f"/s{r}/{name}"))
                    np.testing.assert_array_equal(got, volumes[(r, t, c)][z], err_msg=f"s{r} {name}")


@pytest.mark.parametrize("dtype, compression, shuffle", [("uint16", "gzip", True), ("uint8", "gzip", False),
                                                         ("uint16", "lz4", True), ("uint8", "lz4", False),
                                                         ("float32", "none", False)])
def test_local_ims_every_plane_and_calibration(tmp_path, dtype, compression, shuffle):
    path = write_ims(tmp_path / "cells.ims", timepoints=2, channels=3, dtype=dtype, compression=compression,
                     shuffle=shuffle, names=["DAPI", "GFP", "mCherry"],
                     colors=["0.000 0.000 1.000", "0.000 1.000 0.000", "1.000 0.000 0.000"])
    volumes, voxels = read_with_reference(path)
    fs = vfs_for(str(path))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "Imaris" and info["name"] == "cells"
    assert [a["name"] for a in info["axes"]] == list("tczyx") and info["axes"][-1]["unit"] == "micrometer"
    assert [lv["shape"] for lv in info["levels"]] == [[2, 3, *volumes[(r, 0, 0)].shape] for r in range(3)]
    assert all(lv["dtype"] == dtype for lv in info["levels"])
    for r, lv in enumerate(info["levels"]):
        assert lv["scale"][2:] == pytest.approx(list(voxels[r]), abs=1e-3)  # the reader rounds to 3 places
    assert info["levels"][0]["translation"][2:] == pytest.approx([2.0, 5.0, -10.0])  # ExtMin2, 1, 0
    # a coarser voxel's centre sits half its extra size in: z 2 + (2.7 - 1.5) / 2, y 5 + 0.25 / 2, ...
    assert info["levels"][1]["translation"][2:] == pytest.approx([2.6, 5.125, -9.875])
    assert [(c["label"], c["color"]) for c in info["channels"]] == [("DAPI", "0000FF"), ("GFP", "00FF00"),
                                                                     ("mCherry", "FF0000")]
    with tifffile.TiffFile(io.BytesIO(read_all(fs, "/s0.tif"))) as tif:
        meta = tif.imagej_metadata
        assert (meta["channels"], meta["slices"], meta["frames"]) == (3, 9, 2)
        assert meta["unit"] == "micron" and meta["spacing"] == pytest.approx(1.5)
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[1] / x_res[0] == pytest.approx(0.25)
    _check_every_plane(fs, volumes, 2, 3)


def test_lz4_in_several_blocks_some_stored_raw(tmp_path):
    """Blocks of 1000 bytes: noise does not compress, so most are stored raw; the pattern's do."""
    for noise in (True, False):
        path = write_ims(tmp_path / f"lz4-{noise}.ims", levels=2, compression="lz4:1000", shuffle=False, noise=noise)
        volumes, _ = read_with_reference(path)
        _check_every_plane(vfs_for(str(path)), volumes, 1, 1)


def test_single_view_has_z_y_x_only_and_padding_is_cropped(tmp_path):
    path = write_ims(tmp_path / "one.ims", shape_zyx=(5, 33, 47), chunks=(4, 16, 16), levels=2)
    with h5py.File(path, "a") as f:  # the stored blocks really are padded
        assert f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"].shape == (8, 48, 48)
        f["DataSetInfo/Image"].attrs["Unit"] = np.array([b"\xb5", b"m"], "S1")  # "µm" in Latin-1
    volumes, _ = read_with_reference(path)
    fs = vfs_for(str(path))
    info = json.loads(read_all(fs, "/info.json"))
    assert [a["name"] for a in info["axes"]] == list("zyx") and info["levels"][0]["shape"] == [5, 33, 47]
    assert info["axes"][-1]["unit"] == "micrometer"
    _check_every_plane(fs, volumes, 1, 1)
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s1.tif")).reshape(volumes[(1, 0, 0)].shape),
                                  volumes[(1, 0, 0)])


def test_remote_ims_over_http_every_plane(tmp_path, http_server):
    name = f"remote-{tmp_path.name}.ims"
    path = write_ims(http_server.www / name, timepoints=2, channels=2, levels=2)
    volumes, _ = read_with_reference(path)
    fs = vfs_for(f"{http_server.url}/{name}")
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "Imaris" and info["source"] == f"{http_server.url}/{name}"
    _check_every_plane(fs, volumes, 2, 2)


def test_ims_on_s3_every_plane(tmp_path, s3_server):
    path = write_ims(tmp_path / "up" / "s3.ims", timepoints=1, channels=2, levels=2)
    volumes, _ = read_with_reference(path)
    s3_server.upload_dir(tmp_path / "up", "ims", tmp_path.name, public=True)
    fs = vfs_for(f"s3://ims/{tmp_path.name}/s3.ims", s3_server.storage_options())
    _check_every_plane(fs, volumes, 1, 2)


def test_remote_ims_is_read_chunk_by_chunk_never_whole(tmp_path, http_server):
    name = f"range-{tmp_path.name}.ims"
    # incompressible pixels: 16 x 256 x 256 uint16 is 2 MiB, so a whole download would show
    path = write_ims(http_server.www / name, shape_zyx=(16, 256, 256), levels=1, chunks=(8, 128, 128), noise=True)
    volumes, _ = read_with_reference(path)
    http_server.reset_counters()
    fs = vfs_for(f"{http_server.url}/{name}")
    mount_bytes = http_server.bytes_served
    http_server.reset_counters()
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0/z00005.tif")), volumes[(0, 0, 0)][5])
    gets = [p for m, p in http_server.log if m == "GET"]
    # The plane touches 2 x 2 chunks: one range request each, plus at most the chunk index's
    # B-tree blocks, read once.
    assert 4 <= len(gets) <= 7, http_server.log
    chunk_bytes = 4 * 8 * 128 * 128 * 2
    assert chunk_bytes * 0.9 <= http_server.bytes_served < chunk_bytes + 256 * 1024
    assert mount_bytes < 512 * 1024 < path.stat().st_size


def test_fuse_mount_of_an_ims_file(tmp_path, http_server, cache_args):
    name = f"mount-{tmp_path.name}.ims"
    path = write_ims(http_server.www / name, timepoints=1, channels=2, levels=2, names=["a", "b"])
    volumes, _ = read_with_reference(path)
    with mounted(f"{http_server.url}/{name}", tmp_path / "mnt", *cache_args) as mnt:
        assert (mnt / "s0.tif").exists() and (mnt / "s1").is_dir()
        info = json.loads((mnt / "info.json").read_text())
        assert [c["label"] for c in info["channels"]] == ["a", "b"]
        for r in (0, 1):
            for c in (0, 1):
                for z, plane in enumerate(volumes[(r, 0, c)]):
                    got = tifffile.imread(mnt / f"s{r}" / f"t00000_c{c:03d}_z{z:05d}.tif")
                    np.testing.assert_array_equal(got, plane)
        with tifffile.TiffFile(mnt / "s0.tif") as tif:
            assert tif.imagej_metadata["channels"] == 2 and tif.imagej_metadata["unit"] == "micron"


def test_broken_ims_files_fail_with_one_clear_line(tmp_path):
    good = write_ims(tmp_path / "good.ims", levels=1)
    truncated = tmp_path / "truncated.ims"
    truncated.write_bytes(good.read_bytes()[:1500])
    with pytest.raises(BadMetadata, match="not a readable HDF5 file"):
        open_source(str(truncated))
    text = tmp_path / "text.ims"
    text.write_text("not an HDF5 file at all\n")
    with pytest.raises(BadMetadata, match="not a readable HDF5 file"):
        open_source(str(text))
    other = tmp_path / "other.ims"
    with h5py.File(other, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 4)))
    with pytest.raises(NotAnImage, match="not an Imaris file"):
        open_source(str(other))
    no_extent = tmp_path / "noextent.ims"
    no_extent.write_bytes(good.read_bytes())
    with h5py.File(no_extent, "a") as f:
        del f["DataSetInfo/Image"].attrs["ExtMax1"]
    with pytest.raises(BadMetadata, match="ExtMax1"):
        open_source(str(no_extent))
    with pytest.raises(SourceNotFound):
        open_source(str(tmp_path / "missing.ims"))
    (tmp_path / "mnt").mkdir()
    for broken in (truncated, text, other, no_extent, tmp_path / "missing.ims"):
        result = ngffmount_cmd("mount", str(broken), str(tmp_path / "mnt"), check=False)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert broken.name in result.stderr


def test_hdf5_suffix_is_looked_at_for_imaris_attributes(tmp_path):
    ims = write_ims(tmp_path / "exported.h5", levels=1)
    volumes, _ = read_with_reference(ims)
    fs = vfs_for(str(ims))
    assert json.loads(read_all(fs, "/info.json"))["format"] == "Imaris"
    _check_every_plane(fs, volumes, 1, 1)
    xml, _ = write_bdv_hdf5(tmp_path / "bdv", (4, 20, 20), setups=1, timepoints=1, chunks=(4, 16, 16))
    h5 = next((tmp_path / "bdv").glob("*.h5"))
    with pytest.raises(NotAnImage, match="not an Imaris one .* mounted through its XML"):
        open_source(str(h5))


@pytest.mark.parametrize("noc, file_timepoints", [("5", "1"), ("x", ""), ("3", "2")])
def test_stated_counts_are_checked_against_the_data(tmp_path, noc, file_timepoints):
    path = write_ims(tmp_path / "counts.ims", timepoints=2, channels=3, levels=1)
    with h5py.File(path, "a") as f:
        f["DataSetInfo/Image"].attrs["Noc"] = np.array(list(noc), "S1")
        f["DataSetInfo/TimeInfo"].attrs["FileTimePoints"] = np.array(list(file_timepoints), "S1")
    info = json.loads(read_all(vfs_for(str(path)), "/info.json"))
    assert info["levels"][0]["shape"][:2] == [2, 3]


def test_a_corrupt_chunk_fails_that_read_only(tmp_path):
    path = write_ims(tmp_path / "corrupt.ims", shape_zyx=(8, 40, 40), levels=1, chunks=(4, 40, 40))
    volumes, _ = read_with_reference(path)
    with h5py.File(path, "r") as f:
        info = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"].id.get_chunk_info_by_coord((4, 0, 0))
    with open(path, "r+b") as out:  # the second chunk (z 4..7) becomes garbage
        out.seek(info.byte_offset)
        out.write(b"\xff" * info.size)
    fs = vfs_for(str(path))
    with pytest.raises(ChunkReadError, match="corrupt.ims.*cannot decode chunk"):
        read_all(fs, "/s0/z00005.tif")
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0/z00001.tif")), volumes[(0, 0, 0)][1])


def _contract_source(tmp_path, url_of) -> Expected:
    path = write_ims(tmp_path / "contract.ims", shape_zyx=(5, 37, 45), levels=2, chunks=(2, 16, 16))
    volumes, voxels = read_with_reference(path)
    return Expected(url_of(path), {"": [volumes[(0, 0, 0)], volumes[(1, 0, 0)]]}, "Imaris",
                    voxel_size=(1.5, 0.25, 0.25), unit="micrometer")


class TestImarisContract(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        return _contract_source(tmp_path, str)


class TestImarisContractOverHttp(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path, http_server) -> Expected:
        folder = http_server.www / f"contract-{tmp_path.name}"
        return _contract_source(folder, lambda p: f"{http_server.url}/{folder.name}/{p.name}")
