"""Self-checks of tests/bdv_fixtures.py: the files open with h5py/z5py, the layout is the one
docs/formats.md (BigDataViewer) and bdv-core describe, and the XML names the right loader."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
import z5py

from bdv_fixtures import (
    HDF5_SAMPLE,
    N5_SAMPLE,
    SAMPLES,
    SparseVolume,
    view_data,
    write_bdv_hdf5,
    write_bdv_n5,
    write_partitioned_bdv_hdf5,
    write_sample_platy_hdf5,
    write_sample_platy_n5,
)

DEFLATE, SHUFFLE, SCALEOFFSET = 1, 2, 6


def loader(xml_path):
    root = ET.parse(xml_path).getroot()
    assert root.tag == "SpimData"
    return root, root.find("SequenceDescription/ImageLoader")


def filters(ds) -> list[int]:
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def check_xml_views(root, shape, setups, timepoints):
    vs = root.findall("SequenceDescription/ViewSetups/ViewSetup")
    assert sorted(int(v.findtext("id")) for v in vs) == list(range(setups))
    for v in vs:
        assert v.findtext("size").split() == [str(n) for n in shape[::-1]]
    tp = root.find("SequenceDescription/Timepoints")
    assert (tp.get("type"), tp.findtext("first"), tp.findtext("last")) == ("range", "0", str(timepoints - 1))
    regs = root.findall("ViewRegistrations/ViewRegistration")
    assert {(int(r.get("timepoint")), int(r.get("setup"))) for r in regs} == {
        (t, s) for t in range(timepoints) for s in range(setups)}
    for r in regs:
        assert len(r.findtext("ViewTransform/affine").split()) == 12


# -- pybdv HDF5 ------------------------------------------------------------------------------------


def test_bdv_hdf5_uint16_legacy_layout(tmp_path):
    shape = (20, 70, 90)
    xml, expected = write_bdv_hdf5(tmp_path, shape)
    root, ld = loader(xml)
    assert ld.get("format") == "bdv.hdf5"
    assert (ld.find("hdf5").get("type"), ld.findtext("hdf5")) == ("relative", "dataset.h5")
    check_xml_views(root, shape, 2, 2)
    assert sorted(expected) == [(t, s, lv) for t in range(2) for s in range(2) for lv in range(3)]
    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        for s in range(2):
            assert "dataType" not in f[f"s{s:02d}"].attrs
            res, sub = f[f"s{s:02d}/resolutions"][()], f[f"s{s:02d}/subdivisions"][()]
            assert res.shape == sub.shape == (3, 3)
            assert res.tolist() == [[1, 1, 1], [2, 2, 1], [4, 4, 2]]  # x,y,z
            for lv in range(3):
                ds = f[f"t00000/s{s:02d}/{lv}/cells"]
                assert ds.dtype == np.int16
                assert list(sub[lv]) == list(ds.chunks[::-1])
                assert filters(ds) == [DEFLATE]
        assert f["t00000/s00/0/cells"].shape == shape
        assert f["t00000/s00/0/cells"].chunks == (16, 32, 32)
        assert f["t00000/s00/1/cells"].shape == (20, 35, 45)
        assert f["t00000/s00/2/cells"].shape == (10, 17, 22)  # pybdv floors
        raw = f["t00001/s01/0/cells"][()]
    for (t, s, lv), arr in expected.items():
        assert arr.dtype == np.uint16
    np.testing.assert_array_equal(expected[(1, 1, 0)], view_data(shape, "uint16", 1, 1))
    np.testing.assert_array_equal(expected[(1, 1, 0)].view("int16"), raw)
    assert expected[(1, 1, 0)].max() > 32767 and raw.min() < 0  # the sign bit is exercised
    assert not np.array_equal(expected[(0, 0, 0)], expected[(0, 1, 0)])
    assert not np.array_equal(expected[(0, 0, 0)], expected[(1, 0, 0)])


@pytest.mark.parametrize("compression, want", [(None, []), ("java", [SCALEOFFSET, DEFLATE])])
def test_bdv_hdf5_other_filters(tmp_path, compression, want):
    xml, expected = write_bdv_hdf5(tmp_path, setups=1, timepoints=1, compression=compression)
    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        for lv in range(3):
            ds = f[f"t00000/s00/{lv}/cells"]
            assert filters(ds) == want and ds.dtype == np.int16
            assert list(f["s00/subdivisions"][lv]) == list(ds.chunks[::-1])
    np.testing.assert_array_equal(expected[(0, 0, 0)], view_data((20, 70, 90), "uint16", 0, 0))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("attr", [False, True])
def test_bdv_hdf5_other_dtypes(tmp_path, dtype, attr):
    xml, expected = write_bdv_hdf5(tmp_path, setups=1, timepoints=2, dtype=dtype, data_type_attr=attr)
    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        assert f["t00000/s00/0/cells"].dtype == np.dtype(dtype)  # pybdv keeps uint8/float32
        got = f["s00"].attrs.get("dataType")
        assert (got.decode() if isinstance(got, bytes) else got) == (dtype if attr else None)
    assert expected[(1, 0, 0)].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(expected[(1, 0, 0)], view_data((20, 70, 90), dtype, 1, 0))


# -- pybdv N5 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", None])
def test_bdv_n5_layout(tmp_path, compression):
    shape = (20, 70, 90)
    xml, expected = write_bdv_n5(tmp_path, shape, compression=compression)
    root, ld = loader(xml)
    assert ld.get("format") == "bdv.n5"
    assert (ld.find("n5").get("type"), ld.findtext("n5")) == ("relative", "dataset.n5")
    check_xml_views(root, shape, 2, 2)
    f = z5py.File(str(tmp_path / "dataset.n5"), "r")
    for s in range(2):
        g = f[f"setup{s}"]
        assert g.attrs["dataType"] == "uint16"
        assert g.attrs["downsamplingFactors"] == [[1, 1, 1], [2, 2, 1], [4, 4, 2]]
        for t in range(2):
            for lv in range(3):
                ds = f[f"setup{s}/timepoint{t}/s{lv}"]
                assert ds.dtype == np.uint16
                np.testing.assert_array_equal(ds[:], expected[(t, s, lv)])
    import json
    attrs = json.loads((tmp_path / "dataset.n5/setup1/timepoint0/s0/attributes.json").read_text())
    assert attrs["dimensions"] == list(shape[::-1]) and attrs["blockSize"] == [32, 32, 16]
    assert attrs["compression"]["type"] == ("gzip" if compression else "raw")
    assert (tmp_path / "dataset.n5/setup1/timepoint0/s0/2/2/1").is_file()  # x,y,z block path
    np.testing.assert_array_equal(expected[(0, 1, 0)], view_data(shape, "uint16", 0, 1))


# -- partitioned HDF5 ------------------------------------------------------------------------------


def test_partitioned_layout_and_links(tmp_path):
    shape = (20, 70, 90)
    xml, expected = write_partitioned_bdv_hdf5(tmp_path, shape)
    root, ld = loader(xml)
    assert ld.get("format") == "bdv.hdf5" and ld.findtext("hdf5") == "dataset.h5"
    check_xml_views(root, shape, 2, 2)
    parts = ld.findall("partition")
    assert [(p.find("path").get("type"), p.findtext("path"), p.findtext("timepoints"), p.findtext("setups"))
            for p in parts] == [("relative", f"dataset-{t:02d}-{s:02d}.h5", str(t), str(s))
                                for t in range(2) for s in range(2)]
    assert all(p.find("timepointsMapped") is None and p.find("setupsMapped") is None for p in parts)
    assert [c.tag for c in ld] == ["hdf5"] + ["partition"] * 4
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["dataset.xml", "dataset.h5"] + [f"dataset-{t:02d}-{s:02d}.h5" for t in range(2) for s in range(2)])

    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        for s in range(2):
            assert f[f"s{s:02d}/resolutions"].dtype == np.float64
            assert f[f"s{s:02d}/subdivisions"].dtype == np.int32
            assert f[f"s{s:02d}/resolutions"].shape == f[f"s{s:02d}/subdivisions"].shape == (3, 3)
            assert "dataType" not in f[f"s{s:02d}"].attrs
        assert f["s00/subdivisions"][()].tolist() == [[32, 32, 16], [32, 32, 16], [23, 18, 10]]
        for t in range(2):
            for s in range(2):
                for lv in range(3):
                    path = f"t{t:05d}/s{s:02d}/{lv}/cells"
                    link = f.get(path, getlink=True)
                    assert isinstance(link, h5py.ExternalLink)
                    assert (link.filename, link.path) == (f"dataset-{t:02d}-{s:02d}.h5", path)
                    ds = f[path]  # resolves through the link
                    assert ds.dtype == np.int16 and filters(ds) == [DEFLATE]
                    assert list(f[f"s{s:02d}/subdivisions"][lv]) == list(ds.chunks[::-1])
                    np.testing.assert_array_equal(ds[()].view("uint16"), expected[(t, s, lv)])
        assert f["t00000/s00/2/cells"].shape == (10, 18, 23)  # ceil, as bdv-core HEAD
    with h5py.File(tmp_path / "dataset-01-00.h5", "r") as p:
        assert sorted(p) == ["s00", "t00001"]
        assert sorted(p["s00"]) == ["resolutions", "subdivisions"]
    np.testing.assert_array_equal(expected[(1, 0, 0)], view_data(shape, "uint16", 1, 0))
    assert expected[(1, 0, 0)].max() > 32767


def test_partitioned_remapped_modern_java(tmp_path):
    xml, expected = write_partitioned_bdv_hdf5(
        tmp_path, setups=3, timepoints=2, timepoints_per_partition=0, setups_per_partition=2,
        legacy=False, remap_ids=True, compression="java", dtype="uint16")
    root, ld = loader(xml)
    parts = [{c.tag: c.text for c in p} for p in ld.findall("partition")]
    assert parts == [
        {"path": "dataset-00-00.h5", "timepoints": "0 1", "setups": "0 1"},
        {"path": "dataset-00-01.h5", "timepoints": "0 1", "setups": "2", "setupsMapped": "0"},
    ]
    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        assert f["s02"].attrs["dataType"] == b"uint16"
        link = f.get("t00001/s02/0/cells", getlink=True)
        assert (link.filename, link.path) == ("dataset-00-01.h5", "t00001/s00/0/cells")
        ds = f["t00001/s02/0/cells"]
        assert ds.dtype == np.uint16 and filters(ds) == [SCALEOFFSET, DEFLATE]
        np.testing.assert_array_equal(ds[()], expected[(1, 2, 0)])
    with h5py.File(tmp_path / "dataset-00-01.h5", "r") as p:
        assert sorted(p) == ["s00", "t00000", "t00001"] and p["s00"].attrs["dataType"] == b"uint16"
    np.testing.assert_array_equal(expected[(1, 2, 0)], view_data((20, 70, 90), "uint16", 1, 2))


def test_partitioned_float_needs_modern(tmp_path):
    with pytest.raises(ValueError):
        write_partitioned_bdv_hdf5(tmp_path, dtype="float32")
    xml, expected = write_partitioned_bdv_hdf5(tmp_path, dtype="float32", legacy=False, setups=1, timepoints=1)
    with h5py.File(tmp_path / "dataset.h5", "r") as f:
        assert f["t00000/s00/0/cells"].dtype == np.float32 and f["s00"].attrs["dataType"] == b"float32"
    assert expected[(0, 0, 1)].dtype == np.float32


# -- the real samples ------------------------------------------------------------------------------


def test_sample_platy_hdf5(tmp_path):
    xml, expected = write_sample_platy_hdf5(tmp_path)
    assert xml.read_bytes() == (SAMPLES / HDF5_SAMPLE).read_bytes()
    root, ld = loader(xml)
    assert ld.get("format") == "bdv.hdf5" and ld.find("hdf5").get("type") == "absolute"
    declared = Path(ld.findtext("hdf5"))
    assert not declared.exists()
    h5 = xml.parent / declared.name
    assert h5.is_file() and h5.stat().st_size < 2_000_000
    with h5py.File(h5, "r") as f:
        assert "dataType" not in f["s00"].attrs
        assert f["s00/resolutions"][()].tolist() == [[1, 1, 1], [2, 2, 2], [4, 4, 4]]
        assert f["s00/subdivisions"].dtype == np.int32
        ds = f["t00000/s00/0/cells"]
        assert ds.shape == (570, 518, 550) and ds.dtype == np.int16 and ds.chunks == (64, 64, 64)
        assert ds.id.get_num_chunks() == 3
        vol = expected[(0, 0, 0)]
        assert isinstance(vol, SparseVolume) and vol.dtype == np.uint16 and vol.shape == ds.shape
        for region in [np.s_[0:64, 0:64, 0:64], np.s_[500:570, 500:518, 500:550], np.s_[30:100, 60:70, 10:20],
                       np.s_[200:210, 300:330, 100:101], np.s_[280:300, 250:270, 260:280], np.s_[5, :, 7]]:
            np.testing.assert_array_equal(ds[region].view("uint16"), vol[region])
        assert vol[0:64, 0:64, 0:64].max() > 32767
        assert not vol[100:110, 100:110, 100:110].any()
        for lv, shape in [(1, (285, 259, 275)), (2, (142, 129, 137))]:
            d = f[f"t00000/s00/{lv}/cells"]
            assert d.shape == shape and expected[(0, 0, lv)].shape == shape
            np.testing.assert_array_equal(d[()].view("uint16"), np.asarray(expected[(0, 0, lv)]))


def test_sample_platy_n5(tmp_path):
    xml, expected = write_sample_platy_n5(tmp_path)
    assert xml.read_bytes() == (SAMPLES / N5_SAMPLE).read_bytes()
    assert xml.parent == tmp_path / "1.0.1" / "images" / "local"
    root, ld = loader(xml)
    assert ld.get("format") == "bdv.n5"
    n5 = (xml.parent / ld.findtext("n5")).resolve()
    assert n5 == (tmp_path / "rawdata" / "sbem-6dpf-1-whole-raw.n5").resolve() and n5.is_dir()
    f = z5py.File(str(n5), "r")
    g = f["setup0"]
    assert g.attrs["dataType"] == "uint8"
    assert g.attrs["downsamplingFactors"][:3] == [[1, 1, 1], [2, 2, 1], [4, 4, 2]]
    ds = f["setup0/timepoint0/s0"]
    assert ds.shape == (11416, 25916, 27499) and ds.chunks == (64, 64, 64) and ds.dtype == np.uint8
    files = [p for p in n5.rglob("*") if p.is_file() and p.name != "attributes.json"]
    assert len(files) == 3 + 2 * 5
    assert sum(p.stat().st_size for p in files) < 2_000_000
    vol = expected[(0, 0, 0)]
    for region in [np.s_[0:64, 0:64, 0:64], np.s_[11400:11416, 25900:25916, 27490:27499],
                   np.s_[5690:5770, 12900:12950, 13680:13720], np.s_[60:70, 60:70, 60:70]]:
        np.testing.assert_array_equal(ds[region], vol[region])
    assert vol[0:64, 0:64, 0:64].any() and not vol[64:128, 0:64, 0:64].any()
    assert vol[5690:5770, 12900:12950, 13680:13720].any()  # straddles the middle block
    last = f["setup0/timepoint0/s5"]
    assert last.shape == (713, 809, 859) == expected[(0, 0, 5)].shape
    np.testing.assert_array_equal(last[640:713, 768:809, 832:859], expected[(0, 0, 5)][640:713, 768:809, 832:859])
