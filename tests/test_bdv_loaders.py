"""BigDataViewer XMLs whose loader points at an OME-Zarr or N5 container (bdv.n5.universe,
bdv.ome.zarr(.s3), bdv.multimg.zarr), and the calibration rule for every BDV loader.

The real XMLs (Mastodon, mobie-io, BigStitcher via pydantic-bigstitcher) are kept byte for
byte in tests/data/samples/bdv; where one names a server on the internet, the test copy has
that one URL pointed at a loopback server. Pixels are compared with zarr-python and z5py reads
of the same stores."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
import z5py
import zarr

from bdv_zarr_fixtures import (
    BIGSTITCHER_AIND_LOCAL, BIGSTITCHER_AIND_S3, BIGSTITCHER_MESOSPIM, MASTODON_IDR, MOBIE_MYOSIN, SAMPLES,
    copy_sample, spimdata_xml, with_text, write_exaspim_tiles, write_idr_13457227, write_mesospim,
    write_prospr_myosin, write_pyramid, write_small_multimg, write_small_n5_universe, zarr_view,
)
from conftest import VirtualReader, mounted, ngffmount_cmd, read_all, tiff_array, vfs_for, walk_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ngffmount.adapters import BadMetadata, NgffMountError, SourceNotFound, open_source
from ngffmount.cache.engine import ChunkEngine
from ngffmount.vfs.fuse.paths import VirtualFS
from ngffmount.vfs.tree.build import build_tree
from ngffmount.adapters.bdv import Calibration
from ngffmount.adapters.bdv_xml import parse_spimdata

MESOSPIM_VOXEL = (3.26, 3.26, 10.0)  # x, y, z in um, the setups' voxelSize


def stack(fs, path: str, shape) -> np.ndarray:
    return tiff_array(read_all(fs, path)).reshape(shape)


def info(fs, path: str) -> dict:
    return json.loads(read_all(fs, path))


def expected_origin(xml_name: str, setup: int, voxel) -> list[float]:
    """The calibration rule by hand: translation / the registration's scale * voxel (x, y, z)."""
    data = parse_spimdata((SAMPLES / xml_name).read_bytes(), xml_name)
    a = data.registrations[(0, setup)]
    norms = [np.linalg.norm([a[c], a[4 + c], a[8 + c]]) for c in range(3)]
    return [a[4 * i + 3] / norms[i] * voxel[i] for i in range(3)]


# -- the calibration rule -------------------------------------------------------------------------


def test_calibration_rule_on_real_xmls_of_bigstitcher_mobie_and_mastodon():
    """BigStitcher: calibration 1, 1, 10/3.26 and a translation in pixels of x; the voxel is
    the setup's voxelSize. MoBIE/Mastodon/platybrowser register in micrometers: unchanged."""
    data = parse_spimdata((SAMPLES / BIGSTITCHER_MESOSPIM).read_bytes(), "x")
    for setup in data.setups:
        a = data.registrations[(0, setup.id)]
        assert (a[0], a[5]) == (1.0, 1.0) and a[10] == pytest.approx(10.0 / 3.26)  # pixels of x
        cal = Calibration(setup, a)
        assert cal.voxel == pytest.approx(MESOSPIM_VOXEL)  # not 1 x 1 x 3.07
        # the translation is in x pixels: times 3.26 um in every axis
        assert cal.origin == pytest.approx([a[3] * 3.26, a[7] * 3.26, a[11] * 3.26])
    setup0 = data.setups[0]
    assert Calibration(setup0, data.registrations[(0, 0)]).origin == pytest.approx([-861.5031 * 3.26, 23895.71 * 3.26, 6145.0 * 3.26])

    # a rotated/affine BigStitcher registration still places the view
    aind = parse_spimdata((SAMPLES / BIGSTITCHER_AIND_S3).read_bytes(), "x")
    cal = Calibration(aind.setups[0], aind.registrations[(0, 0)])
    assert cal.voxel == pytest.approx([0.748, 0.748, 1.0])
    assert cal.origin == pytest.approx(expected_origin(BIGSTITCHER_AIND_S3, 0, [0.7480000148631624, 0.7479999743009398, 1.0]))

    for name, voxel in ((MASTODON_IDR, [0.21667, 0.21667, 0.4]), (MOBIE_MYOSIN, [0.55] * 3),
                        ("platybrowser-sbem-6dpf-1-whole-raw.bdv-n5.xml", [0.01, 0.01, 0.025])):
        data = parse_spimdata((SAMPLES / name).read_bytes(), name)
        cal = Calibration(data.setups[0], data.registrations[(0, 0)])
        assert cal.voxel == pytest.approx(voxel) and cal.origin == [0.0, 0.0, 0.0]


def test_without_a_length_voxel_size_the_registration_is_the_voxel_size():
    text = (SAMPLES / BIGSTITCHER_MESOSPIM).read_text().replace("<unit>um</unit>", "<unit>px</unit>")
    data = parse_spimdata(text.encode(), "x")
    cal = Calibration(data.setups[0], data.registrations[(0, 0)])
    assert cal.voxel == pytest.approx([1.0, 1.0, 10.0 / 3.26])  # today's behaviour, kept
    assert cal.origin == pytest.approx([-861.5031, 23895.71, 6145.0])
    assert cal.axes[0].unit is None


# -- bdv.multimg.zarr: BigStitcher / mesoSPIM ----------------------------------------------------


@pytest.fixture(scope="module")
def mesospim(http_server):
    """The real mesoSPIM XML (bdv.multimg.zarr 3.0, relative <zarr>) and its 16 OME-Zarr tiles,
    in a folder the HTTP server serves (at /mesospim/)."""
    root = http_server.www / "mesospim"
    xml = copy_sample(BIGSTITCHER_MESOSPIM, root)
    container = write_mesospim(root)
    return xml, container


def check_mesospim(fs, container, setups, zero_planes=True):
    for s in setups:
        view = f"/setup{s}/timepoint0"
        tile = container / f"s{s}-t0.zarr"
        expected = zarr_view(tile, 4, {})
        np.testing.assert_array_equal(stack(fs, f"{view}/s4.tif", expected.shape), expected)  # every plane
        for z in (0, 31) + ((32, 614) if zero_planes else ()):  # the written corner chunk, then missing chunks
            plane = tiff_array(read_all(fs, f"{view}/s0/z{z:05d}.tif"))
            np.testing.assert_array_equal(plane, zarr_view(tile, 0, {}, z=z)[0])
        meta = info(fs, f"{view}/info.json")
        origin = expected_origin(BIGSTITCHER_MESOSPIM, s, MESOSPIM_VOXEL)
        assert meta["levels"][0]["shape"] == [615, 2048, 2048]
        assert meta["levels"][0]["scale"] == pytest.approx([10.0, 3.26, 3.26])
        assert meta["levels"][0]["translation"] == pytest.approx(origin[::-1])
        assert meta["levels"][1]["scale"] == pytest.approx([20.0, 6.52, 6.52])  # factors 2, 2, 2 from the scales
        assert meta["levels"][1]["translation"] == pytest.approx([o + v / 2 for o, v in zip(origin[::-1], (10.0, 3.26, 3.26))])
        assert meta["axes"][2]["unit"] == "micrometer"


def test_real_bigstitcher_multimg_zarr_over_http_without_listing(mesospim, http_server):
    xml, container = mesospim
    fs = vfs_for(f"{http_server.url}/mesospim/{xml.name}")
    assert sorted(fs.readdir("/"), key=lambda n: int(n[5:])) == [f"setup{s}" for s in range(16)]
    check_mesospim(fs, container, range(16))
    # the ImageJ stack of a full-resolution tile: 3.26 x 3.26 x 10 um, placed in pixels
    with tifffile.TiffFile(VirtualReader(fs, "/setup0/timepoint0/s0.tif")) as tif:
        ij = tif.imagej_metadata
        page = tif.pages[0]
        assert (ij["unit"], ij["spacing"], ij["slices"]) == ("micron", pytest.approx(10.0), 615)
        x_res = page.tags["XResolution"].value
        assert x_res[1] / x_res[0] == pytest.approx(3.26, rel=1e-3)
        origin = expected_origin(BIGSTITCHER_MESOSPIM, 0, MESOSPIM_VOXEL)
        assert ij["xorigin"] == pytest.approx(-origin[0] / 3.26, abs=1e-3)
        assert ij["zorigin"] == pytest.approx(-origin[2] / 10.0, abs=1e-3)


def test_real_bigstitcher_multimg_zarr_from_s3(mesospim, s3_server, tmp_path):
    xml, container = mesospim
    prefix = f"meso-{tmp_path.name}"
    s3_server.upload_dir(xml.parent, "bigstitcher", prefix)
    fs = vfs_for(f"s3://bigstitcher/{prefix}/{xml.name}", s3_server.storage_options())
    check_mesospim(fs, container, (0, 7, 15), zero_planes=False)


def check_exaspim(fs, tiles: dict, xml_name: str, setups=(0, 14)):
    """Planes of tiles of 14192 x 10640 x 28672, declared whole: rows read by offset, as a
    viewer reads them, inside and past the written corner chunk."""
    for s in setups:
        plane_shape = (10640, 14192)
        for z in (0, 63, 64):
            path = f"/setup{s}/timepoint0/s0/z{z:05d}.tif"
            with tifffile.TiffFile(VirtualReader(fs, path)) as tif:
                assert tif.pages[0].shape == plane_shape
                start = tif.pages[0].dataoffsets[0]
            got = np.frombuffer(fs.read(path, 300 * 14192 * 2, start), "<u2").reshape(300, 14192)
            np.testing.assert_array_equal(got, zarr.open_array(str(tiles[s] / "0"), mode="r")[0, 0, z, :300, :])
        meta = info(fs, f"/setup{s}/timepoint0/info.json")
        voxel = [0.7480000148631624, 0.7479999743009398, 1.0]
        assert meta["levels"][0]["scale"] == pytest.approx(voxel[::-1])
        assert meta["levels"][0]["translation"] == pytest.approx(expected_origin(xml_name, s, voxel)[::-1])


def test_real_bigstitcher_s3bucket_xml_reads_the_bucket_it_names(s3_server, tmp_path):
    """bdv.multimg.zarr 1.0 with <s3bucket>aind-open-data</s3bucket>: the XML read from S3 names
    a bucket on the same service. 15 tiles of 14192 x 10640 x 28672, declared at full size."""
    xml = copy_sample(BIGSTITCHER_AIND_S3, tmp_path / "xml")
    prefix = ET.parse(xml).getroot().findtext(".//ImageLoader/zarr")
    tiles = write_exaspim_tiles(xml, tmp_path / "tiles")
    s3_server.upload_dir(tmp_path / "tiles", "aind-open-data", prefix)
    s3_server.upload_dir(xml.parent, "aind-xml", tmp_path.name)
    check_exaspim(vfs_for(f"s3://aind-xml/{tmp_path.name}/{xml.name}", s3_server.storage_options()), tiles,
                  BIGSTITCHER_AIND_S3)


def test_real_bigstitcher_absolute_zarr_path_falls_back_next_to_the_xml(http_server, tmp_path):
    """<zarr type="absolute">/data/foo_dataset/SPIM.ome.zarr</zarr> from the writer's machine,
    the XML served over HTTP: SPIM.ome.zarr next to the XML is read."""
    www = http_server.www / f"aind-{tmp_path.name}"
    xml = copy_sample(BIGSTITCHER_AIND_LOCAL, www)
    tiles = write_exaspim_tiles(xml, www / "SPIM.ome.zarr")
    check_exaspim(vfs_for(f"{http_server.url}/{www.name}/{xml.name}"), tiles, BIGSTITCHER_AIND_LOCAL, setups=(3,))


# -- bdv.n5.universe: Mastodon -------------------------------------------------------------------


@pytest.fixture(scope="module")
def idr(tmp_path_factory, http_server):
    """The real Mastodon XML (bdv.n5.universe over IDR's 13457227.zarr, t,c,z,y,x) and the
    image, served by the HTTP server at /idr/13457227.zarr."""
    xml = copy_sample(MASTODON_IDR, tmp_path_factory.mktemp("idr"))
    return xml, write_idr_13457227(http_server.www / "idr")


def check_idr(fs, image):
    assert sorted(fs.readdir("/")) == [f"setup{s}" for s in range(4)]
    for s in range(4):
        assert sorted(fs.readdir(f"/setup{s}"), key=lambda n: int(n[9:])) == [f"timepoint{t}" for t in range(18)]
        for t in range(18):
            view = f"/setup{s}/timepoint{t}"
            expected = zarr_view(image, 5, {"t": t, "c": s})  # setup = channel, timepoint = t index
            np.testing.assert_array_equal(stack(fs, f"{view}/s5.tif", expected.shape), expected)
    for s, t in ((0, 0), (3, 0), (1, 17), (2, 9)):
        for z in (0, 7, 8, 34):
            plane = tiff_array(read_all(fs, f"/setup{s}/timepoint{t}/s0/z{z:05d}.tif"))
            np.testing.assert_array_equal(plane, zarr_view(image, 0, {"t": t, "c": s}, z=z)[0])
    meta = info(fs, "/setup2/timepoint5/info.json")
    assert meta["levels"][0]["shape"] == [35, 2048, 2048] and meta["levels"][5]["shape"] == [35, 64, 64]
    assert meta["levels"][0]["scale"] == pytest.approx([0.4, 0.21667, 0.21667])
    assert meta["levels"][1]["scale"] == pytest.approx([0.4, 0.43334, 0.43334])  # factors 1, 2, 2 from the shapes
    assert meta["levels"][1]["translation"] == pytest.approx([0.0, 0.108335, 0.108335])


def test_real_mastodon_n5_universe_xml_over_http_without_listing(idr, http_server, tmp_path):
    xml, image = idr
    local = with_text(xml, "Url", f"{http_server.url}/idr/{image.name}", tmp_path / xml.name)
    check_idr(vfs_for(str(local)), image)


def test_real_mastodon_n5_universe_xml_from_s3(idr, s3_server, tmp_path):
    """An s3:// Url in an XML read from S3: the same service, with the caller's options."""
    xml, image = idr
    s3_server.upload_dir(image, "idr", "zarr/v0.4/idr0101A/13457227.zarr")
    up = tmp_path / "up"
    up.mkdir()
    with_text(xml, "Url", "s3://idr/zarr/v0.4/idr0101A/13457227.zarr", up / xml.name)
    s3_server.upload_dir(up, "mastodon", tmp_path.name)
    check_idr(vfs_for(f"s3://mastodon/{tmp_path.name}/{xml.name}", s3_server.storage_options()), image)


def test_mastodon_n5_universe_over_an_n5_viewer_container(tmp_path):
    """The N5 side of bdv.n5.universe: setup k is c<k>/s<level> (written by z5py), the XML as
    XmlIoN5UniverseImgLoader.toXml writes a local path (a relative path element)."""
    f = z5py.File(str(tmp_path / "cells.n5"), "w")
    expected = {}
    for c in range(2):
        for lv, shape in enumerate([(20, 45, 70), (10, 23, 35)]):
            data = (np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) * (c + 3) + lv).astype("uint16")
            f.create_dataset(f"c{c}/s{lv}", data=data, chunks=(8, 16, 16), compression="gzip")
            expected[(c, lv)] = z5py.File(str(tmp_path / "cells.n5"), "r")[f"c{c}/s{lv}"][:]
    text = (SAMPLES / MASTODON_IDR).read_text()
    text = re.sub(r"<Url>[^<]*</Url>", '<Url type="relative">cells.n5</Url>', text)
    text = re.sub(r"<Timepoints type=\"range\">\s*<first>0</first>\s*<last>17</last>", '<Timepoints type="range"><first>0</first><last>0</last>', text)
    text = re.sub(r"<ViewSetup>\s*<id>[23]</id>.*?</ViewSetup>", "", text, flags=re.S)
    (tmp_path / "cells.xml").write_text(text)
    fs = vfs_for(str(tmp_path / "cells.xml"))
    for c in range(2):
        for lv in range(2):
            exp = expected[(c, lv)]
            np.testing.assert_array_equal(stack(fs, f"/setup{c}/timepoint0/s{lv}.tif", exp.shape), exp)
        assert info(fs, f"/setup{c}/timepoint0/info.json")["levels"][1]["scale"] == pytest.approx([0.8, 0.43334, 0.43334])


# -- MoBIE: bdv.ome.zarr.s3 and bdv.ome.zarr ---------------------------------------------------


@pytest.mark.parametrize("xml_on", ["disk", "http"])
def test_real_mobie_ome_zarr_s3_xml(s3_server, http_server, tmp_path, xml_on):
    """mobie-io's prospr-myosin XML (format "ome.zarr.s3", bucket i2k-2020), on disk or served
    over HTTP: the image is read anonymously from the endpoint it names (the loopback S3)."""
    xml = copy_sample(MOBIE_MYOSIN, tmp_path / "orig")
    image = write_prospr_myosin(tmp_path / "data")
    s3_server.upload_dir(image, "i2k-2020", "prospr-myosin.ome.zarr")
    www = http_server.www / f"mobie-{tmp_path.name}"
    www.mkdir()
    local = with_text(xml, "ServiceEndpoint", s3_server.endpoint_url, www / xml.name)
    fs = vfs_for(str(local) if xml_on == "disk" else f"{http_server.url}/{www.name}/{xml.name}")
    meta = info(fs, "/info.json")  # one view: the image at the root
    assert meta["format"] == "BigDataViewer ome.zarr.s3" and meta["levels"][0]["shape"] == [519, 471, 500]
    assert meta["levels"][0]["scale"] == pytest.approx([0.55] * 3) and meta["levels"][2]["scale"] == pytest.approx([2.2] * 3)
    for lv in range(3):
        expected = zarr_view(image, lv, {})
        np.testing.assert_array_equal(stack(fs, f"/s{lv}.tif", expected.shape), expected)  # every plane


def test_mobie_bdv_ome_zarr_with_channels_and_labels(tmp_path):
    """bdv.ome.zarr as mobie-io's XmlN5OmeZarrImageLoader.toXml writes it: setups 0 and 1 are
    the channels, setup 2 the image's label."""
    image = tmp_path / "cells.ome.zarr"
    write_pyramid(image, "czyx", (2, 12, 40, 50), [[1, 1, 1, 1], [1, 1, 2, 2]], (1, 5, 16, 16), "uint16",
                  full_from=0, seed=9, labels=["nuclei"])
    write_pyramid(image / "labels" / "nuclei", "zyx", (12, 40, 50), [[1, 1, 1], [1, 2, 2]], (5, 16, 16), "uint16",
                  full_from=0, seed=2)
    text = (SAMPLES / MOBIE_MYOSIN).read_text()
    text = re.sub(r'<ImageLoader format="ome.zarr.s3">.*?</ImageLoader>',
                  '<ImageLoader format="bdv.ome.zarr" version="0.2"><ome.zarr type="relative">cells.ome.zarr</ome.zarr></ImageLoader>',
                  text, flags=re.S)
    setup = re.search(r"<ViewSetup>.*?</ViewSetup>", text, flags=re.S).group(0)
    text = text.replace(setup, setup + setup.replace("<id>0</id>", "<id>1</id>") + setup.replace("<id>0</id>", "<id>2</id>"))
    (tmp_path / "cells.xml").write_text(text)
    fs = vfs_for(str(tmp_path / "cells.xml"))
    for s, (path, index) in enumerate([(image, {"c": 0}), (image, {"c": 1}), (image / "labels" / "nuclei", {})]):
        for lv in range(2):
            expected = zarr_view(path, lv, index)
            np.testing.assert_array_equal(stack(fs, f"/setup{s}/timepoint0/s{lv}.tif", expected.shape), expected)


# -- a real mount, and bad XMLs ------------------------------------------------------------------


@pytest.mark.integration
def test_mount_a_real_bigstitcher_xml_over_http(mesospim, http_server, tmp_path, cache_args):
    xml, container = mesospim
    with mounted(f"{http_server.url}/mesospim/{xml.name}", tmp_path / "mnt", *cache_args) as mnt:
        view = mnt / "setup9" / "timepoint0"
        expected = zarr_view(container / "s9-t0.zarr", 4, {})
        for z in range(expected.shape[0]):
            np.testing.assert_array_equal(tifffile.imread(view / "s4" / f"z{z:05d}.tif"), expected[z])
        with tifffile.TiffFile(view / "s4.tif") as tif:
            assert tif.imagej_metadata["spacing"] == pytest.approx(160.0)  # 10 um x 16
            np.testing.assert_array_equal(tif.asarray(), expected)
        plane = tifffile.imread(view / "s0" / "z00003.tif")
        np.testing.assert_array_equal(plane, zarr_view(container / "s9-t0.zarr", 0, {}, z=3)[0])
        meta = json.loads((view / "info.json").read_text())
        assert meta["levels"][0]["scale"] == pytest.approx([10.0, 3.26, 3.26])
        # Fiji's view of level 1 (308 x 1024 x 1024), opened as a virtual stack
        from imagej import describe_image_macro, ij_str, parse_kv, run_macro

        s1 = str(view / "s1.tif")
        positions = [(1, 5, 7), (32, 255, 100), (33, 5, 7)]
        ij = parse_kv(run_macro(describe_image_macro(f'run("TIFF Virtual Stack...", "open=[" + {ij_str(s1)} + "]");',
                                                     positions)))
        assert (ij["width"], ij["height"], ij["nSlices"], ij["unit"]) == (1024, 1024, 308, "microns")
        assert (ij["pixelWidth"], ij["pixelHeight"], ij["pixelDepth"]) == pytest.approx((6.52, 6.52, 20.0))
        level1 = zarr_view(container / "s9-t0.zarr", 1, {}, z=slice(0, 33))
        for z, x, y in positions:
            assert ij[f"pixel_{z}_{x}_{y}"] == int(level1[z - 1, y, x])
        assert ij["pixel_1_5_7"] != 0


def test_bad_xmls_give_one_clear_line(tmp_path):
    text = (SAMPLES / MASTODON_IDR).read_text()
    no_url = tmp_path / "no-url.xml"
    no_url.write_text(re.sub(r"<Url>[^<]*</Url>", "", text))
    with pytest.raises(BadMetadata, match=r"bdv.n5.universe loader without a <Url> container URL"):
        open_source(str(no_url))
    nothing = tmp_path / "nothing.xml"
    nothing.write_text(re.sub(r"<Url>[^<]*</Url>", '<Url type="relative">missing.zarr</Url>', text))
    with pytest.raises(SourceNotFound, match=r"no OME-Zarr image or N5 container found \(tried .*missing.zarr\)"):
        open_source(str(nothing))
    no_zarr = tmp_path / "no-zarr.xml"
    no_zarr.write_text(re.sub(r"<zarr [^>]*>[^<]*</zarr>", "", (SAMPLES / BIGSTITCHER_MESOSPIM).read_text()))
    with pytest.raises(BadMetadata, match=r"bdv.multimg.zarr loader without a <zarr> container path"):
        open_source(str(no_zarr))
    unknown = tmp_path / "unknown.xml"
    unknown.write_text(text.replace('format="bdv.n5.universe"', 'format="bdv.n5.multiverse"'))
    (tmp_path / "mnt").mkdir()
    for xml, words in ((no_url, "without a <Url>"), (nothing, "no OME-Zarr image or N5 container"),
                       (unknown, "image loader 'bdv.n5.multiverse' is not supported")):
        result = ngffmount_cmd("mount", str(xml), str(tmp_path / "mnt"), check=False)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert words in result.stderr


def test_views_the_container_does_not_hold_are_left_out_with_a_log_line(tmp_path, caplog):
    """The XML lists 3 setups and 3 timepoints; the image has 2 channels and 2 timepoints."""
    xml, images = write_small_n5_universe(tmp_path)
    loader = re.search(r"<ImageLoader.*?</ImageLoader>", xml.read_text(), flags=re.S).group(0)
    xml.write_text(spimdata_xml(loader, 3, 3, (50, 40, 9), (0.5, 0.5, 2.0)))
    with caplog.at_level("WARNING", logger="ngffmount"):
        fs = vfs_for(str(xml))
    assert sorted(fs.readdir("/")) == ["setup0", "setup1"]
    assert sorted(fs.readdir("/setup1")) == ["timepoint0", "timepoint1"]
    expected = images["setup1/timepoint1"][0]
    np.testing.assert_array_equal(stack(fs, "/setup1/timepoint1/s0.tif", expected.shape), expected)
    left_out = [r.getMessage() for r in caplog.records if "is left out" in r.getMessage()]
    assert any("setup 2 timepoint 0 is left out: the image has 2 channel(s)" in m for m in left_out), left_out
    assert any("setup 0 timepoint 2 is left out: the image has 2 timepoint(s)" in m for m in left_out), left_out


@pytest.fixture(scope="module")
def small_xmls(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    return [write_small_n5_universe(root / "universe")[0], write_small_multimg(root / "multimg")[0]]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_container_xml_gives_one_clear_error_never_a_crash(small_xmls, tmp_path_factory, data):
    """Any element's text or attribute of an n5.universe or multimg.zarr XML replaced by
    arbitrary text: the source opens, or fails with the project's own one-line error."""
    original = data.draw(st.sampled_from(small_xmls))
    root = ET.fromstring(original.read_bytes())
    elements = list(root.iter())
    elem = elements[data.draw(st.integers(0, len(elements) - 1))]
    junk = data.draw(st.one_of(st.text(max_size=20), st.sampled_from(
        ["-1", "0", "1e400", "nan", "99999999999", "0 0 0", "../../etc", "/", "s3://", "[]", "1 1 1 1", "http://"])))
    if elem.attrib and data.draw(st.booleans()):
        elem.set(data.draw(st.sampled_from(sorted(elem.attrib))), junk)
    else:
        elem.text = junk
    xml = original.parent / f"hostile-{data.draw(st.integers(0, 10**9))}.xml"
    xml.write_bytes(ET.tostring(root))
    try:
        source = open_source(str(xml))
    except NgffMountError as exc:
        assert "\n" not in str(exc)
        return
    finally:
        xml.unlink()
    fs = VirtualFS(build_tree(source, ChunkEngine(memory_bytes=16 << 20)))
    for path in walk_files(fs):
        fs.getattr(path)


def test_a_view_cut_from_blosc_chunks_of_one_channel_decodes_only_the_blocks_it_reads(tmp_path):
    """A chunk one channel wide is the view's own bytes: a plane decodes only its blosc blocks."""
    import numcodecs

    xml, _ = write_small_multimg(tmp_path)  # indicies "1 0": channel 1 of each tile
    tile = zarr.open_group(str(tmp_path / "tiles.ome.zarr" / "tile0.zarr"), mode="a")
    data = np.random.default_rng(0).integers(0, 50, (1, 2, 64, 512, 512)).astype("uint16")
    del tile["0"]
    tile.create_array("0", shape=data.shape, dtype="uint16", chunks=(1, 1, 64, 512, 512),
                      compressors=numcodecs.Blosc(cname="lz4", blocksize=65536),
                      chunk_key_encoding={"name": "v2", "separator": "/"})[...] = data
    engine = ChunkEngine(memory_bytes=64 << 20)
    fs = VirtualFS(build_tree(open_source(str(xml)), engine))
    for z in (0, 17, 63):
        plane = tiff_array(read_all(fs, f"/setup0/timepoint0/s0/z{z:05d}.tif"))
        np.testing.assert_array_equal(plane, zarr.open_array(str(tmp_path / "tiles.ome.zarr" / "tile0.zarr" / "0"))[0, 1, z])
    stats = engine.stats.snapshot()
    assert stats["block_decodes"] > 0 and stats["decodes"] == 0, stats


def test_n5_universe_over_a_2d_ome_zarr_and_a_4d_n5_with_time(tmp_path):
    """A c,y,x OME-Zarr: each channel is a view one plane deep (z of size 1), its levels'
    factors 1 in z. An N5-Viewer dataset with a 4th N5 dimension: that is time."""
    write_pyramid(tmp_path / "flat.ome.zarr", "cyx", (3, 40, 50), [[1, 1, 1], [1, 2, 2]], (2, 16, 16), "uint8",
                  full_from=0, seed=4)
    loader = ('<ImageLoader format="bdv.n5.universe" version="1.0"><Url type="relative">flat.ome.zarr</Url>'
              "<Dataset>/</Dataset></ImageLoader>")
    (tmp_path / "flat.xml").write_text(spimdata_xml(loader, 3, 1, (50, 40, 1), (0.5, 0.5, 1.0)))
    fs = vfs_for(str(tmp_path / "flat.xml"))
    for c in range(3):
        meta = info(fs, f"/setup{c}/timepoint0/info.json")
        assert [lv["shape"] for lv in meta["levels"]] == [[1, 40, 50], [1, 20, 25]]
        assert meta["levels"][1]["scale"] == pytest.approx([1.0, 1.0, 1.0])
        for lv in range(2):
            expected = zarr_view(tmp_path / "flat.ome.zarr", lv, {"c": c})
            np.testing.assert_array_equal(stack(fs, f"/setup{c}/timepoint0/s{lv}.tif", expected.shape), expected)

    f = z5py.File(str(tmp_path / "timed.n5"), "w")
    data = (np.arange(3 * 6 * 20 * 30).reshape(3, 6, 20, 30) % 251).astype("uint8")  # t, z, y, x
    f.create_dataset("c0/s0", data=data, chunks=(2, 4, 8, 8), compression="raw")
    written = z5py.File(str(tmp_path / "timed.n5"), "r")["c0/s0"][:]
    loader = loader.replace("flat.ome.zarr", "timed.n5")
    (tmp_path / "timed.xml").write_text(spimdata_xml(loader, 1, 3, (30, 20, 6), (0.5, 0.5, 1.0)))
    fs = vfs_for(str(tmp_path / "timed.xml"))
    for t in range(3):
        np.testing.assert_array_equal(stack(fs, f"/setup0/timepoint{t}/s0.tif", written[t].shape), written[t])
