"""BigDataViewer sources beyond the shared contract (tests/test_contract.py): the real
platybrowser XMLs, remote HDF5 read by range requests only, errors, and real mounts of a
BigDataViewer server dataset opened by tifffile and ImageJ."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
import zarr

from bdv_fixtures import write_bdv_hdf5, write_sample_platy_hdf5, write_sample_platy_n5
from bdv_server import BdvServer
from conftest import VirtualReader, mounted, ngffmount_cmd, read_all, tiff_array, vfs_for, walk_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ngffmount.adapters import BadMetadata, ChunkReadError, NgffMountError, SourceNotFound, Unsupported, open_source
from ngffmount.cache.engine import ChunkEngine
from ngffmount.vfs.fuse.paths import VirtualFS
from ngffmount.vfs.tree.build import build_tree
from zarr_fixtures import pattern, write_ome_zarr


def test_real_platybrowser_hdf5_xml_with_an_absolute_path_from_another_machine(tmp_path):
    """AChE-MED.xml names /g/arendt/.../AChE-MED.h5; the file next to the XML is used."""
    xml, expected = write_sample_platy_hdf5(tmp_path)
    fs = vfs_for(str(xml))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "BigDataViewer bdv.hdf5"
    assert info["levels"][0]["shape"] == [570, 518, 550] and info["levels"][0]["dtype"] == "uint16"
    assert info["levels"][0]["scale"] == [0.5, 0.5, 0.5] and info["axes"][2]["unit"] == "micrometer"
    assert info["levels"][1]["scale"] == [1.0, 1.0, 1.0] and info["levels"][1]["translation"] == [0.25, 0.25, 0.25]
    level0 = expected[(0, 0, 0)]
    for z in (0, 63, 64, 569):  # written corner chunk, its last plane, the fill, the edge chunk
        plane = tiff_array(read_all(fs, f"/s0/z{z:05d}.tif"))
        np.testing.assert_array_equal(plane, np.asarray(level0[z:z + 1, :, :])[0])


def test_real_platybrowser_n5_xml_with_a_relative_path_up_three_folders(tmp_path):
    """sbem-6dpf-1-whole-raw.xml: 27499 x 25916 x 11416 uint8 at ../../../rawdata/...n5."""
    xml, expected = write_sample_platy_n5(tmp_path)
    fs = vfs_for(str(xml))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == "BigDataViewer bdv.n5"
    assert info["levels"][0]["shape"] == [11416, 25916, 27499] and info["levels"][0]["dtype"] == "uint8"
    assert info["levels"][0]["scale"] == pytest.approx([0.025, 0.01, 0.01])
    assert info["levels"][1]["scale"] == pytest.approx([0.025, 0.02, 0.02])  # factors [2, 2, 1] in x, y, z
    assert fs.getattr("/s0.tif")["st_size"] > 8 * 10**12  # declared at full size, nothing read
    with tifffile.TiffFile(VirtualReader(fs, "/s0/z00000.tif")) as tif:  # a 712 MB plane
        page = tif.pages[0]
        assert page.shape == (25916, 27499) and page.dtype == np.uint8
        first_pixel = page.dataoffsets[0]
    rows = np.frombuffer(fs.read("/s0/z00000.tif", 70 * 27499, first_pixel), np.uint8).reshape(70, 27499)
    np.testing.assert_array_equal(rows, np.asarray(expected[(0, 0, 0)][0:1, 0:70, :])[0])
    assert rows[:64, :64].any() and not rows[64:, :].any()  # the written corner block, then fill


def test_remote_hdf5_is_read_chunk_by_chunk_never_whole(tmp_path, http_server):
    name = f"range-{tmp_path.name}"
    xml, expected = write_bdv_hdf5(http_server.www / name, (8, 256, 384), setups=1, timepoints=1, chunks=(4, 128, 128),
                                   compression=None)  # 1.5 MB, so that a whole download would show
    h5 = next((http_server.www / name).glob("*.h5"))
    http_server.reset_counters()
    fs = vfs_for(f"{http_server.url}/{name}/{xml.name}")
    mount_bytes = http_server.bytes_served
    http_server.reset_counters()
    plane = tiff_array(read_all(fs, "/s0/z00005.tif"))
    np.testing.assert_array_equal(plane, expected[(0, 0, 0)][5])
    chunk_requests = [p for m, p in http_server.log if p.endswith(".h5") and m == "GET"]
    # The plane touches 2 x 3 chunks: one range request each (plus at most the chunk index's
    # B-tree blocks, read once).
    assert 6 <= len(chunk_requests) <= 8, http_server.log
    chunk_bytes = 6 * 4 * 128 * 128 * 2
    assert chunk_bytes <= http_server.bytes_served < chunk_bytes + 256 * 1024
    assert mount_bytes < 512 * 1024 < h5.stat().st_size


def test_errors_name_the_problem(tmp_path):
    xml, _ = write_bdv_hdf5(tmp_path, (4, 20, 20), setups=1, timepoints=1, chunks=(4, 16, 16))
    text = xml.read_text()
    # bdv.multimg.zarr is read now (tests/test_bdv_loaders.py); BigStitcher's file-list loader is not.
    unknown_loader = tmp_path / "filelist.xml"
    unknown_loader.write_text(re.sub(r'format="bdv.hdf5"', 'format="spimreconstruction.filelist"', text))
    with pytest.raises(Unsupported, match="image loader 'spimreconstruction.filelist' is not supported"):
        open_source(str(unknown_loader))
    missing = tmp_path / "missing.xml"
    missing.write_text(re.sub(r">[^<]*\.h5<", ">nothere.h5<", text))
    with pytest.raises(SourceNotFound, match="HDF5 file not found.*nothere.h5"):
        open_source(str(missing))
    broken = tmp_path / "broken.xml"
    broken.write_text(text[: len(text) // 2])
    with pytest.raises(BadMetadata, match="broken XML"):
        open_source(str(broken))
    (tmp_path / "mnt").mkdir()  # else the one line would be about the mountpoint, not the XML
    result = ngffmount_cmd("mount", str(broken), str(tmp_path / "mnt"), check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "broken XML" in result.stderr


@pytest.mark.integration
def test_mount_a_bigdataviewer_server_dataset_url(tmp_path, cache_args):
    """What Mastodon users are given: http://host:8080/<dataset>/. Mounted with real FUSE; the
    planes are read by tifffile and the stack by ImageJ."""
    from imagej import describe_image_macro, ij_str, parse_kv, run_macro

    xml, expected = write_bdv_hdf5(tmp_path / "data", (6, 40, 50), chunks=(4, 16, 16))
    with BdvServer({"embryo": xml}) as server, \
            mounted(server.dataset_url("embryo"), tmp_path / "mnt", *cache_args) as mnt:
        view = mnt / "setup1" / "timepoint1"
        data = expected[(1, 1, 0)]
        assert data.max() > 32767  # uint16 values that int16 storage would turn negative
        for z in range(data.shape[0]):
            np.testing.assert_array_equal(tifffile.imread(view / "s0" / f"z{z:05d}.tif"), data[z])
        positions = [(1, 0, 0), (4, 49, 39), (6, 17, 23)]
        info = parse_kv(run_macro(describe_image_macro(f"open({ij_str(str(view / 's0.tif'))});", positions)))
        assert (info["width"], info["height"], info["nSlices"], info["bitDepth"]) == (50, 40, 6, 16)
        assert info["pixelWidth"] == pytest.approx(0.5) and info["pixelDepth"] == pytest.approx(2.0)
        for s, x, y in positions:
            assert info[f"pixel_{s}_{x}_{y}"] == int(data[s - 1, y, x])


def test_our_bdv_view_reads_back_through_the_bdv_adapter(tmp_path):
    """The bdv.xml + bdv.h5 view of an OME-Zarr (issue 5) opened as a BigDataViewer source:
    every view and level equals the OME-Zarr it came from, with the same calibration."""
    data = pattern((2, 2, 3, 40, 50), "uint16", seed=3) + 30000  # t, c, z, y, x; half above int16
    write_ome_zarr(tmp_path / "img.zarr", data, "tczyx", levels=2, chunks=(1, 1, 2, 16, 16),
                   scale0=[1, 1, 2.0, 0.25, 0.25], units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})
    fs = vfs_for(str(tmp_path / "img.zarr"))
    (tmp_path / "view").mkdir()
    for name in ("bdv.xml", "bdv.h5"):
        (tmp_path / "view" / name).write_bytes(read_all(fs, f"/{name}"))
    back = vfs_for(str(tmp_path / "view" / "bdv.xml"))
    source = zarr.open_group(str(tmp_path / "img.zarr"), mode="r")
    for t in range(2):
        for c in range(2):
            info = json.loads(read_all(back, f"/setup{c}/timepoint{t}/info.json"))
            assert info["levels"][0]["scale"] == [2.0, 0.25, 0.25] and info["axes"][0]["unit"] == "micrometer"
            for level in range(2):
                expected = source[str(level)][t, c]
                stack = tiff_array(read_all(back, f"/setup{c}/timepoint{t}/s{level}.tif")).reshape(expected.shape)
                np.testing.assert_array_equal(stack, expected)


@pytest.fixture(scope="module")
def small_bdv(tmp_path_factory):
    return write_bdv_hdf5(tmp_path_factory.mktemp("hostile"), (4, 20, 20), setups=1, timepoints=1, chunks=(4, 16, 16))[0]


def test_a_line_break_in_an_xml_path_stays_escaped_in_the_one_line_error(small_bdv, tmp_path):
    """Found by the test below: a carriage return in <hdf5> came back in the message."""
    root = ET.fromstring(small_bdv.read_bytes())
    root.find(".//ImageLoader/hdf5").text = "0\r0/dataset.h5"
    xml = tmp_path / small_bdv.name
    xml.write_bytes(ET.tostring(root))
    with pytest.raises(NgffMountError) as err:
        open_source(str(xml))
    assert len(str(err.value).splitlines()) == 1 and "HDF5 file not found" in str(err.value)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_xml_gives_one_clear_error_never_a_crash(small_bdv, tmp_path_factory, data):
    """Any element's text or attribute of a real dataset XML replaced by arbitrary text: the
    source opens, or fails with the project's own one-line error."""
    root = ET.fromstring(small_bdv.read_bytes())
    elements = list(root.iter())
    elem = elements[data.draw(st.integers(0, len(elements) - 1))]
    junk = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(["-1", "0", "1e400", "nan", "99999999999", "0 0 0", "../../etc"])))
    if elem.attrib and data.draw(st.booleans()):
        elem.set(data.draw(st.sampled_from(sorted(elem.attrib))), junk)
    else:
        elem.text = junk
    xml = tmp_path_factory.mktemp("x") / small_bdv.name
    xml.write_bytes(ET.tostring(root))
    (xml.parent / "dataset.h5").symlink_to(small_bdv.parent / "dataset.h5")
    try:
        source = open_source(str(xml))
    except NgffMountError as exc:
        assert "\n" not in str(exc)
        return
    fs = VirtualFS(build_tree(source, ChunkEngine(memory_bytes=16 << 20)))
    for path in walk_files(fs):
        fs.getattr(path)


def test_a_differing_timepoint_or_a_corrupt_chunk_fails_that_read_clearly(tmp_path):
    """bdv.n5: timepoint 1 borrows timepoint 0's attributes until its own are checked on
    first read. bdv.hdf5: a chunk with corrupt bytes is a ChunkReadError (EIO), never a crash."""
    from bdv_fixtures import write_bdv_n5

    xml, _ = write_bdv_n5(tmp_path / "n5", (4, 20, 20), setups=1, timepoints=2, chunks=(4, 16, 16), levels=1)
    attrs_path = tmp_path / "n5" / "dataset.n5" / "setup0" / "timepoint1" / "s0" / "attributes.json"
    attrs = json.loads(attrs_path.read_text())
    attrs["dimensions"] = [10, 20, 4]
    attrs_path.write_text(json.dumps(attrs))
    group = open_source(str(xml))
    first, second = (group.groups["setup0"].images[f"timepoint{t}"].levels[0] for t in (0, 1))
    assert first.fetch_many([first.chunk_key((0, 0, 0))])
    with pytest.raises(ChunkReadError, match="differs from the setup's first timepoint"):
        second.fetch_many([second.chunk_key((0, 0, 0))])

    xml, _ = write_bdv_hdf5(tmp_path / "h5", (4, 20, 20), setups=1, timepoints=1, chunks=(4, 16, 16), levels=1)
    level = open_source(str(xml)).levels[0]
    raw = level.fetch_many([level.chunk_key((0, 0, 0))])[level.chunk_key((0, 0, 0))]
    corrupt = raw[:4] + bytes(b ^ 0x5A for b in raw[4:])
    with pytest.raises(ChunkReadError, match="cannot decode chunk 0/0/0"):
        level.decode((0, 0, 0), corrupt)
