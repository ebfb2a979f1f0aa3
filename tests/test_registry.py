"""The format registry (adapters/registry.py): every format listed once, in the order they are
tried, and every entry reachable: a store of each kind, written by the usual writers, is opened
by that entry."""

from __future__ import annotations

import json

import pytest
import z5py
import zarr

from bdv_fixtures import write_bdv_hdf5
from bdv_server import BdvServer
from imaris_fixtures import write_ims
from ngffmount.adapters import BadMetadata
from ngffmount.adapters.registry import FORMATS, open_with_format
from precomputed_fixtures import write_volume
from zarr_fixtures import pattern, write_ome_zarr

# The order is part of the contract: a URL's suffix first, then the root's documents (an image
# before the groups that share its attributes), then formats found only by probing or listing.
ORDER = [
    "BigDataViewer XML", "Imaris", "BigDataViewer server", "OME-Zarr image", "OME-Zarr plate",
    "OME-Zarr bioformats2raw", "Zarr array", "N5", "Neuroglancer precomputed", "N5 without attributes.json",
    "Cellmap dataset folder",
]


def test_formats_are_listed_once_in_order():
    assert [f.name for f in FORMATS] == ORDER
    assert len({id(f) for f in FORMATS}) == len(FORMATS)


def _ome_zarr(tmp_path):
    write_ome_zarr(tmp_path / "img.zarr", pattern((2, 8, 8), "uint16"), "zyx", levels=1)
    return str(tmp_path / "img.zarr")


def _plate(tmp_path):
    root = tmp_path / "plate.zarr"
    write_ome_zarr(root / "A" / "1" / "0", pattern((2, 8, 8), "uint16"), "zyx", levels=1)
    (root / ".zattrs").write_text(json.dumps({"plate": {"wells": [{"path": "A/1"}], "version": "0.4"}}))
    (root / "A" / "1" / ".zattrs").write_text(json.dumps({"well": {"images": [{"path": "0"}]}}))
    return str(root)


def _bioformats2raw(tmp_path):
    root = tmp_path / "bf2raw.zarr"
    write_ome_zarr(root / "0", pattern((2, 8, 8), "uint16"), "zyx", levels=1)
    (root / ".zattrs").write_text(json.dumps({"bioformats2raw.layout": 3}))
    return str(root)


def _zarr_array(tmp_path):
    zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 6), chunks=(2, 3), dtype="uint8", zarr_format=2)[...] = 1
    return str(tmp_path / "a.zarr")


def _n5(tmp_path):
    f = z5py.File(str(tmp_path / "d.n5"), mode="a", use_zarr_format=False)
    f.create_dataset("img", data=pattern((2, 8, 8), "uint16"), chunks=(1, 4, 4), compression="raw")
    return str(tmp_path / "d.n5" / "img")


def _n5_without_attributes(tmp_path):
    root = tmp_path / "bare.n5"
    f = z5py.File(str(root), mode="a", use_zarr_format=False)
    f.create_dataset("s0", data=pattern((2, 8, 8), "uint16"), chunks=(1, 4, 4), compression="raw")
    (root / "attributes.json").unlink(missing_ok=True)  # as n5-spark leaves a group
    return str(root)


def _precomputed(tmp_path):
    write_volume(tmp_path / "vol", "raw")  # a name that does not say .precomputed
    return str(tmp_path / "vol")


def _cellmap(tmp_path):
    f = z5py.File(str(tmp_path / "dataset" / "cell.n5"), mode="a", use_zarr_format=False)
    f.create_dataset("em/s0", data=pattern((2, 8, 8), "uint16"), chunks=(1, 4, 4), compression="raw")
    return str(tmp_path / "dataset")


def _bdv_xml(tmp_path):
    xml, _ = write_bdv_hdf5(tmp_path, (4, 20, 20), setups=1, timepoints=1, chunks=(4, 16, 16))
    return str(xml)


def _imaris(tmp_path):
    return str(write_ims(tmp_path / "cells.ims", shape_zyx=(3, 20, 20), levels=1))


BUILDERS = {
    "BigDataViewer XML": (_bdv_xml, "BigDataViewer"),
    "Imaris": (_imaris, "Imaris"),
    "OME-Zarr image": (_ome_zarr, "OME-Zarr 0.4"),
    "OME-Zarr plate": (_plate, "OME-Zarr plate"),
    "OME-Zarr bioformats2raw": (_bioformats2raw, "OME-Zarr bioformats2raw"),
    "Zarr array": (_zarr_array, "Zarr v2 array"),
    "N5": (_n5, "N5"),
    "Neuroglancer precomputed": (_precomputed, "Neuroglancer precomputed"),
    "N5 without attributes.json": (_n5_without_attributes, "N5"),
    "Cellmap dataset folder": (_cellmap, "dataset folder"),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_format_opens_its_kind_of_store(tmp_path, name):
    build, shown = BUILDERS[name]
    fmt, opened = open_with_format(build(tmp_path))
    assert fmt.name == name
    assert opened.format.startswith(shown), opened.format


def test_bigdataviewer_server_is_recognised_by_what_it_answers(tmp_path):
    xml, _ = write_bdv_hdf5(tmp_path, (4, 20, 20), setups=1, timepoints=1, chunks=(4, 16, 16))
    with BdvServer({"embryo": xml}) as server:
        fmt, opened = open_with_format(server.dataset_url("embryo"))
    assert fmt.name == "BigDataViewer server" and opened.format.startswith("BigDataViewer"), opened.format


def test_every_entry_is_reached_by_a_test():
    assert set(BUILDERS) | {"BigDataViewer server"} == {f.name for f in FORMATS}


def test_the_roots_own_broken_document_is_named_before_its_childrens(tmp_path):
    root = tmp_path / "b.n5"
    (root / "labels").mkdir(parents=True)
    (root / "labels" / ".zattrs").write_text("{")
    (root / "attributes.json").write_text("{")
    with pytest.raises(BadMetadata, match=r"b\.n5/attributes\.json: "):
        open_with_format(str(root))
