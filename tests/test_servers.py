"""The loopback test servers behave like the real servers ngffmount talks to."""

import http.client
import os

import fsspec
import numpy as np
import pytest
import requests
import s3fs
import zarr

from servers import MotoS3Server, RangeHTTPServer, free_port

pytestmark = pytest.mark.integration

DATA = os.urandom(1000)
SECRET = b"top-secret-outside-root"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("srv")
    (base / "secret.txt").write_bytes(SECRET)  # outside the served root
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(DATA)
    (root / "empty.bin").write_bytes(b"")
    (root / "sub" / "b.txt").write_bytes(b"hello")
    # A zarr v2 array with "/" chunk keys, as many OME-Zarr 0.4 stores have.
    arr = zarr.create_array(root / "x.zarr", shape=(6, 8), chunks=(3, 4), dtype="uint16",
                            zarr_format=2, chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[:] = np.arange(48, dtype="uint16").reshape(6, 8)
    return root


@pytest.fixture(scope="module")
def server(root):
    with RangeHTTPServer(root) as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.fail_paths.clear()
    server.reset_counters()
    return server


def raw_get(srv, path, method="GET"):
    """http.client sends the path verbatim (requests would normalise '..' away)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_free_port_is_bindable():
    assert 1024 <= free_port() <= 65535


def test_range_requests(srv):
    url = srv.url + "/a.bin"
    r = requests.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == DATA[10:20]
    assert r.headers["Content-Range"] == "bytes 10-19/1000"
    assert r.headers["Content-Length"] == "10"

    r = requests.get(url, headers={"Range": "bytes=990-"})
    assert r.status_code == 206 and r.content == DATA[990:]
    r = requests.get(url, headers={"Range": "bytes=-7"})  # suffix
    assert r.status_code == 206 and r.content == DATA[-7:]
    assert r.headers["Content-Range"] == "bytes 993-999/1000"
    r = requests.get(url, headers={"Range": "bytes=995-5000"})  # end clamps to size
    assert r.status_code == 206 and r.content == DATA[995:]

    r = requests.get(url)
    assert r.status_code == 200 and r.content == DATA
    assert r.headers["Accept-Ranges"] == "bytes" and "GMT" in r.headers["Last-Modified"]

    for bad in ("bytes=1000-", "bytes=-0"):
        r = requests.get(url, headers={"Range": bad})
        assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */1000"
    assert requests.get(srv.url + "/empty.bin", headers={"Range": "bytes=0-"}).status_code == 416


def test_head(srv):
    r = requests.head(srv.url + "/a.bin")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == "1000"
    r = requests.head(srv.url + "/a.bin", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and r.headers["Content-Length"] == "100"
    assert requests.head(srv.url + "/missing").status_code == 404


def test_directories_are_404_without_listing(srv, root):
    for path in ("/", "/sub", "/sub/", "/x.zarr/"):
        assert requests.get(srv.url + path).status_code == 404
    assert requests.get(srv.url + "/sub/b.txt").content == b"hello"
    # listing=True serves an index that fsspec can scrape.
    with RangeHTTPServer(root, listing=True) as listed:
        names = fsspec.filesystem("http").ls(listed.url + "/sub", detail=False)
        assert names == [listed.url + "/sub/b.txt"]


def test_path_traversal_refused(srv):
    for path in ("/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt",
                 "/..%2fsecret.txt", "//../secret.txt", "/a.bin%00"):
        status, body = raw_get(srv, path)
        assert status in (403, 404), path
        assert SECRET not in body


def test_counters_and_fail_paths(srv):
    srv.fail_paths["/a.bin"] = 500
    assert requests.get(srv.url + "/a.bin").status_code == 500
    del srv.fail_paths["/a.bin"]
    requests.get(srv.url + "/a.bin", headers={"Range": "bytes=0-9"})
    assert srv.requests == 2 and srv.bytes_served >= 10
    assert srv.log[-1] == ("GET", "/a.bin")
    srv.reset_counters()
    assert srv.requests == 0 and srv.paths == []


def test_fsspec_cat_file_range(srv):
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    assert fs.cat_file(srv.url + "/a.bin", start=100, end=200) == DATA[100:200]
    assert fs.cat_file(srv.url + "/a.bin", start=-10) == DATA[-10:]
    assert fs.size(srv.url + "/a.bin") == 1000


def test_zarr_v2_over_http_without_listing(srv):
    arr = zarr.open_array(srv.url + "/x.zarr", mode="r")
    assert arr.shape == (6, 8) and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr[:], np.arange(48, dtype="uint16").reshape(6, 8))
    assert "/x.zarr/1/1" in srv.paths  # "/" chunk keys fetched individually


def test_moto_anonymous_read_through_s3fs(root):
    with MotoS3Server() as s3:
        keys = s3.upload_dir(root, "bucket", "data")
        assert "data/sub/b.txt" in keys
        fs = s3fs.S3FileSystem(anon=True, skip_instance_cache=True,
                               client_kwargs={"endpoint_url": s3.endpoint_url})
        assert fs.cat_file("bucket/data/a.bin") == DATA
        assert fs.cat_file("bucket/data/a.bin", start=5, end=15) == DATA[5:15]
        # Private objects stay private to anonymous clients.
        s3.client().put_object(Bucket="bucket", Key="private", Body=b"x")
        with pytest.raises(PermissionError):
            fs.cat_file("bucket/private")
