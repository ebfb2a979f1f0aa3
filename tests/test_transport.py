"""The lean transport (adapters/obstore_transport.py): what it serves, and that a chunk GET through
it behaves as through fsspec: bytes, ranges, missing objects, refusals, validators and
conditional requests, retries, timeouts and deadlines, counters. Real moto and HTTP servers on
loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import tifffile

from conftest import mounted, ngffmount_cmd
from zarr_fixtures import pattern, write_ome_zarr

from ngffmount.adapters.errors import ChunkReadError, SourceNotFound
from ngffmount.adapters.obstore_transport import TRANSPORT_ENV, default_transport
from ngffmount.adapters.retry import deadline_at
from ngffmount.adapters.storage import (
    TRANSFERS, NotModified, RangeRequest, SourceVersion, Store, observe, storage_options_for,
)
from servers import DUMMY_KEY, DUMMY_SECRET

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def objects(http_server, s3_server):
    root = http_server.www / "lean"
    root.mkdir(exist_ok=True)
    (root / "obj").write_bytes(DATA)
    s3_server.create_bucket("lean")
    client = s3_server.client()
    client.put_object(Bucket="lean", Key="img/obj", Body=DATA, ACL="public-read")
    client.put_object(Bucket="lean", Key="img/private", Body=DATA)
    return http_server, s3_server


def lean(url: str, **kw) -> Store:
    options = storage_options_for(url, **kw)
    options.transport = "obstore"
    store = Store(url, options)
    assert store.transport_in_use == "obstore"
    return store


def stores(objects) -> list[Store]:
    http_server, s3_server = objects
    return [lean(f"{http_server.url}/lean"),
            lean("s3://lean/img", anon=True, endpoint_url=s3_server.endpoint_url),
            lean("s3://lean/img", endpoint_url=s3_server.endpoint_url, extra={"key": DUMMY_KEY, "secret": DUMMY_SECRET}),
            lean("s3://lean/img", extra={"key": DUMMY_KEY, "secret": DUMMY_SECRET, "token": "session-token",
                                         "client_kwargs": {"endpoint_url": s3_server.endpoint_url,
                                                           "region_name": "eu-west-1"}})]


@contextlib.contextmanager
def answering(answer):
    """A loopback HTTP server whose GETs `answer(handler)` writes, whatever the request."""
    from http.server import BaseHTTPRequestHandler

    from servers import LoopbackHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        do_GET = answer

        def log_message(self, *args):
            pass

    with LoopbackHTTPServer(Handler) as server:
        yield server


def whole_object(headers: dict | None = None):
    """An answer for `answering`: all of DATA, with its Content-Length and these headers."""
    def answer(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(DATA)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(DATA)
    return answer


def test_bytes_ranges_and_counters(objects):
    for store in stores(objects):
        before = (TRANSFERS.requests, TRANSFERS.bytes)
        assert store.get("obj") == DATA
        assert (TRANSFERS.requests - before[0], TRANSFERS.bytes - before[1]) == (1, len(DATA))
        assert store.get_ranges([RangeRequest("obj", 100, 200)]) == [DATA[100:200]]
        assert store.get_ranges([RangeRequest("obj", -40)]) == [DATA[-40:]]
        assert store.get_ranges([RangeRequest("obj", -20_000)]) == [DATA]  # a suffix longer than the object
        assert store.get_ranges([RangeRequest("obj", len(DATA) - 5, len(DATA) + 100)]) == [DATA[-5:]]
        assert store.get_ranges([RangeRequest("obj", 10, None)]) == [DATA[10:]]
        # A batch runs on one event loop, through the same transport.
        before = TRANSFERS.requests
        got = store.get_ranges([RangeRequest("obj", i, i + 7) for i in range(0, 700, 70)] + [RangeRequest("nope", 0)])
        assert got == [DATA[i:i + 7] for i in range(0, 700, 70)] + [None]
        assert TRANSFERS.requests - before == 11 and TRANSFERS.in_flight == 0


def test_a_chunk_fetch_that_takes_buffers_gets_the_clients_memory_uncopied(objects):
    """Chunk fetches of levels that take buffers (fetch_versioned) get obstore's memory as a
    read-only memoryview; every other read (metadata, levels that parse bytes) gets bytes."""
    for store in stores(objects):
        assert type(store.get("obj")) is bytes
        with observe(buffers=True):
            got = store.get("obj")
            batch = store.get_ranges([RangeRequest("obj", 0, 10), RangeRequest("obj", 10, 20)])
        assert isinstance(got, memoryview) and got.readonly and got == DATA
        assert [bytes(b) for b in batch] == [DATA[:10], DATA[10:20]]
        with observe():
            assert type(store.get("obj")) is bytes
            assert all(type(b) is bytes for b in store.get_ranges([RangeRequest("obj", 0, 10), RangeRequest("obj", 5, 9)]))


def test_an_empty_range_is_empty_bytes_as_through_fsspec(objects):
    """fsspec answers a range of no bytes with b"" (_http_get sends no request for it);
    obstore refuses such a range: the lean transport must not turn it into an error."""
    for store in stores(objects):
        assert store.get_ranges([RangeRequest("obj", 5, 5)]) == [b""]
        assert store.get_ranges([RangeRequest("obj", 5, 5), RangeRequest("obj", 0, 3)]) == [b"", DATA[:3]]


def test_missing_is_none_and_a_refusal_is_a_clear_error(objects):
    http_server, s3_server = objects
    for store in stores(objects):
        assert store.get("nope") is None
        assert store.get_many(["nope", "obj"]) == {"nope": None, "obj": DATA}
    anonymous = lean("s3://lean/img", anon=True, endpoint_url=s3_server.endpoint_url)
    with pytest.raises(ChunkReadError, match=r"s3://lean/img/private: PermissionError: .*403") as refused:
        anonymous.get("private")
    assert "Debug source" not in str(refused.value)
    signed = stores(objects)[2]
    assert signed.get("private") == DATA
    http_server.fail_paths["/lean/obj"] = 403
    try:
        before = len(http_server.log)
        with pytest.raises(ChunkReadError, match="PermissionError"):
            stores(objects)[0].get("obj")
        assert len(http_server.log) - before == 1, "a refusal is not retried"
    finally:
        del http_server.fail_paths["/lean/obj"]


def test_a_wrong_secret_never_shows_in_the_error(objects):
    _, s3_server = objects
    store = lean("s3://lean/img", endpoint_url=s3_server.endpoint_url,
                 extra={"key": DUMMY_KEY, "secret": "sekrit-VALUE-123"})
    # moto accepts any signature; a bucket it does not know answers 404 NoSuchBucket.
    other = lean("s3://no-such-bucket/img", endpoint_url=s3_server.endpoint_url,
                 extra={"key": DUMMY_KEY, "secret": "sekrit-VALUE-123"})
    assert store.get("obj") == DATA and other.get("obj") is None
    with pytest.raises(ChunkReadError) as failed:
        lean("s3://lean/img", endpoint_url="http://127.0.0.1:1", timeout=1.0,
             extra={"key": DUMMY_KEY, "secret": "sekrit-VALUE-123"}).get("obj")
    assert "sekrit" not in str(failed.value) and "sekrit" not in repr(failed.value.__cause__)


def test_validators_come_from_each_response_and_conditions_get_304(objects):
    http_server, s3_server = objects
    for store in stores(objects):
        with observe() as seen:
            assert store.get_ranges([RangeRequest("obj", 2, 6)]) == [DATA[2:6]]
        version = seen.version
        assert version is not None and version.etag and version.last_modified.endswith(" GMT"), version
        with observe(version):
            with pytest.raises(NotModified):
                store.get_ranges([RangeRequest("obj", 2, 6)])
            assert store.get_ranges([RangeRequest("obj", 0, 2)]) == [DATA[:2]]  # only the named range
        by_date = SourceVersion("obj", 2, 6, last_modified=version.last_modified)
        with observe(by_date):
            with pytest.raises(NotModified):
                store.get_ranges([RangeRequest("obj", 2, 6)])
        with observe(SourceVersion("obj", 2, 6, etag='"not-this-one"')) as seen:
            assert store.get_ranges([RangeRequest("obj", 2, 6)]) == [DATA[2:6]]
        assert seen.version.etag == version.etag
    before = http_server.not_modified
    with observe(SourceVersion("obj", 0, None, etag=_etag(stores(objects)[0]))):
        with pytest.raises(NotModified):
            stores(objects)[0].get("obj")
    assert http_server.not_modified == before + 1


def test_a_server_that_sends_no_validators_gets_none_invented():
    """No ETag and no Last-Modified in the answer: the version says so, as through fsspec
    (obstore fills a missing Last-Modified in with 1970-01-01), so revalidation never sends
    a condition on a date the server never gave."""
    with answering(whole_object()) as server:
        for store in (lean(f"{server.url}/x"), Store(f"{server.url}/x", _fsspec_options(f"{server.url}/x"))):
            with observe() as seen:
                assert store.get("a") == DATA
            assert (seen.version.etag, seen.version.last_modified) == (None, None), (store.transport_in_use, seen.version)
            assert not seen.version.validated


def _fsspec_options(url: str, **kw):
    options = storage_options_for(url, **kw)
    options.transport = "fsspec"
    return options


def _etag(store: Store) -> str:
    with observe() as seen:
        store.get("obj")
    return seen.version.etag


def test_server_errors_are_retried_and_counted(objects):
    http_server, _ = objects
    store = lean(f"{http_server.url}/lean", timeout=20.0)
    http_server.fail_paths["/lean/obj"] = 503
    try:
        before_retries, before_log = TRANSFERS.retries, len(http_server.log)
        with pytest.raises(ChunkReadError, match=r"gave up \(5 attempts.*503"):
            store.get("obj")
        assert len(http_server.log) - before_log == 5 and TRANSFERS.retries - before_retries == 4
    finally:
        del http_server.fail_paths["/lean/obj"]
    # Rejoin: a path that answers 503 twice, then its bytes.
    failures = iter([503, 503])
    original = http_server.fail_paths

    class FailTwice(dict):
        def get(self, path, default=None):
            return next(failures, None) if path == "/lean/obj" else original.get(path, default)

    http_server.fail_paths = FailTwice()
    try:
        before = TRANSFERS.retries
        assert store.get("obj") == DATA and TRANSFERS.retries - before == 2
    finally:
        http_server.fail_paths = original


@pytest.fixture
def silent_server():
    """A server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


def test_a_silent_remote_fails_within_the_timeout_and_the_reads_deadline(silent_server):
    for url, extra in ((f"{silent_server}/x", {}),
                       ("s3://silent/x", {"endpoint_url": silent_server, "anon": True})):
        store = lean(url, timeout=2.0, **extra)
        started = time.monotonic()
        with pytest.raises(ChunkReadError, match="no complete answer within 2 s|gave up"):
            store.get("obj")
        assert 0.4 < time.monotonic() - started < 2.0 + 0.5
        # A read's deadline cuts the budget short: the blocking attempt ends with it.
        started = time.monotonic()
        with deadline_at(started + 0.7), pytest.raises(ChunkReadError):
            store.get("obj")
        assert time.monotonic() - started < 0.7 + 0.3
        # A batch too (on the event loop).
        started = time.monotonic()
        with pytest.raises(ChunkReadError):
            store.get_many(["a", "b", "c"])
        assert time.monotonic() - started < 2.0 + 0.5


def test_a_slow_transfer_that_keeps_flowing_completes_within_the_budget():
    """The attempt timeout (a quarter of --timeout) bounds a stall: fsspec lets a transfer
    run as long as bytes keep coming. obstore's timeout is one for the whole request, so
    a chunk that takes longer than that to arrive on a slow link (but well within
    --timeout) must still be read, not cut and tried again until the budget is gone."""
    def answer(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.send_header("ETag", '"slow"')
        self.end_headers()
        for i in range(0, len(DATA), 256):  # 40 pieces over 3 s: never silent for 2 s
            self.wfile.write(DATA[i:i + 256])
            self.wfile.flush()
            time.sleep(0.075)

    with answering(answer) as server:
        for store in (lean(f"{server.url}/x", timeout=8.0),  # attempts: 2 s without a byte
                      Store(f"{server.url}/x", _fsspec_options(f"{server.url}/x", timeout=8.0))):
            assert store.attempt_timeout == 2.0
            started = time.monotonic()
            assert store.get("a") == DATA, store.transport_in_use
            assert time.monotonic() - started < 8.0 + 0.5


def test_what_the_lean_transport_serves_and_what_stays_with_fsspec(objects, monkeypatch):
    http_server, s3_server = objects
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)
    endpoint = s3_server.endpoint_url

    def in_use(url, **kw):
        return Store(url, storage_options_for(url, **kw)).transport_in_use

    assert in_use(f"{http_server.url}/lean") == "obstore"
    assert in_use("s3://lean/img", anon=True, endpoint_url=endpoint) == "obstore"
    # Options obstore does not understand, and credentials only botocore's chain finds: s3fs.
    assert in_use("s3://lean/img", anon=True, endpoint_url=endpoint, extra={"requester_pays": True}) == "fsspec"
    assert in_use(f"{http_server.url}/lean", extra={"headers": {"X-Token": "t"}}) == "fsspec"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert in_use("s3://lean/img", endpoint_url=endpoint) == "fsspec"
    assert in_use("s3://lean/img", anon=True) == "fsspec", "no region and no endpoint: s3fs finds the region"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    env_keys = Store("s3://lean/img", storage_options_for("s3://lean/img", endpoint_url=endpoint))
    assert env_keys.transport_in_use == "obstore" and env_keys.get("private") == DATA
    assert in_use(str(http_server.www)) == "fsspec"
    # Asked for by name where it cannot serve: a clear error, not a silent fallback.
    options = storage_options_for("s3://lean/img", anon=True, endpoint_url=endpoint, extra={"requester_pays": True})
    options.transport = "obstore"
    with pytest.raises(SourceNotFound, match="requester_pays not understood by obstore"):
        Store("s3://lean/img", options)
    # The environment sets the default; fsspec then serves everything, as before.
    monkeypatch.setenv(TRANSPORT_ENV, "fsspec")
    assert default_transport() == "fsspec"
    store = Store(f"{http_server.url}/lean")
    assert store.transport_in_use == "fsspec" and store.get("obj") == DATA


def test_aws_variables_only_obstore_reads_change_nothing(objects, monkeypatch):
    """obstore's S3Store reads AWS_* variables of its own from the environment, which
    botocore does not (virtual-hosted style, requester pays, unsigned requests), and would
    send a session token of the environment with the key of the options (s3fs does not):
    a request must be the one the options describe, whichever client sends it."""
    _, s3_server = objects
    endpoint = s3_server.endpoint_url
    for name, value in (("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true"), ("AWS_REQUEST_PAYER", "true"),
                        ("AWS_SKIP_SIGNATURE", "true"), ("AWS_S3_EXPRESS", "true")):
        monkeypatch.setenv(name, value)
    signed = lean("s3://lean/img", endpoint_url=endpoint, extra={"key": DUMMY_KEY, "secret": DUMMY_SECRET})
    assert signed.get("private") == DATA  # signed, path style, as the options say
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-token-of-another-identity")
    options = storage_options_for("s3://lean/img", endpoint_url=endpoint, extra={"key": DUMMY_KEY, "secret": DUMMY_SECRET})
    options.transport = "auto"
    store = Store("s3://lean/img", options)
    assert store.transport_in_use == "fsspec" and store.get("private") == DATA
    with_token = lean("s3://lean/img", endpoint_url=endpoint,
                      extra={"key": DUMMY_KEY, "secret": DUMMY_SECRET, "token": "its-own"})
    assert with_token.get("private") == DATA


def test_keys_that_need_escaping_go_through_fsspec(objects):
    http_server, _ = objects
    (http_server.www / "lean" / "a b").write_bytes(b"spaced")
    store = lean(f"{http_server.url}/lean")
    assert store._fast.object_path(store._path("a b")) is None
    assert store.get("a b") == b"spaced"
    (http_server.www / "lean" / "sub").mkdir(exist_ok=True)
    (http_server.www / "lean" / "sub" / "x").write_bytes(b"child")
    child = store.child("sub")
    assert child._fast.object_path(child._path("x")) == "lean/sub/x" and child.get("x") == b"child"


def test_a_server_that_ignores_range_is_read_through_fsspec():
    with answering(whole_object({"ETag": '"whole"'})) as server:
        store = lean(f"{server.url}/x")
        assert store.get("a") == DATA
        assert store._fast.ranges
        assert store.get_ranges([RangeRequest("a", 10, 20)]) == [DATA[10:20]]
        assert not store._fast.ranges, "obstore refused the whole answer: fsspec now sends range requests"
        assert store.get_ranges([RangeRequest("a", -5), RangeRequest("a", 3, 9)]) == [DATA[-5:], DATA[3:9]]
        assert store.get("a") == DATA  # whole objects still through obstore


def test_a_server_that_streams_without_content_length_is_read_through_fsspec():
    """A server that sends whole objects in chunked transfer encoding (no Content-Length),
    as dynamic servers and some gateways do: obstore refuses the answer, fsspec reads it."""
    def answer(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(DATA), 4000):
            part = DATA[i:i + 4000]
            self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    with answering(answer) as server:
        store = lean(f"{server.url}/x")
        assert store.get("a") == DATA
        assert not store._fast.headers_read, "obstore refused the answer: fsspec sends this store's GETs from now on"
        assert store.get_many(["a", "b"]) == {"a": DATA, "b": DATA}
        assert store.get_ranges([RangeRequest("a", 10, 20)]) == [DATA[10:20]]


def test_a_server_whose_last_modified_is_no_http_date_is_read_through_fsspec():
    """A Last-Modified that is no HTTP date: obstore refuses the whole answer over it,
    fsspec reads the bytes (and keeps the header as it came)."""
    with answering(whole_object({"Last-Modified": "2024-01-01 10:00:00"})) as server:
        store = lean(f"{server.url}/x")
        assert store.get("a") == DATA
        assert not store._fast.headers_read
        assert store.get_many(["a", "b"]) == {"a": DATA, "b": DATA}


def test_mounts_read_the_same_bytes_with_the_same_requests_through_either_client(tmp_path, s3_server, cache_args):
    """Through the CLI: --transport obstore and fsspec serve the same planes, count the same
    requests in stats.json, and keep the key and secret out of /proc/mounts and the log."""
    data = pattern((3, 40, 50), "uint16", seed=3)
    write_ome_zarr(tmp_path / "img.zarr", data, "zyx", levels=1, chunks=(1, 16, 16))
    s3_server.upload_dir(tmp_path / "img.zarr", "either", "img.zarr", public=False)
    secret = "SECRET-either-42"
    requests = {}
    for transport in ("obstore", "fsspec"):
        log = tmp_path / f"{transport}.log"
        with mounted("s3://either/img.zarr", tmp_path / f"mnt-{transport}", "--transport", transport,
                     "--endpoint-url", s3_server.endpoint_url, "--storage-option", "key=AKIDEITHER",
                     "--storage-option", f"secret={secret}", "--log-file", str(log),
                     "--cache-dir", str(tmp_path / f"cache-{transport}")) as mnt:
            before = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["remote_requests"]
            for z in range(3):
                np.testing.assert_array_equal(tifffile.imread(mnt / "s0" / f"z{z:05d}.tif"), data[z])
            requests[transport] = json.loads((mnt / ".ngffmount" / "stats.json").read_text())["remote_requests"] - before
            mounts = open("/proc/mounts").read()
        assert secret not in mounts + log.read_text() and "AKIDEITHER" not in mounts
    assert requests["obstore"] == requests["fsspec"] == 3 * 3 * 4, requests  # one GET per chunk


def test_mount_that_asks_for_obstore_where_it_cannot_serve_fails_in_one_line(tmp_path, s3_server, cache_args):
    write_ome_zarr(tmp_path / "img.zarr", pattern((2, 8, 8), "uint16"), "zyx", levels=1)
    s3_server.upload_dir(tmp_path / "img.zarr", "refused", "img.zarr", public=True)
    (tmp_path / "mnt").mkdir()
    result = ngffmount_cmd("mount", "s3://refused/img.zarr", str(tmp_path / "mnt"), "--anon", "--endpoint-url",
                           s3_server.endpoint_url, "--transport", "obstore", "--storage-option", "requester_pays=true",
                           *cache_args, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "requester_pays not understood by obstore" in result.stderr
    bad = ngffmount_cmd("mount", "s3://refused/img.zarr", str(tmp_path / "mnt"), "--transport", "rust",
                        *cache_args, check=False)
    assert bad.returncode == 2 and "not a transport: 'rust'" in bad.stderr


def test_stores_an_xml_leads_to_keep_the_transport_asked_for():
    from ngffmount.adapters.bdv import Context

    endpoint = "http://127.0.0.1:9"
    own = storage_options_for("s3://b/x.xml", anon=True, endpoint_url=endpoint, transport="fsspec")
    ctx = Context("s3://b/x.xml", own, 4)
    assert ctx.s3_options(endpoint, None).transport == "fsspec"  # the caller's own options
    assert ctx.s3_options("http://127.0.0.1:10", "eu-west-1").transport == "fsspec"  # anonymous elsewhere
    web = Context("https://h/x.xml", storage_options_for("https://h/x.xml", transport="fsspec"), 4)
    assert web.container_store("s3://bucket/c.n5").transport_in_use == "fsspec"
    assert web.container_store("http://h/c.n5").transport_in_use == "fsspec"


def private_ca_and_server_cert(directory):
    """A private CA and a certificate it signed for 127.0.0.1 (openssl): (CA cert, cert, key).
    rustls, unlike OpenSSL, refuses a self-signed CA certificate as a server's own."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert, ext = (directory / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "ext"))

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ngffmount test CA",
            "-keyout", str(ca_key), "-out", str(ca))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    ext.write_text("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
            "-extfile", str(ext), "-out", str(cert))
    return ca, cert, key


def test_https_trusts_the_bundles_the_environment_names(tmp_path, objects, monkeypatch):
    import ssl

    from servers import RangeHTTPServer

    http_server, _ = objects
    ca, cert, key = private_ca_and_server_cert(tmp_path / "tls")
    bundle = tmp_path / "bundle.pem"  # as a site's bundle is: the public roots plus a private CA
    system = ssl.get_default_verify_paths().openssl_cafile
    bundle.write_text((open(system).read() if system and os.path.isfile(system) else "") + ca.read_text())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = RangeHTTPServer(http_server.www)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    endpoint = server.url.replace("http://", "https://")
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    with server:
        # An anonymous S3 GET of /bucket/key is a plain GET: the HTTPS server stands in for S3.
        as_s3 = dict(anon=True, endpoint_url=endpoint, timeout=2.0)
        for store in (lean(endpoint + "/lean", timeout=2.0), lean("s3://lean", **as_s3)):
            with pytest.raises(ChunkReadError):
                store.get("obj")  # a CA nobody named: refused
        monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))  # botocore's variable: S3 only
        assert lean("s3://lean", **as_s3).get("obj") == DATA
        monkeypatch.delenv("AWS_CA_BUNDLE")
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # OpenSSL's: both
        assert lean(endpoint + "/lean").get("obj") == DATA
        assert lean("s3://lean", **as_s3).get("obj") == DATA
