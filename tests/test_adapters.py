"""Adapter unit tests: URLs and credentials, metadata parsing from real samples, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zarr

from ngffmount.adapters import BadMetadata, NotAnImage, Unsupported, open_source
from ngffmount.adapters.storage import RangeRequest, Store, safe_key, trim_range
from ngffmount.adapters.urls import normalize_url, redact
from ngffmount.adapters.zarr_codecs import parse_fill_value
from zarr_fixtures import pattern, sample, write_metadata_doc, write_ome_zarr


def test_normalize_url_strips_credentials():
    assert normalize_url("https://user:pw@host:8080/a/b.zarr/") == "https://host:8080/a/b.zarr"
    assert normalize_url("https://host/x.zarr?X-Amz-Signature=abc&v=1") == "https://host/x.zarr?X-Amz-Signature=%2A%2A%2A&v=1"
    assert normalize_url("S3://bucket/img.zarr") == "s3://bucket/img.zarr"
    assert normalize_url("relative/dir").startswith("file:///")


def test_redact_text():
    text = "GET https://me:secret@host/a?token=abc&x=1 failed"
    assert redact(text) == "GET https://host/a?token=***&x=1 failed"


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a\\b"])
def test_safe_key_refuses_escapes(bad):
    with pytest.raises(BadMetadata):
        safe_key(bad)


def test_safe_key_normalizes():
    assert safe_key("a/./b") == "a/b" and safe_key("") == "" and safe_key(".") == ""


def test_trim_range_when_server_ignores_range():
    whole = bytes(range(100))
    assert trim_range(whole, RangeRequest("k", 10, 20)) == whole[10:20]
    assert trim_range(whole, RangeRequest("k", -16)) == whole[-16:]
    assert trim_range(whole[10:20], RangeRequest("k", 10, 20)) == whole[10:20]


def test_fill_values():
    f32 = np.dtype("float32")
    assert math.isnan(parse_fill_value("NaN", f32))
    assert parse_fill_value("-Infinity", f32) == -math.inf
    assert parse_fill_value("0x3fc00000", f32) == 1.5
    assert parse_fill_value(None, np.dtype("uint8")) == 0
    with pytest.raises(BadMetadata):
        parse_fill_value("nonsense", f32)


def test_cache_token_depends_on_metadata_and_endpoint(tmp_path):
    write_ome_zarr(tmp_path / "a.zarr", pattern((4, 4), "uint8"), "yx", levels=1)
    first = open_source(str(tmp_path / "a.zarr")).levels[0].cache_token
    assert open_source(str(tmp_path / "a.zarr")).levels[0].cache_token == first
    write_ome_zarr(tmp_path / "a.zarr", pattern((4, 5), "uint8"), "yx", levels=1)
    assert open_source(str(tmp_path / "a.zarr")).levels[0].cache_token != first
    a = Store("s3://b/x", {"client_kwargs": {"endpoint_url": "http://one:9000"}})
    b = Store("s3://b/x", {"client_kwargs": {"endpoint_url": "http://two:9000"}})
    assert a.identity != b.identity and a.url == b.url


def test_real_2d_sample_idr0066(tmp_path):
    """idr0066: a 0.5 group, y/x only, 6 levels with non-round scales and a '/' name."""
    store = tmp_path / "idr0066.zarr"
    group = sample("ome-zarr-0.5/idr0066-ExpA-2d-yx-group.zarr.json")
    write_metadata_doc(store / "zarr.json", group)
    for lvl in range(6):
        arr = zarr.create_array(str(store / str(lvl)), shape=(300 >> lvl, 200 >> lvl), chunks=(64, 64), dtype="uint16",
                                dimension_names=["y", "x"])
        arr[...] = pattern(arr.shape, "uint16")
    image = open_source(str(store))
    assert image.format == "OME-Zarr 0.5" and len(image.levels) == 6
    assert image.name == "/"
    assert image.levels[0].scale == (6.550032422660492, 6.550032422660492)
    assert [a.name for a in image.levels[0].axes] == ["y", "x"]
    assert image.channels[0].label == "tdTomato"


def test_ngff_03_string_axes_and_global_transform(tmp_path):
    store = tmp_path / "v03.zarr"
    write_ome_zarr(store, pattern((3, 8, 8), "uint8"), "zyx", levels=1)
    attrs = {"multiscales": [{"version": "0.4", "axes": ["z", "y", "x"],
                              "coordinateTransformations": [{"type": "scale", "scale": [2, 3, 3]},
                                                            {"type": "translation", "translation": [1, 1, 1]}],
                              "datasets": [{"path": "0", "coordinateTransformations": [
                                  {"type": "scale", "scale": [0.5, 0.25, 0.25]},
                                  {"type": "translation", "translation": [0, 2, 0]}]}]}]}
    (store / ".zattrs").write_text(json.dumps(attrs))
    level = open_source(str(store)).levels[0]
    assert level.scale == (1.0, 0.75, 0.75)
    assert level.translation == (1.0, 7.0, 1.0)


@pytest.mark.parametrize(
    "attrs, error, message",
    [
        ({"multiscales": []}, BadMetadata, "non-empty list"),
        ({"multiscales": [{"axes": [{"name": "q", "type": "weird"}, {"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}]},
         Unsupported, "axis 'q'"),
        ({"multiscales": [{"axes": ["z", "y", "x"], "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1]}]}]}]}, BadMetadata, "must list 3 numbers"),
        ({"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]}, BadMetadata, "names 2 axes"),
        ({"omero": {}}, NotAnImage, "no OME-Zarr multiscales"),
    ],
)
def test_broken_metadata_messages(tmp_path, attrs, error, message):
    store = tmp_path / "bad.zarr"
    write_ome_zarr(store, pattern((3, 8, 8), "uint8"), "zyx", levels=1)
    (store / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(error, match=message):
        open_source(str(store))


def test_unknown_codec_is_named(tmp_path):
    store = tmp_path / "codec.zarr"
    write_ome_zarr(store, pattern((3, 8, 8), "uint8"), "zyx", levels=1)
    meta = json.loads((store / "0" / ".zarray").read_text())
    meta["compressor"] = {"id": "foo"}
    (store / "0" / ".zarray").write_text(json.dumps(meta))
    with pytest.raises(Unsupported, match="codec 'foo' is not supported"):
        open_source(str(store))


@pytest.mark.parametrize("compressor", [{"id": "zlib", "level": 1}, {"id": "gzip", "level": 1}, {"id": "blosc"}])
def test_decompression_bombs_are_refused(compressor):
    import numcodecs

    from ngffmount.adapters import ChunkReadError
    from ngffmount.adapters.zarr_codecs import V2ChunkDecoder

    codec = numcodecs.get_codec(dict(compressor))
    decoder = V2ChunkDecoder({"compressor": compressor}, np.dtype("uint16"), (64, 64))
    good = np.arange(64 * 64, dtype="uint16")
    np.testing.assert_array_equal(decoder.decode(codec.encode(good.tobytes())).ravel(), good)
    bomb = codec.encode(bytes(256 << 20))  # 256 MiB of zeros in a few hundred KB
    with pytest.raises(ChunkReadError):
        decoder.decode(bomb)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_arrays_are_single_level_images(tmp_path, zarr_format):
    from conftest import read_all, tiff_array, vfs_for

    data = pattern((2, 3, 20, 30), "uint16")
    kwargs = {"dimension_names": ["c", "z", "y", "x"]} if zarr_format == 3 else {}
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 2, 8, 8), dtype="uint16",
                            zarr_format=zarr_format, **kwargs)
    arr[...] = data
    fs = vfs_for(str(tmp_path / "a.zarr"))
    info = json.loads(read_all(fs, "/info.json"))
    assert info["format"] == f"Zarr v{zarr_format} array"
    assert [a["name"] for a in info["axes"]] == list("czyx")
    assert [a["type"] for a in info["axes"]] == ["channel", "space", "space", "space"]
    np.testing.assert_array_equal(tiff_array(read_all(fs, "/s0/t00000_c001_z00002.tif")), data[1, 2])
