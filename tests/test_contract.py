"""The shared adapter contract (docs/architecture.md, "Rules of the house"): every adapter shows the
expected tree, and every plane of every level equals an independent read of the source.

Each subclass builds one store with a third-party writer and returns what that writer's own
reader sees (zarr-python, z5py, h5py), as `Expected`. The tests drive VirtualFS directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import z5py
import zarr

from bdv_fixtures import write_bdv_hdf5, write_bdv_n5, write_partitioned_bdv_hdf5
from bdv_server import BdvServer
from precomputed_fixtures import write_volume
from conftest import read_all, tiff_array, vfs_for
from zarr_fixtures import pattern


@dataclass
class Expected:
    url: str
    # image path in the tree ("" = the mount root) -> arrays of each level, in z, y, x order
    images: dict[str, list[np.ndarray]]
    format: str
    storage_options: dict | None = None
    voxel_size: tuple[float, float, float] | None = None  # z, y, x of level 0, when the source says
    unit: str | None = None
    groups: list[str] = field(default_factory=list)  # directories that are groups, not images


class AdapterContract:
    """Subclasses provide a `source` fixture returning Expected."""

    def test_tree_has_every_image_and_its_views(self, source: Expected):
        fs = vfs_for(source.url, source.storage_options)
        for group in source.groups:
            entries = fs.readdir("/" + group)
            assert "info.json" not in entries, f"{group} should be a group, not an image"
        for path, levels in source.images.items():
            root = f"/{path}" if path else ""
            entries = set(fs.readdir(root or "/"))
            for i in range(len(levels)):
                assert {f"s{i}", f"s{i}.tif"} <= entries, (path, entries)
            info = json.loads(read_all(fs, f"{root}/info.json"))
            assert info["format"] == source.format
            assert [lv["shape"] for lv in info["levels"]] == [list(a.shape) for a in levels]
            assert [lv["dtype"] for lv in info["levels"]] == [np.dtype(a.dtype).name for a in levels]
            if source.voxel_size is not None:
                assert info["levels"][0]["scale"][-3:] == pytest.approx(list(source.voxel_size))
            if source.unit is not None:
                assert info["axes"][-1]["unit"] == source.unit

    def test_every_plane_matches_an_independent_read(self, source: Expected):
        fs = vfs_for(source.url, source.storage_options)
        for path, levels in source.images.items():
            root = f"/{path}" if path else ""
            for i, expected in enumerate(levels):
                planes = sorted(fs.readdir(f"{root}/s{i}"))
                assert len(planes) == expected.shape[0]
                for z, name in enumerate(planes):
                    got = tiff_array(read_all(fs, f"{root}/s{i}/{name}"))
                    np.testing.assert_array_equal(got, expected[z], err_msg=f"{path} s{i} {name}")
                stack = tiff_array(read_all(fs, f"{root}/s{i}.tif")).reshape(expected.shape)
                np.testing.assert_array_equal(stack, expected)



SHAPES = [(5, 37, 45), (3, 19, 23)]


def _ome_meta(version: str) -> dict:
    ms = {
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [2.0 * 2**i, 0.5 * 2**i, 0.5 * 2**i]}]}
                     for i in range(len(SHAPES))],
        "name": "contract",
    }
    if version == "0.4":
        ms["version"] = "0.4"
        return {"multiscales": [ms]}
    return {"ome": {"version": "0.5", "multiscales": [ms]}}



def _ome_zarr_written_by_zarr_python(tmp_path, version: str, zarr_format: int, dtype: str, **array_options) -> Expected:
    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=zarr_format)
    for i, shape in enumerate(SHAPES):
        root.create_array(str(i), shape=shape, dtype=dtype, **array_options)[...] = pattern(shape, dtype, i)
    root.attrs.update(_ome_meta(version))
    levels = [zarr.open_array(str(tmp_path / "img.zarr" / str(i)), mode="r")[...] for i in range(len(SHAPES))]
    return Expected(str(tmp_path / "img.zarr"), {"": levels}, f"OME-Zarr {version}", voxel_size=(2.0, 0.5, 0.5),
                    unit="micrometer")

class TestOmeZarrV2(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        return _ome_zarr_written_by_zarr_python(tmp_path, "0.4", zarr_format=2, chunks=(2, 16, 16), dtype="uint16")


class TestOmeZarrV3Sharded(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        return _ome_zarr_written_by_zarr_python(tmp_path, "0.5", zarr_format=3, chunks=(1, 8, 8), shards=(2, 16, 16),
                                                dtype="float32")


class TestPlainZarrArray(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        arr = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=SHAPES[0], chunks=(2, 16, 16), dtype="int16", zarr_format=2)
        arr[...] = pattern(SHAPES[0], "int16")
        return Expected(str(tmp_path / "a.zarr"), {"": [zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[...]]}, "Zarr v2 array")


class TestN5Neuroglancer(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        f = z5py.File(str(tmp_path / "vol.n5"), mode="a", use_zarr_format=False)
        g = f.create_group("raw")
        for i, shape in enumerate(SHAPES):
            g.create_dataset(f"s{i}", data=pattern(shape, "uint8", i), chunks=(2, 16, 16), compression="gzip")
        g.attrs["downsamplingFactors"] = [[1, 1, 1], [2, 2, 2]]
        g.attrs["pixelResolution"] = {"unit": "nm", "dimensions": [4.0, 4.0, 40.0]}
        levels = [z5py.File(str(tmp_path / "vol.n5"), mode="r")[f"raw/s{i}"][...] for i in range(len(SHAPES))]
        return Expected(str(tmp_path / "vol.n5" / "raw"), {"": levels}, "N5 multiscale (Neuroglancer)",
                        voxel_size=(40.0, 4.0, 4.0), unit="nanometer")


class TestNeuroglancerPrecomputedSharded(AdapterContract):
    """tensorstore writes a sharded (murmurhash, gzip) precomputed image; served over HTTP."""

    @pytest.fixture
    def source(self, tmp_path, http_server) -> Expected:
        name = f"contract-{tmp_path.name}.precomputed"
        levels = write_volume(http_server.www / name, "raw", "murmur", 1)
        return Expected(f"{http_server.url}/{name}", {"": levels}, "Neuroglancer precomputed image",
                        voxel_size=(40.0, 4.0, 4.0), unit="nanometer")


# -- BigDataViewer: pybdv (a third-party writer) for bdv.hdf5 and bdv.n5, h5py laid out as the
# Java exporter for partitions and its scale-offset filter, and the BigDataViewer server protocol.


def _bdv_images(expected: dict) -> dict[str, list[np.ndarray]]:
    images: dict[str, list[np.ndarray]] = {}
    for (t, s, level), arr in sorted(expected.items()):
        images.setdefault(f"setup{s}/timepoint{t}", []).append(arr)
    return images


BDV_SHAPE = (6, 37, 45)  # not a multiple of the chunks: edge cells everywhere


class TestBdvHdf5OverHttp(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path, http_server) -> Expected:
        name = f"bdv-{tmp_path.name}"
        xml, expected = write_bdv_hdf5(http_server.www / name, BDV_SHAPE, chunks=(4, 16, 16))
        return Expected(f"{http_server.url}/{name}/{xml.name}", _bdv_images(expected), "BigDataViewer bdv.hdf5",
                        voxel_size=(2.0, 0.5, 0.5), unit="micrometer", groups=["setup0", "setup1"])


class TestBdvHdf5PartitionedJavaFilters(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        xml, expected = write_partitioned_bdv_hdf5(tmp_path, BDV_SHAPE, chunks=(4, 16, 16), compression="java",
                                                   remap_ids=True)
        return Expected(str(xml), _bdv_images(expected), "BigDataViewer bdv.hdf5", voxel_size=(2.0, 0.5, 0.5))


class TestBdvHdf5Float32DataType(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        xml, expected = write_bdv_hdf5(tmp_path, BDV_SHAPE, setups=1, timepoints=1, dtype="float32",
                                       chunks=(4, 16, 16), data_type_attr=True)
        # a single view is the image itself, at the root
        return Expected(str(xml), {"": _bdv_images(expected)["setup0/timepoint0"]}, "BigDataViewer bdv.hdf5")


class TestBdvN5OnS3(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path, s3_server) -> Expected:
        xml, expected = write_bdv_n5(tmp_path / "up", BDV_SHAPE, chunks=(4, 16, 16), dtype="uint8")
        s3_server.upload_dir(tmp_path / "up", "bdvn5", tmp_path.name, public=True)
        return Expected(f"s3://bdvn5/{tmp_path.name}/{xml.name}", _bdv_images(expected), "BigDataViewer bdv.n5",
                        storage_options=s3_server.storage_options(), voxel_size=(2.0, 0.5, 0.5), unit="micrometer")


class TestBdvServer(AdapterContract):
    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        xml, expected = write_bdv_hdf5(tmp_path, BDV_SHAPE, chunks=(4, 16, 16))
        with BdvServer({"embryo": xml}) as server:
            yield Expected(server.dataset_url("embryo"), _bdv_images(expected), "BigDataViewer bdv.remote",
                           voxel_size=(2.0, 0.5, 0.5), unit="micrometer")


class TestBdvN5S3MoBIE(AdapterContract):
    """bdv.n5.s3, as MoBIE projects publish remote images: a local XML names the endpoint,
    bucket and key; the data is read anonymously."""

    @pytest.fixture
    def source(self, tmp_path, s3_server) -> Expected:
        xml, expected = write_bdv_n5(tmp_path / "local", BDV_SHAPE, chunks=(4, 16, 16), setups=1)
        s3_server.upload_dir(tmp_path / "local" / "dataset.n5", "mobie", f"{tmp_path.name}/raw.n5", public=True)
        loader = (f'<ImageLoader format="bdv.n5.s3"><Key>{tmp_path.name}/raw.n5</Key><SigningRegion>us-west-2'
                  f'</SigningRegion><ServiceEndpoint>{s3_server.endpoint_url}</ServiceEndpoint>'
                  '<BucketName>mobie</BucketName></ImageLoader>')
        remote = tmp_path / "remote.xml"
        remote.write_text(re.sub(r"<ImageLoader.*?</ImageLoader>", loader, xml.read_text(), flags=re.S))
        return Expected(str(remote), _bdv_images(expected), "BigDataViewer bdv.n5.s3", voxel_size=(2.0, 0.5, 0.5))


class TestBdvN5UniverseOmeZarr(AdapterContract):
    """Mastodon's bdv.n5.universe over an OME-Zarr (zarr-python): setups are channels,
    timepoints the t index."""

    @pytest.fixture
    def source(self, tmp_path) -> Expected:
        from bdv_zarr_fixtures import write_small_n5_universe

        xml, images = write_small_n5_universe(tmp_path)
        return Expected(str(xml), images, "BigDataViewer bdv.n5.universe", voxel_size=(2.0, 0.5, 0.5),
                        unit="micrometer", groups=["setup0", "setup1"])


class TestBdvMultiImageZarrOnS3(AdapterContract):
    """BigStitcher's bdv.multimg.zarr (one OME-Zarr per tile, a channel picked by `indicies`),
    on S3, with BigStitcher's pixel-unit registrations: the voxel size is the setup's."""

    @pytest.fixture
    def source(self, tmp_path, s3_server) -> Expected:
        from bdv_zarr_fixtures import write_small_multimg

        xml, images = write_small_multimg(tmp_path / "up")
        s3_server.upload_dir(tmp_path / "up", "multimg", tmp_path.name, public=True)
        return Expected(f"s3://multimg/{tmp_path.name}/{xml.name}", {f"{k}/timepoint0": v for k, v in images.items()},
                        "BigDataViewer bdv.multimg.zarr", storage_options=s3_server.storage_options(),
                        voxel_size=(1.0, 0.25, 0.25), unit="micrometer", groups=["setup0", "setup1", "setup2"])
